import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { terminalLine } from '../report/escape.js';
import { isAlive, isSshd, processIdentity, sshdProcessesOf, terminate, type ProcessIdentity } from './processes.js';

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

/**
 * sshd_config's quoting: a double-quoted argument may hold spaces and `#`.
 * There is no escape for `"` itself, so such paths are refused (by
 * {@link createFleet}, before anything is written).
 */
function sshdQuote(value: string): string {
  return `"${value}"`;
}

function sshdConfig(vm: FleetVm, user: string, hostKey: string, authorizedKeys: string, extra: string[]): string {
  // sshd honours only the first SetEnv directive: fold any extra ones into it.
  const setEnv = [sshdQuote(`HOME=${vm.home}`), ...extra.filter((l) => l.startsWith('SetEnv ')).map((l) => l.slice('SetEnv '.length))];
  return [
    `Port ${vm.port}`,
    'ListenAddress 127.0.0.1',
    `HostKey ${sshdQuote(hostKey)}`,
    `PidFile ${sshdQuote(vm.pidFile)}`,
    // AuthorizedKeysFile expands % tokens: a literal % is written %%.
    `AuthorizedKeysFile ${sshdQuote(authorizedKeys.replaceAll('%', '%%'))}`,
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

/** Why a fleet (its sshd_config, and a config whose repository.url is a path under it) cannot live at `dir`, or null. */
export function fleetDirProblem(dir: string): string | null {
  // eslint-disable-next-line no-control-regex
  return /["\\\s\u0000-\u001f\u007f]/.test(path.resolve(dir)) ? 'its path has a space, a double quote, a backslash or a control character (sshd_config and repository.url cannot hold them)' : null;
}

/** Where a VM's running sshd is recorded: its pid with the start time that makes it unique. */
function processRecordPath(vm: FleetVm): string {
  return path.join(vm.dir, 'sshd.process.json');
}

function readProcessRecord(vm: FleetVm): ProcessIdentity | null {
  try {
    const record = JSON.parse(fs.readFileSync(processRecordPath(vm), 'utf8')) as Partial<ProcessIdentity>;
    if (typeof record.pid === 'number' && typeof record.start === 'string' && typeof record.boot === 'string') return { pid: record.pid, start: record.start, boot: record.boot };
  } catch {
    // none, or unreadable: the /proc scan still finds the VM's sshd
  }
  return null;
}

/** Resolves after `ms`. */
function pause(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Records the sshd now serving `vm` (pid and start time), so that a later stop
 * signals exactly that process. sshd writes its pid file after it listens: wait
 * a moment for it.
 */
async function recordProcess(vm: FleetVm): Promise<void> {
  const config = fs.statSync(path.join(vm.dir, 'sshd_config'));
  for (let i = 0; i < 100; i++) {
    const pid = Number((fs.existsSync(vm.pidFile) ? fs.readFileSync(vm.pidFile, 'utf8') : '').trim());
    const id = processIdentity(pid);
    if (id && isSshd(pid, config)) {
      fs.writeFileSync(processRecordPath(vm), `${JSON.stringify(id)}\n`);
      return;
    }
    await pause(20);
  }
  // No pid file: the /proc scan in stopVm still finds it by its config.
}

/**
 * The live sshd processes serving `vm`: the recorded one if it is still that
 * very process, and any other sshd started with this VM's sshd_config (one
 * left by an older vm-sync, or whose record was lost).
 */
export function vmProcesses(vm: FleetVm): ProcessIdentity[] {
  const config = path.join(vm.dir, 'sshd_config');
  const found = sshdProcessesOf(config);
  const recorded = readProcessRecord(vm);
  // The recorded sshd counts only while it is that very process (same start time) and still this VM's sshd.
  if (recorded && isAlive(recorded) && !found.some((p) => p.pid === recorded.pid) && fs.existsSync(config) && isSshd(recorded.pid, fs.statSync(config))) found.push(recorded);
  return found;
}

/** Starts (or restarts) one VM's sshd from its existing config: the same port and host key as before. */
export async function startVm(vm: FleetVm): Promise<void> {
  if (!SSHD) throw new Error(fleetPrerequisiteProblem() ?? 'sshd not found');
  // sshd needs its privilege-separation directory when started as root.
  if (process.getuid?.() === 0) fs.mkdirSync('/run/sshd', { recursive: true, mode: 0o755 });
  // sshd daemonises: this child exits as soon as the daemon listens. Do not
  // unref it before that, or nothing keeps the event loop waiting for it.
  const child = spawn(SSHD, ['-f', path.join(vm.dir, 'sshd_config'), '-E', vm.log], { stdio: 'ignore', detached: true });
  await new Promise<void>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`sshd for ${vm.id} exited ${code}${lastLogLine(vm)}; see ${vm.log}`))));
  });
  await waitForPort(vm.port, 5000);
  await recordProcess(vm);
}

