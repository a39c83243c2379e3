import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import { closeGate, commitExactly, destroyWorld, disarm, killVmProcesses, liveRev, lockExists, sleep, slowBin, slowFired, waitFor, waitNoVmProcesses } from '../helpers/hardening.js';
import { configureFleet, expectRan, fleetRows, liveRelease } from '../helpers/fleet-release.js';
import { World } from '../helpers/world.js';

/*
 * Cancellation (the CLI's AbortSignal, i.e. Ctrl-C / SIGTERM) at each phase of
 * a rolling release: every VM must end unlocked, on a complete release, with
 * rev_after equal to what it serves, and nothing of the run left on the VM.
 */

let world: World;
const IDS = ['c01', 'c02'];

let bins: string;
let mvBin: string;

beforeAll(async () => {
  bins = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-adv-'));
  mvBin = slowBin(bins, ['mv']);
  world = await World.create(IDS, { sshdExtra: { c01: [`SetEnv PATH=${mvBin}:/usr/bin:/bin`] } });
  commitExactly(world, { 'app.txt': 'base\n' }, 'base');
  configureFleet(world);
  expect((await world.cli(['sync'])).code).toBe(0);
});
afterAll(() => {
  disarm(mvBin);
  destroyWorld(world);
  fs.rmSync(bins, { recursive: true, force: true });
});
afterEach(() => {
  disarm(mvBin);
  killVmProcesses(world);
});

function complete(id: string): boolean {
  const rel = liveRelease(world, id);
  return rel !== null && fs.existsSync(path.join(world.vm(id).home, '.app.vm-sync', 'complete', rel));
}

async function abortWhen(marker: string, health: string, ready?: () => boolean): Promise<{ rows: ReturnType<typeof fleetRows>; code: number }> {
  commitExactly(world, { 'app.txt': `next ${Date.now()}\n` }, 'next');
  configureFleet(world, { rollout: { strategy: 'rolling', batch_size: 1, max_failed: '100%', health_command: health, health_timeout_s: 60 } });
  for (const id of IDS) fs.rmSync(path.join(world.vm(id).home, marker), { force: true });
  const controller = new AbortController();
  const pending = world.cli(['sync'], { signal: controller.signal });
  await waitFor(() => fs.existsSync(path.join(world.vm('c01').home, marker)) && (!ready || ready()), 30_000);
  await sleep(300);
  controller.abort();
  const run = await pending;
  expectRan(run, IDS);
  return { rows: fleetRows(run), code: run.code };
}

test('abort during the first batch\'s health command: both VMs unlocked, on a complete release, rev_after = served, no process left', async () => {
  const { rows, code } = await abortWhen('in-health', 'touch "$HOME/in-health"; sleep 30');
  const left = await Promise.all(IDS.map((id) => waitNoVmProcesses(world.vm(id), 5000)));
  expect({
    code,
    c01: [rows.c01.error?.code, rows.c01.rev_after === liveRev(world, 'c01'), complete('c01'), lockExists(world, 'c01')],
    c02: [rows.c02.error?.code, rows.c02.rev_after === liveRev(world, 'c02'), complete('c02'), lockExists(world, 'c02')],
    left,
  }).toEqual({ code: 1, c01: ['interrupted', true, true, false], c02: ['interrupted', true, true, false], left: [[], []] });
});

test('abort while the unhealthy VM is being flipped back: unlocked, on a complete release, rev_after = served, no process left', async () => {
  // The health command arms the mv wrapper: the revert's `mv -f -T link target` waits (up to 20 s) for a gate that never opens.
  // The gate must start closed: an earlier test's disarm() opened it, and an open gate lets the
  // revert finish before the abort, which then lands in the second batch instead.
  closeGate(mvBin);
  const arm = `printf 'gate 200\\n-T\\n' > '${mvBin}/slow.new' && mv '${mvBin}/slow.new' '${mvBin}/slow'`;
  const { rows, code } = await abortWhen('in-health2', `touch "$HOME/in-health2"; ${arm}; sleep 1; exit 1`, () => slowFired(mvBin) !== null);
  const fired = slowFired(mvBin);
  const left = await Promise.all(IDS.map((id) => waitNoVmProcesses(world.vm(id), 5000)));
  expect({
    fired: fired !== null && fired.includes('-T'),
    code,
    c01: [rows.c01.error?.code, rows.c01.rev_after === liveRev(world, 'c01'), complete('c01'), lockExists(world, 'c01')],
    c02: [rows.c02.error?.code, rows.c02.rev_after === liveRev(world, 'c02'), complete('c02'), lockExists(world, 'c02')],
    left,
  }).toEqual({ fired: true, code: 1, c01: [expect.any(String), true, true, false], c02: ['interrupted', true, true, false], left: [[], []] });
});
