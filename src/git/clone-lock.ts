import { AsyncLocalStorage } from 'node:async_hooks';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { getErrorMessage, VmSyncError } from '../errors.js';
import { holderIsDead, ownIdentity, type ProcessIdentity } from '../remote/lock.js';
import { breakAbandonedLock } from '../local/break-lock.js';

/*
 * The runner-host lock: one vm-sync run at a time fetches, resets, exports or
 * writes refs in the runner-host clone (two at once collide on git's own
 * `index.lock` / `cannot lock ref`). The lock is a symlink whose target is the
 * holder's record: creating a symlink is atomic and carries its content, so a
 * lock never exists half-written. It lives in a state directory beside the
 * clone, not inside it, because a corrupt clone is moved aside while locked.
 *
 * Each acquisition has its own token, so two runs inside one process (same
 * pid) exclude each other too. Re-entry by the same run (same async context)
 * does not wait for itself.
 */

/** Default wait for a busy clone before giving up with `runner_busy`. */
export const DEFAULT_CLONE_WAIT_MS = 300_000;

const MAGIC = 'vm-sync-clone-lock-v1';
const POLL_MS = 200;
// Breaking a stale lock takes milliseconds; a break marker older than this was left by a killed breaker.
const BREAK_STALE_MS = 30_000;

/** Who holds the runner-host lock, as recorded in it. */
export interface CloneLockHolder extends ProcessIdentity {
  token: string;
  /** When it took the lock, epoch milliseconds. */
  since: number;
  /** What it is doing, for the waiting message. */
  doing: string;
}

/** How {@link withCloneLock} waits. */
export interface CloneLockOptions {
  /** Give up after this long (default {@link DEFAULT_CLONE_WAIT_MS}). */
  waitMs?: number;
  /** Called once when the lock is busy and the run starts waiting. */
  onWait?: (message: string) => void;
  /** Stop waiting (`interrupted`) when aborted. */
  signal?: AbortSignal;
}

/** The lock's path for a clone at `<parent>/<name>`: `<parent>/.<name>.vm-sync/clone.lock`. */
export function cloneLockPath(cloneDir: string): string {
  const resolved = path.resolve(cloneDir);
  return path.join(path.dirname(resolved), `.${path.basename(resolved)}.vm-sync`, 'clone.lock');
}

const held = new AsyncLocalStorage<ReadonlySet<string>>();

/**
 * Runs `fn` holding the runner-host lock of `cloneDir`. A busy lock is waited
 * for (one message through `onWait`), polling, up to `waitMs`; then
 * `runner_busy` names the holder. A holder that died on this host is stale at
 * once. Only our own lock is ever released.
 */
export async function withCloneLock<T>(cloneDir: string, doing: string, options: CloneLockOptions, fn: () => Promise<T>): Promise<T> {
  const lockPath = cloneLockPath(cloneDir);
  const outer = held.getStore();
  if (outer?.has(lockPath)) return fn();
  const record = await acquire(lockPath, cloneDir, doing, options);
  try {
    return await held.run(new Set([...(outer ?? []), lockPath]), fn);
  } finally {
    releaseIfOurs(lockPath, record);
  }
}

/** Reads the holder of a lock path, or null when it is free or not a vm-sync clone lock. */
export function readCloneLock(lockPath: string): CloneLockHolder | null {
  try {
    return parseHolder(fs.readlinkSync(lockPath));
  } catch {
    return null;
  }
}

function encodeHolder(holder: CloneLockHolder): string {
  const field = (v: string | number): string => encodeURIComponent(String(v)).slice(0, 300);
  return [MAGIC, `token=${field(holder.token)}`, `host=${field(holder.host)}`, `pid=${holder.pid}`, `start=${field(holder.pidStart)}`, `boot=${field(holder.boot)}`, `pidns=${field(holder.pidns)}`, `since=${holder.since}`, `doing=${field(holder.doing)}`].join(' ');
}

