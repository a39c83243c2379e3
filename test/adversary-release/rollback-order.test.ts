import fs from 'node:fs';
import path from 'node:path';
import { commitExactly, destroyWorld, killVmProcesses, liveRev, stateDir } from '../helpers/hardening.js';
import { configureFleet, expectRan, fleetRows, liveRelease } from '../helpers/fleet-release.js';
import { World } from '../helpers/world.js';

/*
 * Finding: "the release before the live one" (what prune always keeps and
 * what a plain `rollback` goes to) is computed from release NAMES (creation
 * time), not from what the VM served. A release that was created but rejected
 * (flipped, unhealthy, reverted) or never flipped (rollout halted) stays
 * complete and sorts between the last good release and the next deploy:
 * prune then keeps the rejected one and deletes the last known-good release,
 * and `rollback` flips the VM to the release its health gate rejected.
 */

let world: World;

beforeAll(async () => {
  world = await World.create(['o01']);
});
afterAll(() => destroyWorld(world));
afterEach(() => killVmProcesses(world));

function names(id: string): string[] {
  return fs.readdirSync(path.join(stateDir(world, id), 'releases')).sort();
}

test('after an unhealthy release was reverted, the next deploy keeps the last good release and rollback goes back to it, not to the rejected one', async () => {
  const health = { health_command: 'test ! -e broken' };
  configureFleet(world, { repository: ['keep_releases: 1'], rollout: health });
  const good = commitExactly(world, { 'app.txt': 'good\n' }, 'good');
  const first = await world.cli(['sync']);
  expectRan(first, ['o01']);
  expect(first.code).toBe(0);
  const goodRelease = liveRelease(world, 'o01');

  commitExactly(world, { 'app.txt': 'bad\n', broken: 'yes\n' }, 'bad');
  const bad = await world.cli(['sync']);
  expect([bad.code, fleetRows(bad).o01.error?.code, liveRev(world, 'o01')]).toEqual([1, 'health_failed', good]);

  const fix = commitExactly(world, { 'app.txt': 'fix\n' }, 'fix');
  const third = await world.cli(['sync']);
  expect([third.code, liveRev(world, 'o01')]).toEqual([0, fix]);
  const kept = names('o01');

  const back = await world.cli(['rollback']);
  const row = fleetRows(back).o01;
  // Observed: prune (keep_releases 1) deleted the good release and kept the rejected one; rollback then flips
  // the VM to the release that failed its health check, exit 0, verified.
  expect({ goodKept: goodRelease !== null && kept.includes(goodRelease), code: back.code, rev_after: row.rev_after, live: liveRev(world, 'o01') }).toEqual({
    goodKept: true,
    code: 0,
    rev_after: good,
    live: good,
  });
});
