import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { startVm, stopVm } from '../../src/demo/fleet.js';
import { armSlow, commitExactly, destroyWorld, disarm, killVmProcesses, liveRev, lockExists, openGate, sleep, slowBin, slowFired, waitFor } from '../helpers/hardening.js';
import { configureFleet, fleetRows, liveRelease, secondConfig, track } from '../helpers/fleet-release.js';
import { World } from '../helpers/world.js';

/*
 * The CLI's conventions against a real fleet: --log-format json (every
 * stderr line one object, each VM's phases in order), -q and -v, one attempt
 * per VM for status and verify, and the exit codes 130/143 of the bundle
 * stopped by a signal with every VM on a complete release.
 */

const IDS = ['c01', 'c02', 'c03'];
const PHASES = ['prepare', 'transfer', 'flip', 'verify', 'health', 'finish'];
let world: World;
let bins: string;
let rsyncBin: string;

beforeAll(async () => {
  bins = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-slowbin-'));
  rsyncBin = slowBin(bins, ['rsync']);
  world = await World.create(IDS, { sshdExtra: { c01: [`SetEnv PATH=${rsyncBin}:/usr/bin:/bin`] } });
});
afterAll(() => {
  if (rsyncBin) disarm(rsyncBin);
  destroyWorld(world);
  if (bins) fs.rmSync(bins, { recursive: true, force: true });
});
afterEach(() => {
  disarm(rsyncBin);
  killVmProcesses(world);
});

/** Sets one `sync:` key of the world's config (the base config writes each once). */
function setSync(key: string, value: string | number): void {
  const text = fs.readFileSync(world.configPath, 'utf8');
  const line = new RegExp(`^ {2}${key}: .*$`, 'm');
  if (!line.test(text)) throw new Error(`config has no sync.${key}`);
  fs.writeFileSync(world.configPath, text.replace(line, `  ${key}: ${value}`));
}

interface LogLine {
  time: string;
  level: string;
  vm: string | null;
  phase: string | null;
  message: string;
  percent?: number;
  rate?: string;
}

test('--log-format json: every stderr line is one object; each VM goes through the phases in order', async () => {
  configureFleet(world, { rollout: { health_command: 'test -f app.txt' } });
  const sha = commitExactly(world, { 'app.txt': 'one\n', 'big.txt': 'x'.repeat(300_000) }, 'one');
  const run = await world.cli(['sync', '--log-format', 'json', '-v']);
  expect([run.code, IDS.map((id) => liveRev(world, id))]).toEqual([0, IDS.map(() => sha)]);
  const lines = run.stderr.split('\n').filter((l) => l !== '');
  expect(lines.length).toBeGreaterThan(10);
  const events: LogLine[] = lines.map((line) => JSON.parse(line));
  for (const event of events) {
    // Catches a text line mixed in, a missing field, or a field of the wrong kind.
    expect(Object.keys(event).filter((k) => !['percent', 'rate'].includes(k))).toEqual(['time', 'level', 'vm', 'phase', 'message']);
    expect(new Date(event.time).toISOString()).toBe(event.time);
    expect(['debug', 'info', 'warn', 'error']).toContain(event.level);
    expect(event.vm === null || IDS.includes(event.vm)).toBe(true);
    expect(typeof event.message).toBe('string');
    // eslint-disable-next-line no-control-regex
    expect(/[\u0000-\u001f\u007f]/.test(event.message)).toBe(false);
    if (event.percent !== undefined) expect([event.phase, typeof event.percent, event.percent >= 0 && event.percent <= 100]).toEqual(['transfer', 'number', true]);
  }
  for (const id of IDS) {
    const phases = events.filter((e) => e.vm === id).map((e) => e.phase);
    // Every VM line names its phase, every phase appears, and none goes back to an earlier one.
    expect({ id, unphased: phases.filter((p) => p === null).length }).toEqual({ id, unphased: 0 });
    expect({ id, seen: [...new Set(phases)] }).toEqual({ id, seen: PHASES });
    const order = phases.map((p) => PHASES.indexOf(p as string));
    expect({ id, inOrder: order.every((n, i) => i === 0 || n >= order[i - 1]) }).toEqual({ id, inOrder: true });
    const last = events.filter((e) => e.vm === id).pop();
    expect([last?.level, last?.phase, last?.message]).toEqual(['info', 'finish', 'success']);
    // -v: the connection attempt is there, as a debug line of the prepare phase.
    expect(events.some((e) => e.vm === id && e.level === 'debug' && e.phase === 'prepare' && /^connecting to \S+@127\.0\.0\.1:\d+ \(connect_timeout_s=5\)$/.test(e.message))).toBe(true);
    expect(events.some((e) => e.vm === id && e.phase === 'transfer' && e.percent !== undefined)).toBe(true);
  }
  // Without -v: no debug line.
  const plain = await world.cli(['status', '--log-format', 'json']);
  expect(plain.code).toBe(0);
  const statusEvents: LogLine[] = plain.stderr.split('\n').filter(Boolean).map((l) => JSON.parse(l));
  expect(statusEvents.filter((e) => e.level === 'debug')).toEqual([]);
  expect(statusEvents.filter((e) => e.vm !== null).map((e) => `${e.vm} ${e.phase} ${e.level} ${e.message}`).sort()).toEqual(IDS.map((id) => `${id} finish info success`));
});

