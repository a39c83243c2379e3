import fs from 'node:fs';
import path from 'node:path';

/**
 * Processes of the demo fleet, as the kernel knows them (Linux `/proc`).
 *
 * A pid alone is not a process: after an sshd exits its pid can be handed to
 * anything else. So a recorded sshd is named by its pid, its start time (in
 * clock ticks since boot) and the boot it started in, and nothing is signalled
 * unless all three still match and its command line still names the VM's own
 * sshd_config.
 */

/** One process instance: the pid, and what tells it apart from a later process with the same pid. */
export interface ProcessIdentity {
  pid: number;
  /** Field 22 of `/proc/<pid>/stat`: start time in clock ticks since boot. */
  start: string;
  /** `/proc/sys/kernel/random/boot_id`: a start time is only unique within one boot. */
  boot: string;
}

function readOrNull(file: string): string | null {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return null;
  }
}

/** True when this system exposes processes the way this module reads them. */
export function canInspectProcesses(): boolean {
  return fs.existsSync('/proc/self/stat');
}

function bootId(): string {
  return (readOrNull('/proc/sys/kernel/random/boot_id') ?? '').trim();
}

/** The identity of the live process `pid`, or null when there is none (or it is a zombie). */
export function processIdentity(pid: number): ProcessIdentity | null {
  if (!Number.isInteger(pid) || pid <= 0) return null;
  const stat = readOrNull(`/proc/${pid}/stat`);
  if (!stat) return null;
  // The command name (field 2) may hold spaces and parentheses: fields are counted after its last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state); a zombie has exited and only waits for its parent.
  if (fields[0] === 'Z' || fields[0] === 'X') return null;
  const start = fields[19];
  return start ? { pid, start, boot: bootId() } : null;
}

/** True while the very process `id` names is alive (not merely some process with its pid). */
export function isAlive(id: ProcessIdentity): boolean {
  const now = processIdentity(id.pid);
  return now !== null && now.start === id.start && now.boot === id.boot;
}

/** The arguments of process `pid` (argv), or null when it is gone or unreadable. */
export function processArgs(pid: number): string[] | null {
  const raw = readOrNull(`/proc/${pid}/cmdline`);
  if (!raw) return null;
  return raw.split('\0').filter((arg, i, all) => arg !== '' || i < all.length - 1);
}

/** Every pid in `/proc` (empty where there is no `/proc`). */
export function listPids(): number[] {
  try {
    return fs
      .readdirSync('/proc')
      .filter((name) => /^\d+$/.test(name))
      .map(Number);
  } catch {
    return [];
  }
}

function sameFile(a: string, b: fs.Stats): boolean {
  try {
    const s = fs.statSync(a);
    return s.dev === b.dev && s.ino === b.ino;
  } catch {
    return false;
  }
}

/** True when process `pid` runs an sshd binary (its executable, not its title, which sshd rewrites). */
function runsSshd(pid: number): boolean {
  try {
    // After a package upgrade the link reads "/usr/sbin/sshd (deleted)".
    return path.basename(fs.readlinkSync(`/proc/${pid}/exe`).replace(/ \(deleted\)$/, '')) === 'sshd';
  } catch {
    return false;
  }
}

/**
 * The paths an sshd's arguments may give with `-f`. A listener rewrites its
 * argv into one title ("sshd: /usr/sbin/sshd -f CONFIG -E LOG [listener] ..."),
 * so a path with spaces cannot be split out for sure: every prefix that ends
 * at a space is a candidate, and the caller compares files, not strings.
 */
function configCandidates(args: string[]): string[] {
  const flag = args.indexOf('-f');
  if (args.length > 2 && flag > 0 && flag < args.length - 1) return [args[flag + 1]];
  const title = args.join(' ');
  const candidates: string[] = [];
  for (let at = title.indexOf(' -f /'); at >= 0; at = title.indexOf(' -f /', at + 1)) {
    const rest = title.slice(at + 4);
    for (let end = rest.indexOf(' '); ; end = rest.indexOf(' ', end + 1)) {
      candidates.push(end < 0 ? rest : rest.slice(0, end));
      if (end < 0 || candidates.length > 64) break;
    }
  }
  return candidates;
}

/**
 * True when `args` (of a process that runs sshd) show it was started with
 * `-f config`: the same file, however its path is spelled. Per-connection
 * children retitle themselves (`sshd: user@notty`) and are not matched: they
 * end with their connection.
 */
export function isSshdWithConfig(args: string[] | null, config: fs.Stats): boolean {
  return args !== null && configCandidates(args).some((candidate) => path.isAbsolute(candidate) && sameFile(candidate, config));
}

/** True when process `pid` is an sshd started with `-f` of the file `config` is the stat of. */
export function isSshd(pid: number, config: fs.Stats): boolean {
  return runsSshd(pid) && isSshdWithConfig(processArgs(pid), config);
}

/** The live sshd processes started with `-f configPath` (found by scanning `/proc`). */
export function sshdProcessesOf(configPath: string): ProcessIdentity[] {
  let config: fs.Stats;
  try {
    config = fs.statSync(configPath);
  } catch {
    return [];
  }
  const found: ProcessIdentity[] = [];
  for (const pid of listPids()) {
    if (!isSshd(pid, config)) continue;
    const id = processIdentity(pid);
    if (id) found.push(id);
  }
  return found;
}

/** Blocks this thread for `ms` (the demo's stop is synchronous for its callers; waits are short). */
function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** What {@link terminate} did: the processes that were alive and are gone now, and those that would not go. */
export interface TerminateResult {
  stopped: ProcessIdentity[];
  survivors: Array<{ id: ProcessIdentity; reason: string }>;
}

/**
 * Ends each process: SIGTERM, up to `graceMs` to go, then SIGKILL. Every
 * signal is sent only after checking that the pid is still the same process,
 * so a pid the kernel gave to another program in the meantime is never hit.
 * Only processes that were alive and are now gone count as stopped.
 */
export function terminate(ids: ProcessIdentity[], graceMs = 3000): TerminateResult {
  const result: TerminateResult = { stopped: [], survivors: [] };
  const pending = new Map<ProcessIdentity, string>();
  const signal = (id: ProcessIdentity, sig: NodeJS.Signals): void => {
    if (!isAlive(id)) return;
    try {
      process.kill(id.pid, sig);
    } catch (error) {
      pending.set(id, (error as NodeJS.ErrnoException).code === 'EPERM' ? `not allowed to signal pid ${id.pid}` : `cannot signal pid ${id.pid}`);
    }
  };
  const live = ids.filter(isAlive);
  for (const id of live) signal(id, 'SIGTERM');
  const waitGone = (ms: number): void => {
    const deadline = Date.now() + ms;
    while (live.some(isAlive) && Date.now() < deadline) sleepSync(20);
  };
  waitGone(graceMs);
  for (const id of live) if (isAlive(id)) signal(id, 'SIGKILL');
  waitGone(1000);
  for (const id of live) {
    if (isAlive(id)) result.survivors.push({ id, reason: pending.get(id) ?? `pid ${id.pid} is still running after SIGKILL` });
    else result.stopped.push(id);
  }
  return result;
}
