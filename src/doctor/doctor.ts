import { count } from '../words.js';
import fs from 'node:fs';
import net from 'node:net';
import type { Config, JumpHost, VmConfig } from '../config/types.js';
import { getErrorMessage, VmSyncError } from '../errors.js';
import { formatBytes } from '../report/table.js';
import { KnownHosts } from '../remote/known-hosts.js';
import { scanHostKey, VmSession } from '../remote/session.js';
import { describeOwner, holderIsDead, parseLockOwner } from '../remote/lock.js';
import { RemoteTarget, UNREADABLE_LOCK_GRACE_S, type Probe } from '../remote/target.js';
import { runnerRepo, selectVms } from '../sync/fleet.js';
import { mapPool } from '../sync/pool.js';
import { checkRunnerHost, type RunnerHostCheck } from './runner.js';

/** One check of one VM. `warn` is worth knowing but would not fail a sync. */
export interface Check {
  name: 'jump' | 'tcp' | 'host_key' | 'auth' | 'rsync' | 'timeout' | 'target' | 'free_space' | 'lock' | 'sync_rev';
  status: 'ok' | 'warn' | 'fail' | 'skipped';
  detail: string;
  /** What to do about a warn or fail. */
  hint: string | null;
}

export interface VmDoctorReport {
  id: string;
  host: string;
  /** False when a sync to this VM would fail. */
  ready: boolean;
  checks: Check[];
}

export interface DoctorReport {
  command: 'doctor';
  /** Bytes of the tree a fresh deploy sends (runner-host HEAD), null when unknown. */
  tree_bytes: number | null;
  /** This host's GitHub Actions runner (its version against GitHub's minimum); checked once per run. */
  runner_host: RunnerHostCheck;
  vms: VmDoctorReport[];
}

function tcpReachable(host: string, port: number, timeoutMs: number): Promise<string | null> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    const done = (error: string | null): void => {
      socket.destroy();
      resolve(error);
    };
    socket.setTimeout(timeoutMs, () => done(`no answer within ${timeoutMs / 1000}s`));
    socket.once('connect', () => done(null));
    socket.once('error', (error: NodeJS.ErrnoException) => done(error.code ?? error.message));
  });
}

/** What doctor says of the VM's lock: who holds it and whether a sync would wait, take it over, or be blocked. */
function describeLock(vm: VmConfig, probe: Probe, staleAfterS: number): Pick<Check, 'status' | 'detail' | 'hint'> {
  const lock = probe.lock;
  if (!lock) return { status: 'ok', detail: 'no lock', hint: null };
  const unlock = `vm-sync unlock --vm ${vm.id}`;
  const age = lock.mtime === null ? null : probe.now - lock.mtime;
  const owner = parseLockOwner(lock.record);
  if (owner) {
    if (owner.deadline < probe.now) return { status: 'warn', detail: `stale lock of ${describeOwner(owner, probe.now)}`, hint: `the next sync takes it over; to clear it now: ${unlock}` };
    if (holderIsDead(owner)) return { status: 'warn', detail: `lock of a process that no longer exists: ${describeOwner(owner, probe.now)}`, hint: `the next sync from this runner host takes it over; to clear it now: ${unlock}` };
    return { status: 'warn', detail: `locked by ${describeOwner(owner, probe.now)}: a deploy is running`, hint: `wait for it; if you know it is gone: ${unlock} --force` };
  }
  const legacy = /^(\S+) (\d+)$/.exec(lock.record);
  if (lock.kind === 'legacy' && legacy) {
    const held = probe.now - Number(legacy[2]);
    return held > staleAfterS
      ? { status: 'warn', detail: `stale lock left by ${legacy[1]}, ${held}s old (an older vm-sync's lock; stale after sync.timeout_s=${staleAfterS}s)`, hint: `the next sync takes it over; to clear it now: ${unlock}` }
      : { status: 'warn', detail: `locked by ${legacy[1]} for ${held}s (an older vm-sync): a deploy may be running`, hint: `wait for it, or clear it: ${unlock}` };
  }
  const stale = age !== null && age > UNREADABLE_LOCK_GRACE_S;
  return {
    status: 'warn',
    detail: `lock with an empty or unreadable owner record (${lock.record ? JSON.stringify(lock.record) : 'empty'}, ${age ?? '?'}s old): ${stale ? 'stale, the next sync takes it over' : `treated as stale after ${UNREADABLE_LOCK_GRACE_S}s`}`,
    hint: `to clear it now: ${unlock}`,
  };
}