test('-q prints only the table (and errors); -v adds the debug lines; neither changes stdout', async () => {
  configureFleet(world);
  commitExactly(world, { 'app.txt': 'two\n' }, 'two');
  const quiet = await world.cli(['sync', '-q'], { json: false });
  expect([quiet.code, quiet.stderr]).toEqual([0, '']);
  expect(quiet.stdout).toMatch(/^c01 +127\.0\.0\.1 +behind +deploy +success/m);
  const normal = await world.cli(['status'], { json: false });
  const verbose = await world.cli(['status', '-v'], { json: false });
  expect(normal.stderr).not.toContain('debug:');
  expect(verbose.stderr).toMatch(/^\[c02\] debug: connecting to \S+@127\.0\.0\.1:\d+ \(connect_timeout_s=5\)$/m);
  expect(verbose.stderr).toMatch(/^\[c02\] debug: connected in \d+ ms$/m);
  const table = (s: string): string => s.replace(/\d+ms|\d+\.\d+s/g, 'T').replace(/ +/g, ' ');
  expect(table(verbose.stdout)).toBe(table(normal.stdout));
  // A VM that fails is an error line even with -q.
  stopVm(world.vm('c02'));
  try {
    const failing = await world.cli(['status', '-q'], { json: false });
    expect(failing.code).toBe(1);
    expect(failing.stderr.split('\n').filter(Boolean)).toEqual([expect.stringMatching(/^\[c02\] failed: unreachable: /)]);
  } finally {
    await startVm(world.vm('c02'));
  }
});

