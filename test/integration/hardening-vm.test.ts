import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fleetConfigYaml } from '../../src/demo/fleet.js';
import {
  armSlow,
  commitExactly,
  configure,
  destroyWorld,
  ESC,
  expectRevShapes,
  killVmProcesses,
  liveRev,
  disarm,
  lockExists,
  openGate,
  rows,
  sleep,
  slowBin,
  slowFired,
  snapshotAll,
  stateDir,
  vmProcesses,
  waitFor,
} from '../helpers/hardening.js';
import { expectedTree, snapshotTree, World } from '../helpers/world.js';

/*
 * Contract 3, 6a and 7 of the remote hardening: what a run decides about a
 * VM it decides under the VM's lock (a run held up before the lock finds what
 * a later run deployed, or leaves nothing behind when it is cancelled); text a
 * VM's login shell prints can neither forge what vm-sync reads nor pass for
 * rsync's protocol; vm-sync's state directory beside the target is its own: a
 * symlinked or foreign-owned one is refused, and nothing is written or deleted
 * through it. The race VM's `mkdir`/`ln` wait for a gate on demand (a wrapper
 * on its PATH).
 *
 * Here sshd runs commands with the user's login shell (root: bash), and
 * Debian's bash sources ~/.bashrc (the VM's home, from sshd SetEnv HOME) for
 * commands run by sshd, so a `.bashrc` in the VM's home prints on stdout
 * before every command vm-sync runs; the first test proves it does.
 */

let world: World;
const IDS = ['chatty', 'clean', 'statelink', 'rellink', 'movedlink', 'stateowner', 'relowner', 'tmplink', 'opslink', 'ok', 'noisy', 'race'];
let c1: string;
let bins: string;
let raceBin: string;

beforeAll(async () => {
  bins = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-slowbin-'));
  raceBin = slowBin(bins, ['mkdir', 'ln']);
  world = await World.create(IDS, { sshdExtra: { race: [`SetEnv PATH=${raceBin}:/usr/bin:/bin`] } });
  c1 = commitExactly(world, { 'app.txt': 'c1\n', 'lib/a.txt': 'a\n' }, 'c1');
  // Everything but the two fresh VMs whose state directory is planted before any deploy.
  const first = await world.cli(['sync', '--vm', IDS.filter((id) => id !== 'statelink' && id !== 'rellink').join(',')]);
  expect(first.code).toBe(0);
});
afterAll(() => {
  if (raceBin) disarm(raceBin);
  destroyWorld(world);
  if (bins) fs.rmSync(bins, { recursive: true, force: true });
});
afterEach(() => {
  disarm(raceBin);
  killVmProcesses(world);
  configure(world);
});

const NOISE = [
  "printf 'rev=0000000000000000000000000000000000000000\\n'",
  "printf 'kind=dir\\n'",
  "printf 'rev_state=present\\n'",
  "printf 'lock=acquired\\n'",
  "printf '\\033[31mWelcome to \\033]0;pwned\\007the VM\\033[0m\\n'",
  '',
].join('\n');

