/*
 * The fleet-release executor (src/sync/release.ts) against a scripted fleet
 * (test/helpers/fake-port.ts): which remote step runs on which VM, in which
 * order, and what each row says at the end. Every scenario also checks the
 * invariants of (h): every port closed, nothing called on a closed port,
 * every lock this run took released exactly once, no lock of ours left.
 */
import type { Config } from '../../src/config/types.js';
import { VmSyncError } from '../../src/errors.js';
import type { LockOwner } from '../../src/remote/lock.js';
import { releaseFleet, rollbackFleet, sessionBudgetS, type ReleaseContext, type ReleaseOutcome, type RollbackContext } from '../../src/sync/release.js';
import { buildKey, type StreamOutcome } from '../../src/sync/stream.js';
import { rsyncExcludes } from '../../src/sync/vm-pipeline.js';
import type { VmReport } from '../../src/sync/types.js';
import { AHEAD, deferred, FakeFleet, fakeHistory, fleetConfig, NEW, OLD, OLDER, recordingEvents, releaseName, type FakeRelease, type VmScript } from '../helpers/fake-port.js';

const OWNER: Omit<LockOwner, 'deadline'> = { token: 'runner-host:4242:feedc0de', host: 'runner-host', pid: 4242, pidStart: '1', boot: 'boot', pidns: 'pidns', commit: NEW, run: '' };
const IDS = ['vm01', 'vm02', 'vm03'];

/** A release made earlier (November 1st + `day`), before any the fake fleet seals. */
function kept(commit: string, day: number): FakeRelease {
  return { name: releaseName(commit, new Date(Date.UTC(2026, 10, day, 8, 0, 0))), commit };
}

/** A VM serving OLD from a kept release (the usual deploy: behind). */
function onOld(extra: VmScript = {}): VmScript {
  return { releases: [kept(OLDER, 1), kept(OLD, 2)], ...extra };
}

function fleetOf(scripts: Partial<Record<string, VmScript>>, ids = IDS): FakeFleet {
  return new FakeFleet(Object.fromEntries(ids.map((id) => [id, scripts[id] ?? onOld()])));
}

function releaseCtx(config: Config, fleet: FakeFleet, extra: Partial<ReleaseContext> = {}): ReleaseContext {
  return { config, openPort: fleet.openPort, history: fakeHistory, commit: NEW, tree: async () => ({ dir: '/tmp/vm-sync-export', notes: [] }), force: false, owner: OWNER, events: recordingEvents(), retryBaseMs: 1, lockWaitS: 0, ...extra };
}

function rowsById(rows: VmReport[]): Record<string, VmReport> {
  return Object.fromEntries(rows.map((r) => [r.id, r]));
}

/** (h) Every port closed, nothing called after its close, each lock this run took released exactly once, none of ours left. */
function expectClean(fleet: FakeFleet): void {
  expect(fleet.afterClose.map((c) => `${c.vm}#${c.port} ${c.op}`)).toEqual([]);
  for (const id of fleet.vms.keys()) {
    // Every port that was opened (an open that threw gave none) is closed exactly once.
    for (const open of fleet.of(id, 'open').filter((c) => !c.threw)) {
      expect([`${id}#${open.port}`, fleet.closes.get(`${id}#${open.port}`) ?? 0]).toEqual([`${id}#${open.port}`, 1]);
    }
    expect([id, fleet.vm(id).lock === OWNER.token]).toEqual([id, false]);
  }
  for (const entry of fleet.lockLedger()) expect(entry).toEqual({ ...entry, unlocks: entry.taken });
}

const sealedRelease = (fleet: FakeFleet, id: string): string => {
  const seals = fleet.of(id, 'seal').filter((c) => !c.threw);
  expect(seals).toHaveLength(1);
  // The release the VM sealed is the newest of NEW on it.
  return [...fleet.vm(id).releases].filter(([, commit]) => commit === NEW).map(([name]) => name).sort().at(-1) as string;
};

const ops = (fleet: FakeFleet, id: string): string[] => fleet.of(id).filter((c) => c.op !== 'extendTo').map((c) => c.op);

