import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

/**
 * A fleet of "VMs" that are real sshd processes on loopback, each with its own
 * host key, authorized key, home directory and log. The demo, the integration
 * tests and the benchmark all use it, so what they exercise is the real
 * ssh/rsync path, not a fake.
 */

/** One loopback VM. */
export interface FleetVm {
  id: string;
  port: number;
  /** The VM's own directory: sshd config, keys, log, home. */
  dir: string;
  /** `$HOME` of SSH sessions on this VM (sshd `SetEnv HOME=`). */
  home: string;
  /** The sshd log (LogLevel VERBOSE: one `Accepted publickey` line per handshake). */
  log: string;
  pidFile: string;
}

export interface Fleet {
  dir: string;
  vms: FleetVm[];
  /** Directory holding `id_ed25519_<vm>` client keys and the pinned `known_hosts`. */
  keyDir: string;
  knownHosts: string;
  user: string;
}

const SSHD = ['/usr/sbin/sshd', '/usr/bin/sshd', '/usr/local/sbin/sshd'].find((p) => fs.existsSync(p));

/** Explains what is missing on this machine for a loopback fleet, or null when all is there. */
export function fleetPrerequisiteProblem(): string | null {
  const missing = ['ssh-keygen', 'rsync'].filter((tool) => spawnSync('sh', ['-c', 'command -v "$1"', 'sh', tool]).status !== 0);
  if (!SSHD) missing.push('sshd');
  return missing.length ? `missing ${missing.join(', ')}: install them (Debian/Ubuntu: apt-get install openssh-server openssh-client rsync)` : null;
}

