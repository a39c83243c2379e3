import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  armSlow,
  commitExactly,
  configure,
  destroyWorld,
  disarm,
  expectRevShapes,
  killVmProcesses,
  liveRev,
  lockExists,
  rows,
  sleep,
  slowBin,
  slowFired,
  slowFiredAt,
  vmProcesses,
  waitFor,
  waitNoVmProcesses,
} from '../helpers/hardening.js';
import { World } from '../helpers/world.js';

/*
 * Contract 2 of the remote hardening: remote work never outlives the run's
 * budget or its cancellation (the VM is left serving exactly what the report
 * says, with no lock and no process of ours). The VMs' own `mv` and `sync` are
 * made slow on demand with wrapper programs on their PATH.
 */

let world: World;
let bins: string;
let flipBin: string;
let syncBinA: string;
let syncBinI: string;
let rsyncBinA: string;
let rsyncBinI: string;
let tarBin: string;
let c0: string;

beforeAll(async () => {
  bins = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-slowbin-'));
  flipBin = slowBin(bins, ['mv']);
  syncBinA = slowBin(bins, ['sync']);
  syncBinI = slowBin(bins, ['sync']);
  rsyncBinA = slowBin(bins, ['rsync']);
  rsyncBinI = slowBin(bins, ['rsync']);
  tarBin = slowBin(bins, ['tar']);
  world = await World.create(['slowflip', 'post', 'posttime', 'slowsynca', 'slowsynci', 'slowrsynca', 'slowrsynci', 'slowtar'], {
    sshdExtra: {
      slowflip: [`SetEnv PATH=${flipBin}:/usr/bin:/bin`],
      slowsynca: [`SetEnv PATH=${syncBinA}:/usr/bin:/bin`],
      slowsynci: [`SetEnv PATH=${syncBinI}:/usr/bin:/bin`],
      slowrsynca: [`SetEnv PATH=${rsyncBinA}:/usr/bin:/bin`],
      slowrsynci: [`SetEnv PATH=${rsyncBinI}:/usr/bin:/bin`],
      slowtar: [`SetEnv PATH=${tarBin}:/usr/bin:/bin`],
    },
  });
  c0 = commitExactly(world, { 'app.txt': 'c0\n' }, 'c0');
  const first = await world.cli(['sync', '--vm', 'slowflip,post,posttime,slowsynca']);
  expect([first.json.error ?? null, first.json.vms.map((vm) => [vm.id, vm.result])]).toEqual([null, ['slowflip', 'post', 'posttime', 'slowsynca'].map((id) => [id, 'success'])]);
});
afterAll(() => {
  for (const bin of [flipBin, syncBinA, syncBinI, rsyncBinA, rsyncBinI, tarBin]) if (bin) disarm(bin);
  destroyWorld(world);
  if (bins) fs.rmSync(bins, { recursive: true, force: true });
});
afterEach(() => {
  for (const bin of [flipBin, syncBinA, syncBinI, rsyncBinA, rsyncBinI, tarBin]) disarm(bin);
  killVmProcesses(world);
  configure(world);
});

// Long enough that a run which waited for the command (instead of stopping it)
// is told apart from one slowed by a busy machine.
const POST = `post_sync_command: 'touch "$HOME/post.started"; sleep 12; touch "$HOME/post.done"'`;

