import { VmSyncError } from '../../src/errors.js';
import type { LockOwner } from '../../src/remote/lock.js';
import { releaseFleet, type ReleaseContext } from '../../src/sync/release.js';
import { buildKey, type StreamOutcome } from '../../src/sync/stream.js';
import { rsyncExcludes } from '../../src/sync/vm-pipeline.js';
import type { Config } from '../../src/config/types.js';
import { FakeFleet, fakeHistory, fleetConfig, NEW, OLD, OLDER, recordingEvents, releaseName, type FakeRelease, type VmScript } from '../helpers/fake-port.js';

/*
 * Review of 6447b46. The rsync path's `stage` now waits for the copy ahead and, when the copy
 * failed (its channel cut: its `cp -al` may still run on the VM), calls stopInterrupted() first:
 * "stage empties the directory the copy ahead fills: never beside it".
 *
 * The stream path does the same emptying: `apply` with linked=0 (the copy failed) runs
 * `rm -rf releases/<sha>.partial; mkdir; cp -al BASE/. partial/` and unpacks the stream into it.
 * It only awaits run.linking and never stops what may still run of the failed link. On the VM
 * the old link's `cp -al` then races apply's copy, and when it fails (EEXIST, a directory that
 * apply just removed) the old link runs its own `rm -rf releases/<sha>.partial`, deleting
 * what apply (or its tar) is writing; its record `linked.<sha>` may also reappear after apply
 * removed it.
 */

const OWNER: Omit<LockOwner, 'deadline'> = { token: 'runner-host:4242:feedc0de', host: 'runner-host', pid: 4242, pidStart: '1', boot: 'boot', pidns: 'pidns', commit: NEW, run: '' };
const kept = (commit: string, day: number): FakeRelease => ({ name: releaseName(commit, new Date(Date.UTC(2026, 10, day, 8, 0, 0))), commit });
const KEY = buildKey(rsyncExcludes(fleetConfig(['vm01']), []), []);

function ctx(config: Config, fleet: FakeFleet, extra: Partial<ReleaseContext>): ReleaseContext {
  return { config, openPort: fleet.openPort, history: fakeHistory, commit: NEW, tree: async () => ({ dir: '/tmp/vm-sync-export', notes: [] }), force: false, owner: OWNER, events: recordingEvents(), retryBaseMs: 1, lockWaitS: 0, ...extra };
}

test('the stream path after a copy ahead whose channel was cut: what may still run of it is stopped before apply empties its directory', async () => {
  const script: VmScript = {
    releases: [kept(OLDER, 1), kept(OLD, 2)],
    stream: true,
    baseKey: KEY,
    // The copy ahead's channel is cut (its step may still run on the VM): linking resolves false.
    failures: { link: [new VmSyncError('timeout', 'link on vm01 did not finish within 30s')] },
  };
  const fleet = new FakeFleet({ vm01: script });
  const config = fleetConfig(['vm01']);
  const stream = async (): Promise<StreamOutcome> => ({ ok: true, stream: { file: '/tmp/vm-sync-stream', bytes: 10, files: 1, removals: 0, codec: 'gzip' } }) as StreamOutcome;
  const outcome = await releaseFleet(ctx(config, fleet, { stream }), config.vms);
  expect(outcome.vms[0]).toMatchObject({ result: 'success', rev_after: NEW });
  const ops = fleet.of('vm01').map((c) => c.op);
  const link = ops.indexOf('link');
  const apply = ops.indexOf('apply');
  expect(link).toBeGreaterThanOrEqual(0);
  expect(apply).toBeGreaterThan(link);
  // As stage does: stopInterrupted between the failed link and the apply that empties its directory.
  expect(ops.slice(link, apply)).toContain('stopInterrupted');
});
