import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { handshakeCount, type FleetVm } from '../../src/demo/fleet.js';
import { adoptJumpKey, canMakeNamespaces, JumpNet, jumpKeyFile, writeJumpConfig } from '../helpers/jump-net.js';
import { World } from '../helpers/world.js';

/*
 * VMs reachable only through a bastion, with network namespaces (see
 * test/helpers/jump-net.ts): the runner (this process) reaches the bastion,
 * the bastion reaches the VMs, the runner cannot reach the VMs. Real sshd for
 * the bastion and each VM; one VM stays on loopback, reached directly.
 */
const BEHIND = ['vm01', 'vm02', 'vm03', 'vm04'];
let world: World;
let jnet: JumpNet;
let bastion: FleetVm;

function writeConfig(maxSessions: number): void {
  writeJumpConfig(world, { bastion: { ip: jnet.bastionIp, port: bastion.port, maxSessions }, vmIp: jnet.vmIp, behind: BEHIND, direct: ['direct1'], sync: '{ concurrency: 8, connect_timeout_s: 5, timeout_s: 120, retries: 1 }' });
}

beforeAll(async () => {
  if (!canMakeNamespaces()) throw new Error('this test needs root and iproute2 (ip netns) to build the bastion network');
  world = await World.create([...BEHIND, 'direct1', 'bastion']);
  jnet = new JumpNet(String(process.pid % 10000), 200 + (process.pid % 50));
  bastion = world.vm('bastion');
  // The jump host has its own key, id_ed25519_jump_<name> (the bastion's sshd authorizes it).
  adoptJumpKey(world.fleet.keyDir, 'bastion', 'bastion');
  await jnet.move(bastion, jnet.bastionNs, jnet.bastionIp, world.fleet.knownHosts);
  for (const id of BEHIND) await jnet.move(world.vm(id), jnet.vmsNs, jnet.vmIp, world.fleet.knownHosts);
  writeConfig(2);
}, 60_000);
afterAll(() => {
  jnet?.down();
  world?.destroy();
});

test('inventory lists the jump host with its own key and pinned name, and each VM behind it', async () => {
  const run = await world.cli(['inventory'], { json: false });
  const inventory = JSON.parse(run.stdout);
  expect(inventory.jump_hosts).toEqual([
    { name: 'bastion', host: jnet.bastionIp, port: bastion.port, user: world.fleet.user, key_path: path.join(world.fleet.keyDir, jumpKeyFile('bastion')), known_hosts_name: `[${jnet.bastionIp}]:${bastion.port}`, max_sessions: 2 },
  ]);
  expect(inventory.vms.map((vm: { id: string; jump: string | null }) => [vm.id, vm.jump])).toEqual([...BEHIND.map((id) => [id, 'bastion']), ['direct1', null]]);
});

