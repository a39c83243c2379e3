import { count } from '../words.js';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { Config, JumpHost, VmConfig } from '../config/types.js';
import { getErrorMessage, VmSyncError } from '../errors.js';
import { terminalLine } from '../report/escape.js';
import { formatBytes } from '../report/table.js';
import { KnownHosts } from '../remote/known-hosts.js';
import { KeyInvalidError, readPrivateKey, scanHostKey, VmSession } from '../remote/session.js';
import { vmText } from '../remote/untrusted.js';
import { describeOwner, holderIsDead, parseLockOwner } from '../remote/lock.js';
import { RemoteTarget, UNREADABLE_LOCK_GRACE_S, type Probe } from '../remote/target.js';
import { runnerRepo, selectVms } from '../sync/fleet.js';
import { mapPool } from '../sync/pool.js';
import { branchProtectionCheck, type GitHubAccess } from './github.js';
import { cloneChecks, gitleaksCheck, knownHostsCheck } from './host.js';
import { checkRunnerHost } from './runner.js';

/**
 * One check, of one VM or of the runner host. `warn` is worth knowing but
 * would not fail a sync; `fail` is what a sync would fail on; `skipped`: not
 * tried (an earlier check failed), or could not be told.
 */
export interface Check {
  name:
    | 'runner'
    | 'key'
    | 'jump'
    | 'tcp'
    | 'host_key'
    | 'auth'
    | 'shell'
    | 'rsync'
    | 'timeout'
    | 'target'
    | 'live'
    | 'free_space'
    | 'lock'
    | 'sync_rev'
    | 'known_hosts'
    | 'gitleaks'
    | 'clone'
    | 'branch_protection';
  status: 'ok' | 'warn' | 'fail' | 'skipped';
  detail: string;
  /** What to do about a warn, fail or skipped. */
  hint: string | null;
}

export interface VmDoctorReport {
  id: string;
  host: string;
  /** False when a sync to this VM would fail. */
  ready: boolean;
  checks: Check[];
}

/** What every sync needs on this host before it reaches any VM: checked once, not per VM. */
export interface RunnerHostReport {
  /** False when every sync from this host would fail. */
  ready: boolean;
  checks: Check[];
}

export interface DoctorReport {
  command: 'doctor';
  /** The runner host and every selected VM are ready. */
  ready: boolean;
  /** Bytes of the tree a fresh deploy sends (runner-host HEAD), null when unknown. */
  tree_bytes: number | null;
  /** What every sync needs on this host (the runner's version, known_hosts, gitleaks, the clone); checked once per run. */
  runner_host: RunnerHostReport;
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
    return { status: 'fail', detail: `locked by ${describeOwner(owner, probe.now)}: a deploy is running, and a sync now fails with locked`, hint: `wait for it (sync --lock-wait SECONDS waits for you); if you know it is gone: ${unlock} --force` };
  }
  const legacy = /^(\S+) (\d+)$/.exec(lock.record);
  if (lock.kind === 'legacy' && legacy) {
    const held = probe.now - Number(legacy[2]);
    return held > staleAfterS
      ? { status: 'warn', detail: `stale lock left by ${legacy[1]}, ${held}s old (an older vm-sync's lock; stale after sync.timeout_s=${staleAfterS}s)`, hint: `the next sync takes it over; to clear it now: ${unlock}` }
      : { status: 'fail', detail: `locked by ${legacy[1]} for ${held}s (an older vm-sync): a deploy may be running, and a sync now fails with locked`, hint: `wait for it, or clear it: ${unlock}` };
  }
  const stale = age !== null && age > UNREADABLE_LOCK_GRACE_S;
  const record = lock.record ? JSON.stringify(lock.record) : 'empty';
  return stale
    ? { status: 'warn', detail: `lock with an empty or unreadable owner record (${record}, ${age}s old): stale, the next sync takes it over`, hint: `to clear it now: ${unlock}` }
    : {
        status: 'fail',
        detail: `lock with an empty or unreadable owner record (${record}, ${age ?? '?'}s old): a sync fails with locked until it is ${UNREADABLE_LOCK_GRACE_S}s old, then takes it over`,
        hint: `clear it now if no deploy is running: ${unlock}`,
      };
}

