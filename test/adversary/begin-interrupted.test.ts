import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { armSlow, commitExactly, destroyWorld, disarm, killVmProcesses, lockExists, lockPath, rows, slowBin, slowFired, vmProcesses, waitFor } from '../helpers/hardening.js';
import { World } from '../helpers/world.js';

/*
 * Finding: syncVm() only settles (stopInterrupted + unlock) after takeLock()
 * returned. A run cancelled (or out of budget) while `begin` runs on the VM --
 * after `ln -s` took the lock, during the probe under it -- returns at once
 * with `interrupted`, but never kills the begin op (its pgid is in
 * `interrupted` and nobody calls stopInterrupted) and never unlocks: the VM
 * stays locked by a finished run until timeout_s + 23 s, and other runs get
 * `locked` ("another deploy is in progress").
 * A slow `stat` (the probe's lock_mtime) on the VM makes the window visible.
 */

let world: World;
let bins: string;
let statBin: string;
beforeAll(async () => {
  bins = fs.mkdtempSync(path.join(os.tmpdir(), 'adv-begin-'));
  statBin = slowBin(bins, ['stat']);
  world = await World.create(['b'], { sshdExtra: { b: [`SetEnv PATH=${statBin}:/usr/bin:/bin`] } });
  commitExactly(world, { 'app.txt': 'c0\n' }, 'c0');
  expect(rows(await world.cli(['sync'])).b.result).toBe('success');
});
afterAll(() => {
  if (statBin) disarm(statBin);
  if (world) killVmProcesses(world);
  destroyWorld(world);
  if (bins) fs.rmSync(bins, { recursive: true, force: true });
});

test('cancelled during begin (after the lock was taken): the lock is left behind and the begin op keeps running', async () => {
  commitExactly(world, { 'app.txt': `c1 ${Date.now()}\n` }, 'c1');
  armSlow(statBin, '8', '%Y');
  const controller = new AbortController();
  const pending = world.cli(['sync'], { signal: controller.signal });
  await waitFor(() => slowFired(statBin), 60_000);
  controller.abort();
  const run = await pending;
  const row = rows(run).b;
  const observed = {
    fired: slowFired(statBin)?.startsWith('stat -c %Y') ?? false,
    error: row.error?.code,
    lock: lockExists(world, 'b') ? fs.readlinkSync(lockPath(world, 'b')).replace(/^.*(deadline=)\d+$/, 'lock held, $1...') : null,
    processes: vmProcesses(world.vm('b')).length,
  };
  // Must: no lock and no process of this run left on the VM when the run returns.
  expect(observed).toEqual({ fired: true, error: 'interrupted', lock: null, processes: 0 });
});