test('the runner cannot reach a VM directly: only through the bastion', async () => {
  const outcome = await new Promise<string>((resolve) => {
    const sock = net.connect({ host: jnet.vmIp, port: world.vm('vm01').port, timeout: 2000 });
    sock.once('connect', () => (sock.destroy(), resolve('connected')));
    sock.once('timeout', () => (sock.destroy(), resolve('timeout')));
    sock.once('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? 'error'));
  });
  expect(['ENETUNREACH', 'EHOSTUNREACH', 'timeout']).toContain(outcome);
});

test('sync through the bastion: every VM gets the commit over one shared connection, opened at most max_sessions at a time', async () => {
  const sha = world.ws.commit({ 'index.html': '<h1>behind a bastion</h1>\n', 'lib/a.txt': 'a\n'.repeat(1000) }, 'first');
  world.ws.push();
  const logins = handshakeCount(bastion);
  const sampler = jnet.sampleForwarded();
  const run = await world.cli(['sync', '-v']);
  const forwarded = await sampler.stop();

  expect(run.code).toBe(0);
  expect(run.json.vms.map((vm) => [vm.id, vm.result, vm.verified])).toEqual([...BEHIND, 'direct1'].map((id) => [id, 'success', true]));
  for (const id of [...BEHIND, 'direct1']) expect(world.sentinel(id)).toBe(`${sha}\n`);
  // One login on the bastion for the whole run, whatever the number of VMs behind it.
  expect(handshakeCount(bastion) - logins).toBe(1);
  // The VMs' connections were opened by the bastion (from its namespace), all held open for the all-at-once flip
  // while at most max_sessions (2) were being opened at a time (a cap on open connections would deadlock here).
  expect(Math.max(...forwarded)).toBe(BEHIND.length);
  for (const id of BEHIND) expect(handshakeCount(world.vm(id))).toBeGreaterThanOrEqual(1);
  // The direct VM was connected while the commit was prepared; the VMs behind the bastion were not (their
  // pipelines open the way through it themselves).
  expect(run.stderr).toMatch(/\[direct1\] debug: connected ahead in \d+ ms/);
  for (const id of BEHIND) expect(run.stderr).not.toContain(`[${id}] debug: connected ahead`);
});

test('verify, status and doctor go through the bastion too; doctor names it', async () => {
  writeConfig(8);
  for (const command of ['verify', 'status']) {
    const run = await world.cli([command]);
    expect(run.code).toBe(0);
    expect(run.json.vms.every((vm) => vm.result === 'success')).toBe(true);
  }
  const doctor = await world.cli(['doctor'], { json: false });
  if (doctor.code !== 0) console.log(doctor.stdout, doctor.stderr);
  expect(doctor.code).toBe(0);
  expect(doctor.stdout).toContain('bastion');
});

test('a bastion that is down fails only its VMs, with jump_unreachable; the direct VM goes on', async () => {
  const sha = world.ws.commit({ 'index.html': '<h1>bastion down</h1>\n' }, 'second');
  world.ws.push();
  const before = Object.fromEntries(BEHIND.map((id) => [id, world.sentinel(id)]));
  jnet.down(); // the bastion's sshd and its network are gone
  try {
    const run = await world.cli(['sync']);
    expect(run.code).toBe(1);
    const rows = Object.fromEntries(run.json.vms.map((vm) => [vm.id, vm]));
    expect(rows.direct1.result).toBe('success');
    expect(world.sentinel('direct1')).toBe(`${sha}\n`);
    for (const id of BEHIND) {
      expect([rows[id].result, rows[id].error?.code]).toEqual(['failed', 'jump_unreachable']);
      expect(rows[id].error?.message).toMatch(/jump host bastion/);
      expect(world.sentinel(id)).toBe(before[id]);
    }
  } finally {
    jnet = new JumpNet(jnet.tag, Number(jnet.vmIp.split('.')[1]));
    await jnet.startIn(bastion, jnet.bastionNs);
    for (const id of BEHIND) await jnet.startIn(world.vm(id), jnet.vmsNs);
  }
  const again = await world.cli(['sync']);
  expect(again.code).toBe(0);
  for (const id of BEHIND) expect(world.sentinel(id)).toBe(`${sha}\n`);
});

test("a bastion whose host key is not the pinned one is refused, named, and nothing behind it is touched", async () => {
  const knownHosts = fs.readFileSync(world.fleet.knownHosts, 'utf8');
  const line = knownHosts.split('\n').find((l) => l.startsWith(`[${jnet.bastionIp}]:${bastion.port} `)) as string;
  const other = knownHosts.split('\n').find((l) => l.startsWith(`[127.0.0.1]:${world.vm('direct1').port} `)) as string;
  expect(line).toBeTruthy();
  fs.writeFileSync(world.fleet.knownHosts, knownHosts.replace(line, `[${jnet.bastionIp}]:${bastion.port} ${other.split(' ').slice(1).join(' ')}`));
  try {
    const run = await world.cli(['verify']);
    expect(run.code).toBe(1);
    for (const vm of run.json.vms.filter((v) => BEHIND.includes(v.id))) {
      expect(vm.error?.code).toBe('host_key_mismatch');
      expect(vm.error?.message).toMatch(/^host key of jump host bastion/);
    }
  } finally {
    fs.writeFileSync(world.fleet.knownHosts, knownHosts);
  }
});
