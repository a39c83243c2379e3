import { commitExactly, destroyWorld, killVmProcesses, liveRev, lockExists } from '../helpers/hardening.js';
import { configureFleet, expectRan, fleetRows, liveRelease } from '../helpers/fleet-release.js';
import { World } from '../helpers/world.js';

/*
 * Finding: the health command runs on the VM under rollout.health_timeout_s,
 * but the node side aborts the step when the VM's sync.timeout_s budget (set
 * at the batch's renew) runs out. A health command that is still inside its
 * own health_timeout_s (1..3600, default 60) when the sync budget ends is cut
 * off: the row is `timeout` instead of a health verdict, and the unhealthy VM
 * is NOT flipped back although revert_unhealthy is true. (The VM-side lock
 * deadline is not extended for health_timeout_s either.)
 */

let world: World;
let base: string;

beforeAll(async () => {
  world = await World.create(['b01']);
  base = commitExactly(world, { 'app.txt': 'base\n' }, 'base');
  configureFleet(world);
  expect((await world.cli(['sync'])).code).toBe(0);
});
afterAll(() => destroyWorld(world));
afterEach(() => killVmProcesses(world));

test('an unhealthy verdict that arrives within health_timeout_s but after sync.timeout_s still reverts the VM', async () => {
  const before = liveRelease(world, 'b01');
  commitExactly(world, { 'app.txt': 'slow unhealthy\n' }, 'slow unhealthy');
  configureFleet(world, { timeoutS: 6, rollout: { health_command: 'sleep 10; exit 1', health_timeout_s: 30 } });
  const run = await world.cli(['sync']);
  expectRan(run, ['b01']);
  const row = fleetRows(run).b01;
  // Observed: error timeout, health skipped, the VM keeps serving the unhealthy commit.
  expect({ code: run.code, error: row.error?.code, health: row.health, live: liveRev(world, 'b01'), release: liveRelease(world, 'b01'), rev_after: row.rev_after, lock: lockExists(world, 'b01') }).toEqual({
    code: 1,
    error: 'health_failed',
    health: 'failed',
    live: base,
    release: before,
    rev_after: base,
    lock: false,
  });
});
