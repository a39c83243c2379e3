import { commitExactly, destroyWorld, killVmProcesses, liveRev } from '../helpers/hardening.js';
import { configureFleet, expectRan, fleetRows } from '../helpers/fleet-release.js';
import { World } from '../helpers/world.js';

/*
 * Finding: a VM waiting for a later rolling batch gets its lock renewed only
 * when, at the start of a batch, its node-side budget ends within budget/2;
 * its VM-side deadline is that budget + 23 s. A batch may last a whole budget
 * (plus its cleanup), so when one batch started just before the renew
 * threshold and the next one runs long (a slow or hanging health check), the
 * waiting VM's lock passes its deadline while it waits: any other run may take
 * the VM over meanwhile, and the rollout itself fails the VM `lock_lost`
 * although nothing else touched it.
 *
 * Timeline here (sync.timeout_s 80): batch 1 (w01) health takes ~30 s, so at
 * batch 2 w03 is not renewed (deadline 80 s > now + 40 s); batch 2 (w02) health
 * hangs until the 80 s budget; w03's lock (deadline t0+80+23) has expired
 * when batch 3 renews it at ~t0+112.
 */

let world: World;
const IDS = ['w01', 'w02', 'w03'];

beforeAll(async () => {
  world = await World.create(IDS);
  commitExactly(world, { 'app.txt': 'base\n' }, 'base');
  configureFleet(world);
  expect((await world.cli(['sync'])).code).toBe(0);
});
afterAll(() => destroyWorld(world));
afterEach(() => killVmProcesses(world));

test('a VM waiting for its rolling batch keeps its lock while earlier batches run long', async () => {
  const next = commitExactly(world, { 'app.txt': 'next\n' }, 'next');
  const health = 'case "$HOME" in *w01*) sleep 30 ;; *w02*) sleep 300 ;; esac; exit 0';
  configureFleet(world, { timeoutS: 80, rollout: { strategy: 'rolling', batch_size: 1, max_failed: '100%', health_command: health, health_timeout_s: 600 } });
  const run = await world.cli(['sync']);
  expectRan(run, IDS);
  const rows = fleetRows(run);
  if (process.env.ADV_DEBUG) console.log(JSON.stringify(Object.values(rows).map((r) => [r.id, r.result, r.error, r.notes, r.staged_at, r.flipped_at, r.duration_ms])));
  // Observed: w03 failed lock_lost ("this run's lock on ~/app expired before it was renewed"), never flipped.
  expect({ w03: [rows.w03.result, rows.w03.error?.code ?? null], live: liveRev(world, 'w03') }).toEqual({ w03: ['success', null], live: next });
}, 240_000);