describe('all-at-once', () => {
  test('(a) no VM flips before every VM sealed its release, and flip_skew_ms is the spread of flipped_at', async () => {
    // Catches: flipping a VM as soon as its own prepare ends (before the slow vm02 sealed).
    const slow = deferred();
    const fleet = fleetOf({ vm02: onOld({ gates: { transfer: slow.promise } }), vm03: onOld({ delays: { flip: 40 } }) });
    const config = fleetConfig(IDS);
    const running = releaseFleet(releaseCtx(config, fleet), config.vms);
    await fleet.until((calls) => ['vm01', 'vm03'].every((id) => calls.some((c) => c.vm === id && c.op === 'seal')) && calls.some((c) => c.vm === 'vm02' && c.op === 'transfer'));
    await new Promise((r) => setTimeout(r, 30));
    expect(fleet.calls.filter((c) => c.op === 'flip')).toEqual([]);
    slow.resolve();
    const outcome = await running;

    const seals = fleet.calls.filter((c) => c.op === 'seal');
    const flips = fleet.calls.filter((c) => c.op === 'flip');
    expect(seals.map((c) => c.vm).sort()).toEqual(IDS);
    expect(flips.map((c) => c.vm).sort()).toEqual(IDS);
    expect(Math.min(...flips.map((c) => c.seq))).toBeGreaterThan(Math.max(...seals.map((c) => c.seq)));
    // The slow VM sealed last: the others waited for it.
    expect(seals.at(-1)?.vm).toBe('vm02');

    const rows = rowsById(outcome.vms);
    for (const id of IDS) {
      const release = sealedRelease(fleet, id);
      expect(fleet.of(id, 'flip').map((c) => c.args[1])).toEqual([release]);
      expect(rows[id]).toMatchObject({ action: 'deploy', result: 'success', error: null, verified: true, state: 'behind', rev_before: OLD, rev_after: NEW, release, health: 'skipped', health_output: null, files_changed: 3, bytes_sent: 1234 });
      expect(fleet.vm(id).live).toBe(release);
    }
    const staged = IDS.map((id) => Date.parse(rows[id].staged_at as string));
    const flipped = IDS.map((id) => Date.parse(rows[id].flipped_at as string));
    expect([...staged, ...flipped].every(Number.isFinite)).toBe(true);
    expect(Math.max(...staged)).toBeLessThanOrEqual(Math.min(...flipped));
    expect(outcome.flip_skew_ms).toBe(Math.max(...flipped) - Math.min(...flipped));
    // vm03's flip answers 40 ms late: the skew shows it.
    expect(outcome.flip_skew_ms).toBeGreaterThanOrEqual(30);
    expect(outcome.rollout).toEqual({ strategy: 'all-at-once', batches: [IDS], halted: false, halted_reason: null });
    expect(outcome.vms.map((r) => r.id)).toEqual(IDS);
    expectClean(fleet);
  });

  test('(a) the phases run in order on each VM: lock, stage, transfer, seal, renew, flip, verify, prune, unlock, close', async () => {
    const fleet = fleetOf({});
    await releaseFleet(releaseCtx(fleetConfig(IDS), fleet), fleetConfig(IDS).vms);
    for (const id of IDS) expect(ops(fleet, id)).toEqual(['open', 'begin', 'stage', 'transfer', 'seal', 'renew', 'flip', 'probe', 'prune', 'unlock', 'close']);
    expectClean(fleet);
  });

  test('(b) a stage failure with max_failed 0: nobody flips; the staged VMs are skipped/rollout_halted, unlocked, still on their release', async () => {
    // Catches: counting only flip-phase failures against max_failed, or flipping the staged VMs anyway.
    const fleet = fleetOf({ vm02: onOld({ failures: { stage: [new VmSyncError('storage_full', 'No space left on device')] } }) });
    const config = fleetConfig(IDS, { rollout: ['max_failed: 0'] });
    const outcome = await releaseFleet(releaseCtx(config, fleet), config.vms);
    const rows = rowsById(outcome.vms);

    expect(fleet.calls.filter((c) => c.op === 'flip')).toEqual([]);
    expect(rows.vm02).toMatchObject({ result: 'failed', error: { code: 'storage_full' }, staged_at: null, flipped_at: null, rev_after: OLD });
    for (const id of ['vm01', 'vm03']) {
      expect(rows[id]).toMatchObject({ action: 'deploy', result: 'skipped', error: { code: 'rollout_halted' }, flipped_at: null, rev_before: OLD, rev_after: OLD, verified: false });
      expect(rows[id].staged_at).not.toBeNull();
      // It serves its old release, with the new one staged (named in the message).
      const staged = sealedRelease(fleet, id);
      expect(fleet.vm(id).live).toBe(kept(OLD, 2).name);
      expect(rows[id].error?.message).toContain(staged);
      expect(fleet.of(id, 'unlock')).toHaveLength(1);
    }
    expect(outcome.rollout.halted).toBe(true);
    expect(outcome.rollout.halted_reason).toMatch(/1 of 3/);
    expect(outcome.flip_skew_ms).toBeNull();
    expectClean(fleet);
  });

  test('the tree is asked for only when a VM needs it; when it is refused (secrets), those VMs fail and get nothing', async () => {
    // Catches: exporting (and scanning) for a run whose VMs are all on the commit, or transferring after the gate said no.
    const upToDate = fleetOf({ vm01: { releases: [kept(NEW, 1)] }, vm02: { releases: [kept(NEW, 1)] }, vm03: { releases: [kept(NEW, 1)] } });
    let asked = 0;
    const config = fleetConfig(IDS);
    await releaseFleet(releaseCtx(config, upToDate, { tree: async () => ((asked += 1), { dir: '/tmp/x', notes: [] }) }), config.vms);
    expect(asked).toBe(0);

    const mixed = fleetOf({ vm01: { releases: [kept(NEW, 1)] } });
    const outcome = await releaseFleet(
      releaseCtx(fleetConfig(IDS, { rollout: ['max_failed: "100%"'] }), mixed, {
        tree: async () => {
          asked += 1;
          throw new VmSyncError('secrets_found', '1 possible secret(s): nothing was sent to this VM');
        },
      }),
      config.vms,
    );
    const rows = rowsById(outcome.vms);
    expect(asked).toBeGreaterThan(0);
    expect(rows.vm01).toMatchObject({ action: 'none', result: 'success' });
    for (const id of ['vm02', 'vm03']) {
      expect(rows[id]).toMatchObject({ result: 'failed', error: { code: 'secrets_found' }, rev_after: OLD });
      // Not even staged: a blocked deploy leaves no partial release behind.
      expect(mixed.of(id, 'stage')).toEqual([]);
      expect(mixed.of(id, 'transfer')).toEqual([]);
      expect(mixed.of(id, 'flip')).toEqual([]);
    }
    expectClean(mixed);
  });

  test('the VMs lock while the tree is made ready (the scan), and stage only once it is', async () => {
    // Catches: staging or sending before the scan passed, or waiting for the scan before connecting.
    const scan = deferred();
    const fleet = fleetOf({});
    const config = fleetConfig(IDS);
    const running = releaseFleet(releaseCtx(config, fleet, { tree: async () => (await scan.promise, { dir: '/tmp/x', notes: [] }) }), config.vms);
    await fleet.until((calls) => IDS.every((id) => calls.some((c) => c.vm === id && c.op === 'begin')));
    await new Promise((r) => setTimeout(r, 30));
    for (const id of IDS) expect([id, ops(fleet, id)]).toEqual([id, ['open', 'begin']]);
    scan.resolve();
    const outcome = await running;
    for (const id of IDS) expect([id, ops(fleet, id)]).toEqual([id, ['open', 'begin', 'stage', 'transfer', 'seal', 'renew', 'flip', 'probe', 'prune', 'unlock', 'close']]);
    expect(outcome.vms.map((r) => r.result)).toEqual(IDS.map(() => 'success'));
    expectClean(fleet);
  });

  test("the wait for the tree (the scan) is the run's, not the VM's: its budget stops meanwhile, its lock and session cover the wait", async () => {
    // Catches: a scan longer than sync.timeout_s timing out VMs that only waited for it, or a lock that can expire during the wait.
    const fleet = fleetOf({}, ['vm01']);
    const config = fleetConfig(['vm01'], { sync: ['timeout_s: 5'] });
    const started = Date.now();
    const outcome = await releaseFleet(
      releaseCtx(config, fleet, { treeWaitS: 60, tree: async () => (await new Promise((r) => setTimeout(r, 400)), { dir: '/tmp/x', notes: [] }) }),
      config.vms,
    );
    expect(outcome.vms[0].result).toBe('success');
    const [openDeadline, sessionS] = fleet.of('vm01', 'open')[0].args as [number, number];
    // The VM side (lock deadline, step timeouts) first covers 5 s of its own plus up to 60 s of waiting.
    expect(openDeadline - started).toBeGreaterThanOrEqual(65_000 - 100);
    expect(sessionS).toBe(sessionBudgetS(config, 1, 60));
    expect(sessionS).toBeGreaterThan(sessionBudgetS(config, 1, 0));
    // Once the tree is there: 5 s of the VM's own time, from where it stopped (at least the 400 ms waited later).
    const [firstExtend] = fleet.of('vm01', 'extendTo').map((c) => c.args[0] as number);
    expect(firstExtend - started).toBeGreaterThanOrEqual(5_400 - 50);
    expect(firstExtend - started).toBeLessThan(5_400 + 1_000);
    expectClean(fleet);
  });

  test('a wait for the tree longer than the lock foresaw (treeWaitS) renews the lock before staging; a shorter one does not', async () => {
    // Catches: staging under a lock whose deadline the wait may have passed, or a round trip on every deploy.
    const slowTree = async (): Promise<{ dir: string; notes: string[] }> => (await new Promise((r) => setTimeout(r, 1100)), { dir: '/tmp/x', notes: [] });
    const config = fleetConfig(['vm01']);
    const outlasted = fleetOf({}, ['vm01']);
    await releaseFleet(releaseCtx(config, outlasted, { treeWaitS: 0, tree: slowTree }), config.vms);
    expect(ops(outlasted, 'vm01').slice(0, 4)).toEqual(['open', 'begin', 'renew', 'stage']);
    const covered = fleetOf({}, ['vm01']);
    await releaseFleet(releaseCtx(config, covered, { treeWaitS: 60, tree: slowTree }), config.vms);
    expect(ops(covered, 'vm01').slice(0, 3)).toEqual(['open', 'begin', 'stage']);
    expectClean(outlasted);
    expectClean(covered);
  });

  test('a refused tree also stops a VM that would flip to a release staged earlier (no transfer needed)', async () => {
    // Catches: a VM that needs no transfer flipping although the scan of the commit blocked the deploy.
    const fleet = fleetOf({ vm01: { releases: [kept(OLD, 1), kept(NEW, 2)], live: kept(OLD, 1).name } }, ['vm01']);
    const config = fleetConfig(['vm01']);
    const outcome = await releaseFleet(
      releaseCtx(config, fleet, {
        tree: async () => {
          throw new VmSyncError('secrets_found', '1 possible secret: nothing was sent to this VM');
        },
      }),
      config.vms,
    );
    expect(outcome.vms[0]).toMatchObject({ result: 'failed', error: { code: 'secrets_found' }, rev_after: OLD });
    expect(fleet.of('vm01', 'flip')).toEqual([]);
    expect(fleet.vm('vm01').live).toBe(kept(OLD, 1).name);
    expectClean(fleet);
  });

  test('in place, a refused tree stops the whole fleet before the first batch: every row says why, none is halted', async () => {
    // Catches: in-place VMs (whose transfer is the flip) failing one batch at a time, the rest reported rollout_halted.
    const fleet = fleetOf({});
    const config = fleetConfig(IDS, { repository: ['layout: in-place'], rollout: ['strategy: rolling', 'batch_size: 1'] });
    const outcome = await releaseFleet(
      releaseCtx(config, fleet, {
        tree: async () => {
          throw new VmSyncError('secrets_found', '1 possible secret: nothing was sent to this VM');
        },
      }),
      config.vms,
    );
    expect(outcome.vms.map((r) => [r.id, r.result, r.error?.code])).toEqual(IDS.map((id) => [id, 'failed', 'secrets_found']));
    expect(fleet.calls.filter((c) => c.op === 'inPlaceBegin' || c.op === 'transfer')).toEqual([]);
    expect(outcome.rollout.halted).toBe(false);
    expectClean(fleet);
  });

  test('(b) the same failure with max_failed 1: the others flip', async () => {
    const fleet = fleetOf({ vm02: onOld({ failures: { stage: [new VmSyncError('storage_full', 'No space left on device')] } }) });
    const config = fleetConfig(IDS, { rollout: ['max_failed: 1'] });
    const outcome = await releaseFleet(releaseCtx(config, fleet), config.vms);
    const rows = rowsById(outcome.vms);
    expect(fleet.calls.filter((c) => c.op === 'flip').map((c) => c.vm)).toEqual(expect.arrayContaining(['vm01', 'vm03']));
    expect(fleet.of('vm02', 'flip')).toEqual([]);
    expect(rows.vm01).toMatchObject({ result: 'success', rev_after: NEW });
    expect(rows.vm03).toMatchObject({ result: 'success', rev_after: NEW });
    expect(rows.vm02).toMatchObject({ result: 'failed', error: { code: 'storage_full' } });
    expect(outcome.rollout).toMatchObject({ halted: false, batches: [['vm01', 'vm03']] });
    expectClean(fleet);
  });

  test('(b) "50%" of 3 tolerates 1 failure, not 2', async () => {
    const failing = onOld({ failures: { transfer: [new VmSyncError('rsync_failed', 'rsync exited 23')] } });
    const one = fleetOf({ vm01: failing });
    const config = fleetConfig(IDS, { rollout: ['max_failed: "50%"'] });
    expect((await releaseFleet(releaseCtx(config, one), config.vms)).rollout.halted).toBe(false);
    const two = fleetOf({ vm01: failing, vm03: onOld({ failures: { transfer: [new VmSyncError('rsync_failed', 'rsync exited 23')] } }) });
    const outcome = await releaseFleet(releaseCtx(config, two), config.vms);
    expect(outcome.rollout.halted).toBe(true);
    expect(rowsById(outcome.vms).vm02).toMatchObject({ result: 'skipped', error: { code: 'rollout_halted' } });
    expect(two.of('vm02', 'flip')).toEqual([]);
    expectClean(one);
    expectClean(two);
  });
});

