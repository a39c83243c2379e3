import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import {
  commitExactly,
  configure,
  destroyWorld,
  ESC,
  expectRevShapes,
  killVmProcesses,
  liveRev,
  loadLockModule,
  lockExists,
  lockPath,
  rows,
  sleep,
  stateDir,
  vmProcesses,
  waitFor,
  waitNoVmProcesses,
} from '../helpers/hardening.js';
import type { CliRun } from '../helpers/world.js';
import { World } from '../helpers/world.js';

/*
 * Contract 4 of the remote hardening: the VM's deploy lock. A live holder is
 * respected whatever the taker's timeout_s; a dead holder on this runner host
 * is taken over at once and its remote work stopped; an empty or garbage owner
 * is `locked` while young and taken over when old; `vm-sync unlock` breaks a
 * lock only when it is safe or forced; VM-controlled owner text is never
 * printed raw. Locks are planted by hand exactly as the contract describes.
 */

let world: World;
const IDS = ['held', 'local', 'vm-e', 'vm-g', 'vm-gl', 'killed', 'unlock', 'ansi'];

beforeAll(async () => {
  world = await World.create(IDS);
  commitExactly(world, { 'app.txt': 'first\n' }, 'first');
  const first = await world.cli(['sync', '--vm', IDS.filter((id) => id !== 'unlock').join(',')]);
  expect(first.code).toBe(0);
});
afterAll(() => destroyWorld(world));
afterEach(() => {
  killVmProcesses(world);
  configure(world);
});

const now = (): number => Math.floor(Date.now() / 1000);
const all = (...runs: CliRun[]): string => runs.map((r) => r.stdout + r.stderr).join('\n');
/** Shell errors that must never surface: the owner text reached arithmetic or a parser. */
const SHELL_ERROR = /arithmetic|syntax error|expecting|bad number|illegal number|unexpected/i;

/** A lock in the current format (a symlink whose target is the owner record). */
async function plantLock(id: string, fields: { host: string; pid: number; deadline: number; token?: string; commit?: string }): Promise<{ token: string; text: string }> {
  const { encodeLockOwner } = await loadLockModule();
  const token = fields.token ?? `${fields.host}:${fields.pid}:0badc0ffee00`;
  const text = encodeLockOwner({ token, host: fields.host, pid: fields.pid, pidStart: '1', boot: 'b00710000000', pidns: 'pid:[4026531836]', commit: fields.commit ?? crypto.randomBytes(20).toString('hex'), run: '', deadline: fields.deadline });
  fs.mkdirSync(stateDir(world, id), { recursive: true });
  fs.rmSync(lockPath(world, id), { recursive: true, force: true });
  fs.symlinkSync(text, lockPath(world, id));
  return { token, text };
}

/** A lock of the old version: a directory with an `owner` file. */
function plantLegacyLock(id: string, owner: string, ageS: number): void {
  const lock = lockPath(world, id);
  fs.rmSync(lock, { recursive: true, force: true });
  fs.mkdirSync(lock, { recursive: true });
  fs.writeFileSync(path.join(lock, 'owner'), owner);
  const t = now() - ageS;
  fs.utimesSync(path.join(lock, 'owner'), t, t);
  fs.utimesSync(lock, t, t);
}

test('a live holder with a far deadline is respected by a run whose timeout_s is shorter, however long it waits', async () => {
  const before = liveRev(world, 'held');
  const { token, text } = await plantLock('held', { host: 'other-runner', pid: 4242, deadline: now() + 3600 });
  commitExactly(world, { 'app.txt': `held ${Date.now()}\n` }, 'for held');
  configure(world, { timeoutS: 5 });

  const first = await world.cli(['sync', '--vm', 'held']);
  await sleep(6500); // longer than the taker's timeout_s
  const second = await world.cli(['sync', '--vm', 'held']);
  for (const run of [first, second]) {
    const row = rows(run).held;
    expectRevShapes(row);
    expect({ code: run.code, result: row.result, error: row.error?.code, names: row.error?.message.includes(token) ?? false, rev_after: row.rev_after }).toEqual({
      code: 1,
      result: 'failed',
      error: 'locked',
      names: true,
      rev_after: before,
    });
  }
  expect(fs.readlinkSync(lockPath(world, 'held'))).toBe(text);
  expect(liveRev(world, 'held')).toBe(before);
  fs.rmSync(lockPath(world, 'held'), { force: true });
});

