import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { jest } from '@jest/globals';
import { destroyWorld } from '../helpers/hardening.js';
import { processTree } from '../helpers/processes.js';
import { adoptJumpKey, canMakeNamespaces, JumpNet, writeJumpConfig } from '../helpers/jump-net.js';
import { World } from '../helpers/world.js';
import { loadConfig } from '../../src/config/load.js';
import type { VmConfig } from '../../src/config/types.js';
import { VmSyncError } from '../../src/errors.js';
import { KnownHosts } from '../../src/remote/known-hosts.js';
import { SEND_BACKLOG_MAX, VmSession } from '../../src/remote/session.js';

/*
 * SEND_BACKLOG_MAX where the bytes can pile up: the VM's own connection, and
 * behind a jump host the jump connection's socket (shared by every VM behind
 * it), which the tunnel channel alone does not show. Both tests come from an
 * adversary review; the jump test failed before the send watched the jump's
 * socket (2.2 MB waiting there, the whole tunnel window).
 *
 * The runner's link to the "bastion" namespace is capped (tbf 16 Mbit/s), so
 * the SSH connection's socket really holds a backlog. Behind it:
 *   - capped: a VM whose sshd listens in the bastion namespace (reached directly)
 *   - bastion: the jump host (its sshd in the bastion namespace)
 *   - behind: a VM in the "vms" namespace, reached only through the bastion
 */

let world: World;
let jnet: JumpNet;
let scratch: string;
const ready = canMakeNamespaces();

beforeAll(async () => {
  if (!ready) return;
  world = await World.create(['capped', 'bastion', 'behind']);
  scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-send-jump-'));
  jnet = new JumpNet(`r${process.pid % 10000}`, 150 + (process.pid % 10));
  execFileSync('tc', ['qdisc', 'add', 'dev', `vsj${jnet.tag}r`, 'root', 'tbf', 'rate', '16mbit', 'burst', '64kb', 'latency', '50ms']);
  adoptJumpKey(world.fleet.keyDir, 'bastion', 'bastion');
  await jnet.move(world.vm('bastion'), jnet.bastionNs, jnet.bastionIp, world.fleet.knownHosts);
  await jnet.move(world.vm('capped'), jnet.bastionNs, jnet.bastionIp, world.fleet.knownHosts);
  await jnet.move(world.vm('behind'), jnet.vmsNs, jnet.vmIp, world.fleet.knownHosts);
  writeJumpConfig(world, {
    bastion: { ip: jnet.bastionIp, port: world.vm('bastion').port, maxSessions: 4 },
    vmIp: jnet.vmIp,
    behind: ['behind'],
    direct: ['capped'],
    sync: '{ concurrency: 4, connect_timeout_s: 5, timeout_s: 120, retries: 0 }',
  });
  // The capped VM is direct, at the bastion namespace's address.
  fs.writeFileSync(world.configPath, fs.readFileSync(world.configPath, 'utf8').replace('capped: { ip: 127.0.0.1,', `capped: { ip: ${jnet.bastionIp},`));
}, 60_000);
afterAll(() => {
  jnet?.down();
  destroyWorld(world);
  if (scratch) fs.rmSync(scratch, { recursive: true, force: true });
});

function vmConfig(id: string): VmConfig {
  return loadConfig(world.configPath).vms.find((v) => v.id === id)!;
}

function knownHosts(): KnownHosts {
  return new KnownHosts(fs.readFileSync(loadConfig(world.configPath).knownHostsPath, 'utf8'));
}

const sha = (b: Buffer): string => crypto.createHash('sha256').update(b).digest('hex');
const BOUND = SEND_BACKLOG_MAX + 128 * 1024;

