import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { destroyWorld } from '../helpers/hardening.js';
import { processTree } from '../helpers/processes.js';
import { canMakeNamespaces, JumpNet } from '../helpers/jump-net.js';
import { World } from '../helpers/world.js';
import { loadConfig } from '../../src/config/load.js';
import { KnownHosts } from '../../src/remote/known-hosts.js';
import { SEND_BACKLOG_MAX, VmSession } from '../../src/remote/session.js';

/*
 * A file sent to a VM (the release stream) must not pile up in the runner's
 * memory when the link to the VM is slower than the runner reads. ssh2 passes
 * a channel's data to the connection as far as the SSH window allows (2 MB
 * with OpenSSH), whatever the socket already holds: a hundred VMs behind a
 * shared runner NIC would hold up to that much each. The VM here is a real
 * sshd in a network namespace behind a 16 Mbit/s link (tbf), and one that
 * stops reading (SIGSTOP) in the middle of a send: what waits in vm-sync for
 * the connection must stay near SEND_BACKLOG_MAX, and every byte arrives.
 */

let world: World;
let scratch: string;
let jnet: JumpNet | null = null;
const slowLink = canMakeNamespaces();

beforeAll(async () => {
  world = await World.create(['slow', 'capped']);
  scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-backlog-'));
  if (slowLink) {
    // The runner's end of the veth to the "bastion" namespace, capped: the capped VM's sshd listens there.
    jnet = new JumpNet(`b${process.pid % 10000}`, 190 + (process.pid % 10));
    execFileSync('tc', ['qdisc', 'add', 'dev', `vsj${jnet.tag}r`, 'root', 'tbf', 'rate', '16mbit', 'burst', '64kb', 'latency', '50ms']);
    await jnet.move(world.vm('capped'), jnet.bastionNs, jnet.bastionIp, loadConfig(world.configPath).knownHostsPath);
  }
});
afterAll(() => {
  jnet?.down();
  destroyWorld(world);
  fs.rmSync(scratch, { recursive: true, force: true });
});

/** Sends `content` to `id` as the input of `cat`, sampling what waits in vm-sync; `during` runs once 1 MB went. */
async function sendSampled(id: string, content: Buffer, host: string | null, during?: () => Promise<void>): Promise<{ code: number; most: number; received: Buffer }> {
  const config = loadConfig(world.configPath);
  const vm = { ...config.vms.find((v) => v.id === id)!, ...(host ? { host } : {}) };
  const file = path.join(scratch, `${id}.bin`);
  fs.writeFileSync(file, content);
  const received = path.join(world.vm(id).home, 'received.bin');
  const session = await VmSession.open(vm, new KnownHosts(fs.readFileSync(config.knownHostsPath, 'utf8')), { connectTimeoutMs: 5000 });
  try {
    let most = 0;
    let extra: Promise<void> | null = null;
    const sample = setInterval(() => (most = Math.max(most, session.backlog)), 5);
    const result = await session.exec(`cat > ${received}`, 60_000, undefined, undefined, undefined, {
      path: file,
      onSent: (bytes) => {
        most = Math.max(most, session.backlog);
        if (!extra && during && bytes >= 1024 * 1024) extra = during();
      },
    });
    await extra;
    clearInterval(sample);
    return { code: result.code, most, received: fs.readFileSync(received) };
  } finally {
    session.dispose();
  }
}

const sha = (b: Buffer): string => crypto.createHash('sha256').update(b).digest('hex');
// One read chunk (64 KiB) and the SSH framing of a write may land on top of the limit, no more.
const BOUND = SEND_BACKLOG_MAX + 128 * 1024;

(slowLink ? test : test.skip)('over a 16 Mbit/s link, what waits in vm-sync stays near SEND_BACKLOG_MAX (not the 2 MB SSH window), and every byte arrives', async () => {
  const content = crypto.randomBytes(6 * 1024 * 1024);
  const sent = await sendSampled('capped', content, (jnet as JumpNet).bastionIp);
  expect(sent.code).toBe(0);
  expect(sha(sent.received)).toBe(sha(content));
  // The link is the bottleneck: vm-sync does hold some, so the bound is what keeps it down.
  expect(sent.most).toBeGreaterThan(SEND_BACKLOG_MAX / 2);
  expect(sent.most).toBeLessThanOrEqual(BOUND);
});

// On loopback the kernel's socket buffers take the whole window, so this checks the waiting, not the bound.
test('a VM that stops reading mid-send (SIGSTOP) gets every byte once it goes on: the send waits, nothing is lost or doubled', async () => {
  const content = crypto.randomBytes(12 * 1024 * 1024);
  const listener = Number(fs.readFileSync(world.vm('slow').pidFile, 'utf8').trim());
  let stopped: number[] = [];
  const sent = await sendSampled('slow', content, null, async () => {
    stopped = processTree(listener);
    for (const pid of stopped) process.kill(pid, 'SIGSTOP');
    await new Promise((resolve) => setTimeout(resolve, 1500));
    for (const pid of stopped) process.kill(pid, 'SIGCONT');
  });
  expect(stopped.length).toBeGreaterThan(1);
  expect(sent.code).toBe(0);
  expect(sha(sent.received)).toBe(sha(content));
  expect(sent.most).toBeLessThanOrEqual(BOUND);
});