function mustRun(command: string, args: string[]): string {
  const result = spawnSync(command, args, { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} failed: ${result.stderr || result.error}`);
  return result.stdout;
}

/** Ports this process already handed out: the kernel may offer a closed one again, and two VMs on one port would share an sshd. */
const handedOut = new Set<number>();

async function freePort(): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const server = net.createServer();
      server.on('error', reject);
      server.listen(0, '127.0.0.1', () => {
        const { port: p } = server.address() as net.AddressInfo;
        server.close(() => resolve(p));
      });
    });
    if (handedOut.has(port)) continue;
    handedOut.add(port);
    return port;
  }
}

async function waitForPort(port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const socket = net.connect(port, '127.0.0.1');
      socket.once('connect', () => { socket.destroy(); resolve(true); });
      socket.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`sshd on port ${port} did not start`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function sshdConfig(vm: FleetVm, user: string, hostKey: string, authorizedKeys: string, extra: string[]): string {
  // sshd honours only the first SetEnv directive: fold any extra ones into it.
  const setEnv = [`HOME=${vm.home}`, ...extra.filter((l) => l.startsWith('SetEnv ')).map((l) => l.slice('SetEnv '.length))];
  return [
    `Port ${vm.port}`,
    'ListenAddress 127.0.0.1',
    `HostKey ${hostKey}`,
    `PidFile ${vm.pidFile}`,
    `AuthorizedKeysFile ${authorizedKeys}`,
    `AllowUsers ${user}`,
    'StrictModes no',
    'PasswordAuthentication no',
    'KbdInteractiveAuthentication no',
    'UsePAM no',
    'PermitRootLogin prohibit-password',
    'MaxStartups 100',
    'MaxSessions 50',
    `SetEnv ${setEnv.join(' ')}`,
    'LogLevel VERBOSE',
    ...extra.filter((l) => !l.startsWith('SetEnv ')),
    '',
  ].join('\n');
}

/** Starts (or restarts) one VM's sshd from its existing config. */
export async function startVm(vm: FleetVm): Promise<void> {
  if (!SSHD) throw new Error(fleetPrerequisiteProblem() ?? 'sshd not found');
  // sshd needs its privilege-separation directory when started as root.
  if (process.getuid?.() === 0) fs.mkdirSync('/run/sshd', { recursive: true, mode: 0o755 });
  // sshd daemonises: this child exits as soon as the daemon listens. Do not
  // unref it before that, or nothing keeps the event loop waiting for it.
  const child = spawn(SSHD, ['-f', path.join(vm.dir, 'sshd_config'), '-E', vm.log], { stdio: 'ignore', detached: true });
  await new Promise<void>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`sshd for ${vm.id} exited ${code}; see ${vm.log}`))));
  });
  await waitForPort(vm.port, 5000);
}

/** Stops one VM's sshd (the VM is "down": connections are refused). */
export function stopVm(vm: FleetVm): void {
  try {
    const pid = Number(fs.readFileSync(vm.pidFile, 'utf8').trim());
    if (pid > 0) process.kill(pid, 'SIGTERM');
  } catch {
    // not running
  }
  fs.rmSync(vm.pidFile, { force: true });
}

/** Options for {@link createFleet}. */
export interface FleetOptions {
  dir: string;
  ids: string[];
  /** Extra sshd_config lines per VM id (tests use this to break a VM in a specific way). */
  sshdExtra?: Record<string, string[]>;
}

/**
 * Creates and starts a loopback fleet under `dir`: keys, pinned known_hosts
 * and one sshd per id. Everything lives under `dir`; {@link stopFleet} ends it.
 */
export async function createFleet(options: FleetOptions): Promise<Fleet> {
  const problem = fleetPrerequisiteProblem();
  if (problem) throw new Error(problem);
  const user = os.userInfo().username;
  const keyDir = path.join(options.dir, 'keys');
  fs.mkdirSync(keyDir, { recursive: true, mode: 0o700 });
  const knownHosts = path.join(keyDir, 'known_hosts');
  const vms: FleetVm[] = [];
  const pinned: string[] = [];
  for (const id of options.ids) {
    const dir = path.join(options.dir, 'vms', id);
    const vm: FleetVm = { id, port: await freePort(), dir, home: path.join(dir, 'home'), log: path.join(dir, 'sshd.log'), pidFile: path.join(dir, 'sshd.pid') };
    fs.mkdirSync(vm.home, { recursive: true });
    const hostKey = path.join(dir, 'ssh_host_ed25519_key');
    if (!fs.existsSync(hostKey)) mustRun('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', `${id}-host`, '-f', hostKey]);
    const clientKey = path.join(keyDir, `id_ed25519_${id}`);
    if (!fs.existsSync(clientKey)) mustRun('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', `vm-sync-${id}`, '-f', clientKey]);
    const authorizedKeys = path.join(dir, 'authorized_keys');
    fs.copyFileSync(`${clientKey}.pub`, authorizedKeys);
    fs.writeFileSync(path.join(dir, 'sshd_config'), sshdConfig(vm, user, hostKey, authorizedKeys, options.sshdExtra?.[id] ?? []));
    const [type, blob] = fs.readFileSync(`${hostKey}.pub`, 'utf8').trim().split(/\s+/);
    pinned.push(`[127.0.0.1]:${vm.port} ${type} ${blob}`);
    vms.push(vm);
  }
  fs.writeFileSync(knownHosts, pinned.join('\n') + '\n');
  const fleet: Fleet = { dir: options.dir, vms, keyDir, knownHosts, user };
  try {
    await Promise.all(vms.map(startVm));
  } catch (error) {
    stopFleet(fleet);
    throw error;
  }
  fs.writeFileSync(path.join(options.dir, 'fleet.json'), JSON.stringify(fleet, null, 2));
  return fleet;
}

/** Stops every sshd of a fleet. */
export function stopFleet(fleet: Fleet): void {
  for (const vm of fleet.vms) stopVm(vm);
}

/** Reads a fleet saved by {@link createFleet} (for `vm-sync demo stop` and the benchmark). */
export function readFleet(dir: string): Fleet {
  return JSON.parse(fs.readFileSync(path.join(dir, 'fleet.json'), 'utf8')) as Fleet;
}

/** How many SSH handshakes (accepted public-key logins) a VM's sshd has logged. */
export function handshakeCount(vm: FleetVm): number {
  try {
    return (fs.readFileSync(vm.log, 'utf8').match(/Accepted publickey for /g) ?? []).length;
  } catch {
    return 0;
  }
}

/**
 * A vm-sync config for a fleet: each VM's target is `~/app` (its own home),
 * the runner-host repo at `mainRepoPath`, cloned from `url`.
 */
export function fleetConfigYaml(fleet: Fleet, repo: { mainRepoPath: string; url: string }, extra: { sync?: string[]; repository?: string[]; rollout?: string[] } = {}): string {
  const vms = fleet.vms.map((vm) => `  ${vm.id}: { ip: 127.0.0.1, ssh_user: ${fleet.user}, ssh_port: ${vm.port} }`);
  return [
    'vms:',
    ...vms,
    'repository:',
    `  main_repo_path: ${repo.mainRepoPath}`,
    `  url: ${repo.url}`,
    '  default_branch: main',
    '  vm_repo_paths: { default: ~/app }',
    ...(extra.repository ?? []).map((l) => `  ${l}`),
    'remote_execution:',
    `  key_storage_path: ${fleet.keyDir}`,
    `  known_hosts: ${fleet.knownHosts}`,
    'sync:',
    '  concurrency: 8',
    '  connect_timeout_s: 5',
    '  timeout_s: 120',
    ...(extra.sync ?? []).map((l) => `  ${l}`),
    ...(extra.rollout?.length ? ['rollout:', ...extra.rollout.map((l) => `  ${l}`)] : []),
    '',
  ].join('\n');
}