describe('rolling', () => {
  test('(c) batch_size 1, vm02 unhealthy: flipped back to its previous release, the rollout halts before vm03', async () => {
    // Catches: no revert (vm02 flipped once), going on to vm03 after a failed batch, or flipping vm02 before vm01's batch finished.
    const fleet = fleetOf({ vm02: onOld({ health: [{ exit: 1, output: 'GET /health: 503 Service Unavailable' }] }) });
    const config = fleetConfig(IDS, { rollout: ['strategy: rolling', 'batch_size: 1', 'max_failed: 0', 'health_command: curl -fsS localhost/health', 'health_timeout_s: 30'] });
    const outcome = await releaseFleet(releaseCtx(config, fleet), config.vms);
    const rows = rowsById(outcome.vms);
    const previous = kept(OLD, 2).name;

    const vm02Release = sealedRelease(fleet, 'vm02');
    expect(fleet.of('vm02', 'flip').map((c) => c.args[1])).toEqual([vm02Release, previous]);
    // The deploy's flip rejects nothing; the revert rejects the unhealthy release, so a rollback never goes back to it.
    expect(fleet.of('vm02', 'flip').map((c) => c.args[2] ?? false)).toEqual([false, true]);
    expect([...fleet.vm('vm02').rejected]).toEqual([vm02Release]);
    expect(fleet.of('vm02', 'health').map((c) => c.args)).toEqual([[OWNER.token, NEW, 'curl -fsS localhost/health', 30]]);
    expect(fleet.vm('vm02').live).toBe(previous);
    expect(rows.vm02).toMatchObject({ result: 'failed', error: { code: 'health_failed' }, health: 'failed', health_output: 'GET /health: 503 Service Unavailable', rev_after: OLD, release: previous, verified: false });
    expect(rows.vm02.flipped_at).not.toBeNull();
    expect(rows.vm02.error?.message).toContain('exited 1');
    expect(rows.vm02.error?.message).toContain(previous);
    // The revert is read back through the live path before the unlock.
    const vm02 = ops(fleet, 'vm02');
    expect(vm02.slice(vm02.indexOf('health'))).toEqual(['health', 'flip', 'probe', 'stopInterrupted', 'probe', 'unlock', 'close']);

    expect(rows.vm01).toMatchObject({ result: 'success', health: 'passed', rev_after: NEW });
    expect(fleet.of('vm03', 'flip')).toEqual([]);
    expect(fleet.of('vm03', 'health')).toEqual([]);
    expect(fleet.of('vm03', 'unlock')).toHaveLength(1);
    expect(rows.vm03).toMatchObject({ result: 'skipped', error: { code: 'rollout_halted' }, flipped_at: null, rev_after: OLD });
    expect(rows.vm03.staged_at).not.toBeNull();
    expect(fleet.vm('vm03').live).toBe(previous);

    // Batch by batch: vm01 released its lock before vm02 flipped.
    const vm01Unlock = fleet.of('vm01', 'unlock')[0].seq;
    expect(fleet.of('vm02', 'flip')[0].seq).toBeGreaterThan(vm01Unlock);
    expect(outcome.rollout).toMatchObject({ strategy: 'rolling', batches: [['vm01'], ['vm02'], ['vm03']], halted: true });
    expect(outcome.rollout.halted_reason).toMatch(/1 of 3/);
    expectClean(fleet);
  });

  test('(c) a health command that times out is unhealthy too, and is reverted', async () => {
    const fleet = fleetOf({ vm01: onOld({ health: [{ exit: null, output: 'still starting' }] }) });
    const config = fleetConfig(['vm01'], { rollout: ['strategy: rolling', 'health_command: ./check', 'health_timeout_s: 5'] });
    const outcome = await releaseFleet(releaseCtx(config, fleet), config.vms);
    expect(outcome.vms[0]).toMatchObject({ result: 'failed', error: { code: 'health_failed' }, health: 'failed', health_output: 'still starting', rev_after: OLD });
    expect(outcome.vms[0].error?.message).toContain('health_timeout_s=5');
    expect(fleet.of('vm01', 'flip')).toHaveLength(2);
    expectClean(fleet);
  });

  test('(d) revert_unhealthy false: flipped once, health_failed, still on the new release', async () => {
    // Catches: reverting although revert_unhealthy is false.
    const fleet = fleetOf({ vm01: onOld({ health: [{ exit: 3, output: 'degraded' }] }) });
    const config = fleetConfig(['vm01', 'vm02'], { rollout: ['strategy: rolling', 'batch_size: 1', 'max_failed: 1', 'health_command: ./check', 'revert_unhealthy: false'] });
    const outcome = await releaseFleet(releaseCtx(config, fleet), config.vms);
    const rows = rowsById(outcome.vms);
    const release = sealedRelease(fleet, 'vm01');
    expect(fleet.of('vm01', 'flip').map((c) => c.args[1])).toEqual([release]);
    expect(fleet.vm('vm01').live).toBe(release);
    expect(rows.vm01).toMatchObject({ result: 'failed', error: { code: 'health_failed' }, health: 'failed', health_output: 'degraded', rev_after: NEW, release });
    expect(rows.vm01.error?.message).toContain('revert_unhealthy is false');
    // max_failed 1: vm02 goes on.
    expect(rows.vm02).toMatchObject({ result: 'success', health: 'passed' });
    expect(outcome.rollout.halted).toBe(false);
    expectClean(fleet);
  });

  test('(d) an unhealthy VM that had no release of vm-sync stays on the new one', async () => {
    const fleet = fleetOf({ vm01: { releases: [], live: null, health: [{ exit: 1, output: 'no' }] } }, ['vm01']);
    const config = fleetConfig(['vm01'], { rollout: ['strategy: rolling', 'health_command: ./check'] });
    const outcome = await releaseFleet(releaseCtx(config, fleet), config.vms);
    expect(outcome.vms[0]).toMatchObject({ state: 'fresh', result: 'failed', error: { code: 'health_failed' }, rev_before: null, rev_after: NEW });
    expect(outcome.vms[0].error?.message).toContain('no release of vm-sync before');
    expect(fleet.of('vm01', 'flip')).toHaveLength(1);
    expectClean(fleet);
  });

  test('rolling batches of 2 flip in config order, each batch after the previous one finished', async () => {
    const ids = ['vm05', 'vm01', 'vm04', 'vm02', 'vm03'];
    const fleet = fleetOf({}, ids);
    const config = fleetConfig(ids, { rollout: ['strategy: rolling', 'batch_size: 2'] });
    const outcome = await releaseFleet(releaseCtx(config, fleet), config.vms);
    expect(outcome.rollout.batches).toEqual([['vm05', 'vm01'], ['vm04', 'vm02'], ['vm03']]);
    const flipSeq = (id: string): number => fleet.of(id, 'flip')[0].seq;
    const unlockSeq = (id: string): number => fleet.of(id, 'unlock')[0].seq;
    expect(Math.min(flipSeq('vm04'), flipSeq('vm02'))).toBeGreaterThan(Math.max(unlockSeq('vm05'), unlockSeq('vm01')));
    expect(flipSeq('vm03')).toBeGreaterThan(Math.max(unlockSeq('vm04'), unlockSeq('vm02')));
    expect(outcome.vms.every((r) => r.result === 'success')).toBe(true);
    expectClean(fleet);
  });
});