test('a flip slower than sync.timeout_s: timeout, and the VM then serves exactly rev_after, with no lock and no process left', async () => {
  const vm = world.vm('slowflip');
  const next = commitExactly(world, { 'app.txt': `c1 ${Date.now()}\n` }, 'c1');
  configure(world, { timeoutS: 5 });
  armSlow(flipBin, '8', '-T'); // the flip's `mv -T` sleeps 8 s first

  const run = await world.cli(['sync', '--vm', 'slowflip']);
  const returnedAt = Date.now();
  const row = rows(run).slowflip;
  expectRevShapes(row);
  const leftAtReturn = await waitNoVmProcesses(vm, 2000);
  const atReturn = {
    fired: slowFired(flipBin)?.startsWith('mv ') ?? false, // the flip really was the slow step
    code: run.code,
    result: row.result,
    error: row.error?.code,
    // The run ended before the slowed step could have finished on its own (8 s after it began).
    waitedForStep: returnedAt >= (slowFiredAt(flipBin) ?? 0) + 8000,
    lock: lockExists(world, 'slowflip'),
    processes: leftAtReturn,
  };
  expect(atReturn).toEqual({ fired: true, code: 1, result: 'failed', error: 'timeout', waitedForStep: false, lock: false, processes: [] });

  await sleep(12_000);
  expect({ live: liveRev(world, 'slowflip'), lock: lockExists(world, 'slowflip'), processes: vmProcesses(vm) }).toEqual({
    live: row.rev_after,
    lock: false,
    processes: [],
  });
  expect([c0, next]).toContain(row.rev_after);
});

test('a run cancelled during post_sync_command ends at once: interrupted, rev_after is live, lock released, the command is stopped', async () => {
  const vm = world.vm('post');
  for (const f of ['post.started', 'post.done']) fs.rmSync(path.join(vm.home, f), { force: true });
  const next = commitExactly(world, { 'app.txt': `c2 ${Date.now()}\n` }, 'c2');
  configure(world, { sync: [POST] });

  const controller = new AbortController();
  const pending = world.cli(['sync', '--vm', 'post'], { signal: controller.signal });
  const postStarted = await waitFor(() => fs.existsSync(path.join(vm.home, 'post.started')), 60_000);
  const abortedAt = Date.now();
  controller.abort(); // what SIGINT / SIGTERM do
  const run = await pending;
  const took = Date.now() - abortedAt;
  const row = rows(run).post;
  expectRevShapes(row);
  const left = await waitNoVmProcesses(vm, 3000);
  expect({ postStarted, code: run.code, result: row.result, error: row.error?.code, rev_after: row.rev_after, live: liveRev(world, 'post'), prompt: took < 5000 ? true : took, lock: lockExists(world, 'post'), processes: left }).toEqual({
    postStarted: true,
    code: 1,
    result: 'failed',
    error: 'interrupted',
    rev_after: next,
    live: next,
    prompt: true,
    lock: false,
    processes: [],
  });
  await sleep(14_000); // past the 12 s the command would have taken
  expect({ done: fs.existsSync(path.join(vm.home, 'post.done')), processes: vmProcesses(vm) }).toEqual({ done: false, processes: [] });
});

test('sync.timeout_s expiring during post_sync_command: timeout, the command is stopped on the VM', async () => {
  const vm = world.vm('posttime');
  for (const f of ['post.started', 'post.done']) fs.rmSync(path.join(vm.home, f), { force: true });
  const next = commitExactly(world, { 'app.txt': `c3 ${Date.now()}\n` }, 'c3');
  configure(world, { sync: [POST], timeoutS: 5 });

  const run = await world.cli(['sync', '--vm', 'posttime']);
  const returnedAt = Date.now();
  const row = rows(run).posttime;
  expectRevShapes(row);
  const left = await waitNoVmProcesses(vm, 3000);
  expect({
    postStarted: fs.existsSync(path.join(vm.home, 'post.started')),
    code: run.code,
    result: row.result,
    error: row.error?.code,
    rev_after: row.rev_after,
    live: liveRev(world, 'posttime'),
    // The run ended before the command could have finished on its own (12 s after it began).
    waitedForStep: returnedAt >= (fs.existsSync(path.join(vm.home, 'post.started')) ? fs.statSync(path.join(vm.home, 'post.started')).mtimeMs : 0) + 12_000,
    lock: lockExists(world, 'posttime'),
    processes: left,
  }).toEqual({ postStarted: true, code: 1, result: 'failed', error: 'timeout', rev_after: next, live: next, waitedForStep: false, lock: false, processes: [] });
  await sleep(14_000); // past the 12 s the command would have taken
  expect({ done: fs.existsSync(path.join(vm.home, 'post.done')), processes: vmProcesses(vm) }).toEqual({ done: false, processes: [] });
});

