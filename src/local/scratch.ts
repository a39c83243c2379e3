import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { processStart, runnerHostId, bootId, pidNamespace } from '../remote/lock.js';

/*
 * Every temporary directory vm-sync makes on the runner host carries its
 * owner in its name: a tag of the host, the pid and the pid's start time.
 * A run that dies without its `finally` (kill -9, OOM killer, a runner that
 * vanishes) leaves its directories behind (an export is a full tree copy);
 * the next run on the host can then tell, from the name alone, that the owner
 * is gone and remove them, and never touch a live run's.
 */

/** `<host tag>-<pid>-<start ticks>`, this process's owner stamp. */
function ownerStamp(): string {
  return `${hostTag()}-${process.pid}-${processStart(process.pid) || '0'}`;
}

// Short, so socket paths inside these directories stay far below the 108-byte limit.
// A pid only names a process within one boot and one pid namespace: a run in
// another container on the same host (same host name, own pids) must never
// take a live run's directories for a dead one's.
function hostTag(): string {
  return crypto.createHash('sha256').update(`${runnerHostId()} ${bootId()} ${pidNamespace()}`).digest('hex').slice(0, 8);
}

const SCRATCH = /^vm-sync-([a-z]+)-([0-9a-f]{8})-(\d+)-(\d+)-[A-Za-z0-9]{6}$/;

// The removals started by removeScratchDirLater and not yet ended.
const pendingRemovals = new Set<Promise<void>>();

/**
 * Removes a scratch directory without waiting for it: removing a whole tree
 * (an export of a large repository takes seconds) must not stand between a
 * run and its report. The process stays alive until it is done; if it dies
 * first, {@link sweepScratchDirs} finishes the job on the next run.
 */
export function removeScratchDirLater(dir: string): void {
  const removal: Promise<void> = fs.promises
    .rm(dir, { recursive: true, force: true })
    .catch(() => undefined)
    .finally(() => pendingRemovals.delete(removal));
  pendingRemovals.add(removal);
}

/**
 * Resolves once every removal {@link removeScratchDirLater} started has
 * ended (never rejects): the CLI waits for it after its output, so a caller
 * that runs it in-process finds nothing of the run left either.
 */
export async function scratchRemovalsSettled(): Promise<void> {
  while (pendingRemovals.size > 0) await Promise.all([...pendingRemovals]);
}

/**
 * Creates a private (0700) temporary directory `vm-sync-<kind>-<owner>-XXXXXX`
 * in the system temporary directory. `kind` is lower-case letters (export,
 * rsh, gitleaks). The caller removes it in `finally`; {@link sweepScratchDirs}
 * removes it if the process dies first.
 */
export function makeScratchDir(kind: string): string {
  if (!/^[a-z]+$/.test(kind)) throw new Error(`scratch directory kind must be lower-case letters: ${kind}`);
  return fs.mkdtempSync(path.join(os.tmpdir(), `vm-sync-${kind}-${ownerStamp()}-`));
}

/**
 * A name for a temporary sibling of `target` (a clone being made), stamped
 * with this process as owner so {@link ownedByDeadProcess} can judge it later.
 */
export function scratchSiblingName(target: string, kind: string): string {
  return `${target}.vm-sync-${kind}-${ownerStamp()}-${crypto.randomBytes(3).toString('hex')}`;
}

/**
 * Whether the owner stamped into a name by this module is certainly dead: it
 * ran on this host (tag) and its pid is gone or now belongs to a process that
 * started at another time. Unknown start times and other hosts' stamps are
 * never "dead": leaving a directory behind is cheaper than deleting a live one.
 */
export function ownedByDeadProcess(name: string): boolean {
  const match = /-([0-9a-f]{8})-(\d+)-(\d+)-[A-Za-z0-9]{6}$/.exec(name);
  if (!match || match[1] !== hostTag() || match[3] === '0') return false;
  const pid = Number(match[2]);
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  const start = processStart(pid);
  if (start !== '') return start !== match[3];
  try {
    process.kill(pid, 0);
    return false;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

/**
 * Removes the temporary directories of vm-sync runs that died on this host:
 * only directories (never a symlink), only this user's, only those whose
 * owner is certainly dead. Cheap: one directory listing and an lstat per
 * `vm-sync-*` entry. Best effort: a failure to remove one is skipped.
 * Returns the paths removed.
 */
export function sweepScratchDirs(tmpDir: string = os.tmpdir()): string[] {
  let names: string[];
  try {
    names = fs.readdirSync(tmpDir);
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const name of names) {
    if (!name.startsWith('vm-sync-') || !SCRATCH.test(name)) continue;
    const full = path.join(tmpDir, name);
    if (removeIfOrphaned(full)) removed.push(full);
  }
  return removed;
}

/**
 * Removes `full` when it is this user's directory (not a symlink) and its
 * name's owner stamp is a dead process. Returns whether it removed it.
 */
export function removeIfOrphaned(full: string): boolean {
  try {
    const stat = fs.lstatSync(full);
    if (!stat.isDirectory() || stat.uid !== process.getuid?.()) return false;
    if (!ownedByDeadProcess(path.basename(full))) return false;
    fs.rmSync(full, { recursive: true, force: true });
    return true;
  } catch {
    return false;
  }
}