describe('prepare decisions', () => {
  test('(e) a VM already on the commit: action none, nothing staged or flipped, its lock released by the VM', async () => {
    // Catches: staging and flipping a VM that already serves the commit.
    const fleet = fleetOf({ vm02: { releases: [kept(OLD, 2), kept(NEW, 3)] } });
    const config = fleetConfig(IDS);
    const outcome = await releaseFleet(releaseCtx(config, fleet), config.vms);
    const rows = rowsById(outcome.vms);
    expect(rows.vm02).toMatchObject({ action: 'none', result: 'success', state: 'up-to-date', verified: true, staged_at: null, flipped_at: null, rev_after: NEW, release: kept(NEW, 3).name, error: null });
    expect(ops(fleet, 'vm02')).toEqual(['open', 'begin', 'close']);
    expect(outcome.rollout.batches).toEqual([['vm01', 'vm03']]);
    expect(rows.vm01.result).toBe('success');
    expect(rows.vm03.result).toBe('success');
    expectClean(fleet);
  });

  test('(e) up to date but the lock was kept at begin: released by this run, once', async () => {
    const fleet = fleetOf({ vm01: { releases: [kept(NEW, 3)], keepsLockAtBegin: true } }, ['vm01']);
    const config = fleetConfig(['vm01']);
    const outcome = await releaseFleet(releaseCtx(config, fleet), config.vms);
    expect(outcome.vms[0]).toMatchObject({ action: 'none', result: 'success' });
    expect(ops(fleet, 'vm01')).toEqual(['open', 'begin', 'unlock', 'close']);
    expectClean(fleet);
  });

  test('(f) a VM ahead of the commit is refused, unlocked, and counts against max_failed 0', async () => {
    // Catches: a refused VM not counted as failed (result refused is not success).
    const fleet = fleetOf({ vm03: { releases: [kept(OLD, 2), kept(AHEAD, 3)] } });
    const config = fleetConfig(IDS, { rollout: ['max_failed: 0'] });
    const outcome = await releaseFleet(releaseCtx(config, fleet), config.vms);
    const rows = rowsById(outcome.vms);
    expect(rows.vm03).toMatchObject({ action: 'refuse', result: 'refused', state: 'ahead', error: { code: 'refused_ahead' }, rev_after: AHEAD, staged_at: null });
    expect(fleet.of('vm03', 'unlock')).toHaveLength(1);
    expect(fleet.of('vm03', 'stage')).toEqual([]);
    expect(fleet.calls.filter((c) => c.op === 'flip')).toEqual([]);
    for (const id of ['vm01', 'vm02']) expect(rows[id]).toMatchObject({ result: 'skipped', error: { code: 'rollout_halted' } });
    expect(outcome.rollout.halted).toBe(true);
    expectClean(fleet);
  });

  test('(f) with max_failed 1 the others flip past the refused VM', async () => {
    const fleet = fleetOf({ vm03: { releases: [kept(AHEAD, 3)] } });
    const config = fleetConfig(IDS, { rollout: ['max_failed: 1'] });
    const outcome = await releaseFleet(releaseCtx(config, fleet), config.vms);
    const rows = rowsById(outcome.vms);
    expect(rows.vm03.result).toBe('refused');
    expect(rows.vm01.result).toBe('success');
    expect(rows.vm02.result).toBe('success');
    expectClean(fleet);
  });

  test('--force deploys over a VM ahead of the commit', async () => {
    const fleet = fleetOf({ vm01: { releases: [kept(AHEAD, 3)] } }, ['vm01']);
    const config = fleetConfig(['vm01']);
    const outcome = await releaseFleet(releaseCtx(config, fleet, { force: true }), config.vms);
    expect(outcome.vms[0]).toMatchObject({ action: 'deploy', result: 'success', state: 'ahead', rev_before: AHEAD, rev_after: NEW });
    expectClean(fleet);
  });

  test('a sentinel that is a symlink is refused without --force, unlocked', async () => {
    const fleet = fleetOf({ vm01: onOld({ sentinel: 'symlink' }) }, ['vm01']);
    const config = fleetConfig(['vm01']);
    const outcome = await releaseFleet(releaseCtx(config, fleet), config.vms);
    expect(outcome.vms[0]).toMatchObject({ result: 'failed', error: { code: 'sentinel_unreadable' } });
    expect(fleet.of('vm01', 'stage')).toEqual([]);
    expect(fleet.of('vm01', 'unlock')).toHaveLength(1);
    expectClean(fleet);
  });

  test('a VM locked by another run fails with locked; its lock is left alone', async () => {
    const record = 'someone-else pid=99';
    const fleet = fleetOf({ vm02: onOld({ lockedBy: record }) });
    const config = fleetConfig(IDS, { rollout: ['max_failed: 1'] });
    const outcome = await releaseFleet(releaseCtx(config, fleet), config.vms);
    expect(rowsById(outcome.vms).vm02).toMatchObject({ result: 'failed', error: { code: 'locked' }, rev_before: OLD, rev_after: OLD });
    expect(fleet.vm('vm02').lock).toBe(record);
    expect(fleet.of('vm02', 'stage')).toEqual([]);
    expectClean(fleet);
  });
});

