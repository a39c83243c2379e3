import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { destroyWorld } from '../helpers/hardening.js';
import { processTree } from '../helpers/processes.js';
import { World } from '../helpers/world.js';
import { loadConfig } from '../../src/config/load.js';
import type { VmConfig } from '../../src/config/types.js';
import { VmSyncError } from '../../src/errors.js';
import { KnownHosts } from '../../src/remote/known-hosts.js';
import { VmSession } from '../../src/remote/session.js';

/*
 * VmSession.send (the release stream as a command's input) and the socket
 * vm-sync makes itself for each VM, under faults: attacks of an adversary
 * review that held, kept as regression tests. Real sshd on loopback.
 */

let world: World;
let scratch: string;
let big: string;

beforeAll(async () => {
  world = await World.create(['held']);
  scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-send-held-'));
  big = path.join(scratch, 'big.bin');
  fs.writeFileSync(big, crypto.randomBytes(24 * 1024 * 1024));
});
afterAll(() => {
  destroyWorld(world);
  fs.rmSync(scratch, { recursive: true, force: true });
});

const vm = (): VmConfig => loadConfig(world.configPath).vms.find((v) => v.id === 'held')!;
const knownHostsText = (): string => fs.readFileSync(loadConfig(world.configPath).knownHostsPath, 'utf8');
const listener = (): number => Number(fs.readFileSync(world.vm('held').pidFile, 'utf8').trim());
/** How many of this process's descriptors are open on `file`. */
const openOn = (file: string): number => fs.readdirSync('/proc/self/fd').filter((fd) => {
  try {
    return fs.readlinkSync(`/proc/self/fd/${fd}`) === file;
  } catch {
    return false;
  }
}).length;
async function outcomeOf<T>(p: Promise<T>): Promise<{ ok: T } | { code: string; message: string }> {
  try {
    return { ok: await p };
  } catch (error) {
    return { code: error instanceof VmSyncError ? error.code : `not a VmSyncError: ${String(error)}`, message: (error as Error).message };
  }
}
const settle = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

test('a command that exits without reading its input ends at once: exit code kept, file handle closed', async () => {
  const session = await VmSession.open(vm(), new KnownHosts(knownHostsText()), { connectTimeoutMs: 5000 });
  try {
    const started = Date.now();
    const result = await session.exec('exit 7', 30_000, undefined, undefined, undefined, { path: big });
    expect(result.code).toBe(7);
    expect(Date.now() - started).toBeLessThan(5000);
    await settle(200);
    expect(openOn(big)).toBe(0);
  } finally {
    session.dispose();
  }
});

test('a VM that stops (SIGSTOP) mid-send: the exec timeout ends it with `timeout`, the send loop stops, the file is closed', async () => {
  const session = await VmSession.open(vm(), new KnownHosts(knownHostsText()), { connectTimeoutMs: 5000 });
  let stopped: number[] = [];
  try {
    const started = Date.now();
    const outcome = await outcomeOf(
      session.exec(`cat > ${world.vm('held').home}/stopped.bin`, 3000, undefined, undefined, undefined, {
        path: big,
        onSent: (bytes) => {
          if (stopped.length === 0 && bytes >= 1024 * 1024) {
            stopped = processTree(listener());
            for (const pid of stopped.slice(1)) process.kill(pid, 'SIGSTOP');
          }
        },
      }),
    );
    expect(outcome).toMatchObject({ code: 'timeout' });
    expect(Date.now() - started).toBeLessThan(6000);
    await settle(200);
    expect(openOn(big)).toBe(0);
  } finally {
    for (const pid of stopped.slice(1)) {
      try {
        process.kill(pid, 'SIGCONT');
      } catch {
        // gone
      }
    }
    session.dispose();
  }
});

test('a cancel (abort) while the VM does not answer the handshake ends at once, as `timeout`; the listener keeps working', async () => {
  const pid = listener();
  process.kill(pid, 'SIGSTOP'); // the kernel still accepts; no banner comes
  try {
    const started = Date.now();
    const outcome = await outcomeOf(VmSession.open(vm(), new KnownHosts(knownHostsText()), { connectTimeoutMs: 20_000, signal: AbortSignal.timeout(300) }));
    expect(outcome).toMatchObject({ code: 'timeout' });
    expect((outcome as { message: string }).message).toMatch(/cancelled/);
    expect(Date.now() - started).toBeLessThan(2000);
  } finally {
    process.kill(pid, 'SIGCONT');
  }
  // Without a signal (doctor, locks, unlock): the connect timeout still applies, and a working VM still opens.
  process.kill(pid, 'SIGSTOP');
  try {
    const started = Date.now();
    const outcome = await outcomeOf(VmSession.open(vm(), new KnownHosts(knownHostsText()), { connectTimeoutMs: 700 }));
    expect(outcome).toMatchObject({ code: 'timeout' });
    expect(Date.now() - started).toBeLessThan(3000);
  } finally {
    process.kill(pid, 'SIGCONT');
  }
  (await VmSession.open(vm(), new KnownHosts(knownHostsText()), { connectTimeoutMs: 5000 })).dispose();
});

test('connect failures keep their codes: refused (IPv4 and an IPv6 literal), a name that does not resolve', async () => {
  const free = await new Promise<number>((resolve) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
  const line = knownHostsText().split('\n').find((l) => l.startsWith(`[127.0.0.1]:${vm().port} `))!;
  const keyPart = line.slice(line.indexOf(' ') + 1);
  const pinFor = (name: string): KnownHosts => new KnownHosts(`${name} ${keyPart}\n`);
  const cases: Array<[string, Partial<VmConfig>, KnownHosts, string]> = [
    ['refused', { port: free }, pinFor(`[127.0.0.1]:${free}`), 'unreachable'],
    ['refused ::1', { host: '::1', port: free }, pinFor(`[::1]:${free}`), 'unreachable'],
    ['no such name', { host: 'no-such-host.invalid', port: free }, pinFor(`[no-such-host.invalid]:${free}`), 'unreachable'],
  ];
  for (const [what, change, pins, code] of cases) {
    const outcome = await outcomeOf(VmSession.open({ ...vm(), ...change }, pins, { connectTimeoutMs: 3000 }));
    expect([what, outcome]).toMatchObject([what, { code }]);
  }
});