function parseHolder(text: string): CloneLockHolder | null {
  const [magic, ...fields] = text.split(' ');
  if (magic !== MAGIC) return null;
  const values = new Map<string, string>();
  for (const f of fields) {
    const eq = f.indexOf('=');
    if (eq <= 0) continue;
    try {
      values.set(f.slice(0, eq), decodeURIComponent(f.slice(eq + 1)));
    } catch {
      return null;
    }
  }
  const pid = Number(values.get('pid'));
  const since = Number(values.get('since'));
  const token = values.get('token') ?? '';
  if (!token || !Number.isSafeInteger(pid) || !Number.isSafeInteger(since)) return null;
  return { token, host: values.get('host') ?? '', pid, pidStart: values.get('start') ?? '', boot: values.get('boot') ?? '', pidns: values.get('pidns') ?? '', since, doing: values.get('doing') ?? '' };
}

/** One line about a holder, for messages (printable characters only). */
export function describeHolder(holder: CloneLockHolder | null, now = Date.now()): string {
  if (!holder) return 'an unrecognised lock';
  const since = new Date(holder.since);
  const when = Number.isNaN(since.getTime()) ? 'an unknown time' : `${since.toISOString().replace(/\.\d+Z$/, 'Z')} (${Math.max(0, Math.round((now - holder.since) / 1000))} s ago)`;
  return printable(`pid ${holder.pid} on ${holder.host} since ${when}${holder.doing ? `, ${holder.doing}` : ''}`);
}

// The record is a file anyone with the runner user's rights can write: no terminal escapes from it.
function printable(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\u0000-\u001f\u007f-\u009f]/g, '?').slice(0, 500);
}

async function acquire(lockPath: string, cloneDir: string, doing: string, options: CloneLockOptions): Promise<string> {
  const stateDir = path.dirname(lockPath);
  try {
    fs.mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  } catch (error) {
    throw new VmSyncError(
      'git_failed',
      `cannot create ${stateDir}, where vm-sync keeps the runner-host lock for ${cloneDir}: ${getErrorMessage(error)}. Make ${path.dirname(stateDir)} writable by the runner's user, or create ${stateDir} owned by it.`,
    );
  }
  const record = encodeHolder({ ...ownIdentity(), since: Date.now(), doing });
  const waitMs = options.waitMs ?? DEFAULT_CLONE_WAIT_MS;
  const started = Date.now();
  let announced = false;
  for (;;) {
    try {
      fs.symlinkSync(record, lockPath);
      return record;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') {
        throw new VmSyncError('git_failed', `cannot take the runner-host lock ${lockPath}: ${getErrorMessage(error)}`);
      }
    }
    let current: string;
    try {
      current = fs.readlinkSync(lockPath);
    } catch {
      continue; // released between our attempt and the read: try again at once
    }
    const holder = parseHolder(current);
    if (holder && holderIsDead(holder) && breakAbandonedLock(lockPath, current, BREAK_STALE_MS)) continue;
    if (options.signal?.aborted) throw new VmSyncError('interrupted', `interrupted while waiting for the runner-host clone ${cloneDir}`);
    const waited = Date.now() - started;
    if (waited >= waitMs) {
      throw new VmSyncError(
        'runner_busy',
        `the runner-host clone ${cloneDir} is still in use after waiting ${Math.round(waited / 1000)} s: held by ${describeHolder(holder)}. ` +
          `Wait for that run to finish and retry. If no vm-sync run with that pid is alive on ${holder ? printable(holder.host) : 'this host'}, remove ${lockPath}. ` +
          `VM_SYNC_CLONE_WAIT_S sets how long to wait.`,
      );
    }
    if (!announced) {
      announced = true;
      options.onWait?.(`waiting for the runner-host clone ${cloneDir}: held by ${describeHolder(holder)}; waiting up to ${Math.round(waitMs / 1000)} s`);
    }
    await sleep(Math.min(POLL_MS, waitMs - waited), undefined, { signal: options.signal }).catch(() => undefined);
  }
}


function releaseIfOurs(lockPath: string, record: string): void {
  try {
    if (fs.readlinkSync(lockPath) === record) fs.unlinkSync(lockPath);
  } catch {
    // Nothing to release: someone removed it by hand.
  }
}
