import { commitExactly, destroyWorld, killVmProcesses, liveRev } from '../helpers/hardening.js';
import { configureFleet, fleetRows } from '../helpers/fleet-release.js';
import { World } from '../helpers/world.js';

/*
 * Finding (low): the config accepts a NUL byte in rollout.health_command /
 * sync.post_sync_command (YAML "\0"), but a session request cannot carry one
 * (encodeSessionArg throws a plain Error). It is found only after the VM has
 * flipped: the health gate never runs, nothing is reverted, the row says
 * remote_command_failed. It should be a config error (exit 2) before anything runs.
 */

let world: World;
let base: string;

beforeAll(async () => {
  world = await World.create(['n01']);
  base = commitExactly(world, { 'app.txt': 'base\n' }, 'base');
  configureFleet(world);
  expect((await world.cli(['sync'])).code).toBe(0);
});
afterAll(() => destroyWorld(world));
afterEach(() => killVmProcesses(world));

test('a NUL in health_command is a config error, and no VM flips', async () => {
  commitExactly(world, { 'app.txt': 'next\n' }, 'next');
  configureFleet(world, { rollout: { health_command: 'exit 1\u0000' } });
  const run = await world.cli(['sync']);
  // Observed: exit 1, n01 flipped to the new commit, error remote_command_failed "an agent argument cannot hold a NUL byte", health skipped.
  expect({ code: run.code, live: liveRev(world, 'n01'), row: fleetRows(run).n01?.error?.code ?? null }).toEqual({ code: 2, live: base, row: null });
});
