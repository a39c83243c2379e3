import fs from 'node:fs';
import path from 'node:path';
import { commitExactly, destroyWorld, killVmProcesses, liveRev, lockExists, snapshotAll, stateDir } from '../helpers/hardening.js';
import { configureFleet, expectRan, fleetRows } from '../helpers/fleet-release.js';
import { World } from '../helpers/world.js';

/*
 * Shared paths under attack: a committed tree whose shared path's parent is a
 * symlink out of the release, and an application that replaces a parent under
 * shared/ with a symlink elsewhere. Nothing outside the state dir may be
 * written; the VM keeps serving a complete release and ends unlocked.
 */

let world: World;
let base: string;
let outside: string;

beforeAll(async () => {
  world = await World.create(['y01', 'y02']);
  outside = path.join(world.dir, 'outside');
  fs.mkdirSync(path.join(outside, 'inner'), { recursive: true });
  fs.writeFileSync(path.join(outside, 'inner', 'keep.txt'), 'keep\n');
  base = commitExactly(world, { 'app.txt': 'base\n' }, 'base');
  configureFleet(world);
  expect((await world.cli(['sync'])).code).toBe(0);
});
afterAll(() => destroyWorld(world));
afterEach(() => killVmProcesses(world));

test('a tree whose shared path parent is a symlink out of the release is refused; nothing is written there', async () => {
  const before = snapshotAll(outside);
  commitExactly(world, { 'app.txt': 'evil\n', storage: { symlink: outside } }, 'evil');
  configureFleet(world, { repository: ['shared_paths: [storage/uploads/, storage/inner/]'] });
  const run = await world.cli(['sync', '--vm', 'y01']);
  expectRan(run, ['y01']);
  const row = fleetRows(run).y01;
  expect({ code: run.code, result: row.result, live: liveRev(world, 'y01'), lock: lockExists(world, 'y01'), outside: snapshotAll(outside) }).toEqual({ code: 1, result: 'failed', live: base, lock: false, outside: before });
  expect(row.error?.code).toMatch(/^[a-z_]+$/);
});

test('an application that replaced shared/<parent> with a symlink elsewhere: the next deploy refuses to write there', async () => {
  configureFleet(world, { repository: ['shared_paths: [data/uploads/]'] });
  const a = commitExactly(world, { 'app.txt': 'a\n', 'data/uploads/seed.txt': 'seed\n' }, 'a');
  expect((await world.cli(['sync', '--vm', 'y02'])).code).toBe(0);
  expect(liveRev(world, 'y02')).toBe(a);
  const shared = path.join(stateDir(world, 'y02'), 'shared');
  fs.rmSync(path.join(shared, 'data'), { recursive: true });
  fs.symlinkSync(outside, path.join(shared, 'data'));
  const before = snapshotAll(outside);
  commitExactly(world, { 'app.txt': 'b\n', 'data/uploads/seed.txt': 'seed b\n' }, 'b');
  const run = await world.cli(['sync', '--vm', 'y02']);
  const row = fleetRows(run).y02;
  expect({ code: run.code, live: liveRev(world, 'y02'), lock: lockExists(world, 'y02'), outside: snapshotAll(outside), err: row.error?.code }).toEqual({ code: 1, live: a, lock: false, outside: before, err: 'unsafe_state_dir' });
});
