import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { adoptJumpKey, writeJumpConfig } from '../helpers/jump-net.js';
import { World } from '../helpers/world.js';

/*
 * Jump hosts with real sshd on loopback (no namespaces: the runner could
 * reach the VMs directly, but the config sends them through the jump host,
 * which is what is under test here).
 */
const BEHIND = ['vm01', 'vm02', 'vm03'];
let world: World;
let silent: net.Server;
let silentPort = 0;
const held: net.Socket[] = [];

function writeConfig(jump: { port: number }, extra: string[] = []): void {
  writeJumpConfig(world, { bastion: { ip: '127.0.0.1', port: jump.port, maxSessions: 1 }, vmIp: '127.0.0.1', behind: BEHIND, sync: '{ concurrency: 8, connect_timeout_s: 2, timeout_s: 20, retries: 0 }', extra });
}

beforeAll(async () => {
  world = await World.create([...BEHIND, 'bastion']);
  adoptJumpKey(world.fleet.keyDir, 'bastion', 'bastion');
  // A "jump host" that accepts TCP and then says nothing (no SSH banner, no handshake).
  silent = net.createServer((sock) => held.push(sock));
  await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
  silentPort = (silent.address() as net.AddressInfo).port;
  // Pin a key for it (the bastion's), so the run gets as far as connecting.
  const kh = fs.readFileSync(world.fleet.knownHosts, 'utf8');
  const line = kh.split('\n').find((l) => l.startsWith(`[127.0.0.1]:${world.vm('bastion').port} `)) as string;
  fs.appendFileSync(world.fleet.knownHosts, `\n[127.0.0.1]:${silentPort} ${line.split(' ').slice(1).join(' ')}\n`);
}, 60_000);
afterAll(async () => {
  for (const s of held) s.destroy();
  await new Promise((r) => silent?.close(r));
  world?.destroy();
});

test('through an honest jump host, a VM whose host key is not the pinned one is refused host_key_mismatch; the others deploy', async () => {
  writeConfig(world.vm('bastion'));
  const sha = world.ws.commit({ 'index.html': 'jump\n' }, 'first');
  world.ws.push();
  const kh = fs.readFileSync(world.fleet.knownHosts, 'utf8');
  // vm02's pin holds vm03's key: what a jump host forwarding vm02's connection to vm03 would also look like.
  const lineOf = (id: string): string => kh.split('\n').find((l) => l.startsWith(`[127.0.0.1]:${world.vm(id).port} `)) as string;
  fs.writeFileSync(world.fleet.knownHosts, kh.replace(lineOf('vm02'), `[127.0.0.1]:${world.vm('vm02').port} ${lineOf('vm03').split(' ').slice(1).join(' ')}`));
  try {
    const run = await world.cli(['sync']);
    const rows = Object.fromEntries(run.json.vms.map((vm) => [vm.id, vm]));
    expect(run.code).toBe(1);
    expect([rows.vm02.result, rows.vm02.error?.code]).toEqual(['failed', 'host_key_mismatch']);
    expect(world.sentinel('vm02')).toBeNull();
    for (const id of ['vm01', 'vm03']) {
      expect([rows[id].result, rows[id].verified]).toEqual(['success', true]);
      expect(world.sentinel(id)).toBe(`${sha}\n`);
    }
  } finally {
    fs.writeFileSync(world.fleet.knownHosts, kh);
  }
}, 60_000);

test('a jump host that accepts TCP but never does the SSH handshake: jump_unreachable for each VM, within the connect timeout, and the CLI returns', async () => {
  writeConfig({ port: silentPort });
  const started = Date.now();
  const run = await world.cli(['verify']);
  const took = Date.now() - started;
  expect(run.code).toBe(1);
  for (const vm of run.json.vms) expect([vm.id, vm.error?.code]).toEqual([vm.id, 'jump_unreachable']);
  // connect_timeout_s is 2: one attempt for the VMs that asked together, well inside timeout_s.
  expect(took).toBeLessThan(15_000);
}, 60_000);

test('the CLI process exits promptly after a run through a jump host (no open jump connection keeps it alive), after success and after errors', async () => {
  const { spawnSync } = await import('node:child_process');
  const cli = path.resolve('dist/cli.js');
  for (const port of [world.vm('bastion').port, silentPort]) {
    writeConfig({ port });
    const started = Date.now();
    const run = spawnSync(process.execPath, [cli, 'verify', '--config', world.configPath, '--json'], { encoding: 'utf8', timeout: 30_000 });
    const took = Date.now() - started;
    expect(run.signal).toBeNull();
    expect(JSON.parse(run.stdout).vms).toHaveLength(BEHIND.length);
    expect(took).toBeLessThan(port === silentPort ? 12_000 : 8_000);
  }
}, 90_000);