test('holders on this runner host: a dead pid or a reused pid is stale at once, a live one is respected', async () => {
  const { runnerHostId, processStart, bootId, pidNamespace } = await loadLockModule();
  const host = runnerHostId();
  // What a vm-sync run on this very machine writes into its record.
  const here = { boot: bootId?.() ?? '', pidns: pidNamespace?.() ?? '' };
  // A live process of this host with its real start time: a live holder.
  const live = spawn('sleep', ['60'], { stdio: 'ignore' });
  try {
    await waitFor(() => processStart(live.pid ?? 0) !== '', 5000);
    const before = liveRev(world, 'local');
    commitExactly(world, { 'app.txt': `local ${Date.now()}\n` }, 'for local');
    const { encodeLockOwner } = await loadLockModule();
    const plantLocal = (pid: number, pidStart: string, token: string): string => {
      const text = encodeLockOwner({ token, host, pid, pidStart, ...here, commit: '', run: '', deadline: now() + 3600 });
      fs.rmSync(lockPath(world, 'local'), { recursive: true, force: true });
      fs.symlinkSync(text, lockPath(world, 'local'));
      return text;
    };
    const liveText = plantLocal(live.pid ?? 0, processStart(live.pid ?? 0), `${host}:${live.pid}:11117e000001`);
    const held = await world.cli(['sync', '--vm', 'local']);
    expect({ code: held.code, error: rows(held).local.error?.code, rev_after: rows(held).local.rev_after, lock: fs.readlinkSync(lockPath(world, 'local')) }).toEqual({ code: 1, error: 'locked', rev_after: before, lock: liveText });

    // The same pid with another start time: the pid was reused, the holder is gone.
    plantLocal(live.pid ?? 0, String(Number(processStart(live.pid ?? 0)) + 1), `${host}:${live.pid}:2e05ed000002`);
    const reused = await world.cli(['sync', '--vm', 'local']);
    const r1 = rows(reused).local;
    expect({ code: reused.code, result: r1.result, rev_after: r1.rev_after, live: liveRev(world, 'local'), lock: lockExists(world, 'local') }).toEqual({ code: 0, result: 'success', rev_after: r1.rev_after, live: r1.rev_after, lock: false });
    expect(r1.rev_after).not.toBe(before);
    expect(r1.notes.some((n) => /lock/i.test(n) && n.includes('2e05ed000002'))).toBe(true);
  } finally {
    live.kill('SIGKILL');
  }

  // A pid that has exited.
  const gone = spawn('true', [], { stdio: 'ignore' });
  await new Promise((r) => gone.on('exit', r));
  const next = commitExactly(world, { 'app.txt': `local dead ${Date.now()}\n` }, 'for local, dead holder');
  const { encodeLockOwner } = await loadLockModule();
  fs.symlinkSync(encodeLockOwner({ token: `${host}:${gone.pid}:dead00000003`, host, pid: gone.pid ?? 0, pidStart: '12345', ...here, commit: '', run: '', deadline: now() + 3600 }), lockPath(world, 'local'));
  const dead = await world.cli(['sync', '--vm', 'local']);
  const r2 = rows(dead).local;
  expect({ code: dead.code, result: r2.result, rev_after: r2.rev_after, live: liveRev(world, 'local'), lock: lockExists(world, 'local') }).toEqual({ code: 0, result: 'success', rev_after: next, live: next, lock: false });
  expect(r2.notes.some((n) => /lock/i.test(n) && n.includes('dead00000003'))).toBe(true);
});