type AddCheck = (name: Check['name'], status: Check['status'], detail: string, hint?: string | null) => void;

/** The hint for a failed login to a host (VM or jump host) with its key. */
function loginHint(host: VmConfig, failure: VmSyncError): string | null {
  if (failure.code === 'auth_failed') return `on ${host.id}: append the output of ssh-keygen -y -f ${host.keyPath} to ~${host.user}/.ssh/authorized_keys`;
  if (failure instanceof KeyInvalidError) return failure.fix;
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
  const key = keyCheck(host);
  if (key.status === 'fail') return key;
  if (!(await reachDirectly(host, 'jump host', config, knownHosts, add))) return checks.find((c) => c.status === 'fail') ?? null;
  try {
    (await VmSession.open(host, knownHosts, { connectTimeoutMs: config.sync.connectTimeoutS * 1000 })).dispose();
    return null;
  } catch (error) {
    const failure = error instanceof VmSyncError ? error : new VmSyncError('auth_failed', getErrorMessage(error));
    return { name: 'auth', status: 'fail', detail: failure.message, hint: loginHint(host, failure) };
  }
}

/** The user vm-sync runs as, for details. */
function runningUser(): string {
  try {
    return os.userInfo().username;
  } catch {
    return `uid ${process.getuid?.() ?? '?'}`;
  }
}

/** The private key of a VM or jump host, checked as a connection will read it (src/remote/session.ts). */
function keyCheck(host: Pick<VmConfig, 'id' | 'keyPath'>): Check {
  try {
    const { key } = readPrivateKey(host);
    const mode = (fs.statSync(host.keyPath).mode & 0o777).toString(8).padStart(3, '0');
    return { name: 'key', status: 'ok', detail: `${host.keyPath}: ${key.type} private key, mode ${mode}, owned by ${runningUser()}`, hint: null };
  } catch (error) {
    if (error instanceof KeyInvalidError) return { name: 'key', status: 'fail', detail: `${error.problem}; every command fails on ${host.id} alone with key_invalid`, hint: error.fix };
    return { name: 'key', status: 'fail', detail: getErrorMessage(error), hint: null };
  }
}

/**
 * A no-op run through the same exec path rsync uses: a login shell that
 * prints to stdout on a non-interactive session corrupts rsync's protocol.
 * vm-sync's own agent frames its answers and the stream transfer carries no
 * protocol on stdout, so it depends on the config whether a sync fails.
 */
async function shellCheck(vm: VmConfig, config: Config, session: VmSession, timeoutMs: number): Promise<Check> {
  let result;
  try {
    result = await session.exec('true', timeoutMs);
  } catch (error) {
    return { name: 'shell', status: 'fail', detail: `running "true" on ${vm.id} failed: ${getErrorMessage(error)}`, hint: `check that ${vm.user}'s login shell on ${vm.id} starts non-interactively` };
  }
  if (result.code !== 0) {
    return { name: 'shell', status: 'fail', detail: `"true" exited ${result.code} on ${vm.id}: ${vm.user}'s shell start-up files stop non-interactive commands (${vmText(result.stderr.trim().split('\n').at(-1) ?? '', 200) || 'no message'})`, hint: `fix ${vm.user}'s start-up files on ${vm.id} (~/.bashrc, ~/.profile, /etc/bash.bashrc) so that: ssh ${vm.user}@${vm.host} true exits 0` };
  }
  if (result.stdout.length === 0) return { name: 'shell', status: 'ok', detail: 'a non-interactive command prints nothing on stdout (rsync needs that)', hint: null };
  const first = vmText(result.stdout.split('\n').find((l) => l.trim()) ?? result.stdout, 80);
  const rsyncAlways = config.sync.transfer === 'rsync' || config.repository.layout === 'in-place';
  const where = rsyncAlways
    ? `every sync of ${vm.id} uses rsync (${config.sync.transfer === 'rsync' ? 'sync.transfer: rsync' : 'layout: in-place'}) and fails with remote_shell_unclean`
    : `rsync fails on it with remote_shell_unclean: sync --dry-run, and any deploy that falls back to rsync (a release changed by hand, a VM without GNU tar); the stream transfer itself is unaffected`;
  return {
    name: 'shell',
    status: rsyncAlways ? 'fail' : 'warn',
    detail: `${vm.user}'s login shell prints ${count(result.stdout.length, 'byte')} on stdout for a non-interactive command (${JSON.stringify(first)}): ${where}`,
    hint: `on ${vm.id}: make ${vm.user}'s start-up files (~/.bashrc, ~/.profile, /etc/bash.bashrc, /etc/profile.d/*) print nothing unless the shell is interactive (e.g. begin ~/.bashrc with: case $- in *i*) ;; *) return ;; esac), or print to stderr, so that: ssh ${vm.user}@${vm.host} true prints nothing`,
  };
}