describe('a login shell that prints to stdout (~/.bashrc with forged key=value lines and escapes)', () => {
  let bashrc = '';
  beforeAll(() => {
    bashrc = path.join(world.vm('chatty').home, '.bashrc');
    fs.writeFileSync(bashrc, NOISE);
  });
  afterAll(() => fs.rmSync(bashrc, { force: true }));

  test('status and verify still read the real rev (not the forged 0000000), nothing printed raw', async () => {
    const status = await world.cli(['status', '--vm', 'chatty,clean']);
    const verify = await world.cli(['verify', '--vm', 'chatty']);
    const statusTable = await world.cli(['status', '--vm', 'chatty,clean'], { json: false });
    const s = rows(status).chatty;
    expectRevShapes(s);
    expect({ result: s.result, state: s.state, rev_before: s.rev_before, error: s.error }).toEqual({ result: 'success', state: 'up-to-date', rev_before: c1, error: null });
    expect([verify.code, rows(verify).chatty.verified]).toEqual([0, true]);
    expect(statusTable.stdout).not.toMatch(/0000000/);
    for (const run of [status, verify, statusTable]) {
      expect(run.stdout + run.stderr).not.toContain(ESC);
      expect(run.stdout + run.stderr).not.toContain('\u0007');
    }
  });

  test('the stream transfer (framed, like every agent step) deploys through a chatty login shell; the tree is exact', async () => {
    const c = commitExactly(world, { 'app.txt': `streamed ${Date.now()}\n`, 'lib/a.txt': 'a\n' }, 'streamed');
    const sync = await world.cli(['sync', '--vm', 'chatty']);
    expect([sync.code, rows(sync).chatty.result, liveRev(world, 'chatty'), rows(sync).chatty.bytes_sent > 0]).toEqual([0, 'success', c, true]);
    expect(snapshotTree(world.target('chatty'))).toEqual(expectedTree(world.ws, c));
    expect(sync.stdout + sync.stderr).not.toContain(ESC);
  });

  test('through rsync (sync.transfer: rsync), it fails remote_shell_unclean with rsync\'s hint, the VM keeps its release, a clean VM in the same run deploys', async () => {
    configure(world, { sync: ['transfer: rsync'] });
    const kept = liveRev(world, 'chatty');
    const c2 = commitExactly(world, { 'app.txt': `c2 ${Date.now()}\n`, 'lib/a.txt': 'a\n' }, 'c2');
    const sync = await world.cli(['sync', '--vm', 'chatty,clean']);
    const table = await world.cli(['sync', '--vm', 'chatty'], { json: false });
    const byId = rows(sync);
    expectRevShapes(byId.chatty);
    expect({
      code: sync.code,
      chatty: [byId.chatty.result, byId.chatty.error?.code, byId.chatty.rev_after, liveRev(world, 'chatty'), lockExists(world, 'chatty')],
      clean: [byId.clean.result, byId.clean.rev_after, liveRev(world, 'clean')],
    }).toEqual({ code: 1, chatty: ['failed', 'remote_shell_unclean', kept, kept, false], clean: ['success', c2, c2] });
    expect(byId.chatty.error?.message).toMatch(/is your shell clean/);
    for (const run of [sync, table]) {
      expect(run.stdout + run.stderr).not.toContain(ESC);
      expect(run.stdout + run.stderr).not.toContain('\u0007');
    }
    // Proof that this .bashrc is what breaks it: without it, the same VM deploys.
    fs.rmSync(bashrc, { force: true });
    const after = await world.cli(['sync', '--vm', 'chatty']);
    fs.writeFileSync(bashrc, NOISE);
    expect([after.code, rows(after).chatty.result, liveRev(world, 'chatty')]).toEqual([0, 'success', c2]);
    configure(world);
  });
});

/** A directory of things vm-sync must never touch, shaped like a state directory. */
function victimDir(name: string): string {
  const dir = path.join(world.dir, name);
  fs.mkdirSync(path.join(dir, 'releases', '20200101T000000Z-aaaaaaaaaaaa'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'releases', '20200101T000000Z-aaaaaaaaaaaa', 'keep.txt'), 'old release\n');
  fs.mkdirSync(path.join(dir, 'releases', `${crypto.randomBytes(20).toString('hex')}.partial`));
  fs.writeFileSync(path.join(dir, 'victim.txt'), `victim ${name}\n`);
  fs.mkdirSync(path.join(dir, 'tmp'));
  fs.writeFileSync(path.join(dir, 'tmp', 'keep.txt'), 'keep\n');
  return dir;
}