type AddCheck = (name: Check['name'], status: Check['status'], detail: string, hint?: string | null) => void;

/** The hint for a failed login to a host (VM or jump host) with its key. */
function loginHint(host: VmConfig, failure: VmSyncError): string | null {
  if (failure.code === 'auth_failed') return `on ${host.id}: append the output of ssh-keygen -y -f ${host.keyPath} to ~${host.user}/.ssh/authorized_keys`;
  if (failure.code === 'config_invalid') return `create it: ssh-keygen -t ed25519 -N '' -f ${host.keyPath} (then authorize its .pub on ${host.id})`;
  return null;
}

/** TCP, then the host key against the pinned ones, for a host this runner reaches directly. False when one failed. */
async function reachDirectly(host: VmConfig, kind: 'VM' | 'jump host', config: Config, knownHosts: KnownHosts, add: AddCheck): Promise<boolean> {
  const timeoutMs = config.sync.connectTimeoutS * 1000;
  const where = `${host.host}:${host.port}`;
  const tcp = await tcpReachable(host.host, host.port, timeoutMs);
  if (tcp) {
    add('tcp', 'fail', `${where} not reachable: ${tcp}`, `start the ${kind} or its sshd, or fix ip/ssh_port of ${host.id} in the config; check firewalls between this host and ${host.host}`);
    return false;
  }
  add('tcp', 'ok', `${where} reachable`);
  const pinned = knownHosts.pinned(host.host, host.port);
  let offered;
  try {
    offered = await scanHostKey(host.host, host.port, timeoutMs, pinned.keys.length ? pinned.algorithms : undefined);
  } catch (error) {
    add('host_key', 'fail', `no SSH host key from ${where}: ${getErrorMessage(error)}`, `is an SSH server listening on ${where}?`);
    return false;
  }
  const line = `${pinned.name} ${offered.type} ${offered.blob.toString('base64')}`;
  if (pinned.keys.length === 0) {
    add('host_key', 'fail', `no key pinned for ${pinned.name}; it offers ${offered.type} ${offered.fingerprint}`, `compare ${offered.fingerprint} with the ${kind}'s own (ssh-keygen -lf /etc/ssh/ssh_host_${offered.type.replace(/^ssh-/, '').replace(/-.*/, '')}_key.pub on its console); if equal, add this line to ${config.knownHostsPath}: ${line}`);
    return false;
  }
  if (!pinned.keys.some((key) => key.equals(offered.blob))) {
    add('host_key', 'fail', `${pinned.name} offers ${offered.type} ${offered.fingerprint}, which is not the pinned key`, `if the ${kind} was rebuilt, verify ${offered.fingerprint} on its console and replace its line in ${config.knownHostsPath} with: ${line}; otherwise treat this as an attack`);
    return false;
  }
  add('host_key', 'ok', `${offered.type} ${offered.fingerprint} matches the pinned key`);
  return true;
}

/**
 * A jump host, checked once per doctor run however many VMs are behind it:
 * TCP, its pinned host key, a login with its own key. The first failure, or
 * null when it is ready.
 */
async function checkJump(jump: JumpHost, config: Config, knownHosts: KnownHosts): Promise<Check | null> {
  const host: VmConfig = { id: `jump host ${jump.name}`, host: jump.host, user: jump.user, port: jump.port, keyPath: jump.keyPath, repoPath: '' };
  const checks: Check[] = [];
  const add: AddCheck = (name, status, detail, hint = null) => checks.push({ name, status, detail, hint });
  if (!(await reachDirectly(host, 'jump host', config, knownHosts, add))) return checks.find((c) => c.status === 'fail') ?? null;
  try {
    (await VmSession.open(host, knownHosts, { connectTimeoutMs: config.sync.connectTimeoutS * 1000 })).dispose();
    return null;
  } catch (error) {
    const failure = error instanceof VmSyncError ? error : new VmSyncError('auth_failed', getErrorMessage(error));
    return { name: 'auth', status: 'fail', detail: failure.message, hint: loginHint(host, failure) };
  }
}

