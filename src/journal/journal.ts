import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { getErrorMessage, VmSyncError } from '../errors.js';
import { holderIsDead, ownIdentity, type ProcessIdentity } from '../remote/lock.js';
import { breakAbandonedLock } from '../local/break-lock.js';
import { vmText } from '../remote/untrusted.js';

/*
 * The runner host's journal: one JSON line per run of a command that changes
 * or checks VMs (sync, rollback, verify, status, unlock), in vm-sync's state
 * directory beside the clone (`/srv/.app.vm-sync/journal.jsonl` for
 * `main_repo_path: /srv/app`). Who ran what, when, on which commit, and what
 * each VM ended with: the audit trail `vm-sync history` reads.
 *
 * Appends from concurrent runs never interleave: each line is written with
 * one write(2) on an O_APPEND descriptor while holding `journal.lock` (a
 * symlink naming its holder; a holder that died on this host, or one older
 * than a few seconds, is broken). Rotation (past the size limit the file
 * becomes `journal.1.jsonl`, replacing the older one) happens under the
 * same lock. Reading skips, and counts, any line that is not a record.
 */

/** The journal's format version, in every record. */
export const JOURNAL_VERSION = 1;
/** Default size at which the journal is rotated; `$VM_SYNC_JOURNAL_MAX_BYTES` sets another. */
export const JOURNAL_MAX_BYTES = 10 * 1024 * 1024;
/** How long an append waits for another run's append before writing without the lock (and without rotating). */
const LOCK_WAIT_MS = 3000;
/** A lock older than this is stale whoever holds it: an append holds it for milliseconds. */
const LOCK_STALE_MS = 10_000;

/** Who started a run: a user on the runner host, or an Actions run. */
export type Trigger =
  | { kind: 'cli'; user: string; sudo_user: string | null; host: string }
  | { kind: 'actions'; run_url: string; actor: string; host: string };

/** One VM's outcome as the journal keeps it. */
export interface JournalVm {
  id: string;
  /** Where the VM stood before the run (null where the command has no such notion, e.g. unlock). */
  state: string | null;
  action: string | null;
  /** `success`, `failed`, `refused`, `skipped`; for unlock what it did (`broken`, `held`, ...). */
  result: string;
  /** The failure code, or null. */
  code: string | null;
  /** The commit the VM serves at the end, when known. */
  rev: string | null;
}

/** One line of the journal. */
export interface JournalRecord {
  v: number;
  /** Unique per run; also in each VM's revisions.log and in the run's --json report (`run_id`). */
  run_id: string;
  started_at: string;
  ended_at: string;
  command: string;
  trigger: Trigger;
  /** The commit deployed or checked ('' or null when none, e.g. a rollback to each VM's previous release). */
  commit: string | null;
  dry_run: boolean;
  /** `K/N` for a sharded run, else null. */
  shard: string | null;
  /** The run's exit code (0 all VMs ok, 1 some failed, 3 secrets blocked it, ...). */
  exit_code: number;
  /** Why the run stopped before reaching its VMs, or null. */
  error: { code: string; message: string } | null;
  vms: JournalVm[];
}

/** The journal of the clone whose state directory is `stateDir`. */
export function journalPath(stateDir: string): string {
  return path.join(stateDir, 'journal.jsonl');
}

/** The rotated (older) journal beside `file`. */
export function rotatedPath(file: string): string {
  return file.replace(/\.jsonl$/, '.1.jsonl');
}

/** A new run id: UTC time to the second plus 8 random hex digits (`20261122T070102Z-0a1b2c3d`). */
export function newRunId(now: Date = new Date()): string {
  return `${now.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z')}-${crypto.randomBytes(4).toString('hex')}`;
}

/** Run ids as vm-sync makes them, and as the VM's agent accepts them. */
export const RUN_ID = /^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$/;

/** Who is running this process: the Actions run (with its actor) inside a workflow, else the local user. */
export function triggerFromEnv(env: NodeJS.ProcessEnv = process.env): Trigger {
  const host = os.hostname();
  const { GITHUB_ACTIONS, GITHUB_SERVER_URL, GITHUB_REPOSITORY, GITHUB_RUN_ID, GITHUB_RUN_ATTEMPT, GITHUB_ACTOR } = env;
  if (GITHUB_ACTIONS === 'true' && GITHUB_RUN_ID) {
    const base = GITHUB_SERVER_URL && GITHUB_REPOSITORY ? `${GITHUB_SERVER_URL}/${GITHUB_REPOSITORY}/actions/runs/${GITHUB_RUN_ID}` : `run ${GITHUB_RUN_ID}`;
    const attempt = GITHUB_RUN_ATTEMPT && GITHUB_RUN_ATTEMPT !== '1' ? `/attempts/${GITHUB_RUN_ATTEMPT}` : '';
    return { kind: 'actions', run_url: `${base}${attempt}`, actor: GITHUB_ACTOR ?? '', host };
  }
  let user: string;
  try {
    user = os.userInfo().username;
  } catch {
    user = env.USER ?? env.LOGNAME ?? '';
  }
  return { kind: 'cli', user: user || `uid ${process.getuid?.() ?? '?'}`, sudo_user: env.SUDO_USER || null, host };
}