describe('retries and failures', () => {
  test('(g) an unreachable transfer is retried on a new port; the failed attempt\'s port is unlocked and closed', async () => {
    // Catches: retrying on the same port, or leaving the first attempt's lock (the retry would then find it held).
    const fleet = fleetOf({ vm02: onOld({ failures: { transfer: [new VmSyncError('unreachable', 'connection reset by peer')] } }) });
    const config = fleetConfig(IDS, { sync: ['retries: 2'] });
    const outcome = await releaseFleet(releaseCtx(config, fleet), config.vms);
    const row = rowsById(outcome.vms).vm02;
    expect(fleet.ports('vm02')).toBe(2);
    expect(fleet.of('vm02').filter((c) => c.port === 0 && c.op !== 'extendTo').map((c) => c.op)).toEqual(['open', 'begin', 'stage', 'transfer', 'stopInterrupted', 'probe', 'unlock', 'close']);
    // The first port is closed before the second is opened.
    const firstClose = fleet.of('vm02', 'close').find((c) => c.port === 0);
    const secondOpen = fleet.of('vm02', 'open').find((c) => c.port === 1);
    expect(firstClose?.seq).toBeLessThan(secondOpen?.seq ?? 0);
    expect(fleet.of('vm02', 'flip').map((c) => c.port)).toEqual([1]);
    expect(row).toMatchObject({ result: 'success', rev_after: NEW, error: null });
    expect(row.notes).toEqual(expect.arrayContaining([expect.stringMatching(/^attempt 1 failed: unreachable: connection reset by peer/)]));
    expectClean(fleet);
  });

  test('(g) retries exhausted: failed unreachable after retries + 1 attempts, every port unlocked and closed', async () => {
    const down = (): VmSyncError => new VmSyncError('unreachable', 'connection reset by peer');
    const fleet = fleetOf({ vm01: onOld({ failures: { transfer: [down(), down(), down()] } }) }, ['vm01']);
    const config = fleetConfig(['vm01'], { sync: ['retries: 2'] });
    const outcome = await releaseFleet(releaseCtx(config, fleet), config.vms);
    expect(fleet.ports('vm01')).toBe(3);
    expect(outcome.vms[0]).toMatchObject({ result: 'failed', error: { code: 'unreachable' }, rev_after: OLD });
    expect(outcome.vms[0].error?.message).toContain('3 attempts');
    expect(fleet.of('vm01', 'unlock')).toHaveLength(3);
    expectClean(fleet);
  });

  test('(g) a failure that is not the network is not retried', async () => {
    const fleet = fleetOf({ vm01: onOld({ failures: { transfer: [new VmSyncError('rsync_failed', 'rsync exited 23')] } }) }, ['vm01']);
    const config = fleetConfig(['vm01'], { sync: ['retries: 3'] });
    const outcome = await releaseFleet(releaseCtx(config, fleet), config.vms);
    expect(fleet.ports('vm01')).toBe(1);
    expect(outcome.vms[0]).toMatchObject({ result: 'failed', error: { code: 'rsync_failed' } });
    expectClean(fleet);
  });

  test('a connection that cannot be opened is retried, and fails with its code', async () => {
    const fleet = fleetOf({ vm01: onOld({ failures: { open: [new VmSyncError('unreachable', 'connect ETIMEDOUT'), new VmSyncError('unreachable', 'connect ETIMEDOUT')] } }) }, ['vm01']);
    const config = fleetConfig(['vm01'], { sync: ['retries: 1'] });
    const outcome = await releaseFleet(releaseCtx(config, fleet), config.vms);
    expect(fleet.ports('vm01')).toBe(2);
    expect(outcome.vms[0]).toMatchObject({ result: 'failed', error: { code: 'unreachable' } });
    expect(fleet.calls.filter((c) => c.op !== 'open')).toEqual([]);
    expectClean(fleet);
  });

  test('a flip that fails: the VM is failed, read back, unlocked; the others are unaffected', async () => {
    const fleet = fleetOf({ vm02: onOld({ failures: { flip: [new VmSyncError('permission_denied', 'cannot rename')] } }) });
    const config = fleetConfig(IDS);
    const outcome = await releaseFleet(releaseCtx(config, fleet), config.vms);
    const rows = rowsById(outcome.vms);
    expect(rows.vm02).toMatchObject({ result: 'failed', error: { code: 'permission_denied' }, rev_after: OLD, flipped_at: null });
    expect(rows.vm01.result).toBe('success');
    expect(rows.vm03.result).toBe('success');
    expect(outcome.flip_skew_ms).toBe(Math.abs(Date.parse(rows.vm01.flipped_at as string) - Date.parse(rows.vm03.flipped_at as string)));
    expectClean(fleet);
  });

  test('a verify mismatch after the flip is failed verify_mismatch', async () => {
    const fleet = fleetOf({ vm01: onOld() }, ['vm01']);
    // Something else rewrote the live release: the probe after the flip reads OLD.
    const vm = fleet.vm('vm01');
    const realProbe = vm.probe.bind(vm);
    let flips = 0;
    vm.probe = () => {
      const p = realProbe();
      return flips > 0 ? { ...p, rev: OLD } : p;
    };
    const config = fleetConfig(['vm01']);
    const openPort = fleet.openPort;
    const outcome = await releaseFleet(
      releaseCtx(config, fleet, {
        openPort: async (v, o) => {
          const port = await openPort(v, o);
          const flip = port.flip.bind(port);
          port.flip = async (t, r) => {
            const out = await flip(t, r);
            flips++;
            return out;
          };
          return port;
        },
      }),
      config.vms,
    );
    expect(outcome.vms[0]).toMatchObject({ result: 'failed', error: { code: 'verify_mismatch' }, verified: false });
    expectClean(fleet);
  });

  test('vmStarted and vmFinished are announced once per VM, rows final', async () => {
    const fleet = fleetOf({ vm02: onOld({ failures: { stage: [new VmSyncError('storage_full', 'full')] } }) });
    const config = fleetConfig(IDS);
    const events = recordingEvents();
    const outcome: ReleaseOutcome = await releaseFleet(releaseCtx(config, fleet, { events }), config.vms);
    expect(events.finished.map((r) => r.id).sort()).toEqual(IDS);
    for (const row of outcome.vms) expect(events.finished.find((r) => r.id === row.id)).toEqual(row);
    expectClean(fleet);
  });
});

describe('more edges', () => {
  test('a run cancelled during prepare flips nobody; the staged VMs are interrupted and unlocked', async () => {
    // Catches: flipping after a cancellation (the signal checked only inside steps).
    const slow = deferred();
    const controller = new AbortController();
    const fleet = fleetOf({ vm02: onOld({ gates: { transfer: slow.promise } }) });
    const config = fleetConfig(IDS);
    const running = releaseFleet(releaseCtx(config, fleet, { signal: controller.signal }), config.vms);
    await fleet.until((calls) => calls.some((c) => c.vm === 'vm02' && c.op === 'transfer'));
    controller.abort();
    slow.resolve();
    const outcome = await running;
    expect(fleet.calls.filter((c) => c.op === 'flip')).toEqual([]);
    for (const row of outcome.vms) expect(row).toMatchObject({ result: 'failed', error: { code: 'interrupted' }, rev_after: OLD, flipped_at: null });
    for (const id of IDS) expect(fleet.vm(id).live).toBe(kept(OLD, 2).name);
    expectClean(fleet);
  });

  test('a run cancelled while a later batch renews its locks: that VM is interrupted (not timeout), unflipped and unlocked', async () => {
    // Catches: the renew step reporting the cancelled session's `timeout` as the row's code.
    const controller = new AbortController();
    const cancelled = new VmSyncError('timeout', 'renew on vm02 was cancelled');
    const fleet = fleetOf({ vm02: onOld({ delays: { renew: 40 }, failures: { renew: [null, cancelled] } }) });
    const config = fleetConfig(IDS, { rollout: ['strategy: rolling', 'batch_size: 1', 'max_failed: "100%"'] });
    const running = releaseFleet(releaseCtx(config, fleet, { signal: controller.signal }), config.vms);
    await fleet.until((calls) => calls.filter((c) => c.vm === 'vm02' && c.op === 'renew').length === 2);
    controller.abort();
    const outcome = await running;
    const row = outcome.vms.find((r) => r.id === 'vm02');
    expect(row).toMatchObject({ result: 'failed', error: { code: 'interrupted' }, rev_after: OLD, flipped_at: null });
    expect(fleet.of('vm02', 'flip')).toEqual([]);
    expect(outcome.vms.find((r) => r.id === 'vm01')).toMatchObject({ result: 'success', rev_after: NEW });
    expectClean(fleet);
  });

  test('a begin whose answer is lost after the VM took the lock: the lock is released before the retry', async () => {
    const fleet = fleetOf({ vm01: onOld({ lostAnswers: { begin: [new VmSyncError('unreachable', 'channel closed')] } }) }, ['vm01']);
    const config = fleetConfig(['vm01'], { sync: ['retries: 1'] });
    const outcome = await releaseFleet(releaseCtx(config, fleet), config.vms);
    expect(fleet.ports('vm01')).toBe(2);
    expect(outcome.vms[0]).toMatchObject({ result: 'success', rev_after: NEW });
    expectClean(fleet);
  });

  test('a sentinel holding something that is not a commit hash: sentinel_unreadable, unlocked, nothing staged', async () => {
    const fleet = fleetOf({ vm01: { releases: [{ name: releaseName('x', new Date(Date.UTC(2026, 10, 1))), commit: 'hello world' }] } }, ['vm01']);
    const config = fleetConfig(['vm01']);
    const outcome = await releaseFleet(releaseCtx(config, fleet), config.vms);
    expect(outcome.vms[0]).toMatchObject({ result: 'failed', error: { code: 'sentinel_unreadable' } });
    expect(fleet.of('vm01', 'stage')).toEqual([]);
    expect(fleet.of('vm01', 'unlock')).toHaveLength(1);
    expectClean(fleet);
  });

  test('every VM already on the commit: no batch, no flip, skew null', async () => {
    const fleet = fleetOf({ vm01: { releases: [kept(NEW, 2)] }, vm02: { releases: [kept(NEW, 2)] } }, ['vm01', 'vm02']);
    const config = fleetConfig(['vm01', 'vm02'], { rollout: ['strategy: rolling'] });
    const outcome = await releaseFleet(releaseCtx(config, fleet), config.vms);
    expect(outcome.vms.map((r) => [r.action, r.result])).toEqual([['none', 'success'], ['none', 'success']]);
    expect(outcome.rollout).toEqual({ strategy: 'rolling', batches: [], halted: false, halted_reason: null });
    expect(outcome.flip_skew_ms).toBeNull();
    expectClean(fleet);
  });

  test('sync.concurrency 1: VMs are prepared one at a time, and still none flips before the last one sealed', async () => {
    const fleet = fleetOf({});
    const config = fleetConfig(IDS, { sync: ['concurrency: 1'] });
    await releaseFleet(releaseCtx(config, fleet), config.vms);
    const opens = fleet.calls.filter((c) => c.op === 'open');
    const seals = fleet.calls.filter((c) => c.op === 'seal');
    expect(opens.map((c) => c.vm)).toEqual(IDS);
    // vm02 is opened only after vm01 sealed, and so on.
    expect(opens[1].seq).toBeGreaterThan(seals[0].seq);
    expect(opens[2].seq).toBeGreaterThan(seals[1].seq);
    expect(Math.min(...fleet.calls.filter((c) => c.op === 'flip').map((c) => c.seq))).toBeGreaterThan(seals[2].seq);
    expectClean(fleet);
  });

  test('an unhealthy VM whose flip back fails: failed, still reported on the new release, unlocked', async () => {
    const fleet = fleetOf({ vm01: onOld({ health: [{ exit: 1, output: 'down' }], failures: { flip: [null, new VmSyncError('permission_denied', 'cannot rename')] } }) }, ['vm01']);
    const config = fleetConfig(['vm01'], { rollout: ['health_command: ./check'] });
    const outcome = await releaseFleet(releaseCtx(config, fleet), config.vms);
    const release = sealedRelease(fleet, 'vm01');
    expect(fleet.of('vm01', 'flip')).toHaveLength(2);
    expect(outcome.vms[0]).toMatchObject({ result: 'failed', health: 'failed', health_output: 'down', rev_after: NEW, release });
    expectClean(fleet);
  });

  test('post_sync_command runs after the flip, in the live release; its failure is post_sync_failed and unlocks', async () => {
    const fleet = fleetOf({ vm02: onOld({ failures: { postSync: [new VmSyncError('post_sync_failed', 'exited 2')] } }) }, ['vm01', 'vm02']);
    const config = fleetConfig(['vm01', 'vm02'], { sync: ['post_sync_command: systemctl reload app'] });
    const outcome = await releaseFleet(releaseCtx(config, fleet), config.vms);
    const rows = rowsById(outcome.vms);
    expect(fleet.of('vm01', 'postSync').map((c) => c.args)).toEqual([[OWNER.token, NEW, 'systemctl reload app']]);
    expect(fleet.of('vm01', 'postSync')[0].seq).toBeGreaterThan(fleet.of('vm01', 'flip')[0].seq);
    expect(rows.vm01.result).toBe('success');
    expect(rows.vm02).toMatchObject({ result: 'failed', error: { code: 'post_sync_failed' }, rev_after: NEW });
    expectClean(fleet);
  });

  test('a complete release of the commit staged by an earlier run is reused: nothing transferred or sealed, flipped to it', async () => {
    // Catches: re-sending a release that a halted rollout left staged, or flipping to the wrong one.
    const staged = kept(NEW, 2);
    const fleet = fleetOf({ vm01: { releases: [kept(OLD, 1), staged], live: kept(OLD, 1).name } }, ['vm01']);
    const config = fleetConfig(['vm01']);
    const outcome = await releaseFleet(releaseCtx(config, fleet), config.vms);
    // The survey came with the lock (begin): no stage step, nothing made on the VM.
    expect(ops(fleet, 'vm01')).toEqual(['open', 'begin', 'renew', 'flip', 'probe', 'prune', 'unlock', 'close']);
    expect(fleet.of('vm01', 'flip').map((c) => c.args[1])).toEqual([staged.name]);
    expect(outcome.vms[0]).toMatchObject({ action: 'deploy', result: 'success', rev_after: NEW, release: staged.name, files_changed: 0, bytes_sent: 0 });
    expect(outcome.vms[0].staged_at).not.toBeNull();
    expect(outcome.vms[0].notes.join('\n')).toContain(`reused the release ${staged.name}`);
    expectClean(fleet);
  });

  test('--force stages afresh even when a complete release of the commit is kept', async () => {
    const fleet = fleetOf({ vm01: { releases: [kept(OLD, 1), kept(NEW, 2)], live: kept(OLD, 1).name } }, ['vm01']);
    const config = fleetConfig(['vm01']);
    const outcome = await releaseFleet(releaseCtx(config, fleet, { force: true }), config.vms);
    expect(fleet.of('vm01', 'transfer')).toHaveLength(1);
    const sealed = fleet.of('vm01', 'seal');
    expect(sealed).toHaveLength(1);
    expect(fleet.of('vm01', 'flip').map((c) => c.args[1])).not.toEqual([kept(NEW, 2).name]);
    expect(outcome.vms[0]).toMatchObject({ result: 'success', rev_after: NEW });
    expectClean(fleet);
  });

  test('row.release is the release live at the end for a VM locked by another run (its probe showed it)', async () => {
    // Contract: "release": the release live at the end. The locked VM's probe named it.
    const fleet = fleetOf({ vm01: onOld({ lockedBy: 'someone-else' }) }, ['vm01']);
    const config = fleetConfig(['vm01']);
    const outcome = await releaseFleet(releaseCtx(config, fleet), config.vms);
    expect(outcome.vms[0]).toMatchObject({ error: { code: 'locked' }, rev_after: OLD, release: kept(OLD, 2).name });
  });
});