describe.each([
  ['an empty owner file (lock of the old version)', 'vm-e', () => plantLegacyLock('vm-e', '', 0), (age: number) => plantLegacyLock('vm-e', '', age), /unreadable|empty/i, null],
  ['a garbage owner file', 'vm-g', () => plantLegacyLock('vm-g', 'host:1:abc 17x\n', 0), (age: number) => plantLegacyLock('vm-g', 'host:1:abc 17x\n', age), /unreadable|empty/i, 'host:1:abc'],
  [
    'a garbage lock symlink',
    'vm-gl',
    () => {
      fs.rmSync(lockPath(world, 'vm-gl'), { recursive: true, force: true });
      fs.symlinkSync('host:1:abc 17x', lockPath(world, 'vm-gl'));
    },
    (age: number) => {
      fs.rmSync(lockPath(world, 'vm-gl'), { recursive: true, force: true });
      fs.symlinkSync('host:1:abc 17x', lockPath(world, 'vm-gl'));
      fs.lutimesSync(lockPath(world, 'vm-gl'), now() - age, now() - age);
    },
    /unreadable|empty/i,
    'host:1:abc',
  ],
] as const)('%s', (_label, id, plantFresh, plantAged, freshMessage, holderText) => {
  test('is locked while younger than 60 s, with no shell error; doctor shows it', async () => {
    const before = liveRev(world, id);
    commitExactly(world, { 'app.txt': `${id} ${Date.now()}\n` }, `for ${id}`);
    plantFresh();
    const run = await world.cli(['sync', '--vm', id]);
    const table = await world.cli(['sync', '--vm', id], { json: false });
    const row = rows(run)[id];
    expectRevShapes(row);
    expect({ code: run.code, result: row.result, error: row.error?.code, rev_after: row.rev_after, live: liveRev(world, id) }).toEqual({ code: 1, result: 'failed', error: 'locked', rev_after: before, live: before });
    if (freshMessage) expect(row.error?.message).toMatch(freshMessage);
    expect(all(run, table)).not.toMatch(SHELL_ERROR);
    expect(lockExists(world, id)).toBe(true);

    const doctor = await world.cli(['doctor', '--vm', id]);
    const doctorText = await world.cli(['doctor', '--vm', id], { json: false });
    const check = (doctor.json as unknown as { vms: Array<{ checks: Array<{ name: string; status: string; detail: string }> }> }).vms[0].checks.find((c) => c.name === 'lock');
    expect(check?.status).not.toBe('ok');
    expect(check?.detail).not.toMatch(/no lock/i);
    if (freshMessage) expect(check?.detail).toMatch(freshMessage);
    expect(doctorText.stdout).not.toMatch(/no lock/i);
    expect(all(doctor, doctorText)).not.toMatch(SHELL_ERROR);
  });

  test('is taken over once older than 60 s (well inside timeout_s), with a note', async () => {
    const next = commitExactly(world, { 'app.txt': `${id} aged ${Date.now()}\n` }, `for ${id}, aged`);
    plantAged(90); // older than 60 s, younger than the taker's timeout_s (120 s)
    const run = await world.cli(['sync', '--vm', id]);
    const row = rows(run)[id];
    expectRevShapes(row);
    expect({ code: run.code, result: row.result, error: row.error, rev_after: row.rev_after, live: liveRev(world, id), lock: lockExists(world, id) }).toEqual({
      code: 0,
      result: 'success',
      error: null,
      rev_after: next,
      live: next,
      lock: false,
    });
    expect(row.notes.some((n) => /lock/i.test(n) && (holderText === null || n.includes(holderText)))).toBe(true);
    expect(all(run)).not.toMatch(SHELL_ERROR);
  });
});

