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
/**
 * A process, named so that another process can tell whether it is still
 * alive: the pid means this process only on this host, in this boot and pid
 * namespace, while a process with that start time holds it.
 */
export interface ProcessIdentity {
  /** The runner host ({@link runnerHostId}). */
  host: string;
  pid: number;
  /** The process's start time (clock ticks since boot, /proc/PID/stat field 22), so a reused pid is not mistaken for it. */
  pidStart: string;
  /** The host's boot id and the process's pid namespace. */
  boot: string;
  pidns: string;
}

/** This process's identity, and a token unique to one run of it: `host:pid:random`. */
export function ownIdentity(): ProcessIdentity & { token: string } {
  return {
    token: `${runnerHostId()}:${process.pid}:${crypto.randomBytes(6).toString('hex')}`,
    host: runnerHostId(),
    pid: process.pid,
    pidStart: processStart(process.pid),
    boot: bootId(),
    pidns: pidNamespace(),
  };
}

export interface LockOwner extends ProcessIdentity {
  /** Unique per run: `host:pid:random`. */
  token: string;
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
  const field = (v: string | number, max: number): string => String(v).replace(SAFE, '_').slice(0, max);
  // The deadline comes first (the VM's agent puts it there) and the whole
  // record stays far below what the agent reads back (1000 bytes).
  return [
    MAGIC,
    ...(owner.deadline === undefined ? [] : [`deadline=${field(owner.deadline, 20)}`]),
    `token=${field(owner.token, 120)}`,
    `host=${field(owner.host, 100)}`,
    `pid=${field(owner.pid, 12)}`,
    `start=${field(owner.pidStart, 24)}`,
    `boot=${field(owner.boot, 40)}`,
    `pidns=${field(owner.pidns, 40)}`,
    `commit=${field(owner.commit, 40)}`,
    `run=${field(owner.run, 200)}`,
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
    boot: values.get('boot') ?? '',
    pidns: values.get('pidns') ?? '',
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

/** This boot of this machine (a pid is only meaningful within one boot). */
export function bootId(): string {
  try {
    return fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return '';
  }
}

/** This process's pid namespace (two runner containers on one host share a host name, not pids). */
export function pidNamespace(): string {
  try {
    return fs.readlinkSync('/proc/self/ns/pid');
  } catch {
    return '';
  }
}

/**
 * Whether a lock holder is certainly dead: it ran on this very machine, boot
 * and pid namespace, and its pid is gone or now belongs to a process that
 * started at another time. A holder anywhere else (another host, a container
 * with its own pids, a record without these fields) is never "certainly
 * dead" from here: its own deadline decides.
 */
export function holderIsDead(owner: ProcessIdentity): boolean {
  if (owner.host !== runnerHostId()) return false;
  // Compared as records store them (restricted charset), whichever record it is.
  const same = (a: string, b: string): boolean => a !== '' && a.replace(SAFE, '_') === b.replace(SAFE, '_');
  if (!same(bootId(), owner.boot) || !same(pidNamespace(), owner.pidns)) return false;
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
  return { ...ownIdentity(), commit, run };
}
