import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { stopVm } from '../../src/demo/fleet.js';
import {
  armSlow,
  commitExactly,
  destroyWorld,
  disarm,
  ESC,
  killVmProcesses,
  liveRev,
  lockExists,
  slowBin,
  slowFired,
  slowFiredAt,
  waitNoVmProcesses,
} from '../helpers/hardening.js';
import { configureFleet, doc, expectRan, fleetRows, liveRelease, ms, releases, watchLive } from '../helpers/fleet-release.js';
import { World } from '../helpers/world.js';

/*
 * Contract 9, phases 1-4 of a fleet release: prepare everywhere, then flip
 * (all at once, or in rolling batches in config order), verify, and a health
 * gate that flips an unhealthy VM back; max_failed halts the rollout, leaving
 * the VMs not yet flipped on their old release with the new one staged.
 * Real sshd/rsync/git; what is asserted is what a user checks on the VM.
 */

let world: World;
let bins: string;
let rsyncBin: string;
// Config order matters for batches: r*, then a*, h01, m*, p*.
const ROLLING = ['r01', 'r02', 'r03'];
const ALL = ['a01', 'a02', 'a03'];
const PCT = ['p01', 'p02', 'p03', 'p04'];
const IDS = [...ROLLING, ...ALL, 'h01', 'm01', 'm02', ...PCT];
let base: string;

beforeAll(async () => {
  bins = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-slowbin-'));
  rsyncBin = slowBin(bins, ['rsync']);
  world = await World.create(IDS, { sshdExtra: { a02: [`SetEnv PATH=${rsyncBin}:/usr/bin:/bin`] } });
  base = commitExactly(world, { 'app.txt': 'base\n', 'lib/keep.txt': 'keep\n' }, 'base');
  const first = await world.cli(['sync']);
  // The base deploy must work before anything here means something: show why it did not.
  expect([first.code, first.json.error ?? null, first.json.vms.filter((vm) => vm.result !== 'success').map((vm) => [vm.id, vm.error])]).toEqual([0, null, []]);
});
afterAll(() => {
  if (rsyncBin) disarm(rsyncBin);
  destroyWorld(world);
  if (bins) fs.rmSync(bins, { recursive: true, force: true });
});
afterEach(() => {
  disarm(rsyncBin);
  killVmProcesses(world);
  configureFleet(world);
});

