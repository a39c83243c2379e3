import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { loadConfig } from '../../src/config/load.js';
import { startVm, stopVm } from '../../src/demo/fleet.js';
import { withCloneLock } from '../../src/git/clone-lock.js';
import { KnownHosts } from '../../src/remote/known-hosts.js';
import { VmSession } from '../../src/remote/session.js';
import type { VmSyncError } from '../../src/errors.js';
import { expectedTree, snapshotTree, withCloneWait, World, type CliRun } from '../helpers/world.js';

/*
 * A deploy connects to its first VMs while the runner host fetches and
 * exports the commit (here: while another run holds the runner-host clone),
 * and runs nothing on them before its pipeline does. Observed from the VMs'
 * side: sshd's log of handshakes, established TCP connections, and the
 * deploy lock directory.
 */

let world: World;

beforeAll(async () => {
  world = await World.create(['ca1', 'ca2', 'ca3']);
});
afterAll(() => world?.destroy());

/** Handshakes sshd accepted so far on a VM. */
function handshakes(id: string): number {
  return (fs.readFileSync(world.vm(id).log, 'utf8').match(/Accepted publickey/g) ?? []).length;
}

/** Established TCP connections to a VM's sshd (from this host). */
function established(id: string): number {
  const out = execFileSync('ss', ['-Htn', 'state', 'established', `( dport = :${world.vm(id).port} )`], { encoding: 'utf8' });
  return out.split('\n').filter((line) => line.trim()).length;
}

