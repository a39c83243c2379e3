import fs from 'node:fs';
import path from 'node:path';
import { commitExactly, destroyWorld, killVmProcesses, liveRev, lockExists, snapshotAll, stateDir } from '../helpers/hardening.js';
import { configureFleet, doc, expectRan, fleetRows, liveIno, liveRelease, releases } from '../helpers/fleet-release.js';
import { World } from '../helpers/world.js';

/*
 * Contract 9, `vm-sync rollback`: flips each VM to its previous kept complete
 * release (or to the kept release of --to SHA) without transferring or
 * scanning anything, verifies `.sync_rev`, and fails `no_release` (changing
 * nothing) when the VM keeps no such release.
 */

let world: World;
const PAIR = ['b01', 'b02'];
let never: string; // a commit the runner clone has that no VM was ever given
let a: string;
let b: string;

beforeAll(async () => {
  world = await World.create(['b01', 'b02', 'b03', 'k01']);
  never = commitExactly(world, { 'app.txt': 'never deployed\n', 'lib/stable.txt': 'stable\n' }, 'never deployed');
  a = commitExactly(world, { 'app.txt': 'A\n', 'lib/stable.txt': 'stable\n' }, 'A');
  const first = await world.cli(['sync', '--vm', PAIR.join(',')]);
  expect([first.code, first.json.error ?? null, first.json.vms.filter((vm) => vm.result !== 'success').map((vm) => [vm.id, vm.error]), PAIR.map((id) => liveRev(world, id))]).toEqual([0, null, [], [a, a]]);
});
afterAll(() => destroyWorld(world));
afterEach(() => {
  killVmProcesses(world);
  configureFleet(world);
});

test('rollback goes back to the previous release without a transfer (same release directory, same inodes); --to goes forward again', async () => {
  const onA = Object.fromEntries(PAIR.map((id) => [id, { release: liveRelease(world, id), stable: liveIno(world, id, 'lib/stable.txt'), app: liveIno(world, id, 'app.txt') }]));
  b = commitExactly(world, { 'app.txt': 'B\n', 'lib/stable.txt': 'stable\n' }, 'B');
  const toB = await world.cli(['sync', '--vm', PAIR.join(',')]);
  expect([toB.code, PAIR.map((id) => liveRev(world, id))]).toEqual([0, [b, b]]);
  const releaseB = Object.fromEntries(PAIR.map((id) => [id, liveRelease(world, id)]));

  const back = await world.cli(['rollback', '--vm', PAIR.join(',')]);
  expectRan(back, PAIR);
  const rows = fleetRows(back);
  // Catches a rollback that re-stages A (a new directory, new inodes for the files that changed) instead of
  // flipping to the release A already has, one that sends bytes, or one that leaves the lock behind.
  expect({ code: back.code, command: doc(back).command, commit: doc(back).commit }).toEqual({ code: 0, command: 'rollback', commit: '' });
  for (const id of PAIR) {
    const row = rows[id];
    expect({
      id,
      row: [row.action, row.result, row.error, row.rev_before, row.rev_after, row.verified, row.bytes_sent, row.release],
      live: liveRev(world, id),
      release: liveRelease(world, id),
      stable: liveIno(world, id, 'lib/stable.txt'),
      app: liveIno(world, id, 'app.txt'),
      lock: lockExists(world, id),
    }).toEqual({
      id,
      row: ['rollback', 'success', null, b, a, true, 0, onA[id].release],
      live: a,
      release: onA[id].release,
      stable: onA[id].stable,
      app: onA[id].app,
      lock: false,
    });
  }

  // "Previous" is the newest kept release older than the live one: A is the oldest, so a second rollback has none.
  const twice = await world.cli(['rollback', '--vm', 'b01']);
  expectRan(twice, ['b01']);
  expect({ code: twice.code, error: fleetRows(twice).b01.error?.code, live: liveRev(world, 'b01') }).toEqual({ code: 1, error: 'no_release', live: a });

  // Forward again, to B by an abbreviated sha (resolved in the runner-host clone).
  const forward = await world.cli(['rollback', '--vm', PAIR.join(','), '--to', b.slice(0, 9)]);
  expectRan(forward, PAIR);
  const f = fleetRows(forward);
  expect({
    code: forward.code,
    commit: doc(forward).commit,
    rows: PAIR.map((id) => [f[id].action, f[id].result, f[id].rev_after, f[id].bytes_sent]),
    live: PAIR.map((id) => liveRev(world, id)),
    releases: PAIR.map((id) => liveRelease(world, id)),
  }).toEqual({
    code: 0,
    commit: b,
    rows: [['rollback', 'success', b, 0], ['rollback', 'success', b, 0]],
    live: [b, b],
    releases: PAIR.map((id) => releaseB[id]),
  });

  // Already there: nothing to do, and that is a success.
  const again = await world.cli(['rollback', '--vm', 'b01', '--to', b]);
  expectRan(again, ['b01']);
  expect({ code: again.code, row: [fleetRows(again).b01.action, fleetRows(again).b01.result], live: liveRev(world, 'b01') }).toEqual({ code: 0, row: ['none', 'success'], live: b });
});

