import type { LockOwner } from '../../src/remote/lock.js';
import { releaseFleet, type ReleaseContext } from '../../src/sync/release.js';
import { buildKey, type StreamOutcome } from '../../src/sync/stream.js';
import { rsyncExcludes } from '../../src/sync/vm-pipeline.js';
import type { Config } from '../../src/config/types.js';
import { FakeFleet, fakeHistory, fleetConfig, NEW, OLD, OLDER, recordingEvents, releaseName, type FakeRelease, type VmScript } from '../helpers/fake-port.js';

/*
 * From the adversary review of 8248e08. VmRun.linking says the copy ahead is "awaited before
 * anything else of this run on the VM that depends on it (apply, unlock)".
 * `stage` depends on it too: on the VM it removes the hard-linked partial that
 * `link` is still filling (cp -al into releases/<sha>.partial), then rsync
 * stages into that directory. The executor awaits run.linking before apply
 * and in settle, but not before the rsync path's stage (taken when the stream
 * cannot be made after the scan). The real port only happens to order them
 * (one agent session, one request at a time); a link whose session died
 * (swallowed: "costs nothing") is not stopped before stage runs on a new one.
 */

const OWNER: Omit<LockOwner, 'deadline'> = { token: 'runner-host:4242:feedc0de', host: 'runner-host', pid: 4242, pidStart: '1', boot: 'boot', pidns: 'pidns', commit: NEW, run: '' };
const kept = (commit: string, day: number): FakeRelease => ({ name: releaseName(commit, new Date(Date.UTC(2026, 10, day, 8, 0, 0))), commit });
const KEY = buildKey(rsyncExcludes(fleetConfig(['vm01']), []), []);

function ctx(config: Config, fleet: FakeFleet, extra: Partial<ReleaseContext>): ReleaseContext {
  return { config, openPort: fleet.openPort, history: fakeHistory, commit: NEW, tree: async () => ({ dir: '/tmp/vm-sync-export', notes: [] }), force: false, owner: OWNER, events: recordingEvents(), retryBaseMs: 1, lockWaitS: 0, ...extra };
}

test('the rsync path (no stream after all): stage is never sent while the copy ahead is still being made', async () => {
  let copied!: () => void;
  const linkGate = new Promise<void>((resolve) => (copied = resolve));
  const script: VmScript = { releases: [kept(OLDER, 1), kept(OLD, 2)], stream: true, baseKey: KEY, gates: { link: linkGate } };
  const fleet = new FakeFleet({ vm01: script });
  const config = fleetConfig(['vm01']);
  const running = releaseFleet(ctx(config, fleet, { stream: async (): Promise<StreamOutcome> => ({ ok: false, reason: 'the base commit is not in this clone' }) }), config.vms);
  await fleet.until((calls) => calls.some((c) => c.op === 'link'));
  await new Promise((r) => setTimeout(r, 50));
  const whileLinking = fleet.of('vm01', 'stage').length;
  copied();
  const outcome = await running;
  expect(outcome.vms[0]).toMatchObject({ result: 'success', rev_after: NEW });
  // stage removes and refills the directory link is writing into: it must come after the copy.
  expect(whileLinking).toBe(0);
});