/** The journal's size limit: `$VM_SYNC_JOURNAL_MAX_BYTES` when it is a whole number of bytes (at least 1 KB), else the default. */
export function journalMaxBytes(env: NodeJS.ProcessEnv = process.env): number {
  const value = Number(env.VM_SYNC_JOURNAL_MAX_BYTES);
  return Number.isSafeInteger(value) && value >= 1024 ? value : JOURNAL_MAX_BYTES;
}

interface LockRecord extends ProcessIdentity {
  token: string;
}

function encodeLock(identity: LockRecord): string {
  return ['vm-sync-journal-lock-v1', identity.token, identity.host, identity.pid, identity.pidStart, identity.boot, identity.pidns].map((v) => String(v).replace(/\s/g, '_')).join(' ');
}

function decodeLock(text: string): LockRecord | null {
  const [magic, token, host, pid, pidStart, boot, pidns] = text.split(' ');
  if (magic !== 'vm-sync-journal-lock-v1' || !token || !Number.isSafeInteger(Number(pid))) return null;
  return { token, host: host ?? '', pid: Number(pid), pidStart: pidStart ?? '', boot: boot ?? '', pidns: pidns ?? '' };
}

/** Whether a lock someone holds is stale: its holder died on this host, it is not ours to read, or it is old. */
function isStale(lockPath: string, text: string): boolean {
  const holder = decodeLock(text);
  if (holder && holderIsDead(holder)) return true;
  try {
    return Date.now() - fs.lstatSync(lockPath).mtimeMs > LOCK_STALE_MS;
  } catch {
    return false;
  }
}


/** Takes the journal lock; null when it stayed busy for `waitMs`. */
async function lock(lockPath: string, waitMs: number): Promise<string | null> {
  const record = encodeLock(ownIdentity());
  const until = Date.now() + waitMs;
  for (;;) {
    try {
      fs.symlinkSync(record, lockPath);
      return record;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    let seen: string;
    try {
      seen = fs.readlinkSync(lockPath);
    } catch {
      continue; // released meanwhile
    }
    if (isStale(lockPath, seen)) {
      breakAbandonedLock(lockPath, seen, LOCK_STALE_MS);
      continue;
    }
    if (Date.now() >= until) return null;
    await sleep(5 + Math.random() * 15);
  }
}

function unlock(lockPath: string, record: string): void {
  try {
    if (fs.readlinkSync(lockPath) === record) fs.unlinkSync(lockPath);
  } catch {
    // removed by hand
  }
}

/**
 * Writes all of `data` with O_APPEND: one write(2) unless the kernel writes
 * less (then the rest follows). A journal that does not end with a newline
 * holds the start of a record whose write was cut (the run killed, the disk
 * full): the record starts on a new line, or it would be glued to that
 * fragment and lost with it.
 */
function appendOnce(file: string, line: Buffer): void {
  const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_APPEND | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW, 0o600);
  try {
    const size = fs.fstatSync(fd).size;
    const last = Buffer.alloc(1);
    const torn = size > 0 && fs.readSync(fd, last, 0, 1, size - 1) === 1 && last[0] !== 0x0a;
    const data = torn ? Buffer.concat([Buffer.from('\n'), line]) : line;
    let done = 0;
    while (done < data.length) done += fs.writeSync(fd, data, done, data.length - done);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Appends one record to the journal at `file` (creating its directory),
 * rotating it first when the line would take it past `maxBytes`. Returns a
 * warning when something was not as it should be (the lock stayed busy, so
 * the line was written without it and no rotation happened); throws only when
 * the line could not be written at all.
 */
export async function appendJournal(file: string, record: JournalRecord, options: { maxBytes?: number; lockWaitMs?: number } = {}): Promise<string | null> {
  const line = Buffer.from(`${JSON.stringify(record)}\n`);
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  const lockPath = `${file}.lock`;
  const held = await lock(lockPath, options.lockWaitMs ?? LOCK_WAIT_MS);
  if (!held) {
    // Never lose a record for a busy lock: one O_APPEND write is still whole on a local file system.
    appendOnce(file, line);
    return `the journal lock ${lockPath} stayed busy: the record was appended without it and the journal was not rotated`;
  }
  try {
    const maxBytes = options.maxBytes ?? journalMaxBytes();
    let size = 0;
    try {
      size = fs.statSync(file).size;
    } catch {
      // no journal yet
    }
    if (size > 0 && size + line.length > maxBytes) fs.renameSync(file, rotatedPath(file));
    appendOnce(file, line);
    return null;
  } finally {
    unlock(lockPath, held);
  }
}

const isString = (v: unknown): v is string => typeof v === 'string';
const isNullableString = (v: unknown): v is string | null => v === null || typeof v === 'string';
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,3})?Z$/;

/** Every string of a record made printable and bounded (the journal is a file anyone with the runner user's rights can edit). */
function clean(value: string | null, max = 300): string | null {
  return value === null ? null : vmText(value, max);
}

