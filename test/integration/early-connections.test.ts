import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { loadConfig } from '../../src/config/load.js';
import type { VmConfig } from '../../src/config/types.js';
import { handshakeCount } from '../../src/demo/fleet.js';
import { KnownHosts } from '../../src/remote/known-hosts.js';
import { EarlyConnections, sshPorts } from '../../src/remote/port.js';
import { World } from '../helpers/world.js';

/**
 * A deploy starts its VMs' SSH handshakes while the runner host fetches and
 * exports (src/remote/port.ts, EarlyConnections). Against a real sshd: the
 * port uses that connection (one handshake, not two), and one the VM dropped
 * while it waited is replaced, not handed over dead.
 */
let world: World;
let vm: VmConfig;
let knownHosts: KnownHosts;

beforeAll(async () => {
  world = await World.create(['e1']);
  const config = loadConfig(world.configPath);
  vm = config.vms[0];
  knownHosts = new KnownHosts(fs.readFileSync(config.knownHostsPath, 'utf8'));
});
afterAll(() => world?.destroy());

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
const options = (): Parameters<ReturnType<typeof sshPorts>>[1] => ({ signal: AbortSignal.timeout(60_000), deadlineAt: Date.now() + 60_000, sessionBudgetS: 120, connectTimeoutMs: 5000 });

/** Waits until the VM's sshd logged `n` handshakes in all. */
async function handshakesReach(n: number): Promise<void> {
  for (let i = 0; i < 100 && handshakeCount(world.vm('e1')) < n; i++) await sleep(50);
  expect(handshakeCount(world.vm('e1'))).toBe(n);
}

/** Opens the VM's port with `early` and has the VM answer a probe on it. */
async function expectAnswerThrough(early: EarlyConnections): Promise<void> {
  const port = await sshPorts(knownHosts, early)(vm, options());
  try {
    const probe = await port.probe();
    expect(probe.target).toBe(`${world.vm('e1').home}/app`);
  } finally {
    port.close();
    early.closeRest();
  }
}

test('the port uses the connection started early: one handshake, and the VM answers on it', async () => {
  const before = handshakeCount(world.vm('e1'));
  const early = new EarlyConnections(knownHosts);
  early.start([vm], { connectTimeoutMs: 5000 });
  await handshakesReach(before + 1);
  await expectAnswerThrough(early);
  expect(handshakeCount(world.vm('e1')) - before).toBe(1);
});

test('an early connection the VM dropped while it waited is replaced by a new one', async () => {
  const before = handshakeCount(world.vm('e1'));
  const early = new EarlyConnections(knownHosts);
  early.start([vm], { connectTimeoutMs: 5000 });
  await handshakesReach(before + 1);
  // The VM ends that connection (sshd's per-connection processes are the listener's children).
  const listener = fs.readFileSync(world.vm('e1').pidFile, 'utf8').trim();
  execFileSync('pkill', ['-P', listener]);
  await sleep(500);
  await expectAnswerThrough(early);
  expect(handshakeCount(world.vm('e1')) - before).toBe(2);
});