test.each([
  ['atomic: the flush of the target directory after the flip', 'slowsynca', () => syncBinA, [] as string[]],
  ['in-place: the flush after the sentinel is renamed in', 'slowsynci', () => syncBinI, ['layout: in-place']],
])('a step after the switch slower than sync.timeout_s (%s): timeout, rev_after is the new commit the VM now serves', async (_label, id, bin, repository) => {
  const vm = world.vm(id);
  configure(world, { repository });
  const base = commitExactly(world, { 'app.txt': `${id} base ${Date.now()}\n` }, `${id} base`);
  const ready = await world.cli(['sync', '--vm', id]);
  expect([ready.code, liveRev(world, id)]).toEqual([0, base]);
  const next = commitExactly(world, { 'app.txt': `${id} next ${Date.now()}\n` }, `${id} next`);
  configure(world, { repository, timeoutS: 5 });
  // `sync -f <dir>` on the directory holding the switched entry: for atomic the
  // target's parent (the VM's home), for in-place the target itself.
  armSlow(bin(), '8', id === 'slowsynca' ? vm.home : world.target(id));

  const run = await world.cli(['sync', '--vm', id]);
  const returnedAt = Date.now();
  const row = rows(run)[id];
  expectRevShapes(row);
  const left = await waitNoVmProcesses(vm, 2000);
  expect({
    fired: slowFired(bin())?.startsWith('sync ') ?? false,
    code: run.code,
    result: row.result,
    error: row.error?.code,
    rev_after: row.rev_after,
    live: liveRev(world, id),
    waitedForStep: returnedAt >= (slowFiredAt(bin()) ?? 0) + 8000,
    lock: lockExists(world, id),
    processes: left,
  }).toEqual({ fired: true, code: 1, result: 'failed', error: 'timeout', rev_after: next, live: next, waitedForStep: false, lock: false, processes: [] });
});

test.each([
  ['atomic, rsync', 'slowrsynca', () => rsyncBinA, [] as string[], ['transfer: rsync'], '--server'],
  ['in-place, rsync', 'slowrsynci', () => rsyncBinI, ['layout: in-place'], [] as string[], '--server'],
  ['atomic, the stream unpacked by tar', 'slowtar', () => tarBin, [] as string[], [] as string[], '-x'],
])('a run cancelled while the transfer runs (%s): interrupted, rev_after is what the VM serves then, nothing left running', async (_label, id, bin, repository, sync, match) => {
  const vm = world.vm(id);
  configure(world, { repository, sync });
  const base = commitExactly(world, { 'app.txt': `${id} base ${Date.now()}\n` }, `${id} base`);
  const ready = await world.cli(['sync', '--vm', id]);
  expect([ready.code, liveRev(world, id)]).toEqual([0, base]);
  commitExactly(world, { 'app.txt': `${id} next ${Date.now()}\n`, 'more.txt': 'more\n' }, `${id} next`);
  armSlow(bin(), '20', match); // the VM's rsync server (or tar unpacking the stream) starts 20 s late: the transfer is under way, nothing arrives

  const controller = new AbortController();
  const pending = world.cli(['sync', '--vm', id], { signal: controller.signal });
  const fired = await waitFor(() => slowFired(bin()), 60_000);
  controller.abort();
  const run = await pending;
  const returnedAt = Date.now();
  const row = rows(run)[id];
  expectRevShapes(row);
  const left = await waitNoVmProcesses(vm, 3000);
  expect({
    fired: (match === '-x' ? /^tar -x/ : /^rsync --server/).test(fired ?? ''),
    code: run.code,
    error: row.error?.code,
    waitedForStep: returnedAt >= (slowFiredAt(bin()) ?? 0) + 20_000,
    // in-place: the tree was being rewritten, so it claims no commit (null); atomic: still the old release
    rev_after: row.rev_after,
    live: liveRev(world, id),
    lock: lockExists(world, id),
    processes: left,
  }).toEqual({ fired: true, code: 1, error: 'interrupted', waitedForStep: false, rev_after: liveRev(world, id), live: repository.length ? null : base, lock: false, processes: [] });
});
