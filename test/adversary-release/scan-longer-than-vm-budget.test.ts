import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { commitExactly, destroyWorld, killVmProcesses, liveRev } from '../helpers/hardening.js';
import { configureFleet, expectRan, fleetRows } from '../helpers/fleet-release.js';
import { World } from '../helpers/world.js';

/*
 * Adversary (review of ecc9ae5..744acd0): the secret scan now runs while the
 * VMs connect and lock, and VmBudget claims "a slow scan never times a VM
 * out". But VmBudget.extend() is only called *after* the wait for the tree:
 * its timer (sync.timeout_s) keeps running during the wait and aborts the
 * VM's signal. A scan that takes longer than sync.timeout_s (well within
 * secret_scanning.timeout_s) fails every VM with `timeout`, where before the
 * change (scan first, VMs after) the deploy succeeded.
 */

let world: World;
const IDS = ['s01', 's02'];

beforeAll(async () => {
  world = await World.create(IDS);
  commitExactly(world, { 'app.txt': 'base\n' }, 'base');
  configureFleet(world);
  expect((await world.cli(['sync'])).code).toBe(0);
});
afterAll(() => destroyWorld(world));
afterEach(() => killVmProcesses(world));

test('a scan slower than sync.timeout_s (but within secret_scanning.timeout_s) does not time the VMs out', async () => {
  const next = commitExactly(world, { 'app.txt': 'next\n' }, 'next');
  const real = execFileSync('sh', ['-c', 'command -v gitleaks'], { encoding: 'utf8' }).trim();
  const wrapper = path.join(world.dir, 'gitleaks-slow');
  // A slow (but clean, and well within timeout_s) scan: 4 s more on each gitleaks run (commits, tree), ~8 s in all.
  fs.writeFileSync(wrapper, `#!/bin/sh\ncase "$1" in version|--version) ;; *) sleep 4 ;; esac\nexec "${real}" "$@"\n`, { mode: 0o755 });
  configureFleet(world, { timeoutS: 5, repository: [`secret_scanning: { gitleaks_path: ${wrapper}, timeout_s: 120 }`] });
  const run = await world.cli(['sync']);
  expectRan(run, IDS);
  const rows = fleetRows(run);
  expect({ rows: IDS.map((id) => [rows[id].result, rows[id].error?.code ?? null, rows[id].error?.message ?? null]), live: IDS.map((id) => liveRev(world, id)) }).toEqual({
    rows: IDS.map(() => ['success', null, null]),
    live: [next, next],
  });
}, 120_000);