/** One journal line as a record, or null when it is not one (every field checked). */
export function parseJournalLine(line: string): JournalRecord | null {
  let raw: unknown;
  try {
    raw = JSON.parse(line);
  } catch {
    return null;
  }
  if (!isObject(raw) || raw.v !== JOURNAL_VERSION) return null;
  const { run_id, started_at, ended_at, command, trigger, commit, dry_run, shard, exit_code, error, vms } = raw;
  if (!isString(run_id) || !isString(started_at) || !ISO.test(started_at) || !isString(ended_at) || !ISO.test(ended_at) || !isString(command)) return null;
  if (!isNullableString(commit) || typeof dry_run !== 'boolean' || !isNullableString(shard) || !Number.isSafeInteger(exit_code) || !Array.isArray(vms) || !isObject(trigger)) return null;
  let who: Trigger;
  if (trigger.kind === 'cli' && isString(trigger.user) && isString(trigger.host) && isNullableString(trigger.sudo_user ?? null)) {
    who = { kind: 'cli', user: vmText(trigger.user, 100), sudo_user: clean((trigger.sudo_user as string | null | undefined) ?? null, 100), host: vmText(trigger.host, 100) };
  } else if (trigger.kind === 'actions' && isString(trigger.run_url) && isString(trigger.actor) && isString(trigger.host)) {
    who = { kind: 'actions', run_url: vmText(trigger.run_url, 500), actor: vmText(trigger.actor, 100), host: vmText(trigger.host, 100) };
  } else {
    return null;
  }
  let failure: JournalRecord['error'] = null;
  if (error !== null) {
    if (!isObject(error) || !isString(error.code) || !isString(error.message)) return null;
    failure = { code: vmText(error.code, 60), message: vmText(error.message, 500) };
  }
  const rows: JournalVm[] = [];
  for (const vm of vms) {
    if (!isObject(vm) || !isString(vm.id) || !isString(vm.result) || !isNullableString(vm.state) || !isNullableString(vm.action) || !isNullableString(vm.code) || !isNullableString(vm.rev)) return null;
    rows.push({ id: vmText(vm.id, 100), state: clean(vm.state, 40), action: clean(vm.action, 40), result: vmText(vm.result, 40), code: clean(vm.code, 60), rev: clean(vm.rev, 64) });
  }
  return {
    v: JOURNAL_VERSION,
    run_id: vmText(run_id, 80),
    started_at,
    ended_at,
    command: vmText(command, 40),
    trigger: who,
    commit: clean(commit, 64),
    dry_run,
    shard: clean(shard, 20),
    exit_code: exit_code as number,
    error: failure,
    vms: rows,
  };
}

/** What {@link readJournal} found: the records, oldest first, and how many lines were not records. */
export interface JournalRead {
  records: JournalRecord[];
  skipped: number;
  /** The files read, oldest first (the rotated one, then the current one), that exist. */
  files: string[];
}

/** The most of one journal file {@link readJournal} reads: its newest bytes (history shows the newest runs). */
export const JOURNAL_READ_MAX_BYTES = 64 * 1024 * 1024;

/**
 * The text of one journal file, or null when there is none: the file itself
 * (never through a symbolic link, never a FIFO or device, whose read could
 * block or never end), at most its last `maxBytes`, starting at a line.
 */
function journalText(f: string, maxBytes: number): string | null {
  let fd: number;
  try {
    fd = fs.openSync(f, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return null;
    if (code === 'ELOOP') throw new VmSyncError('permission_denied', `the journal ${f} is a symbolic link: vm-sync reads only its own file. Remove the link.`);
    throw new VmSyncError('permission_denied', `cannot read the journal ${f}: ${getErrorMessage(error)}. Run vm-sync history as the runner's user.`);
  }
  try {
    const stat = fs.fstatSync(fd);
    if (!stat.isFile()) throw new VmSyncError('permission_denied', `the journal ${f} is not a regular file: vm-sync reads only its own file. Remove it.`);
    const length = Math.min(stat.size, maxBytes);
    const buffer = Buffer.alloc(length);
    let done = 0;
    while (done < length) {
      const n = fs.readSync(fd, buffer, done, length - done, stat.size - length + done);
      if (n === 0) break;
      done += n;
    }
    return buffer.subarray(0, done).toString('utf8');
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Reads the journal at `file` and its rotated predecessor; a line that is not
 * a record is skipped and counted. Of a file larger than `maxBytes` only the
 * newest part is read (its first, partial, line counts as skipped).
 */
export function readJournal(file: string, options: { maxBytes?: number } = {}): JournalRead {
  const out: JournalRead = { records: [], skipped: 0, files: [] };
  for (const f of [rotatedPath(file), file]) {
    const text = journalText(f, options.maxBytes ?? JOURNAL_READ_MAX_BYTES);
    if (text === null) continue;
    out.files.push(f);
    for (const line of text.split('\n')) {
      if (line.trim() === '') continue;
      const record = parseJournalLine(line);
      if (record) out.records.push(record);
      else out.skipped++;
    }
  }
  return out;
}