test('rolling, batch_size 1, max_failed 0, vm02 unhealthy: vm01 deployed, vm02 flipped then reverted, vm03 staged but never flipped; halted, exit 1', async () => {
  const unhealthy = path.join(world.vm('r02').home, 'unhealthy');
  fs.writeFileSync(unhealthy, '');
  for (const id of ROLLING) fs.rmSync(path.join(world.vm(id).home, 'health.log'), { force: true });
  const oldRelease = Object.fromEntries(ROLLING.map((id) => [id, liveRelease(world, id)]));
  const next = commitExactly(world, { 'app.txt': `rolling ${Date.now()}\n`, 'lib/keep.txt': 'keep\n' }, 'rolling');
  // Every run logs the commit it was given; an unhealthy VM prints 200 kB of noise, then a marker in colour, and exits 3.
  const health = [
    'echo "$VM_SYNC_COMMIT" >> "$HOME/health.log"',
    'echo "health rev=$(cat .sync_rev) target=$VM_SYNC_TARGET"',
    'if test -e "$HOME/unhealthy"; then head -c 200000 /dev/zero | tr "\\0" x; printf "\\n\\033[31munhealthy marker present\\033[0m\\n"; exit 3; fi',
  ].join('; ');
  configureFleet(world, { rollout: { strategy: 'rolling', batch_size: 1, max_failed: 0, health_command: health, health_timeout_s: 30 } });

  const run = await world.cli(['sync', '--vm', ROLLING.join(',')]);
  fs.rmSync(unhealthy, { force: true });
  expectRan(run, ROLLING);
  const byId = fleetRows(run);
  const { r01, r02, r03 } = byId;
  const log = (id: string): string | null => {
    try {
      return fs.readFileSync(path.join(world.vm(id).home, 'health.log'), 'utf8');
    } catch {
      return null;
    }
  };

  // Catches: a rolling rollout that does not stop at max_failed, a failed health command that is not reverted,
  // a halted VM that is flipped anyway or whose staged release is thrown away.
  expect({
    code: run.code,
    rollout: doc(run).rollout,
    r01: [r01.result, r01.error, r01.health, r01.rev_after, liveRev(world, 'r01'), log('r01')],
    r02: [r02.result, r02.error?.code, r02.health, r02.rev_after, liveRev(world, 'r02'), liveRelease(world, 'r02'), log('r02')],
    r03: [r03.result, r03.error?.code, r03.health, r03.rev_after, liveRev(world, 'r03'), liveRelease(world, 'r03'), r03.flipped_at, log('r03')],
    locks: ROLLING.filter((id) => lockExists(world, id)),
  }).toEqual({
    code: 1,
    rollout: { strategy: 'rolling', batches: [['r01'], ['r02'], ['r03']], halted: true, halted_reason: expect.any(String) },
    r01: ['success', null, 'passed', next, next, `${next}\n`],
    // Flipped (the health command ran in the new release), then flipped back to the very release it had.
    r02: ['failed', 'health_failed', 'failed', base, base, oldRelease.r02, `${next}\n`],
    // Never flipped: no health run, old release live.
    r03: ['skipped', 'rollout_halted', 'skipped', base, base, oldRelease.r03, null, null],
    locks: [],
  });
  // vm02 was really flipped, after vm01's batch: it has a flip time, and its health output shows it ran in the new release.
  expect(ms(r02.flipped_at)).toBeGreaterThanOrEqual(ms(r01.flipped_at));
  expect(r02.health_output).toContain('unhealthy marker present');
  expect(r02.health_output).toContain(`health rev=${next}`);
  expect(r02.health_output).toMatch(/target=\S*\/app\b/);
  // Bounded and escaped: no raw escape character, not the 200 kB of noise.
  expect(r02.health_output).not.toContain(ESC);
  expect((r02.health_output ?? '').length).toBeLessThan(64 * 1024);
  expect(Buffer.byteLength(run.stdout)).toBeLessThan(256 * 1024);
  // vm03's release of the new commit is staged (complete, not live), ready for the next run.
  expect(r03.staged_at).not.toBeNull();
  expect(releases(world, 'r03').filter((r) => r.rev === next && r.name !== liveRelease(world, 'r03'))).toHaveLength(1);
  expect(r03.release).toBe(oldRelease.r03);
  expect(r01.release).toBe(liveRelease(world, 'r01'));

  // Once vm02 is healthy, the next run converges the fleet (nothing left locked or half-done blocks it).
  const again = await world.cli(['sync', '--vm', ROLLING.join(',')]);
  expectRan(again, ROLLING);
  // vm01 is already on it (not flipped, not checked); vm02 and vm03 flip to the release staged before, sending nothing.
  const againRows = doc(again).vms;
  expect({ code: again.code, live: ROLLING.map((id) => liveRev(world, id)), health: againRows.map((vm) => vm.health), actions: againRows.map((vm) => vm.action), sent: againRows.map((vm) => vm.bytes_sent) }).toEqual({
    code: 0,
    live: [next, next, next],
    health: ['skipped', 'passed', 'passed'],
    actions: ['none', 'deploy', 'deploy'],
    sent: [0, 0, 0],
  });
});

