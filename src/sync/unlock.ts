import fs from 'node:fs';
import type { Config, VmConfig } from '../config/types.js';
import { getErrorMessage, VmSyncError } from '../errors.js';
import { KnownHosts } from '../remote/known-hosts.js';
import { describeOwner, holderIsDead, parseLockOwner } from '../remote/lock.js';
import { VmSession } from '../remote/session.js';
import { CLEANUP_MS, RemoteTarget, UNREADABLE_LOCK_GRACE_S, type Probe } from '../remote/target.js';
import { selectVms } from './fleet.js';
import { mapPool } from './pool.js';
import { newRunId } from '../journal/journal.js';
import { journalRun } from '../journal/record.js';

/** What `vm-sync unlock` did on one VM. */
export interface UnlockRow {
  id: string;
  /** `held`: a live holder, left alone without --force; `changed`: the lock changed while we looked. */
  outcome: 'not-locked' | 'broken' | 'held' | 'changed' | 'failed';
  /** Who held it and why it was (or was not) broken; VM text is cleaned. */
  detail: string;
}

/** Whether a lock is certainly abandoned, and who held it, in words. */
export function judge(probe: Probe, legacyStaleAfterS: number): { stale: boolean; who: string } {
  const lock = probe.lock;
  if (!lock) return { stale: true, who: '' };
  const owner = parseLockOwner(lock.record);
  if (owner) {
    const who = describeOwner(owner, probe.now);
    if (owner.deadline < probe.now) return { stale: true, who: `${who} (deadline passed)` };
    if (holderIsDead(owner)) return { stale: true, who: `${who} (that process no longer exists)` };
    return { stale: false, who };
  }
  const age = lock.mtime === null ? 0 : probe.now - lock.mtime;
  const started = Number(/^\S+ (\d+)$/.exec(lock.record)?.[1]);
  if (lock.kind === 'legacy' && Number.isSafeInteger(started)) {
    return { stale: probe.now - started > legacyStaleAfterS, who: `an older vm-sync's lock ${JSON.stringify(lock.record)}, ${probe.now - started}s old` };
  }
  return { stale: age > UNREADABLE_LOCK_GRACE_S, who: `a lock with an empty or unreadable owner record (${lock.record ? JSON.stringify(lock.record) : 'empty'}), ${age}s old` };
}

async function unlockVm(vm: VmConfig, config: Config, knownHosts: KnownHosts, force: boolean): Promise<UnlockRow> {
  let session: VmSession;
  try {
    session = await VmSession.open(vm, knownHosts, { connectTimeoutMs: config.sync.connectTimeoutS * 1000 });
  } catch (error) {
    return { id: vm.id, outcome: 'failed', detail: getErrorMessage(error) };
  }
  try {
    const target = new RemoteTarget(session, vm.repoPath, Date.now() + CLEANUP_MS);
    const probe = await target.probe();
    if (!probe.lock) return { id: vm.id, outcome: 'not-locked', detail: 'not locked' };
    const { stale, who } = judge(probe, config.sync.timeoutS);
    if (!stale && !force) {
      return { id: vm.id, outcome: 'held', detail: `locked by ${who}: it looks alive, so it was left alone. If you are sure no deploy is running, run again with --force.` };
    }
    // Breaking compares the lock with what was just read: one taken meanwhile is left alone.
    if (!(await target.breakLock(probe.lock.hex))) return { id: vm.id, outcome: 'changed', detail: 'the lock changed while it was being read (another run took it): nothing was broken; look again' };
    return { id: vm.id, outcome: 'broken', detail: `broke the lock of ${who}${stale ? '' : ' (--force: its steps still running on the VM were stopped)'}` };
  } catch (error) {
    return { id: vm.id, outcome: 'failed', detail: getErrorMessage(error) };
  } finally {
    session.dispose();
  }
}

/**
 * `vm-sync unlock`: breaks a VM's deploy lock deliberately. Without `force`
 * only a lock that is certainly abandoned (deadline passed, holder process
 * gone from this runner host, owner record unreadable for over a minute);
 * with `force` any lock, and the holder's running steps on the VM are killed.
 */
export async function runUnlock(config: Config, options: { vms: string[]; force: boolean }): Promise<UnlockRow[]> {
  if (options.vms.length === 0) throw new VmSyncError('config_invalid', 'unlock needs --vm ID (one or more, comma-separated): locks are broken one VM at a time, deliberately');
  const vms = selectVms(config, options.vms);
  const knownHosts = new KnownHosts(fs.readFileSync(config.knownHostsPath, 'utf8'));
  const started = new Date();
  const rows = await mapPool(vms, config.sync.concurrency, (vm) => unlockVm(vm, config, knownHosts, options.force));
  // Breaking a lock changes what may run on a VM: the journal says who did it.
  const ok = rows.every((row) => row.outcome === 'not-locked' || row.outcome === 'broken');
  await journalRun(config, {
    runId: newRunId(started),
    started,
    command: options.force ? 'unlock --force' : 'unlock',
    commit: null,
    dryRun: false,
    shard: null,
    exitCode: ok ? 0 : 1,
    vms: rows.map((row) => ({ id: row.id, state: null, action: 'unlock', result: row.outcome, code: null, rev: null })),
    error: null,
  });
  return rows;
}