/** What stands at the target path, and what the next sync does with it. */
function liveCheck(vm: VmConfig, config: Config, probe: Probe): Check {
  const target = probe.target;
  const stateDir = path.posix.join(path.posix.dirname(target), `.${path.posix.basename(target)}.vm-sync`);
  const release = probe.currentRelease ? path.posix.basename(probe.currentRelease) : null;
  const check = (status: Check['status'], detail: string, hint: string | null = null): Check => ({ name: 'live', status, detail, hint });
  if (config.repository.layout === 'in-place') {
    if (probe.kind === 'dir') return check('ok', `${target} is a directory (layout: in-place)`);
    if (probe.kind === 'absent') return check('ok', `${target} does not exist yet: the first sync creates it`);
    if (probe.kind === 'other') return check('fail', `${target} is a file, not a directory: an in-place sync fails`, `on ${vm.id}: move ${target} away`);
    return check('fail', `${target} is a symlink (${probe.kind === 'symlink' ? 'not made by vm-sync' : 'vm-sync\'s atomic layout'}): an in-place sync refuses to write through it`, `set repository.layout: atomic, or remove the symlink on ${vm.id}`);
  }
  switch (probe.kind) {
    case 'release':
      return check('ok', `${target} serves release ${release}`);
    case 'absent':
      return check('ok', `${target} does not exist yet: the first sync makes it a symlink to its release`);
    case 'dangling':
      return check('warn', `${target} points at release ${release}, which is gone: the VM serves nothing now; the next sync deploys a complete release and points ${target} at it`, `deploy now: vm-sync sync --vm ${vm.id}`);
    default: {
      const what = probe.kind === 'dir' ? 'a directory' : probe.kind === 'symlink' ? 'a symlink' : 'a file';
      return check(
        'warn',
        `${target} is ${what} vm-sync did not create: the first sync moves it aside to ${stateDir}/previous-<UTC time> (kept, never deleted) and puts its release symlink in its place`,
        `nothing to do if that is expected; to keep it somewhere else, move it on ${vm.id} before the first sync`,
      );
    }
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

  const key = keyCheck(vm);
  checks.push(key);
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
  if (key.status === 'fail') {
    add('auth', 'skipped', `login not tried: the key is unusable`, 'fix the key check first');
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
    checks.push(await shellCheck(vm, config, session, timeoutMs * 3));
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
    checks.push(liveCheck(vm, config, probe));

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
      add('sync_rev', 'fail', `${probe.target}/.sync_rev is ${probe.sentinel === 'unreadable' ? 'not readable' : `a ${probe.sentinel}`}: vm-sync never follows or reads it, so a sync fails with sentinel_unreadable`, `remove it on ${vm.id}, or run vm-sync sync --force --vm ${vm.id} to replace it with a new release`);
    } else if (probe.rev !== null && !/^[0-9a-f]{40}$/.test(probe.rev.trim())) {
      add('sync_rev', 'fail', `${probe.target}/.sync_rev holds ${JSON.stringify(probe.rev.slice(0, 60))}, not a commit hash: a sync fails with sentinel_unreadable`, `remove ${probe.target}/.sync_rev on ${vm.id} to treat the VM as fresh, or run vm-sync sync --force --vm ${vm.id}`);
    } else {
      add('sync_rev', 'ok', probe.rev ? `on ${probe.rev.trim()}` : 'no .sync_rev (never deployed)');
    }
  } finally {
    session.dispose();
  }
  return report();
}