// The send's wait for 'drain' listens for no 'error': a connection reset while it waits ends the send quietly, and
// the command's closed channel reports it (as before the bound), whatever order the socket's events come in.
(ready ? test : test.skip)('the VM dying mid-send (connection reset while the send waits for drain) is not internal_error "cannot read <local file>"', async () => {
  const vm = vmConfig('capped');
  const file = path.join(scratch, 'reset.bin');
  fs.writeFileSync(file, crypto.randomBytes(16 * 1024 * 1024));
  const session = await VmSession.open(vm, knownHosts(), { connectTimeoutMs: 5000 });
  const listener = Number(fs.readFileSync(world.vm('capped').pidFile, 'utf8').trim());
  let killed = false;
  let stopping = false;
  const transportEvents: string[] = [];
  const transport = (session as unknown as { transport: NodeJS.EventEmitter }).transport;
  transport.on('error', (e: NodeJS.ErrnoException) => transportEvents.push(`error ${e.code}`));
  transport.on('close', () => transportEvents.push('close'));
  const watch = setInterval(() => {
    // The send is waiting for the socket to drain: the VM stops, then dies (the kernel resets a socket closed with unread data).
    if (!stopping && session.backlog > SEND_BACKLOG_MAX) {
      stopping = true;
      const tree = processTree(listener).slice(1);
      for (const pid of tree) process.kill(pid, 'SIGSTOP');
      setTimeout(() => {
        for (const pid of tree) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            // gone
          }
        }
        killed = true;
      }, 100);
    }
  }, 2);
  try {
    const outcome = await session.exec(`cat > ${world.vm('capped').home}/reset.bin`, 60_000, undefined, undefined, undefined, { path: file }).then(
      (result) => ({ resolved: result.code }),
      (error: unknown) => ({ code: error instanceof VmSyncError ? error.code : 'not a VmSyncError', message: String((error as Error).message) }),
    );
    expect(killed).toBe(true);
    expect(transportEvents[0]).toMatch(/^error (ECONNRESET|EPIPE)$/);
    // The channel closed and exec resolves with code -1 (or a network code); never a local read failure.
    expect(outcome).not.toMatchObject({ code: 'internal_error' });
    expect(JSON.stringify(outcome)).not.toMatch(/cannot read/);
  } finally {
    clearInterval(watch);
    session.dispose();
  }
});

(ready ? test : test.skip)("behind a jump host, SEND_BACKLOG_MAX also bounds what waits in the jump connection's socket, and every byte arrives", async () => {
  const jumpSessions: VmSession[] = [];
  const real = VmSession.open.bind(VmSession);
  const spy = jest.spyOn(VmSession, 'open').mockImplementation(async (vm, kh, options) => {
    const session = await real(vm, kh, options);
    if (vm.host === jnet.bastionIp && vm.port === world.vm('bastion').port) jumpSessions.push(session);
    return session;
  });
  const content = crypto.randomBytes(6 * 1024 * 1024);
  const file = path.join(scratch, 'behind.bin');
  fs.writeFileSync(file, content);
  const received = path.join(world.vm('behind').home, 'received.bin');
  let session: VmSession | null = null;
  try {
    session = await VmSession.open(vmConfig('behind'), knownHosts(), { connectTimeoutMs: 5000 });
    expect(jumpSessions).toHaveLength(1);
    const jump = jumpSessions[0];
    let vmMost = 0;
    let jumpMost = 0;
    const open = session;
    const sample = setInterval(() => {
      vmMost = Math.max(vmMost, open.carriers[0].writableLength);
      jumpMost = Math.max(jumpMost, jump.backlog);
    }, 5);
    const result = await session.exec(`cat > ${received}`, 60_000, undefined, undefined, undefined, {
      path: file,
      onSent: () => {
        vmMost = Math.max(vmMost, open.carriers[0].writableLength);
        jumpMost = Math.max(jumpMost, jump.backlog);
      },
    });
    clearInterval(sample);
    expect(result.code).toBe(0);
    expect(sha(fs.readFileSync(received))).toBe(sha(content));
    // What waits in vm-sync for this VM's bytes: its own transport (the tunnel channel) and the jump host's socket.
    expect(vmMost + jumpMost).toBeLessThanOrEqual(BOUND);
  } finally {
    session?.dispose();
    for (const j of jumpSessions) j.dispose();
    spy.mockRestore();
  }
});