test('all-at-once (the default): no VM flips until every VM is staged; the fast VMs serve the old commit while the slow one transfers', async () => {
  const next = commitExactly(world, { 'app.txt': `all-at-once ${Date.now()}\n`, 'lib/keep.txt': 'keep\n', 'more.txt': 'more\n' }, 'all at once');
  // a02's rsync server starts 6 s late: its transfer is under way, nothing arrives.
  configureFleet(world, { sync: ['transfer: rsync'] });
  armSlow(rsyncBin, '6', '--server');
  const watch = watchLive(world, ['a01', 'a03'], liveRev);
  const run = await world.cli(['sync', '--vm', ALL.join(',')]);
  const samples = watch.stop();
  expectRan(run, ALL);
  const byId = fleetRows(run);
  const firedAt = slowFiredAt(rsyncBin) ?? NaN;
  const wokeAt = fs.existsSync(path.join(rsyncBin, 'woke')) ? fs.statSync(path.join(rsyncBin, 'woke')).mtimeMs : NaN;
  const during = samples.filter((s) => s.at >= firedAt && s.at <= wokeAt);

  expect({ fired: /^rsync --server/.test(slowFired(rsyncBin) ?? ''), code: run.code, live: ALL.map((id) => liveRev(world, id)) }).toEqual({ fired: true, code: 0, live: [next, next, next] });
  // Catches a VM flipped as soon as its own prepare ended (the old per-VM pipeline).
  expect(during.length).toBeGreaterThan(20);
  expect(during.filter((s) => s.revs.a01 !== base || s.revs.a03 !== base)).toEqual([]);
  const staged = ALL.map((id) => ms(byId[id].staged_at));
  const flipped = ALL.map((id) => ms(byId[id].flipped_at));
  expect([...staged, ...flipped].filter((t) => Number.isNaN(t))).toEqual([]);
  const lastStaged = Math.max(...staged);
  expect(ALL.filter((id) => ms(byId[id].flipped_at) < lastStaged)).toEqual([]);
  // No sample saw the new commit before the last VM was staged.
  expect(samples.filter((s) => s.at < lastStaged && (s.revs.a01 === next || s.revs.a03 === next))).toEqual([]);
  // Catches a skew computed from anything but the rows' own flip times.
  expect(doc(run).flip_skew_ms).toBe(Math.max(...flipped) - Math.min(...flipped));
  const rollout = doc(run).rollout;
  expect({ strategy: rollout?.strategy, halted: rollout?.halted, planned: (rollout?.batches ?? []).flat() }).toEqual({ strategy: 'all-at-once', halted: false, planned: ALL });
  for (const id of ALL) {
    expect([id, byId[id].result, byId[id].health, byId[id].release]).toEqual([id, 'success', 'skipped', liveRelease(world, id)]);
  }
});

test('health_timeout_s: a health command that outlives it is unhealthy, reverted, and stopped on the VM', async () => {
  const vm = world.vm('h01');
  for (const f of ['health.started', 'health.done']) fs.rmSync(path.join(vm.home, f), { force: true });
  const before = liveRelease(world, 'h01');
  commitExactly(world, { 'app.txt': `slow health ${Date.now()}\n`, 'lib/keep.txt': 'keep\n' }, 'slow health');
  configureFleet(world, { rollout: { health_command: 'touch "$HOME/health.started"; sleep 30; touch "$HOME/health.done"', health_timeout_s: 2 } });

  const started = Date.now();
  const run = await world.cli(['sync', '--vm', 'h01']);
  const took = Date.now() - started;
  expectRan(run, ['h01']);
  const row = fleetRows(run).h01;
  const left = await waitNoVmProcesses(vm, 3000);
  // Catches a health command run without a timeout (the run would take 30 s), a timeout that does not count as
  // unhealthy, or one whose command (or its `sleep` child) keeps running on the VM.
  expect({
    code: run.code,
    result: row.result,
    error: row.error?.code,
    health: row.health,
    started: fs.existsSync(path.join(vm.home, 'health.started')),
    live: liveRev(world, 'h01'),
    release: liveRelease(world, 'h01'),
    rev_after: row.rev_after,
    prompt: took < 20_000 ? true : took,
    lock: lockExists(world, 'h01'),
    processes: left,
  }).toEqual({ code: 1, result: 'failed', error: 'health_failed', health: 'failed', started: true, live: base, release: before, rev_after: base, prompt: true, lock: false, processes: [] });
  expect(row.error?.message).toMatch(/time/i);
  expect(fs.existsSync(path.join(vm.home, 'health.done'))).toBe(false);
});