test('a state directory that is a symlink, has a symlinked releases/, or is owned by another user: unsafe_state_dir, nothing written or deleted through it', async () => {
  const watched: Record<string, Record<string, string>> = {};
  const watch = (dir: string): void => {
    watched[dir] = snapshotAll(dir);
  };
  // Fresh VMs: the whole state directory is a symlink, or only releases/ is.
  const v1 = victimDir('victim-state');
  fs.symlinkSync(v1, stateDir(world, 'statelink'));
  const v2 = victimDir('victim-releases');
  fs.mkdirSync(stateDir(world, 'rellink'));
  fs.symlinkSync(path.join(v2, 'releases'), path.join(stateDir(world, 'rellink'), 'releases'));
  // A deployed VM whose state directory was moved elsewhere and symlinked back: everything still resolves.
  const moved = path.join(world.dir, 'victim-moved');
  fs.renameSync(stateDir(world, 'movedlink'), moved);
  fs.symlinkSync(moved, stateDir(world, 'movedlink'));
  // Deployed VMs whose state directory, or releases/, belongs to someone else.
  fs.chownSync(stateDir(world, 'stateowner'), 65534, 65534);
  fs.chownSync(path.join(stateDir(world, 'relowner'), 'releases'), 65534, 65534);
  // Deployed VMs whose state directory's tmp/ or ops/ (where vm-sync writes sentinels, links and process records) is a symlink.
  const v3 = victimDir('victim-tmp');
  const v4 = victimDir('victim-ops');
  for (const [id, sub, victim] of [['tmplink', 'tmp', v3], ['opslink', 'ops', v4]] as const) {
    fs.rmSync(path.join(stateDir(world, id), sub), { recursive: true, force: true });
    fs.symlinkSync(victim, path.join(stateDir(world, id), sub));
  }
  for (const dir of [v1, v2, v3, v4, moved, stateDir(world, 'stateowner'), stateDir(world, 'relowner'), stateDir(world, 'rellink'), stateDir(world, 'tmplink'), stateDir(world, 'opslink')]) watch(dir);
  const targets = Object.fromEntries(['movedlink', 'stateowner', 'relowner', 'tmplink', 'opslink'].map((id) => [id, fs.readlinkSync(world.target(id))]));

  const c3 = commitExactly(world, { 'app.txt': `c3 ${Date.now()}\n` }, 'c3');
  const run = await world.cli(['sync', '--vm', 'statelink,rellink,movedlink,stateowner,relowner,tmplink,opslink,ok']);
  const byId = rows(run);
  for (const row of run.json.vms) expectRevShapes(row);
  // Nothing was written or deleted through the planted directories, and the deployed VMs still serve c1 from the same release.
  for (const [dir, before] of Object.entries(watched)) expect([dir, snapshotAll(dir)]).toEqual([dir, before]);
  for (const id of ['statelink', 'rellink']) expect([id, fs.existsSync(world.target(id)) || isLink(world.target(id))]).toEqual([id, false]);
  for (const [id, link] of Object.entries(targets)) expect([id, fs.readlinkSync(world.target(id))]).toEqual([id, link]);
  const outcome = (id: string): unknown[] => [byId[id]?.result, byId[id]?.error?.code ?? null, byId[id]?.rev_after ?? null, liveRev(world, id)];
  expect({
    code: run.code,
    statelink: outcome('statelink'),
    rellink: outcome('rellink'),
    movedlink: outcome('movedlink'),
    stateowner: outcome('stateowner'),
    relowner: outcome('relowner'),
    tmplink: outcome('tmplink'),
    opslink: outcome('opslink'),
    ok: outcome('ok'),
  }).toEqual({
    code: 1,
    statelink: ['failed', 'unsafe_state_dir', null, null],
    rellink: ['failed', 'unsafe_state_dir', null, null],
    movedlink: ['failed', 'unsafe_state_dir', c1, c1],
    stateowner: ['failed', 'unsafe_state_dir', c1, c1],
    relowner: ['failed', 'unsafe_state_dir', c1, c1],
    tmplink: ['failed', 'unsafe_state_dir', c1, c1],
    opslink: ['failed', 'unsafe_state_dir', c1, c1],
    ok: ['success', null, c3, c3],
  });
  expect(run.stdout + run.stderr).not.toContain(ESC);
});

test('a state directory, or one of its parts, made writable by group or others: the next step takes the write bits away, then deploys', async () => {
  const state = stateDir(world, 'clean');
  const parts = ['.', 'releases', 'complete', 'tmp', 'ops', 'manifests'];
  const modeOf = (rel: string): number => fs.statSync(path.join(state, rel)).mode & 0o777;
  // One of each: group-writable, others-writable, both, and the sticky /tmp kind.
  const opened: Record<string, number> = { '.': 0o775, releases: 0o757, complete: 0o777, tmp: 0o1777, ops: 0o755, manifests: 0o775 };
  for (const rel of parts) fs.chmodSync(path.join(state, rel), opened[rel]);
  const c4 = commitExactly(world, { 'app.txt': `c4 ${Date.now()}\n` }, 'c4');
  const run = await world.cli(['sync', '--vm', 'clean']);
  expect([run.code, rows(run).clean?.rev_after, liveRev(world, 'clean')]).toEqual([0, c4, c4]);
  expect(Object.fromEntries(parts.map((rel) => [rel, modeOf(rel) & 0o022]))).toEqual(Object.fromEntries(parts.map((rel) => [rel, 0])));
});

test('VM text in a failing post_sync_command and in the login shell\'s stderr: the message is clean and bounded', async () => {
  const bashrc = path.join(world.vm('noisy').home, '.bashrc');
  fs.writeFileSync(bashrc, "printf '\\033[31mbanner on stderr\\033]0;pwned\\007\\n' >&2\n");
  try {
    configure(world, {
      sync: [`post_sync_command: 'printf "\\033[2J\\033[31m<b>restart</b> failed\\033[0m\\n"; head -c 1000000 /dev/zero | tr "\\0" "x"; printf "\\n\\033[31mlast line\\n" >&2; exit 4'`],
    });
    const next = commitExactly(world, { 'app.txt': `noisy ${Date.now()}\n` }, 'noisy');
    const run = await world.cli(['sync', '--vm', 'noisy']);
    const table = await world.cli(['sync', '--vm', 'noisy', '--force'], { json: false });
    const row = rows(run).noisy;
    expectRevShapes(row);
    expect({ code: run.code, result: row.result, error: row.error?.code, rev_after: row.rev_after, live: liveRev(world, 'noisy'), lock: lockExists(world, 'noisy') }).toEqual({
      code: 1,
      result: 'failed',
      error: 'post_sync_failed',
      rev_after: next,
      live: next,
      lock: false,
    });
    expect(row.error?.message).toMatch(/exited 4/);
    for (const out of [run, table]) {
      expect(out.stdout + out.stderr).not.toContain(ESC);
      expect(out.stdout + out.stderr).not.toContain('\u0007');
      expect(out.stdout).not.toContain('\\u001b');
    }
    expect(Buffer.byteLength(run.stdout)).toBeLessThan(100 * 1024);
    expect(Buffer.byteLength(table.stdout + table.stderr)).toBeLessThan(100 * 1024);
  } finally {
    fs.rmSync(bashrc, { force: true });
  }
});