/** Options of {@link runDoctor}. */
export interface DoctorOptions {
  /** Only these VM ids (default: all). */
  vms?: string[];
  /** Also check the deployed branch's protection on GitHub (`--github`). */
  github?: GitHubAccess;
  /** Where VM_SYNC_RUNNER_DIR is read from (default: this process's environment). */
  env?: NodeJS.ProcessEnv;
}

/**
 * `vm-sync doctor`: proves the runner host and every VM are ready for a
 * sync, in parallel. The runner host once: the runner's version, known_hosts, gitleaks, the
 * runner-host clone (and, with `github`, the deployed branch's protection).
 * Each VM: its key, TCP, pinned host key, key login, a clean login shell,
 * rsync, a writable target, what stands at the target, free space for the
 * tree, the lock, the current `.sync_rev`. Read-only everywhere.
 */
export async function runDoctor(config: Config, options: DoctorOptions = {}): Promise<DoctorReport> {
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
  const host = (async (): Promise<Check[]> => {
    const [gitleaks, clone] = await Promise.all([gitleaksCheck(config), cloneChecks(config)]);
    const runner = checkRunnerHost(options.env);
    const checks: Check[] = [{ name: runner.name, status: runner.status, detail: runner.detail, hint: runner.hint }, knownHostsCheck(config), gitleaks, ...clone.checks];
    if (options.github) checks.push(await branchProtectionCheck(config, options.github, clone.remoteUrl));
    return checks;
  })();
  const jumps = new Map<string, Promise<Check | null>>();
  const [hostChecks, reports] = await Promise.all([host, mapPool(vms, config.sync.concurrency, (vm) => checkVm(vm, config, knownHosts, treeBytes, jumps))]);
  const runnerHost: RunnerHostReport = { ready: !hostChecks.some((c) => c.status === 'fail'), checks: hostChecks };
  return { command: 'doctor', ready: runnerHost.ready && reports.every((vm) => vm.ready), tree_bytes: treeBytes, runner_host: runnerHost, vms: reports };
}

/** The id column of the runner host's lines (no VM id can hold a space). */
const RUNNER_HOST = 'runner host';

/** One line per check (the runner host's first, then each VM's), with the fix under each that is not ok. Pure. */
export function renderDoctor(report: DoctorReport): string {
  const lines: string[] = [];
  const width = Math.max(...report.vms.map((vm) => vm.id.length), RUNNER_HOST.length);
  const section = (id: string, checks: Check[]): void => {
    for (const check of checks) {
      lines.push(`${id.padEnd(width)}  ${check.status.toUpperCase().padEnd(4)}  ${check.name.padEnd(10)}  ${check.detail}`);
      if (check.hint && check.status !== 'ok') lines.push(`${' '.repeat(width)}        fix: ${check.hint}`);
    }
  };
  section(RUNNER_HOST, report.runner_host.checks);
  for (const vm of report.vms) section(vm.id, vm.checks);
  const ready = report.vms.filter((vm) => vm.ready).length;
  const notReady = report.vms.filter((vm) => !vm.ready).map((vm) => vm.id);
  const hostFailed = [...new Set(report.runner_host.checks.filter((c) => c.status === 'fail').map((c) => c.name))];
  lines.push('', `${RUNNER_HOST}: ${report.runner_host.ready ? 'ready' : `not ready (${hostFailed.join(', ')}): every sync from it fails`}`);
  lines.push(`${ready} of ${count(report.vms.length, 'VM')} ready for a sync${notReady.length ? `; not ready: ${notReady.join(', ')}` : ''}`);
  // Details quote VMs, the clone and API answers: every line is cleaned as it is printed.
  return `${lines.map((line) => terminalLine(line)).join('\n')}\n`;
}