async function until(what: string, ok: () => boolean, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/** The world's config with some of its lines replaced. */
function configure(replace: Record<string, string> = {}): void {
  world.writeConfig();
  let text = fs.readFileSync(world.configPath, 'utf8');
  for (const [from, to] of Object.entries(replace)) {
    expect(text).toContain(from);
    text = text.replace(from, to);
  }
  fs.writeFileSync(world.configPath, text);
}

const listenerPid = (id: string): number => Number(fs.readFileSync(world.vm(id).pidFile, 'utf8').trim());

/** Stops (SIGSTOP) or resumes (SIGCONT) a VM's sshd listener: stopped, it accepts TCP but never answers. */
function freeze(id: string, frozen: boolean): void {
  process.kill(listenerPid(id), frozen ? 'SIGSTOP' : 'SIGCONT');
}

/** The processes of a VM's open SSH sessions (everything below its sshd listener). */
function sessionPids(id: string): number[] {
  const below = (pid: number): number[] => {
    let out: string;
    try {
      out = execFileSync('pgrep', ['-P', String(pid)], { encoding: 'utf8' });
    } catch {
      return [];
    }
    return out.split('\n').filter(Boolean).map(Number).flatMap((kid) => [kid, ...below(kid)]);
  };
  return below(listenerPid(id));
}

/**
 * Runs the CLI while another run holds the runner-host clone (so the deploy waits in its fetch step);
 * `during` runs meanwhile, then the clone is released and the deploy goes on.
 */
async function runWhileCloneHeld(args: string[], during: () => Promise<void>): Promise<CliRun> {
  let release!: () => void;
  const holding = withCloneLock(world.runnerRepo, 'a deploy from another job', {}, () => new Promise<void>((r) => (release = r)));
  const run = withCloneWait('60', () => world.cli(args));
  try {
    await during();
  } finally {
    release();
    await holding;
  }
  return run;
}

test('the first VMs (sync.concurrency of them) are connected while the commit is prepared; nothing runs on them before; the deploy lands', async () => {
  configure({ 'concurrency: 8': 'concurrency: 2' });
  const c1 = world.ws.commit({ 'app.txt': 'one\n', 'lib/x.txt': 'x\n' }, 'c1');
  world.ws.push();
  const before = Object.fromEntries(['ca1', 'ca2', 'ca3'].map((id) => [id, handshakes(id)]));
  const done = await runWhileCloneHeld(['sync', '-v'], async () => {
    // The run waits for the clone; its first two VMs are connected meanwhile (config order), the third is not.
    await until('the first two VMs to be connected', () => handshakes('ca1') > before.ca1 && handshakes('ca2') > before.ca2);
    await sleep(300);
    expect(established('ca1')).toBe(1);
    expect(established('ca2')).toBe(1);
    expect(handshakes('ca3')).toBe(before.ca3);
    expect(established('ca3')).toBe(0);
    // Connected only: no deploy lock taken, nothing written.
    for (const id of ['ca1', 'ca2']) {
      expect(fs.existsSync(world.target(id))).toBe(false);
      expect(fs.readdirSync(world.vm(id).home).filter((name) => name.startsWith('.vm-sync') || name.startsWith('app'))).toEqual([]);
    }
  });
  expect(done.code).toBe(0);
  for (const id of ['ca1', 'ca2', 'ca3']) {
    expect(world.sentinel(id)).toBe(`${c1}\n`);
    expect(snapshotTree(world.target(id))).toEqual(expectedTree(world.ws, c1));
  }
  // One handshake per VM: the connection made ahead is the one the pipeline used.
  expect(handshakes('ca1') - before.ca1).toBe(1);
  expect(handshakes('ca2') - before.ca2).toBe(1);
  expect(handshakes('ca3') - before.ca3).toBe(1);
  expect(done.stderr).toMatch(/ca1.*connected ahead in \d+ ms \(while the commit is prepared\)/);
  expect(done.stderr).not.toMatch(/ca3.*connected ahead/);
  // Nothing stays open after the run (the CLI runs in this process here).
  await until('every connection to close', () => ['ca1', 'ca2', 'ca3'].every((id) => established(id) === 0), 5000);
});

test('the in-place layout starts from the connections made ahead too: one handshake per VM, the deploy lands', async () => {
  configure({ 'vm_repo_paths: { default: ~/app }': 'vm_repo_paths: { default: ~/site }\n  layout: in-place', 'concurrency: 8': 'concurrency: 2' });
  const c = world.ws.commit({ 'app.txt': 'in place\n' }, 'in-place');
  world.ws.push();
  const before = Object.fromEntries(['ca1', 'ca2', 'ca3'].map((id) => [id, handshakes(id)]));
  const done = await runWhileCloneHeld(['sync', '-v'], async () => {
    await until('the first two VMs to be connected', () => handshakes('ca1') > before.ca1 && handshakes('ca2') > before.ca2);
    await sleep(300);
    expect(handshakes('ca3')).toBe(before.ca3);
  });
  expect(done.code).toBe(0);
  for (const id of ['ca1', 'ca2', 'ca3']) {
    const site = path.join(world.vm(id).home, 'site');
    // A plain directory (no release symlink), holding the commit.
    expect(fs.lstatSync(site).isDirectory()).toBe(true);
    expect(fs.readFileSync(path.join(site, '.sync_rev'), 'utf8')).toBe(`${c}\n`);
    expect(snapshotTree(site)).toEqual(expectedTree(world.ws, c));
    expect(handshakes(id) - before[id]).toBe(1);
  }
  expect(done.stderr).toMatch(/ca2.*connected ahead in \d+ ms/);
  expect(done.stderr).not.toMatch(/ca3.*connected ahead/);
});

test('a run that fails before its pipelines start closes the connections it made ahead', async () => {
  configure();
  const before = handshakes('ca1');
  const failed = await runWhileCloneHeld(['sync', '--commit', 'no-such-rev-anywhere'], () => until('the VMs to be connected ahead', () => handshakes('ca1') > before && established('ca1') === 1));
  expect(failed.code).not.toBe(0);
  expect(failed.json.error?.code).toBeDefined();
  await until('every connection to close', () => ['ca1', 'ca2', 'ca3'].every((id) => established(id) === 0), 5000);
});

test('a VM whose connection made ahead closed before its pipeline took it is connected afresh, and deployed', async () => {
  configure();
  const c2 = world.ws.commit({ 'app.txt': 'two\n' }, 'c2');
  world.ws.push();
  const before = handshakes('ca2');
  const done = await runWhileCloneHeld(['sync'], async () => {
    await until('ca2 to be connected ahead', () => handshakes('ca2') > before && established('ca2') === 1);
    // The VM drops the idle connection (sshd restarted, a firewall's idle timeout): kill its session process.
    const children = execFileSync('pgrep', ['-P', fs.readFileSync(world.vm('ca2').pidFile, 'utf8').trim()], { encoding: 'utf8' }).split('\n').filter(Boolean);
    expect(children.length).toBeGreaterThan(0);
    for (const pid of children) process.kill(Number(pid), 'SIGTERM');
    await until('the connection to drop', () => established('ca2') === 0);
  });
  expect(done.code).toBe(0);
  expect(world.sentinel('ca2')).toBe(`${c2}\n`);
  const row = done.json.vms.find((vm) => vm.id === 'ca2');
  expect(row?.result).toBe('success');
  // Connected afresh, not retried: no failed attempt in its row.
  expect(row?.notes.join('\n') ?? '').not.toContain('attempt 1 failed');
  expect(handshakes('ca2') - before).toBe(2);
});

test('a VM silent while the commit is prepared does not hold a run that fails first until its connect timeout', async () => {
  configure({ 'connect_timeout_s: 5': 'connect_timeout_s: 60' });
  freeze('ca3', true);
  try {
    const started = Date.now();
    const failed = await world.cli(['sync', '--commit', 'no-such-rev-anywhere']);
    expect(failed.code).not.toBe(0);
    expect(failed.json.error?.code).toBeDefined();
    // Well under the 60 s connect timeout: the connection still being made was stopped, not waited for.
    expect(Date.now() - started).toBeLessThan(20_000);
    await until('every connection to close', () => ['ca1', 'ca2', 'ca3'].every((id) => established(id) === 0), 5000);
  } finally {
    freeze('ca3', false);
  }
});

test('a VM down only while the commit is prepared loses no attempt: with retries 0 it is deployed', async () => {
  configure({ 'retries: 1': 'retries: 0' });
  const c3 = world.ws.commit({ 'app.txt': 'three\n' }, 'c3');
  world.ws.push();
  // Its sshd is not running: the connection made ahead is refused at once.
  expect(stopVm(world.vm('ca1')).stopped).toBeGreaterThan(0);
  let done: CliRun;
  try {
    done = await runWhileCloneHeld(['sync', '-v'], async () => {
      await sleep(1000);
      await startVm(world.vm('ca1'));
    });
  } finally {
    if (!fs.existsSync(world.vm('ca1').pidFile)) await startVm(world.vm('ca1'));
  }
  expect(done.code).toBe(0);
  for (const id of ['ca1', 'ca2', 'ca3']) expect(world.sentinel(id)).toBe(`${c3}\n`);
  const row = done.json.vms.find((vm) => vm.id === 'ca1');
  expect([row?.result, row?.notes.filter((n) => n.includes('attempt'))]).toEqual(['success', []]);
  expect(done.stderr).not.toMatch(/ca1.*connected ahead/);
  expect(done.stderr).toMatch(/ca2.*connected ahead/);
});

// The three below came from the adversary review of 862f7c0 (helper-39).

test('a VM that answers late in the fetch is not cut short: the connection made ahead has the whole connect timeout from when the pipeline takes it', async () => {
  configure({ 'connect_timeout_s: 5': 'connect_timeout_s: 6', 'retries: 1': 'retries: 0' });
  const c = world.ws.commit({ 'app.txt': 'late\n' }, 'late');
  world.ws.push();
  freeze('ca1', true);
  const started = Date.now();
  let done: CliRun;
  try {
    // The clone is held for 3 s; the VM answers 8 s after the start: 5 s into its pipeline's 6 s.
    done = await runWhileCloneHeld(['sync', '-v'], async () => {
      await sleep(3000);
      setTimeout(() => freeze('ca1', false), 8000 - (Date.now() - started));
    });
  } finally {
    await sleep(Math.max(0, 8200 - (Date.now() - started)));
    freeze('ca1', false);
  }
  const row = done.json.vms.find((vm) => vm.id === 'ca1');
  expect([row?.result, row?.error?.code ?? null]).toEqual(['success', null]);
  expect(world.sentinel('ca1')).toBe(`${c}\n`);
});

test('a run that fails first exits even when a VM it connected ahead stopped answering (the socket is not held half-closed)', async () => {
  configure();
  const before = handshakes('ca1');
  let release!: () => void;
  const holding = withCloneLock(world.runnerRepo, 'a deploy from another job', {}, () => new Promise<void>((r) => (release = r)));
  const child = spawn(process.execPath, [path.resolve('dist/cli.js'), 'sync', '--config', world.configPath, '--commit', 'no-such-rev-anywhere', '--json'], {
    env: { ...process.env, VM_SYNC_CLONE_WAIT_S: '60' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  let stopped: number[] = [];
  let exitedAfterMs: number | null;
  try {
    await until('ca1 to be connected ahead', () => handshakes('ca1') > before && established('ca1') === 1);
    await sleep(300);
    // The VM's session hangs (its kernel still acknowledges): nothing answers the close.
    stopped = sessionPids('ca1');
    expect(stopped.length).toBeGreaterThan(0);
    for (const pid of stopped) process.kill(pid, 'SIGSTOP');
    release();
    await holding;
    const releasedAt = Date.now();
    const code = await Promise.race([exited, sleep(15_000, undefined, { ref: false }).then(() => 'still running' as const)]);
    exitedAfterMs = code === 'still running' ? null : Date.now() - releasedAt;
    expect(code).toBe(1);
  } finally {
    for (const pid of stopped) {
      try {
        process.kill(pid, 'SIGCONT');
      } catch {
        // gone
      }
    }
    release?.();
    await holding.catch(() => undefined);
    await Promise.race([exited, sleep(5000, undefined, { ref: false })]);
    if (child.exitCode === null) child.kill('SIGKILL');
  }
  expect(exitedAfterMs).not.toBeNull();
  expect(exitedAfterMs as number).toBeLessThan(10_000);
});

test('VmSession.open with a signal already aborted connects to nothing, at once', async () => {
  configure();
  const config = loadConfig(world.configPath);
  const vm = config.vms.find((v) => v.id === 'ca2');
  if (!vm) throw new Error('no ca2');
  const knownHosts = new KnownHosts(fs.readFileSync(config.knownHostsPath, 'utf8'));
  const before = handshakes('ca2');
  freeze('ca2', true);
  const started = Date.now();
  try {
    const outcome = await VmSession.open(vm, knownHosts, { connectTimeoutMs: 8000, signal: AbortSignal.abort() }).then(
      (session) => {
        session.dispose();
        return 'connected';
      },
      (error: Error) => error.message,
    );
    expect(outcome).toBe('connecting to ca2 was cancelled (per-VM timeout)');
  } finally {
    freeze('ca2', false);
  }
  expect(Date.now() - started).toBeLessThan(2000);
  expect(handshakes('ca2')).toBe(before);
});

/**
 * Connects to ca3 through a proxy that passes the first connection to its sshd and holds any later one (the
 * probe that asks which host keys the VM has) silent, with only an RSA key pinned (the VM has only ed25519:
 * ssh2 fails with no host key type in common, and the probe starts). Once the probe is connected, `abort`
 * ('signal': the run ends; 'expire': the VM's connect time is up) is aborted. Says how the connect failed, how
 * long after the abort, and whether the probe let go of its socket within a second.
 */
async function probeStopped(abort: 'signal' | 'expire'): Promise<{ code: string; message: string; afterMs: number; released: boolean }> {
  configure();
  const config = loadConfig(world.configPath);
  const real = config.vms.find((v) => v.id === 'ca3');
  if (!real) throw new Error('no ca3');
  const sockets: net.Socket[] = [];
  let later = 0;
  let laterGone = 0;
  // Half-open allowed: like a VM that never answers, it does not close its side when the probe closes its own.
  const proxy = net.createServer({ allowHalfOpen: true }, (socket) => {
    sockets.push(socket);
    socket.on('error', () => undefined);
    if (sockets.length > 1) {
      later++;
      // Once the probe closes its side, write to it: a socket the probe let go of answers with a reset; one it
      // only half-closed (and would keep until its own timeout) takes the bytes without a word.
      let gone = false;
      socket.on('error', () => {
        if (!gone) laterGone++;
        gone = true;
      });
      socket.on('end', () => {
        socket.write('x');
        setTimeout(() => socket.writable && socket.write('y'), 100).unref();
      });
      socket.resume();
      return;
    }
    const upstream = net.connect(real.port, '127.0.0.1');
    sockets.push(upstream);
    upstream.on('error', () => socket.destroy());
    socket.pipe(upstream).pipe(socket);
  });
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  const port = (proxy.address() as net.AddressInfo).port;
  const keyFile = path.join(world.dir, 'probe_rsa');
  if (!fs.existsSync(keyFile)) execFileSync('ssh-keygen', ['-q', '-t', 'rsa', '-N', '', '-f', keyFile]);
  const [type, b64] = fs.readFileSync(`${keyFile}.pub`, 'utf8').split(' ');
  const knownHosts = new KnownHosts(`[127.0.0.1]:${port} ${type} ${b64}\n`);
  const signal = new AbortController();
  const expire = new AbortController();
  try {
    const outcome = VmSession.open({ ...real, port }, knownHosts, { connectTimeoutMs: 20_000, signal: signal.signal, expire: expire.signal }).then(
      (session) => {
        session.dispose();
        return { code: 'connected', message: '', at: Date.now() };
      },
      (error: VmSyncError) => ({ code: error.code, message: error.message, at: Date.now() }),
    );
    await until('the probe to connect', () => later > 0);
    await sleep(200);
    const abortedAt = Date.now();
    (abort === 'signal' ? signal : expire).abort();
    const { code, message, at } = await outcome;
    const released = await until('the probe socket to be closed', () => laterGone === later, 1000).then(() => true, () => false);
    return { code, message, afterMs: at - abortedAt, released };
  } finally {
    for (const s of sockets) s.destroy();
    await new Promise((resolve) => proxy.close(resolve));
  }
}

test('a connect that failed on a host key type the VM lacks stops asking the VM for its keys when the run ends (the probe is not waited for)', async () => {
  const { code, message, afterMs, released } = await probeStopped('signal');
  expect([code, message]).toEqual(['timeout', 'connecting to ca3 was cancelled (per-VM timeout)']);
  // The probe's own limit is 5 s: it stopped with the run instead, and let go of its socket.
  expect(afterMs).toBeLessThan(1000);
  expect(released).toBe(true);
});

test('a probe cut short by the connect timeout of the VM says the host key does not match, not that the VM offers nothing', async () => {
  const { code, message, afterMs, released } = await probeStopped('expire');
  expect(code).toBe('host_key_mismatch');
  expect(message).not.toContain('nothing vm-sync could read');
  expect(message).toContain('ca3');
  expect(afterMs).toBeLessThan(1000);
  expect(released).toBe(true);
});