test('a run that reaches the lock after a newer run deployed refuses (ahead): the VM keeps the newer commit', async () => {
  const c1 = commitExactly(world, { 'app.txt': `race c1 ${Date.now()}\n` }, 'race c1');
  const c2 = commitExactly(world, { 'app.txt': `race c2 ${Date.now()}\n` }, 'race c2');
  // A second runner host with its own clone (two runs must not share one clone's index).
  const configB = path.join(world.dir, 'vm-sync-b.yml');
  fs.writeFileSync(configB, fleetConfigYaml(world.fleet, { mainRepoPath: path.join(world.dir, 'runner-b', 'app'), url: world.ws.origin }, { sync: ['retries: 1'] }));

  // Run A's first mkdir/ln on the VM (before it holds the lock) waits until B is done.
  armSlow(raceBin, 'gate 300');
  const pendingA = world.cli(['sync', '--vm', 'race', '--commit', c1]);
  const fired = await waitFor(() => slowFired(raceBin), 60_000);
  expect(fired).toMatch(/^(mkdir|ln) /);
  await sleep(1000);
  const b = await world.cli(['sync', '--vm', 'race', '--config', configB, '--json'], { config: false, json: false });
  const rowB = rows({ ...b, json: JSON.parse(b.stdout) }).race;
  expect([b.code, rowB.result, rowB.rev_after, liveRev(world, 'race')]).toEqual([0, 'success', c2, c2]);
  openGate(raceBin);
  const a = await pendingA;
  const rowA = rows(a).race;
  expectRevShapes(rowA);
  expect({ code: a.code, state: rowA.state, result: rowA.result, error: rowA.error?.code, rev_after: rowA.rev_after, live: liveRev(world, 'race'), lock: lockExists(world, 'race') }).toEqual({
    code: 1,
    state: 'ahead',
    result: 'refused',
    error: 'refused_ahead',
    rev_after: c2,
    live: c2,
    lock: false,
  });
});
test.each([['cancelled (SIGINT/SIGTERM)', 'abort'], ['out of sync.timeout_s', 'timeout']])(
  'a run %s while its first step on the VM is still waiting leaves nothing behind once that step could go on: no lock, no process, same release',
  async (_label, how) => {
    const vm = world.vm('race');
    const before = liveRev(world, 'race');
    commitExactly(world, { 'app.txt': `never deployed ${Date.now()}\n` }, 'never deployed');
    if (how === 'timeout') configure(world, { timeoutS: 5 });
    armSlow(raceBin, 'gate 300'); // its first mkdir/ln (before it holds the lock) waits for the gate
    const controller = new AbortController();
    const started = Date.now();
    const pending = world.cli(['sync', '--vm', 'race'], { signal: controller.signal });
    const fired = await waitFor(() => slowFired(raceBin), 60_000);
    if (how === 'abort') controller.abort();
    const run = await pending;
    const took = Date.now() - started;
    const row = rows(run).race;
    expectRevShapes(row);
    // Had the step outlived the run, it would now take the lock (or worse).
    openGate(raceBin);
    await sleep(3000);
    expect({
      fired: /^(mkdir|ln) /.test(fired ?? ''),
      code: run.code,
      error: row.error?.code,
      // The gate would hold the step for 300 s: ending within the budget plus the
      // scan and the cleanup round trips (kill, probe, unlock) on a loaded machine is prompt.
      prompt: took < (how === 'abort' ? 15_000 : 5000 + 12_000) ? true : took,
      rev_after: row.rev_after,
      live: liveRev(world, 'race'),
      lock: lockExists(world, 'race'),
      processes: vmProcesses(vm),
    }).toEqual({
      fired: true,
      code: 1,
      error: how === 'abort' ? 'interrupted' : 'timeout',
      prompt: true,
      rev_after: before,
      live: before,
      lock: false,
      processes: [],
    });
  },
);

function isLink(file: string): boolean {
  try {
    return fs.lstatSync(file).isSymbolicLink();
  } catch {
    return false;
  }
}
