import fs from 'node:fs';
import path from 'node:path';
import { commitExactly, destroyWorld, killVmProcesses, liveRev } from '../helpers/hardening.js';
import { configureFleet, expectRan, fleetRows } from '../helpers/fleet-release.js';
import { World } from '../helpers/world.js';

/*
 * Regression test: a VM waiting for a later rolling batch must keep its lock
 * while earlier batches run long. Each batch's budget is sync.timeout_s +
 * health_timeout_s (+ 8 s) and a lock's deadline is that budget + 23 s from its
 * last renewal. Here (timeout_s 10, health_timeout_s 45: a 63 s budget, an
 * 86 s deadline) batches 1 and 2 each take ~44 s of health check, so w03,
 * if it were renewed only once before batch 1, would find its lock expired
 * (renew answers lock_lost) when its own batch starts at ~90 s. vm-sync renews
 * every waiting VM at every batch.
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
  const health = 'case "$HOME" in *w01* | *w02*) sleep 44 ;; esac; exit 0';
  configureFleet(world, { timeoutS: 10, rollout: { strategy: 'rolling', batch_size: 1, max_failed: '100%', health_command: health, health_timeout_s: 45 } });
  const seen: string[] = [];
  const poll = setInterval(() => {
    try {
      seen.push(`${Math.round(Date.now() / 1000)} ${fs.readlinkSync(path.join(world.vm('w03').home, '.app.vm-sync', 'lock')).split(' ')[1]}`);
    } catch {
      seen.push(`${Math.round(Date.now() / 1000)} none`);
    }
  }, 2000);
  const run = await world.cli(['sync']);
  clearInterval(poll);
  if (process.env.ADV_DEBUG) console.log(seen.join('\n'));
  expectRan(run, IDS);
  const rows = fleetRows(run);
  if (process.env.ADV_DEBUG) console.log(JSON.stringify(Object.values(rows).map((r) => [r.id, r.result, r.error, r.notes, r.staged_at, r.flipped_at, r.duration_ms])));
  // Without the renewal: w03 failed lock_lost ("this run's lock on ~/app expired before it was renewed"), never flipped.
  expect({ rows: IDS.map((id) => [rows[id].result, rows[id].error?.code ?? null, rows[id].health]), live: IDS.map((id) => liveRev(world, id)) }).toEqual({
    rows: IDS.map(() => ['success', null, 'passed']),
    live: [next, next, next],
  });
}, 180_000);