test('rollback --to a commit the VM never had: no_release naming what it keeps, exit 1, nothing changes on the VM', async () => {
  const before = Object.fromEntries(PAIR.map((id) => [id, { live: liveRev(world, id), link: fs.readlinkSync(world.target(id)), releases: snapshotAll(path.join(stateDir(world, id), 'releases')) }]));
  const run = await world.cli(['rollback', '--vm', PAIR.join(','), '--to', never]);
  expectRan(run, PAIR);
  const rows = fleetRows(run);
  // Catches a rollback that falls back to some other release, or deploys the commit, when the VM does not keep it.
  expect({ code: run.code, rows: PAIR.map((id) => [rows[id].result, rows[id].error?.code]) }).toEqual({ code: 1, rows: [['failed', 'no_release'], ['failed', 'no_release']] });
  for (const id of PAIR) {
    // The message says which releases the VM keeps: A's and B's are there.
    expect([id, rows[id].error?.message.includes(a.slice(0, 7)), rows[id].error?.message.includes(b.slice(0, 7))]).toEqual([id, true, true]);
    expect({ id, live: liveRev(world, id), link: fs.readlinkSync(world.target(id)), releases: snapshotAll(path.join(stateDir(world, id), 'releases')), lock: lockExists(world, id) }).toEqual({
      id,
      ...before[id],
      lock: false,
    });
  }
});

test('rollback on a VM that was never deployed fails no_release and creates no target', async () => {
  const run = await world.cli(['rollback', '--vm', 'b03']);
  expectRan(run, ['b03']);
  const row = fleetRows(run).b03;
  // Catches a rollback that treats "no release" as nothing to do (success) or creates an empty target.
  expect({ code: run.code, result: row.result, error: row.error?.code, target: fs.existsSync(world.target('b03')) || isLink(world.target('b03')) }).toEqual({
    code: 1,
    result: 'failed',
    error: 'no_release',
    target: false,
  });
});

test('keep_releases 1 keeps the live release and the one before it, so rollback still works', async () => {
  configureFleet(world, { repository: ['keep_releases: 1'] });
  const commits: string[] = [];
  for (const n of [1, 2, 3]) {
    commits.push(commitExactly(world, { 'app.txt': `K${n} ${Date.now()}\n` }, `K${n}`));
    const run = await world.cli(['sync', '--vm', 'k01']);
    expect([n, run.code, liveRev(world, 'k01')]).toEqual([n, 0, commits[n - 1]]);
  }
  // Catches a prune that keeps only keep_releases (then there is nothing to roll back to).
  expect(releases(world, 'k01').map((r) => r.rev).sort()).toEqual([commits[1], commits[2]].sort());
  const back = await world.cli(['rollback', '--vm', 'k01']);
  expectRan(back, ['k01']);
  const row = fleetRows(back).k01;
  expect({ code: back.code, row: [row.action, row.result, row.rev_after, row.bytes_sent], live: liveRev(world, 'k01') }).toEqual({
    code: 0,
    row: ['rollback', 'success', commits[1], 0],
    live: commits[1],
  });
});

function isLink(p: string): boolean {
  try {
    return fs.lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
}