describe('rollbackFleet', () => {
  function rollbackCtx(config: Config, fleet: FakeFleet, to: string | null): RollbackContext {
    return { config, openPort: fleet.openPort, to, owner: OWNER, events: recordingEvents(), lockWaitS: 0 };
  }

  test('(i) flips each VM to its previous release, refuses no_release where there is none, unlocks', async () => {
    // Catches: rolling back to the newest kept release instead of the one before the live one.
    const r1 = kept(OLDER, 1);
    const r2 = kept(OLD, 2);
    const r3 = kept(NEW, 3);
    const fleet = fleetOf({ vm01: { releases: [r1, r2, r3] }, vm02: { releases: [r3] }, vm03: { releases: [r1, r2, r3], live: r2.name } });
    const config = fleetConfig(IDS);
    const rows = rowsById(await rollbackFleet(rollbackCtx(config, fleet, null), config.vms));

    // A plain rollback rejects the release it leaves (true): a second one never comes back to it.
    expect(fleet.of('vm01', 'flip').map((c) => c.args)).toEqual([[OWNER.token, r2.name, true]]);
    expect([...fleet.vm('vm01').rejected]).toEqual([r3.name]);
    expect(rows.vm01).toMatchObject({ action: 'rollback', result: 'success', rev_before: NEW, rev_after: OLD, release: r2.name, verified: true, error: null });
    expect(rows.vm01.flipped_at).not.toBeNull();
    expect(fleet.vm('vm01').live).toBe(r2.name);

    expect(fleet.of('vm03', 'flip').map((c) => c.args[1])).toEqual([r1.name]);
    expect(rows.vm03).toMatchObject({ result: 'success', rev_after: OLDER });

    expect(fleet.of('vm02', 'flip')).toEqual([]);
    expect(rows.vm02).toMatchObject({ action: 'rollback', result: 'failed', error: { code: 'no_release' }, rev_after: NEW, flipped_at: null });
    expect(rows.vm02.error?.message).toContain(`${NEW.slice(0, 12)} (${r3.name})`);
    expect(fleet.vm('vm02').live).toBe(r3.name);

    for (const id of IDS) {
      expect(fleet.of(id, 'unlock')).toHaveLength(1);
      for (const op of ['stage', 'transfer', 'seal', 'prune'] as const) expect(fleet.of(id, op)).toEqual([]);
    }
    expectClean(fleet);
  });

  test('(i) --to: the newest kept release of that commit; a VM already on it is action none', async () => {
    const a1 = kept(OLD, 1);
    const b = kept(NEW, 2);
    const a2 = kept(OLD, 3);
    const fleet = fleetOf({ vm01: { releases: [a1, a2, b], live: b.name }, vm02: { releases: [a1, b, a2] }, vm03: { releases: [b] } });
    const config = fleetConfig(IDS);
    const rows = rowsById(await rollbackFleet(rollbackCtx(config, fleet, OLD), config.vms));
    expect(fleet.of('vm01', 'flip').map((c) => c.args[1])).toEqual([a2.name]);
    expect(rows.vm01).toMatchObject({ result: 'success', rev_after: OLD, release: a2.name });
    expect(fleet.of('vm02', 'flip')).toEqual([]);
    expect(rows.vm02).toMatchObject({ action: 'none', result: 'success', rev_after: OLD, flipped_at: null, verified: true });
    expect(rows.vm03).toMatchObject({ result: 'failed', error: { code: 'no_release' } });
    expect(rows.vm03.error?.message).toContain(OLD.slice(0, 12));
    for (const id of IDS) expect(fleet.of(id, 'unlock')).toHaveLength(1);
    expectClean(fleet);
  });

  test('(i) a flip that fails during rollback: failed, read back, unlocked', async () => {
    const fleet = fleetOf({ vm01: { releases: [kept(OLD, 1), kept(NEW, 2)], failures: { flip: [new VmSyncError('permission_denied', 'cannot rename')] } } }, ['vm01']);
    const config = fleetConfig(['vm01']);
    const [row] = await rollbackFleet(rollbackCtx(config, fleet, null), config.vms);
    expect(row).toMatchObject({ result: 'failed', error: { code: 'permission_denied' }, rev_after: NEW });
    expect(fleet.of('vm01', 'unlock')).toHaveLength(1);
    expectClean(fleet);
  });

  test('(i) a VM locked by another run: locked, its lock left alone', async () => {
    const fleet = fleetOf({ vm01: { releases: [kept(OLD, 1), kept(NEW, 2)], lockedBy: 'other-run' } }, ['vm01']);
    const config = fleetConfig(['vm01']);
    const [row] = await rollbackFleet(rollbackCtx(config, fleet, null), config.vms);
    expect(row).toMatchObject({ result: 'failed', error: { code: 'locked' } });
    expect(fleet.vm('vm01').lock).toBe('other-run');
    expect(fleet.of('vm01', 'flip')).toEqual([]);
    expectClean(fleet);
  });

  test('(i) a refused rollback row still says which release is live (row.release)', async () => {
    // Contract: "release": the release live at the end. vm02 keeps only its live release and still serves it.
    const r3 = kept(NEW, 3);
    const fleet = fleetOf({ vm01: { releases: [r3] } }, ['vm01']);
    const config = fleetConfig(['vm01']);
    const [row] = await rollbackFleet(rollbackCtx(config, fleet, null), config.vms);
    expect(row).toMatchObject({ result: 'failed', error: { code: 'no_release' }, rev_after: NEW, release: r3.name });
  });

  test('(h) rollback: a begin whose answer is lost after the VM took the lock still releases that lock', async () => {
    // Catches: leaving this run's lock on the VM until its deadline (sync's prepare unlocks in the same case).
    const fleet = fleetOf({ vm01: { releases: [kept(OLD, 1), kept(NEW, 2)], lostAnswers: { begin: [new VmSyncError('unreachable', 'channel closed')] } } }, ['vm01']);
    const config = fleetConfig(['vm01']);
    const [row] = await rollbackFleet(rollbackCtx(config, fleet, null), config.vms);
    expect(row).toMatchObject({ result: 'failed', error: { code: 'unreachable' } });
    expect(fleet.of('vm01', 'flip')).toEqual([]);
    expectClean(fleet);
  });

  test('(i) in-place layout: no_release without connecting', async () => {
    const fleet = fleetOf({}, ['vm01']);
    const config = fleetConfig(['vm01'], { repository: ['layout: in-place'] });
    const [row] = await rollbackFleet(rollbackCtx(config, fleet, null), config.vms);
    expect(row).toMatchObject({ result: 'failed', error: { code: 'no_release' } });
    expect(fleet.calls).toEqual([]);
  });
});