/**
 * Checks one VM the way a sync would use it, stopping at the first check
 * that makes the rest meaningless (no TCP: no host key; wrong host key: no
 * login). A VM behind a jump host is checked after its jump host, and only
 * through it (this host cannot reach it otherwise). Never throws.
 */
async function checkVm(vm: VmConfig, config: Config, knownHosts: KnownHosts, treeBytes: number | null, jumps: Map<string, Promise<Check | null>>): Promise<VmDoctorReport> {
  const checks: Check[] = [];
  const add: AddCheck = (name, status, detail, hint = null) => {
    checks.push({ name, status, detail, hint });
  };
  const timeoutMs = config.sync.connectTimeoutS * 1000;
  const report = (): VmDoctorReport => ({ id: vm.id, host: vm.host, ready: !checks.some((c) => c.status === 'fail'), checks });

  const jump = vm.jump;
  if (jump) {
    let checked = jumps.get(jump.name);
    if (!checked) jumps.set(jump.name, (checked = checkJump(jump, config, knownHosts)));
    const failed = await checked;
    const named = `jump host ${jump.name} (${jump.user}@${jump.host}:${jump.port})`;
    if (failed) {
      add('jump', 'fail', `${named}: ${failed.name}: ${failed.detail}`, failed.hint ?? `fix ${named} first: every VM behind it is unreachable until then`);
      return report();
    }
    add('jump', 'ok', `${named}: reachable, host key matches the pinned key, logged in with ${jump.keyPath}`);
  } else if (!(await reachDirectly(vm, 'VM', config, knownHosts, add))) {
    return report();
  }

  let session: VmSession;
  try {
    session = await VmSession.open(vm, knownHosts, { connectTimeoutMs: timeoutMs });
  } catch (error) {
    const failure = error instanceof VmSyncError ? error : new VmSyncError('auth_failed', getErrorMessage(error));
    // Through a jump host, the connection, the host key and the login are one step: say which failed.
    if (jump && failure.code.startsWith('host_key')) add('host_key', 'fail', failure.message, `pin ${vm.id}'s host key for [${vm.host}]:${vm.port} (fetch it from the jump host: ssh-keyscan -p ${vm.port} ${vm.host}), verified out of band`);
    else if (jump && (failure.code === 'unreachable' || failure.code === 'timeout' || failure.code === 'jump_unreachable')) add('tcp', 'fail', failure.message, `start ${vm.id} or its sshd, or fix its ip/ssh_port; the jump host ${jump.name} must reach ${vm.host}:${vm.port}`);
    else add('auth', 'fail', failure.message, loginHint(vm, failure));
    return report();
  }
  if (jump) add('host_key', 'ok', `the key ${vm.id} offered through ${jump.name} matches the pinned key`);
  try {
    add('auth', 'ok', `logged in as ${vm.user} with ${vm.keyPath}`);
    const target = new RemoteTarget(session, vm.repoPath, Date.now() + timeoutMs * 3);
    let probe: Probe;
    try {
      probe = await target.probe();
    } catch (error) {
      add('sync_rev', 'fail', getErrorMessage(error), null);
      return report();
    }
    if (probe.rsyncVersion) add('rsync', 'ok', probe.rsyncVersion);
    else add('rsync', 'fail', `rsync not found on ${vm.id}`, `install rsync on ${vm.id} (apt-get install rsync)`);

    const space = await target.writability();
    if (space.writable) add('target', 'ok', `${probe.target}: ${space.existing} is writable by ${vm.user}`);
    else add('target', 'fail', `${probe.target}: ${space.existing} is not writable by ${vm.user}`, `on ${vm.id}: mkdir -p ${space.parent} && chown ${vm.user} ${space.parent}`);

    if (space.availableKb === null) add('free_space', 'warn', 'free space unknown (df failed)', null);
    else if (treeBytes === null) add('free_space', 'ok', `${formatBytes(space.availableKb * 1024)} free (tree size unknown: runner-host repo not cloned yet)`);
    else {
      // A new release needs at most the whole tree (unchanged files are hard links); keep a margin.
      const needed = treeBytes * 1.2;
      if (space.availableKb * 1024 < needed) {
        add('free_space', 'fail', `${formatBytes(space.availableKb * 1024)} free, a release needs up to ${formatBytes(treeBytes)}`, `free space on ${vm.id} under ${space.existing}, or lower repository.keep_releases`);
      } else {
        add('free_space', 'ok', `${formatBytes(space.availableKb * 1024)} free for a tree of ${formatBytes(treeBytes)}`);
      }
    }

    if (space.timeout) add('timeout', 'ok', `coreutils timeout at ${space.timeout}`);
    else add('timeout', 'fail', `timeout (coreutils) not found on ${vm.id}: vm-sync runs every step under it so a cancelled run stops on the VM too`, `install coreutils on ${vm.id}`);

    const lockCheck = describeLock(vm, probe, config.sync.timeoutS);
    add('lock', lockCheck.status, lockCheck.detail, lockCheck.hint);
    if (probe.sentinel !== 'regular' && probe.sentinel !== 'absent') {
      add('sync_rev', 'fail', `${probe.target}/.sync_rev is ${probe.sentinel === 'unreadable' ? 'not readable' : `a ${probe.sentinel}`}: vm-sync never follows or reads it, so a sync fails`, `remove it on ${vm.id}, or run vm-sync sync --force to replace it with a new release`);
    } else if (probe.rev !== null && !/^[0-9a-f]{40}$/.test(probe.rev.trim())) {
      add('sync_rev', 'fail', `.sync_rev holds ${JSON.stringify(probe.rev.slice(0, 60))}, not a commit hash`, `remove ${probe.target}/.sync_rev on ${vm.id} to treat the VM as fresh`);
    } else {
      add('sync_rev', 'ok', probe.rev ? `on ${probe.rev}` : 'no .sync_rev (never deployed)');
    }
  } finally {
    session.dispose();
  }
  return report();
}