test('max_failed: with one of two VMs unreachable, the default 0 halts the other (staged, not flipped); "50%" lets it flip', async () => {
  stopVm(world.vm('m02'));
  const before = liveRelease(world, 'm01');
  const next = commitExactly(world, { 'app.txt': `max failed ${Date.now()}\n`, 'lib/keep.txt': 'keep\n' }, 'max failed');

  // Control: max_failed defaults to 0, so one stage failure halts the rollout (all-at-once counts after prepare).
  configureFleet(world, { rollout: { strategy: 'all-at-once' } });
  const halted = await world.cli(['sync', '--vm', 'm01,m02']);
  expectRan(halted, ['m01', 'm02']);
  const h = fleetRows(halted);
  expect({
    code: halted.code,
    halted: doc(halted).rollout?.halted,
    m01: [h.m01.result, h.m01.error?.code, liveRev(world, 'm01'), liveRelease(world, 'm01'), h.m01.flipped_at],
    m02: [h.m02.result, h.m02.error?.code],
  }).toEqual({ code: 1, halted: true, m01: ['skipped', 'rollout_halted', base, before, null], m02: ['failed', 'unreachable'] });
  expect(releases(world, 'm01').filter((r) => r.rev === next)).toHaveLength(1);

  // 1 failed is not more than 50% of 2 (rounded down: 1): m01 flips. Catches a percentage rounded the wrong way or
  // compared with >= instead of >.
  configureFleet(world, { rollout: { strategy: 'all-at-once', max_failed: '50%' } });
  const run = await world.cli(['sync', '--vm', 'm01,m02']);
  expectRan(run, ['m01', 'm02']);
  const r = fleetRows(run);
  expect({
    code: run.code,
    halted: doc(run).rollout?.halted,
    m01: [r.m01.result, r.m01.error, r.m01.rev_after, liveRev(world, 'm01')],
    m02: [r.m02.result, r.m02.error?.code, r.m02.flipped_at],
  }).toEqual({ code: 1, halted: false, m01: ['success', null, next, next], m02: ['failed', 'unreachable', null] });
});

test('batch_size "50%": batches of ceil(50% of the selected VMs) in config order, whatever the --vm order; a batch flips after the previous one is healthy', async () => {
  const next = commitExactly(world, { 'app.txt': `percent ${Date.now()}\n`, 'lib/keep.txt': 'keep\n' }, 'percent');
  configureFleet(world, { rollout: { strategy: 'rolling', batch_size: '50%', health_command: 'sleep 1' } });
  const run = await world.cli(['sync', '--vm', 'p04,p02,p03,p01']);
  expectRan(run, PCT);
  const byId = fleetRows(run);
  // Catches batches taken in command-line order, a percentage of the whole config instead of the selection, or
  // batches flipped without waiting for the previous batch's health gate.
  expect({ code: run.code, rollout: doc(run).rollout, live: PCT.map((id) => liveRev(world, id)) }).toEqual({
    code: 0,
    rollout: { strategy: 'rolling', batches: [['p01', 'p02'], ['p03', 'p04']], halted: false, halted_reason: null },
    live: [next, next, next, next],
  });
  const firstDone = Math.max(ms(byId.p01.flipped_at), ms(byId.p02.flipped_at)) + 1000;
  expect([ms(byId.p03.flipped_at) >= firstDone, ms(byId.p04.flipped_at) >= firstDone]).toEqual([true, true]);

  // 50% of 3 rounds up to 2: [[p01, p02], [p03]].
  const third = commitExactly(world, { 'app.txt': `percent 3 ${Date.now()}\n`, 'lib/keep.txt': 'keep\n' }, 'percent of 3');
  configureFleet(world, { rollout: { strategy: 'rolling', batch_size: '50%' } });
  const odd = await world.cli(['sync', '--vm', 'p01,p02,p03']);
  expectRan(odd, ['p01', 'p02', 'p03']);
  expect({ code: odd.code, batches: doc(odd).rollout?.batches, live: ['p01', 'p02', 'p03'].map((id) => liveRev(world, id)) }).toEqual({
    code: 0,
    batches: [['p01', 'p02'], ['p03']],
    live: [third, third, third],
  });
});