test('status and verify make one attempt per VM, bounded by connect_timeout_s: a refused port and a hung sshd', async () => {
  configureFleet(world);
  const sha = commitExactly(world, { 'app.txt': 'three\n' }, 'three');
  expect((await world.cli(['sync'])).code).toBe(0);
  setSync('connect_timeout_s', 2);
  setSync('retries', 3);
  // c02: nothing listens (refused). c03: a listener that accepts and never speaks (a hung sshd).
  stopVm(world.vm('c02'));
  stopVm(world.vm('c03'));
  const port = world.vm('c03').port;
  const sockets: net.Socket[] = [];
  let connections = 0;
  const server = net.createServer((socket) => {
    connections++;
    sockets.push(socket);
    socket.on('error', () => undefined);
  });
  try {
    // sshd is gone (its pid file removed): its port frees within moments.
    for (let tries = 0; ; tries++) {
      const listening = await new Promise<boolean>((resolve) => {
        server.once('error', () => resolve(false));
        server.listen(port, '127.0.0.1', () => resolve(true));
      });
      if (listening) break;
      if (tries > 50) throw new Error(`port ${port} stayed busy`);
      await sleep(100);
    }
    for (const command of ['status', 'verify']) {
      connections = 0;
      const started = Date.now();
      const run = await world.cli([command]);
      const took = Date.now() - started;
      const rows = fleetRows(run);
      expect({
        command,
        code: run.code,
        c01: [rows.c01?.result, rows.c01?.rev_after],
        c02: [rows.c02?.result, rows.c02?.error?.code],
        c03: [rows.c03?.result, rows.c03?.error?.code],
        // One attempt: no retry line, no "attempt 1 failed" note, no "(2 attempts)".
        retried: /retry \d/.test(run.stderr) || [rows.c02, rows.c03].some((r) => r?.notes.some((n) => n.startsWith('attempt ')) || / attempts\)$/.test(r?.error?.message ?? '')),
        connections,
      }).toEqual({ command, code: 1, c01: ['success', sha], c02: ['failed', 'unreachable'], c03: ['failed', 'timeout'], retried: false, connections: 1 });
      // connect_timeout_s=2; with retries: 3 the old path took 2 s x 4 + 1.5-3 + 3-6 + 6-12 s of backoff.
      expect({ command, bounded: took < 2000 + 5000 ? true : took }).toEqual({ command, bounded: true });
      expect(rows.c03.duration_ms).toBeGreaterThanOrEqual(1900);
      expect(rows.c03.duration_ms).toBeLessThan(2000 + 3000);
    }
  } finally {
    for (const socket of sockets) socket.destroy();
    await new Promise((resolve) => server.close(resolve));
    await startVm(world.vm('c02'));
    await startVm(world.vm('c03'));
  }
});

/** Runs the committed bundle as an operator does; resolves with its exit code and output. */
function bundle(args: string[]): { child: ReturnType<typeof spawn>; done: Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }>; stderr: () => string } {
  const child = spawn(process.execPath, [path.join(process.cwd(), 'dist', 'cli.js'), ...args], { cwd: world.dir, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const done = new Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }>((resolve) => child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })));
  return { child, done, stderr: () => stderr };
}

/** The VM serves a complete release of `sha`: the live symlink names a release whose .sync_rev says so. */
function onCompleteRelease(id: string, sha: string): boolean {
  const release = liveRelease(world, id);
  if (!release) return false;
  const dir = path.join(path.dirname(world.target(id)), fs.readlinkSync(world.target(id)));
  return liveRev(world, id) === sha && fs.readFileSync(path.join(dir, '.sync_rev'), 'utf8') === `${sha}\n` && fs.existsSync(path.join(dir, 'app.txt'));
}