/**
 * `vm-sync doctor`: proves every VM is ready for a sync, in parallel: TCP,
 * pinned host key, key login, rsync, a writable target, free space for the
 * tree, a stale lock, the current `.sync_rev`. Read-only everywhere.
 */
export async function runDoctor(config: Config, options: { vms?: string[]; env?: NodeJS.ProcessEnv } = {}): Promise<DoctorReport> {
  const vms = selectVms(config, options.vms);
  const knownHosts = new KnownHosts(fs.existsSync(config.knownHostsPath) ? fs.readFileSync(config.knownHostsPath, 'utf8') : '');
  let treeBytes: number | null = null;
  if (fs.existsSync(config.repository.mainRepoPath)) {
    const repo = runnerRepo(config);
    treeBytes = await repo
      .resolve(repo.trackingRef)
      .catch(() => repo.resolve('HEAD'))
      .then((sha) => repo.treeBytes(sha))
      .catch(() => null);
  }
  const jumps = new Map<string, Promise<Check | null>>();
  const reports = await mapPool(vms, config.sync.concurrency, (vm) => checkVm(vm, config, knownHosts, treeBytes, jumps));
  return { command: 'doctor', tree_bytes: treeBytes, runner_host: checkRunnerHost(options.env), vms: reports };
}

/** One line per check per VM, with the fix under each failure. Pure. */
export function renderDoctor(report: DoctorReport): string {
  const lines: string[] = [];
  const width = Math.max(...report.vms.map((vm) => vm.id.length), 2);
  const runner = report.runner_host;
  lines.push(`runner host  ${runner.status.toUpperCase().padEnd(4)}  ${runner.name.padEnd(10)}  ${runner.detail}`);
  if (runner.hint && runner.status !== 'ok') lines.push(`             fix: ${runner.hint}`);
  for (const vm of report.vms) {
    for (const check of vm.checks) {
      lines.push(`${vm.id.padEnd(width)}  ${check.status.toUpperCase().padEnd(4)}  ${check.name.padEnd(10)}  ${check.detail}`);
      if (check.hint && check.status !== 'ok') lines.push(`${' '.repeat(width)}        fix: ${check.hint}`);
    }
  }
  const ready = report.vms.filter((vm) => vm.ready).length;
  const notReady = report.vms.filter((vm) => !vm.ready).map((vm) => vm.id);
  lines.push('', `${ready} of ${count(report.vms.length, 'VM')} ready for a sync${notReady.length ? `; not ready: ${notReady.join(', ')}` : ''}${runner.status === 'fail' ? '; the runner host is not ready' : ''}`);
  return `${lines.join('\n')}\n`;
}
