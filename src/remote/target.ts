import crypto from 'node:crypto';
import os from 'node:os';
import { VmSyncError } from '../errors.js';
import { agentCommand, parseAgentOutput } from './agent-script.js';
import { codeFromStderr } from './classify.js';
import type { VmSession } from './session.js';

/** What `probe` found at the target path on the VM. */
export interface Probe {
  /** The target with `~` expanded by the VM. */
  target: string;
  kind: 'symlink' | 'dir' | 'other' | 'absent';
  /** The release the managed symlink points at, or null. */
  currentRelease: string | null;
  /** `.sync_rev`'s first line, null when there is none. */
  rev: string | null;
  /** The first line of `rsync --version`, null when rsync is not on the VM's PATH. */
  rsyncVersion: string | null;
  /** `token epoch` of a lock left in place, or null. */
  lock: string | null;
  /** The VM's clock (epoch seconds). */
  now: number;
}

export type LockOutcome =
  | { held: false; staleOwner: string | null }
  | { held: true; owner: string; ageS: number };

/** A token that names this run as a lock owner: host, pid and randomness, no spaces. */
export function lockToken(): string {
  return `${os.hostname().replace(/[^A-Za-z0-9_.-]/g, '_')}:${process.pid}:${crypto.randomBytes(6).toString('hex')}`;
}

/**
 * The deploy target on one VM, driven through the agent script over the VM's
 * session. Each method is one remote command; a failure becomes a
 * {@link VmSyncError} classified from what the VM printed.
 */
export class RemoteTarget {
  constructor(
    private readonly session: VmSession,
    /** The target path as configured (`~/app` or absolute). */
    private readonly path: string,
    private readonly commandTimeoutMs: number,
    private readonly signal?: AbortSignal,
  ) {}

  private async op(op: string, ...args: string[]): Promise<Map<string, string[]>> {
    const result = await this.session.exec(agentCommand(op, this.path, ...args), this.commandTimeoutMs, this.signal);
    if (result.code !== 0) {
      const text = result.stderr.trim() || result.stdout.trim() || `exit ${result.code}`;
      const code = codeFromStderr(text) ?? 'remote_command_failed';
      throw new VmSyncError(code, `${op} on ${this.session.vm.id} failed: ${text.split('\n').slice(-2).join(' | ')}`);
    }
    return parseAgentOutput(result.stdout);
  }

  async probe(): Promise<Probe> {
    const out = await this.op('probe');
    const one = (key: string): string => out.get(key)?.[0] ?? '';
    if (one('rev_state') === 'unreadable') {
      throw new VmSyncError('sentinel_unreadable', `${one('target')}/.sync_rev on ${this.session.vm.id} exists but cannot be read: fix its permissions (it must be readable by ${this.session.vm.user}).`);
    }
    return {
      target: one('target'),
      kind: (one('kind') || 'absent') as Probe['kind'],
      currentRelease: one('current') || null,
      rev: one('rev_state') === 'present' ? one('rev') : null,
      rsyncVersion: one('rsync') || null,
      lock: one('lock') || null,
      now: Number(one('now')) || 0,
    };
  }

  async lock(token: string, staleAfterS: number): Promise<LockOutcome> {
    const out = await this.op('lock', token, String(staleAfterS));
    if (out.get('lock')?.[0] === 'acquired') return { held: false, staleOwner: out.get('stale_owner')?.[0] ?? null };
    return { held: true, owner: out.get('owner')?.[0] ?? 'unknown', ageS: Number(out.get('age')?.[0] ?? 0) };
  }

  /** Releases the lock if this run still owns it; never removes another run's lock. */
  async unlock(token: string): Promise<boolean> {
    return (await this.op('unlock', token)).get('lock')?.[0] === 'released';
  }

  /** Creates the releases directory; returns where to stage and what to hard-link from. */
  async stageDir(sha: string): Promise<{ stage: string; linkDest: string | null }> {
    const out = await this.op('stage-dir', sha);
    return { stage: out.get('stage')?.[0] ?? '', linkDest: out.get('link_dest')?.[0] || null };
  }

  /** Writes `.sync_rev` into the staged release, renames it complete and flips the symlink. */
  async publish(sha: string, stage: string): Promise<{ release: string; movedAside: string | null }> {
    const out = await this.op('publish', sha, stage);
    return { release: out.get('release')?.[0] ?? '', movedAside: out.get('moved_aside')?.[0] ?? null };
  }

  async inPlaceBegin(): Promise<void> {
    await this.op('inplace-begin');
  }

  async inPlaceFinish(sha: string): Promise<void> {
    await this.op('inplace-finish', sha);
  }

  /** Removes releases beyond `keep` (never the current one) and abandoned partial stages. */
  async prune(keep: number): Promise<string[]> {
    return (await this.op('prune', String(keep))).get('pruned') ?? [];
  }

  /** Whether a deploy could write beside the target, and the free space there. */
  async writability(): Promise<{ parent: string; existing: string; writable: boolean; availableKb: number | null }> {
    const out = await this.op('doctor');
    const one = (key: string): string => out.get(key)?.[0] ?? '';
    const kb = Number(one('avail_kb'));
    return { parent: one('parent'), existing: one('existing'), writable: one('writable') === '1', availableKb: one('avail_kb') && Number.isFinite(kb) ? kb : null };
  }

  /** Runs the configured post-sync command in the target directory. */
  async postSync(sha: string, command: string): Promise<void> {
    const result = await this.session.exec(agentCommand('post', this.path, sha, command), this.commandTimeoutMs, this.signal);
    if (result.code !== 0) {
      const tail = (result.stderr.trim() || result.stdout.trim()).split('\n').slice(-3).join(' | ');
      throw new VmSyncError('post_sync_failed', `post_sync_command exited ${result.code} on ${this.session.vm.id}: ${tail || 'no output'}. The new release is live; fix the command and run sync --force to run it again.`);
    }
  }
}