test('SIGINT in the middle of a transfer: exit 130 after the clean stop; the VM keeps its complete release, unlocked', async () => {
  configureFleet(world, { sync: ['transfer: rsync'] });
  const before = commitExactly(world, { 'app.txt': 'four\n' }, 'four');
  expect((await world.cli(['sync'])).code).toBe(0);
  commitExactly(world, { 'app.txt': 'five\n' }, 'five');
  armSlow(rsyncBin, 'gate 600', '--server');
  // VM_SYNC_CONFIG instead of --config: the bundle finds it as an operator's shell would.
  const child = spawn(process.execPath, [path.join(process.cwd(), 'dist', 'cli.js'), 'sync', '--vm', 'c01'], { cwd: world.dir, env: { ...process.env, VM_SYNC_CONFIG: world.configPath }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const done = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  expect(await waitFor(() => slowFired(rsyncBin), 60_000)).toMatch(/^rsync --server/);
  child.kill('SIGINT');
  const code = await done;
  expect({ code, stopping: stderr.includes('vm-sync: SIGINT: stopping; every VM stays on its last complete release'), row: /\[c01\] failed: interrupted: /.test(stderr) }).toEqual({ code: 130, stopping: true, row: true });
  expect([onCompleteRelease('c01', before), lockExists(world, 'c01')]).toEqual([true, false]);
});

test('SIGTERM while waiting for another run\'s lock (--lock-wait): exit 143 at once; the holder finishes its release', async () => {
  configureFleet(world, { sync: ['transfer: rsync'] });
  const live = liveRev(world, 'c01') as string;
  const next = commitExactly(world, { 'app.txt': `six ${Date.now()}\n` }, 'six');
  armSlow(rsyncBin, 'gate 600', '--server');
  const stop = new AbortController();
  const holder = track(world.cli(['sync', '--vm', 'c01'], { signal: stop.signal }));
  try {
    await waitFor(() => slowFired(rsyncBin), 60_000);
    // Another runner host's run waits for the lock; the signal stops its wait.
    const other = secondConfig(world, 'sig');
    const waiter = bundle(['sync', '--vm', 'c01', '--lock-wait', '300', '--config', other]);
    expect(await waitFor(() => /\[c01\] locked by .*waiting up to 300s/.test(waiter.stderr()), 60_000)).toBe(true);
    const sent = Date.now();
    waiter.child.kill('SIGTERM');
    const result = await waiter.done;
    expect({ code: result.code, prompt: Date.now() - sent < 15_000, stopping: result.stderr.includes('vm-sync: SIGTERM: stopping') }).toEqual({ code: 143, prompt: true, stopping: true });
    // The holder's release was not disturbed: still mid-transfer, on the old release, then done.
    expect([holder.settledAt(), onCompleteRelease('c01', live)]).toEqual([null, true]);
    openGate(rsyncBin);
    const held = await holder.promise;
    expect([held.code, onCompleteRelease('c01', next), lockExists(world, 'c01')]).toEqual([0, true, false]);
  } finally {
    stop.abort();
    openGate(rsyncBin);
    await holder.promise.catch(() => undefined);
    await sleep(0);
  }
});

test('the bundle: --version from package.json; -v shows an internal error\'s stack as src/*.ts lines, without -v a hint', async () => {
  const pkg = JSON.parse(fs.readFileSync(path.join(process.cwd(), 'package.json'), 'utf8')) as { version: string };
  const version = await bundle(['--version']).done;
  expect([version.code, version.stdout, version.stderr]).toEqual([0, `vm-sync ${pkg.version}\n`, '']);
  // A summary path that is a directory: writing it fails with an error no code covers (an internal error).
  const results = fs.mkdtempSync(path.join(world.dir, 'results-'));
  const args = ['report', '--merge', results, '--shards', '1', '--summary', results];
  const plain = await bundle(args).done;
  expect(plain.code).toBe(1);
  expect(plain.stderr).toContain('vm-sync: internal: EISDIR');
  expect(plain.stderr).toContain('run again with -v for its stack trace');
  expect(plain.stderr).not.toMatch(/^\s+at /m);
  const verbose = await bundle([...args, '-v']).done;
  expect(verbose.code).toBe(1);
  const reportLine = fs.readFileSync(path.join(process.cwd(), 'src', 'cli.ts'), 'utf8').split('\n').findIndex((l) => l.includes('if (values.summary) fs.writeFileSync(values.summary, renderSummary(')) + 1;
  // Catches a missing or misaligned map: the frame must name the very line that wrote the summary.
  expect(verbose.stderr).toMatch(new RegExp(`^debug: internal error: Error: EISDIR`, 'm'));
  expect(verbose.stderr).toContain(`at Object.reportCommand [as run] (src/cli.ts:${reportLine}:1)`);
  expect(verbose.stderr).toMatch(/^ {4}at main \(src\/cli\.ts:\d+:1\)$/m);
  expect(verbose.stderr).not.toContain('dist/cli.js:');
});