describe('the stage survey with the lock', () => {
  test('asked of begin for the atomic layout with the shared paths; not in place, where nothing is staged', async () => {
    // Catches: a survey round trip after the scan (atomic), or survey work on in-place VMs that never stage.
    const atomic = fleetOf({}, ['vm01']);
    await releaseFleet(releaseCtx(fleetConfig(['vm01'], { repository: ['shared_paths: [logs, data/uploads]'] }), atomic), fleetConfig(['vm01']).vms);
    expect(atomic.of('vm01', 'begin')[0].args[1]).toMatchObject({ survey: { sharedPaths: ['logs', 'data/uploads'] } });
    const inPlace = fleetOf({}, ['vm01']);
    await releaseFleet(releaseCtx(fleetConfig(['vm01'], { repository: ['layout: in-place'] }), inPlace), fleetConfig(['vm01']).vms);
    expect(inPlace.of('vm01', 'begin')[0].args[1]).not.toHaveProperty('survey');
    expectClean(atomic);
    expectClean(inPlace);
  });
});

describe('the stream transfer: when it applies, and rsync where it cannot', () => {
  /** The build key of releases made with the test fleet's config (what a VM's completion marker records). */
  const KEY = buildKey(rsyncExcludes(fleetConfig(['vm01']), []), []);

  /** A stream source that records which bases were asked for. */
  function streamsOf(
    outcome: (base: string | null, vmHasZstd: boolean) => StreamOutcome = (base, vmHasZstd) => ({
      ok: true,
      stream: { base, codec: vmHasZstd ? 'zstd' : 'gzip', file: `/tmp/stream-${base ?? 'full'}.${vmHasZstd ? 'zstd' : 'gzip'}`, removals: 1, files: 2, bytes: 999 },
    }),
  ) {
    const asked: Array<string | null> = [];
    const zstd: boolean[] = [];
    return {
      asked,
      zstd,
      stream: async (base: string | null, vmHasZstd: boolean): Promise<StreamOutcome> => {
        asked.push(base);
        zstd.push(vmHasZstd);
        return outcome(base, vmHasZstd);
      },
    };
  }

  test('an intact live release: apply from its commit onto that release, no rsync; the row counts the stream', async () => {
    const fleet = fleetOf({ vm01: onOld({ stream: true, baseKey: KEY }) }, ['vm01']);
    const s = streamsOf();
    const config = fleetConfig(['vm01']);
    const outcome = await releaseFleet(releaseCtx(config, fleet, { stream: s.stream }), config.vms);
    // The survey came with the lock (begin), and apply makes its own stage: no stage step after the scan.
    expect(ops(fleet, 'vm01')).toEqual(['open', 'begin', 'link', 'apply', 'seal', 'renew', 'flip', 'probe', 'prune', 'unlock', 'close']);
    expect(fleet.of('vm01', 'begin')[0].args[1]).toMatchObject({ survey: { sharedPaths: [] } });
    // The hard-link copy of the live release was made ahead, and apply builds on it.
    expect(fleet.of('vm01', 'link')[0].args.slice(1, 3)).toEqual([NEW, kept(OLD, 2).name]);
    expect(fleet.of('vm01', 'apply')[0].args.slice(1, 6)).toEqual([NEW, kept(OLD, 2).name, `/tmp/stream-${OLD}.gzip`, 'gzip', true]);
    expect(s.asked).toEqual([OLD]);
    expect(s.zstd).toEqual([false]);
    expect(outcome.vms[0]).toMatchObject({ result: 'success', rev_after: NEW, files_changed: 2, bytes_sent: 999 });
    expectClean(fleet);
  });

  test('a VM that runs zstd is asked for a zstd stream, and unpacks it as zstd; one without it, gzip', async () => {
    const fleet = fleetOf({ vm01: onOld({ stream: true, baseKey: KEY, zstd: true }), vm02: onOld({ stream: true, baseKey: KEY }) }, ['vm01', 'vm02']);
    const s = streamsOf();
    const config = fleetConfig(['vm01', 'vm02']);
    const outcome = await releaseFleet(releaseCtx(config, fleet, { stream: s.stream }), config.vms);
    expect(fleet.of('vm01', 'apply')[0].args.slice(3, 5)).toEqual([`/tmp/stream-${OLD}.zstd`, 'zstd']);
    expect(fleet.of('vm02', 'apply')[0].args.slice(3, 5)).toEqual([`/tmp/stream-${OLD}.gzip`, 'gzip']);
    expect([...s.zstd].sort()).toEqual([false, true]);
    expect(outcome.vms.map((vm) => vm.result)).toEqual(['success', 'success']);
    expectClean(fleet);
  });

  test('no live release: the whole-tree stream, applied onto nothing', async () => {
    const fleet = fleetOf({ vm01: { releases: [], live: null, stream: true } }, ['vm01']);
    const s = streamsOf();
    const config = fleetConfig(['vm01']);
    const outcome = await releaseFleet(releaseCtx(config, fleet, { stream: s.stream }), config.vms);
    expect(s.asked).toEqual([null]);
    expect(fleet.of('vm01', 'apply')[0].args.slice(1, 3)).toEqual([NEW, null]);
    expect(fleet.of('vm01', 'transfer')).toEqual([]);
    expect(outcome.vms[0]).toMatchObject({ result: 'success', rev_after: NEW });
    expectClean(fleet);
  });

  test('a drifted live release: rsync, and the row says it repaired drift; no stream asked for', async () => {
    const fleet = fleetOf({ vm01: onOld({ stream: true, baseState: 'drifted' }) }, ['vm01']);
    const s = streamsOf();
    const config = fleetConfig(['vm01']);
    const outcome = await releaseFleet(releaseCtx(config, fleet, { stream: s.stream }), config.vms);
    expect(s.asked).toEqual([]);
    expect(fleet.of('vm01', 'apply')).toEqual([]);
    expect(fleet.of('vm01', 'transfer')).toHaveLength(1);
    expect(outcome.vms[0].notes.join('\n')).toMatch(/changed on vm01 after vm-sync sealed it \(drift\): staged through rsync/);
    expectClean(fleet);
  });

  test('a live release built with other excludes or shared paths (another build key): rsync, said in the row', async () => {
    const fleet = fleetOf({ vm01: onOld({ stream: true, baseKey: 'f'.repeat(32) }) }, ['vm01']);
    const s = streamsOf();
    const config = fleetConfig(['vm01']);
    const outcome = await releaseFleet(releaseCtx(config, fleet, { stream: s.stream }), config.vms);
    expect([s.asked, fleet.of('vm01', 'apply').length, fleet.of('vm01', 'transfer').length]).toEqual([[], 0, 1]);
    expect(outcome.vms[0].notes.join('\n')).toMatch(/built with other rsync_excludes or shared_paths than now: staged through rsync/);
    // The new release records the key it was built with.
    expect(fleet.of('vm01', 'seal')[0].args[3]).toBe(KEY);
    expectClean(fleet);
  });

  test('no GNU tar, an unknown base, or no stream possible: rsync', async () => {
    for (const [script, outcome] of [
      [onOld({ stream: false }), undefined],
      [onOld({ stream: true, baseState: 'unknown' }), undefined],
      [onOld({ stream: true, baseKey: KEY }), (): StreamOutcome => ({ ok: false, reason: 'wildcards' })],
    ] as Array<[VmScript, ((base: string | null) => StreamOutcome) | undefined]>) {
      const fleet = fleetOf({ vm01: script }, ['vm01']);
      const config = fleetConfig(['vm01']);
      const rows = await releaseFleet(releaseCtx(config, fleet, { stream: streamsOf(outcome).stream }), config.vms);
      expect([fleet.of('vm01', 'apply').length, fleet.of('vm01', 'transfer').length, rows.vms[0].result]).toEqual([0, 1, 'success']);
      expectClean(fleet);
    }
  });

  test('the copy of the live release is made while the scan runs, before the tree is ready', async () => {
    let scanned!: (tree: { dir: string; notes: string[] }) => void;
    const scan = new Promise<{ dir: string; notes: string[] }>((resolve) => (scanned = resolve));
    const fleet = fleetOf({ vm01: onOld({ stream: true, baseKey: KEY }) }, ['vm01']);
    const config = fleetConfig(['vm01']);
    const running = releaseFleet(releaseCtx(config, fleet, { stream: streamsOf().stream, tree: () => scan }), config.vms);
    await fleet.until((calls) => calls.some((c) => c.op === 'link'));
    await new Promise((r) => setTimeout(r, 20));
    expect(ops(fleet, 'vm01')).toEqual(['open', 'begin', 'link']);
    scanned({ dir: '/tmp/vm-sync-export', notes: [] });
    expect((await running).vms[0]).toMatchObject({ result: 'success', rev_after: NEW });
    expect(fleet.of('vm01', 'apply')[0].args[5]).toBe(true);
    expectClean(fleet);
  });

  test('no copy ahead where the stream cannot build on the live release; a failed copy leaves apply to make it', async () => {
    for (const script of [
      onOld({ stream: false, baseKey: KEY }),
      onOld({ stream: true, baseKey: KEY, baseState: 'drifted' }),
      onOld({ stream: true, baseKey: KEY, baseState: 'unknown' }),
      onOld({ stream: true, baseKey: 'other' }),
    ]) {
      const fleet = fleetOf({ vm01: script }, ['vm01']);
      const config = fleetConfig(['vm01']);
      const outcome = await releaseFleet(releaseCtx(config, fleet, { stream: streamsOf().stream }), config.vms);
      expect([fleet.of('vm01', 'link').length, outcome.vms[0].result]).toEqual([0, 'success']);
      expectClean(fleet);
    }
    // A VM on a commit this runner does not have (diverged): no stream from it, so no copy either.
    const strange = '5'.repeat(40);
    const diverged = fleetOf({ vm01: { releases: [kept(strange, 1)], stream: true, baseKey: KEY } }, ['vm01']);
    await releaseFleet(releaseCtx(fleetConfig(['vm01']), diverged, { stream: streamsOf().stream }), fleetConfig(['vm01']).vms);
    expect(diverged.of('vm01', 'link')).toEqual([]);
    // No stream transfer configured (transfer: rsync): no copy either.
    const plain = fleetOf({ vm01: onOld({ stream: true, baseKey: KEY }) }, ['vm01']);
    const config = fleetConfig(['vm01']);
    await releaseFleet(releaseCtx(config, plain, {}), config.vms);
    expect(plain.of('vm01', 'link')).toEqual([]);

    const failing = fleetOf({ vm01: onOld({ stream: true, baseKey: KEY, failures: { link: [new VmSyncError('release_drifted', 'the live release is no longer x')] } }) }, ['vm01']);
    const outcome = await releaseFleet(releaseCtx(config, failing, { stream: streamsOf().stream }), config.vms);
    expect(outcome.vms[0]).toMatchObject({ result: 'success', rev_after: NEW });
    expect(failing.of('vm01', 'apply')[0].args[5]).toBe(false);
    expectClean(failing);
  });

  test('a blocked scan while the copy is being made: the lock is released only after it, and nothing is applied', async () => {
    let copied!: () => void;
    const linkGate = new Promise<void>((resolve) => (copied = resolve));
    const fleet = fleetOf({ vm01: onOld({ stream: true, baseKey: KEY, gates: { link: linkGate } }) }, ['vm01']);
    const config = fleetConfig(['vm01']);
    const running = releaseFleet(
      releaseCtx(config, fleet, {
        stream: streamsOf().stream,
        tree: async () => {
          await fleet.until((calls) => calls.some((c) => c.op === 'link'));
          throw new VmSyncError('secrets_found', '1 possible secret: nothing was sent to this VM');
        },
      }),
      config.vms,
    );
    await fleet.until((calls) => calls.some((c) => c.op === 'link'));
    await new Promise((r) => setTimeout(r, 30));
    // unlock removes the copy on the VM: never while it is still being made.
    expect(fleet.of('vm01', 'unlock')).toEqual([]);
    copied();
    const outcome = await running;
    expect(outcome.vms[0]).toMatchObject({ result: 'failed', error: { code: 'secrets_found' }, rev_after: OLD });
    expect(ops(fleet, 'vm01')).toEqual(['open', 'begin', 'link', 'stopInterrupted', 'probe', 'unlock', 'close']);
    expectClean(fleet);
  });

  test('the VM refuses the stream (its release changed meanwhile): rsync into the same stage, said in the row', async () => {
    const fleet = fleetOf({ vm01: onOld({ stream: true, baseKey: KEY, failures: { apply: [new VmSyncError('release_drifted', 'release x was changed on this VM after vm-sync sealed it')] } }) }, ['vm01']);
    const config = fleetConfig(['vm01']);
    const outcome = await releaseFleet(releaseCtx(config, fleet, { stream: streamsOf().stream }), config.vms);
    expect(ops(fleet, 'vm01').slice(0, 7)).toEqual(['open', 'begin', 'link', 'apply', 'stage', 'transfer', 'seal']);
    expect(outcome.vms[0]).toMatchObject({ result: 'success', rev_after: NEW });
    expect(outcome.vms[0].notes.join('\n')).toMatch(/stream transfer refused by vm01 .*staged through rsync instead/);
    expectClean(fleet);
  });

  test('a network failure while applying is a failure of the VM (retried), never a silent rsync', async () => {
    const fleet = fleetOf({ vm01: onOld({ stream: true, baseKey: KEY, failures: { apply: [new VmSyncError('unreachable', 'channel lost'), new VmSyncError('unreachable', 'channel lost')] } }) }, ['vm01']);
    const config = fleetConfig(['vm01'], { sync: ['retries: 1'] });
    const outcome = await releaseFleet(releaseCtx(config, fleet, { stream: streamsOf().stream }), config.vms);
    expect(fleet.of('vm01', 'transfer')).toEqual([]);
    expect(fleet.of('vm01', 'apply')).toHaveLength(2);
    expect(outcome.vms[0]).toMatchObject({ result: 'failed', error: { code: 'unreachable' }, rev_after: OLD });
    expectClean(fleet);
  });
});