test('kill -9 of a real vm-sync during post_sync_command: the next run takes the lock at once, notes the dead holder and stops its command', async () => {
  const cli = path.join(process.cwd(), 'dist', 'cli.js');
  expect(fs.existsSync(cli)).toBe(true); // npm run build
  const vm = world.vm('killed');
  for (const f of ['post.started', 'post.done']) fs.rmSync(path.join(vm.home, f), { force: true });
  const dying = commitExactly(world, { 'app.txt': `dying ${Date.now()}\n` }, 'deployed by the run that dies');
  configure(world, { sync: [`post_sync_command: 'touch "$HOME/post.started"; sleep 20; touch "$HOME/post.done"'`] });

  const child = spawn(process.execPath, [cli, 'sync', '--config', world.configPath, '--vm', 'killed', '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let childErr = '';
  child.stderr.on('data', (d: Buffer) => (childErr += d.toString()));
  child.stdout.resume();
  const exited = new Promise((resolve) => child.on('exit', resolve));
  try {
    const started = await waitFor(() => fs.existsSync(path.join(vm.home, 'post.started')), 60_000);
    expect([started, childErr.slice(-500)]).toEqual([true, expect.any(String)]);
    expect(lockExists(world, 'killed')).toBe(true); // the run holds it while its command runs
  } finally {
    child.kill('SIGKILL');
    await exited;
  }
  expect(liveRev(world, 'killed')).toBe(dying);
  const startedAt = fs.statSync(path.join(vm.home, 'post.started')).mtimeMs;

  configure(world);
  const next = commitExactly(world, { 'app.txt': `after the kill ${Date.now()}\n` }, 'after the kill');
  const run = await world.cli(['sync', '--vm', 'killed']);
  const row = rows(run).killed;
  expectRevShapes(row);
  const left = await waitNoVmProcesses(vm, 3000);
  expect({ code: run.code, result: row.result, error: row.error, rev_after: row.rev_after, live: liveRev(world, 'killed'), lock: lockExists(world, 'killed'), processes: left }).toEqual({
    code: 0,
    result: 'success',
    error: null,
    rev_after: next,
    live: next,
    lock: false,
    processes: [],
  });
  expect(row.notes.some((n) => /lock/i.test(n) && n.includes(String(child.pid)))).toBe(true);

  await sleep(Math.max(0, startedAt + 23_000 - Date.now())); // the dead run's command would have finished by now
  expect({ done: fs.existsSync(path.join(vm.home, 'post.done')), processes: vmProcesses(vm) }).toEqual({ done: false, processes: [] });
});

test('vm-sync unlock: nothing to do, a live holder only with --force, a stale one without', async () => {
  const unlock = (...extra: string[]): Promise<CliRun> => world.cli(['unlock', '--vm', 'unlock', ...extra], { json: false });

  const never = await unlock(); // never deployed: no state directory at all
  expect({ code: never.code, says: /not locked|no lock/i.test(all(never)) }).toEqual({ code: 0, says: true });
  expect((await world.cli(['sync', '--vm', 'unlock'])).code).toBe(0);
  const none = await unlock();
  expect({ code: none.code, says: /not locked|no lock/i.test(all(none)) }).toEqual({ code: 0, says: true });

  const live = await plantLock('unlock', { host: 'other-runner', pid: 777, deadline: now() + 3600, token: 'other-runner:777:5ca1ab1e0001' });
  const refused = await unlock();
  expect({ code: refused.code, names: all(refused).includes(live.token), force: all(refused).includes('--force') }).toEqual({ code: 1, names: true, force: true });
  expect(fs.readlinkSync(lockPath(world, 'unlock'))).toBe(live.text);

  const forced = await unlock('--force');
  expect({ code: forced.code, names: all(forced).includes(live.token), lock: lockExists(world, 'unlock') }).toEqual({ code: 0, names: true, lock: false });

  const stale = await plantLock('unlock', { host: 'other-runner', pid: 778, deadline: now() - 100, token: 'other-runner:778:5ca1ab1e0002' });
  const broken = await unlock();
  expect({ code: broken.code, names: all(broken).includes(stale.token), lock: lockExists(world, 'unlock') }).toEqual({ code: 0, names: true, lock: false });

  // And the VM deploys normally afterwards.
  const next = commitExactly(world, { 'app.txt': `after unlock ${Date.now()}\n` }, 'after unlock');
  const run = await world.cli(['sync', '--vm', 'unlock']);
  expect([run.code, rows(run).unlock.rev_after, liveRev(world, 'unlock')]).toEqual([0, next, next]);
});

test('vm-sync unlock --force breaks any record, including ones with long runs of one byte', async () => {
  // A record is matched by its exact bytes: a record with 32+ equal bytes must match too.
  const records: Array<[string, () => Promise<void> | void]> = [
    ['a current-format record deploying aaaa…', async () => void (await plantLock('unlock', { host: 'other-runner', pid: 779, deadline: now() + 3600, token: 'other-runner:779:5ca1ab1e0003', commit: 'a'.repeat(40) }))],
    ['an old-format owner of 100 x', () => plantLegacyLock('unlock', `${'x'.repeat(100)} ${now()}\n`, 0)],
  ];
  const results: unknown[] = [];
  for (const [label, plant] of records) {
    await plant();
    const forced = await world.cli(['unlock', '--vm', 'unlock', '--force'], { json: false });
    const out = all(forced);
    results.push({ label, code: forced.code, lock: lockExists(world, 'unlock'), broke: /broke the lock/i.test(out) ? true : out.trim().slice(0, 300) });
    fs.rmSync(lockPath(world, 'unlock'), { recursive: true, force: true });
  }
  expect(results).toEqual(records.map(([label]) => ({ label, code: 0, lock: false, broke: true })));
});

test('a lock owner holding terminal escapes never reaches stdout, stderr or the JSON raw', async () => {
  const hostile = '\u001b[31mevil\u001b]0;pwned\u0007 1700000000\n';
  const clean = (label: string, run: CliRun): void => {
    expect([label, run.stdout.includes(ESC) || run.stderr.includes(ESC), run.stdout.includes('\\u001b'), run.stdout.includes('\u0007') || run.stderr.includes('\u0007')]).toEqual([label, false, false, false]);
  };
  plantLegacyLock('ansi', hostile, 0);
  clean('status --json', await world.cli(['status', '--vm', 'ansi']));
  clean('status', await world.cli(['status', '--vm', 'ansi'], { json: false }));
  clean('doctor --json', await world.cli(['doctor', '--vm', 'ansi']));
  clean('doctor', await world.cli(['doctor', '--vm', 'ansi'], { json: false }));
  commitExactly(world, { 'app.txt': `ansi ${Date.now()}\n` }, 'for ansi');
  const sync = await world.cli(['sync', '--vm', 'ansi']);
  clean('sync --json', sync);
  // Whether it was taken over (an ancient legacy lock) or respected, the row says so in clean text.
  expect(rows(sync).ansi.notes.concat(rows(sync).ansi.error?.message ?? '').join('\n')).toMatch(/evil/);

  plantLegacyLock('ansi', hostile, 0);
  commitExactly(world, { 'app.txt': `ansi again ${Date.now()}\n` }, 'for ansi again');
  clean('sync', await world.cli(['sync', '--vm', 'ansi'], { json: false }));
  plantLegacyLock('ansi', hostile, 0);
  clean('unlock', await world.cli(['unlock', '--vm', 'ansi'], { json: false }));
  plantLegacyLock('ansi', hostile, 0);
  clean('unlock --force', await world.cli(['unlock', '--vm', 'ansi', '--force'], { json: false }));
});
