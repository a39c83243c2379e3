import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import { vmText } from './untrusted.js';

/**
 * Who holds a VM's deploy lock. The lock on the VM is a symlink
 * (`<state dir>/lock`) whose target is {@link encodeLockOwner}'s text: creating
 * a symlink is atomic and carries its content, so a lock can never exist with
 * an empty or half-written owner.
 */
export interface LockOwner {
  /** Unique per run: `host:pid:random`. */
  token: string;
  /** The runner host ({@link runnerHostId}). */
  host: string;
  pid: number;
  /** The holder process's start time (clock ticks since boot, /proc/PID/stat field 22), so a reused pid is not mistaken for it. */
  pidStart: string;
  /** The holder's own deadline, epoch seconds on the VM's clock: past it, nothing of the holder still runs there. */
  deadline: number;
  /** The commit being deployed ('' when not known). */
  commit: string;
  /** The Actions run URL ('' outside Actions). */
  run: string;
}

const MAGIC = 'vm-sync-lock-v2';
const SAFE = /[^A-Za-z0-9_.:/@%+=-]/g;

/**
 * The symlink target that stores an owner: space-separated `key=value`, values
 * restricted to a safe charset. Without a deadline, the text is what vm-sync
 * sends to the VM, whose agent appends `deadline=` from the VM's own clock (no
 * clock skew between the runner host and the VM can shorten a lock).
 */
export function encodeLockOwner(owner: Omit<LockOwner, 'deadline'> & { deadline?: number }): string {
  const field = (v: string | number): string => String(v).replace(SAFE, '_').slice(0, 200);
  return [
    MAGIC,
    `token=${field(owner.token)}`,
    `host=${field(owner.host)}`,
    `pid=${field(owner.pid)}`,
    `start=${field(owner.pidStart)}`,
    `commit=${field(owner.commit)}`,
    `run=${field(owner.run)}`,
    ...(owner.deadline === undefined ? [] : [`deadline=${field(owner.deadline)}`]),
  ].join(' ');
}

/** Parses {@link encodeLockOwner}'s text; null for anything else (a legacy or foreign lock). */
export function parseLockOwner(text: string): LockOwner | null {
  const [magic, ...fields] = text.trim().split(' ');
  if (magic !== MAGIC) return null;
  const values = new Map(fields.map((f) => [f.slice(0, f.indexOf('=')), f.slice(f.indexOf('=') + 1)] as const));
  const pid = Number(values.get('pid'));
  const deadline = Number(values.get('deadline'));
  const token = values.get('token') ?? '';
  if (!token || !Number.isSafeInteger(pid) || !Number.isSafeInteger(deadline)) return null;
  return {
    token,
    host: values.get('host') ?? '',
    pid,
    pidStart: values.get('start') ?? '',
    deadline,
    commit: values.get('commit') ?? '',
    run: values.get('run') ?? '',
  };
}

/** One line describing a holder, for messages (VM-controlled, so cleaned). */
export function describeOwner(owner: LockOwner, vmNow: number): string {
  const left = owner.deadline - vmNow;
  const parts = [`run ${owner.token}`, `on ${owner.host} pid ${owner.pid}`];
  if (owner.commit) parts.push(`deploying ${owner.commit.slice(0, 12)}`);
  if (owner.run) parts.push(owner.run);
  parts.push(left >= 0 ? `its deadline is in ${left}s` : `its deadline passed ${-left}s ago`);
  return vmText(parts.join(', '));
}

/** This runner host's name as locks record it. */
export function runnerHostId(): string {
  return os.hostname().replace(SAFE, '_').slice(0, 100) || 'unknown-host';
}

/** A process's start time (clock ticks since boot), or '' where /proc cannot tell. */
export function processStart(pid: number): string {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) is in parentheses and may hold spaces: count fields after its closing one.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? '';
  } catch {
    return '';
  }
}

/**
 * Whether a lock holder is certainly dead: it ran on this runner host and its
 * pid is gone, or the pid now belongs to a process that started at another
 * time. A holder on another host is never "certainly dead" from here.
 */
export function holderIsDead(owner: LockOwner): boolean {
  if (owner.host !== runnerHostId()) return false;
  const start = processStart(owner.pid);
  if (start === '') {
    try {
      process.kill(owner.pid, 0);
      return false;
    } catch (error) {
      return (error as NodeJS.ErrnoException).code === 'ESRCH';
    }
  }
  return owner.pidStart !== '' && start !== owner.pidStart;
}

/** The owner record for this process, deploying `commit` (the VM's agent adds the deadline). */
export function ownLockOwner(commit: string, run: string): Omit<LockOwner, 'deadline'> {
  return {
    token: `${runnerHostId()}:${process.pid}:${crypto.randomBytes(6).toString('hex')}`,
    host: runnerHostId(),
    pid: process.pid,
    pidStart: processStart(process.pid),
    commit,
    run,
  };
}
