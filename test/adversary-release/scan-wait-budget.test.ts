/*
 * Adversary (review of ecc9ae5..744acd0), unit form of
 * scan-longer-than-vm-budget.test.ts: VmBudget only moves its deadline after
 * the wait for the tree, so its timer (sync.timeout_s) fires *during* a long
 * wait and the VM's signal is already aborted when it stages. The real port
 * then cancels the stage ("stage on X was cancelled") and the VM fails
 * `timeout`. Here the fake port is wrapped to refuse a step whose signal is
 * aborted, as RemoteTarget does.
 */
import type { LockOwner } from '../../src/remote/lock.js';
import type { OpenPort, VmPort } from '../../src/remote/port.js';
import { releaseFleet } from '../../src/sync/release.js';
import { VmSyncError } from '../../src/errors.js';
import { FakeFleet, fakeHistory, fleetConfig, NEW, OLD, OLDER, recordingEvents, releaseName } from '../helpers/fake-port.js';

const OWNER: Omit<LockOwner, 'deadline'> = { token: 'runner-host:4242:feedc0de', host: 'runner-host', pid: 4242, pidStart: '1', boot: 'boot', pidns: 'pidns', commit: NEW, run: '' };
const kept = (commit: string, day: number) => ({ name: releaseName(commit, new Date(Date.UTC(2026, 10, day, 8, 0, 0))), commit });

test('a wait for the tree longer than sync.timeout_s does not abort the VM (its budget is paused, not only moved afterwards)', async () => {
  const fleet = new FakeFleet({ vm01: { releases: [kept(OLDER, 1), kept(OLD, 2)] } });
  const config = fleetConfig(['vm01'], { sync: ['timeout_s: 5'] });
  const abortedAtStage: boolean[] = [];
  const openPort: OpenPort = async (vm, options) => {
    const port = await fleet.openPort(vm, options);
    let signal = options.signal;
    const wrapped: VmPort = {
      ...port,
      extendTo: (deadlineAt, next) => {
        if (next) signal = next;
        port.extendTo(deadlineAt, next);
      },
      stage: (...args) => {
        abortedAtStage.push(signal.aborted);
        if (signal.aborted) return Promise.reject(new VmSyncError('timeout', `stage on ${vm.id} was cancelled`));
        return port.stage(...args);
      },
    };
    return wrapped;
  };
  const outcome = await releaseFleet(
    {
      config,
      openPort,
      history: fakeHistory,
      commit: NEW,
      // The scan: 5.5 s, well within secret_scanning.timeout_s (60 s here).
      tree: async () => (await new Promise((r) => setTimeout(r, 5_500)), { dir: '/tmp/x', notes: [] }),
      treeWaitS: 60,
      force: false,
      owner: OWNER,
      events: recordingEvents(),
      retryBaseMs: 1,
      lockWaitS: 0,
    },
    config.vms,
  );
  expect({ abortedAtStage, result: outcome.vms[0].result, error: outcome.vms[0].error }).toEqual({ abortedAtStage: [false], result: 'success', error: null });
}, 30_000);