/** The last line of a VM's sshd log, to say why it would not start (sshd's own text, about its own config). */
function lastLogLine(vm: FleetVm): string {
  try {
    const line = fs.readFileSync(vm.log, 'utf8').trim().split('\n').pop() ?? '';
    return line ? ` (${terminalLine(line, 300)})` : '';
  } catch {
    return '';
  }
}

/** What stopping one VM did: how many of its sshd processes were running, how many are gone now, and why any is left. */
export interface VmStopResult {
  id: string;
  running: number;
  stopped: number;
  problems: string[];
}

/**
 * Stops one VM's sshd (the VM is "down": connections are refused) and waits
 * until it is gone. Only the VM's own sshd is signalled (see
 * {@link vmProcesses}); a pid that now belongs to another process is never touched.
 */
export function stopVm(vm: FleetVm): VmStopResult {
  const running = vmProcesses(vm);
  const { stopped, survivors } = terminate(running);
  if (survivors.length === 0) {
    fs.rmSync(vm.pidFile, { force: true });
    fs.rmSync(processRecordPath(vm), { force: true });
  }
  return { id: vm.id, running: running.length, stopped: stopped.length, problems: survivors.map((s) => s.reason) };
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
  const problem = fleetPrerequisiteProblem() ?? (fleetDirProblem(options.dir) ? `${options.dir}: ${fleetDirProblem(options.dir)}` : null);
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

/** Stops every sshd of a fleet and says, per VM, what was running and what was stopped. */
export function stopFleet(fleet: Fleet): VmStopResult[] {
  return fleet.vms.map(stopVm);
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
 * the runner-host repo at `mainRepoPath`, cloned from `url` (branch `branch`,
 * default main). Paths are quoted: a directory name may hold `#` or `: `.
 */
export function fleetConfigYaml(fleet: Fleet, repo: { mainRepoPath: string; url: string; branch?: string }, extra: { sync?: string[]; repository?: string[]; rollout?: string[] } = {}): string {
  const q = (value: string): string => JSON.stringify(value);
  const vms = fleet.vms.map((vm) => `  ${vm.id}: { ip: 127.0.0.1, ssh_user: ${q(fleet.user)}, ssh_port: ${vm.port} }`);
  return [
    'vms:',
    ...vms,
    'repository:',
    `  main_repo_path: ${q(repo.mainRepoPath)}`,
    `  url: ${q(repo.url)}`,
    `  default_branch: ${q(repo.branch ?? 'main')}`,
    '  vm_repo_paths: { default: ~/app }',
    ...(extra.repository ?? []).map((l) => `  ${l}`),
    'remote_execution:',
    `  key_storage_path: ${q(fleet.keyDir)}`,
    `  known_hosts: ${q(fleet.knownHosts)}`,
    'sync:',
    '  concurrency: 8',
    '  connect_timeout_s: 5',
    '  timeout_s: 120',
    ...(extra.sync ?? []).map((l) => `  ${l}`),
    ...(extra.rollout?.length ? ['rollout:', ...extra.rollout.map((l) => `  ${l}`)] : []),
    '',
  ].join('\n');
}
