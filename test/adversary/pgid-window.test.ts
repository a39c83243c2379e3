import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { armSlow, commitExactly, destroyWorld, disarm, killVmProcesses, liveRev, lockExists, rows, sleep, slowBin, vmProcesses, waitFor } from '../helpers/hardening.js';
import { World } from '../helpers/world.js';

/*
 * Finding: RemoteTarget.call() learns an operation's process group only from
 * its first framed output line (`pgid=`). If the run is cancelled (or its
 * budget ends) after the VM started the operation but before that line
 * reached the runner (network latency, a stalled TCP window), the operation is
 * not added to `interrupted`: stopInterrupted() kills nothing, the lock is
 * released, the row says failed with rev_after = the old commit, and the
 * still-running `flip` flips the VM afterwards.
 *
 * Simulation: on the VM, `timeout` (first on PATH) delays the agent's stdout of
 * one `flip` by 2 s (latency on the return path only); the flip's `mv -T`
 * takes 4 s (a slow disk). The test cancels as soon as that flip started.
 */

let world: World;
let bins: string;
let lagBin: string;
let mvBin: string;
let c0: string;

beforeAll(async () => {
  bins = fs.mkdtempSync(path.join(os.tmpdir(), 'adv-lag-'));
  lagBin = path.join(bins, 'lag');
  fs.mkdirSync(lagBin);
  fs.writeFileSync(
    path.join(lagBin, 'timeout'),
    `#!/bin/bash
d='${lagBin}'
if [ "$9" = flip ] && [ -e "$d/armed" ] && /usr/bin/mv "$d/armed" "$d/taken.$$" 2>/dev/null; then
  /usr/bin/touch "$d/fired"
  /usr/bin/timeout "$@" | { /usr/bin/sleep 2; /usr/bin/cat; }
  exit "\${PIPESTATUS[0]}"
fi
exec /usr/bin/timeout "$@"
`,
    { mode: 0o755 },
  );
  mvBin = slowBin(bins, ['mv']);
  world = await World.create(['lag'], { sshdExtra: { lag: [`SetEnv PATH=${lagBin}:${mvBin}:/usr/bin:/bin`] } });
  c0 = commitExactly(world, { 'app.txt': 'c0\n' }, 'c0');
  const first = await world.cli(['sync']);
  expect(rows(first).lag.result).toBe('success');
});
afterAll(() => {
  if (mvBin) disarm(mvBin);
  if (world) killVmProcesses(world);
  destroyWorld(world);
  if (bins) fs.rmSync(bins, { recursive: true, force: true });
});

test('cancelled before the pgid line arrived: the lock is released while the flip runs, and the VM flips after the failed report', async () => {
  const c1 = commitExactly(world, { 'app.txt': `c1 ${Date.now()}\n` }, 'c1');
  fs.writeFileSync(path.join(lagBin, 'armed'), '');
  armSlow(mvBin, '4', world.target('lag')); // the flip's `mv -f -T -- link TARGET` (a renewal of the lock also uses mv -T)
  const controller = new AbortController();
  const pending = world.cli(['sync'], { signal: controller.signal });
  const fired = await waitFor(() => fs.existsSync(path.join(lagBin, 'fired')), 60_000);
  await sleep(150); // the flip op is past require_lock on the VM
  controller.abort();
  const run = await pending;
  const row = rows(run).lag;
  const atReturn = { fired, result: row.result, error: row.error?.code, rev_after: row.rev_after, live: liveRev(world, 'lag'), lock: lockExists(world, 'lag'), ourProcesses: vmProcesses(world.vm('lag')).length > 0 };
  await sleep(7000);
  const later = { live: liveRev(world, 'lag'), lock: lockExists(world, 'lag') };
  // Must: either the op is killed (VM stays on rev_after) or the row reports what the VM ends on; and no lock is released while the op lives.
  expect({ atReturn, later }).toEqual({
    atReturn: { fired: true, result: 'failed', error: 'interrupted', rev_after: c0, live: c0, lock: false, ourProcesses: false },
    later: { live: c0, lock: false },
  });
  void c1;
});
