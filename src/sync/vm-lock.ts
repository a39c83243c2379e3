import { cliCommand, option } from '../advice.js';
import type { VmConfig } from '../config/types.js';
import { VmSyncError } from '../errors.js';
import { describeOwner, holderIsDead, parseLockOwner, type LockOwner } from '../remote/lock.js';
import type { VmPort } from '../remote/port.js';
import { UNREADABLE_LOCK_GRACE_S, type BeginOutcome } from '../remote/target.js';
import { sleep } from './vm-pipeline.js';

/** Who held a lock, in a few words (its token for vm-sync's own records). */
export function holderName(record: string): string {
  const owner = parseLockOwner(record);
  if (owner) return `${owner.token} (pid ${owner.pid} on ${owner.host}${owner.commit ? `, deploying ${owner.commit.slice(0, 12)}` : ''})`;
  return record ? record.split(' ')[0] : 'an unknown holder (empty owner record)';
}

/** Why a stale lock was taken over, in words. */
export function staleReason(why: string): string {
  switch (why) {
    case 'deadline': return 'its deadline had passed';
    case 'legacy': return 'a lock of an older vm-sync, older than sync.timeout_s';
    case 'unreadable': return `its owner record was empty or unreadable for over ${UNREADABLE_LOCK_GRACE_S}s`;
    default: return 'its holder process no longer exists';
  }
}

/** Why a lock is held, in words that say what to do. */
function lockedError(vm: VmConfig, outcome: Extract<BeginOutcome, { held: true }>, staleAfterS: number, waitedS: number): VmSyncError {
  const owner = parseLockOwner(outcome.record);
  const unlock = cliCommand(`vm-sync unlock --vm ${vm.id}`);
  const unlockForce = cliCommand(`vm-sync unlock --vm ${vm.id} --force`);
  const waited = waitedS > 0 ? ` (waited ${waitedS}s)` : '';
  if (owner) {
    return new VmSyncError('locked', `${vm.id} is locked by ${describeOwner(owner, outcome.probe.now)}: another deploy is in progress${waited}. Wait for it (${option('lock-wait', 'SECONDS')} waits for you); if you know it is gone, run ${unlock} (${unlockForce} for a holder that is still alive).`);
  }
  if (outcome.why === 'legacy') {
    return new VmSyncError('locked', `${vm.id} is locked by ${JSON.stringify(outcome.record)} (a lock of an older vm-sync, ${outcome.ageS}s old; stale after sync.timeout_s=${staleAfterS}s)${waited}. Wait for it, or run ${unlock}.`);
  }
  return new VmSyncError('locked', `${vm.id} has a lock whose owner record is empty or unreadable (${outcome.record ? JSON.stringify(outcome.record) : 'empty'}, ${outcome.ageS}s old): it is treated as stale after ${UNREADABLE_LOCK_GRACE_S}s${waited}. Run ${unlock} to break it now.`);
}

/**
 * Takes the VM's lock. A lock of this same run (an earlier attempt that lost
 * its connection) or of a process on this runner host that no longer exists
 * is broken at once; the VM itself breaks one whose holder's deadline passed.
 * A live holder's lock is waited for up to `lockWaitS` seconds (polled), then
 * it is a `locked` failure carrying the probe made meanwhile.
 */
export async function takeLock(
  vm: VmConfig,
  port: VmPort,
  options: {
    owner: Omit<LockOwner, 'deadline'>;
    expect: string;
    force: boolean;
    staleAfterS: number;
    lockWaitS: number;
    signal?: AbortSignal;
    onWait?: (message: string) => void;
    /** Ask for the stage survey with the lock (see BeginOptions.survey). */
    survey?: { sharedPaths: readonly string[] };
  },
): Promise<Extract<BeginOutcome, { held: false }>> {
  const begin = { expect: options.expect, force: options.force, legacyStaleAfterS: options.staleAfterS, ...(options.survey ? { survey: options.survey } : {}) };
  const started = Date.now();
  let announced = false;
  for (let round = 0; ; round++) {
    let outcome = await port.begin(options.owner, begin);
    if (outcome.held) {
      const owner = parseLockOwner(outcome.record);
      if (owner && (owner.token === options.owner.token || holderIsDead(owner))) {
        outcome = await port.begin(options.owner, { ...begin, expectedBreak: outcome.hex });
      }
    }
    if (!outcome.held) return outcome;
    const waitedS = Math.round((Date.now() - started) / 1000);
    if (waitedS >= options.lockWaitS || options.signal?.aborted) {
      throw Object.assign(lockedError(vm, outcome, options.staleAfterS, waitedS), { probe: outcome.probe });
    }
    if (!announced) {
      options.onWait?.(`locked by ${holderName(outcome.record)}: waiting up to ${options.lockWaitS}s (${option('lock-wait', String(options.lockWaitS))})`);
      announced = true;
    }
    await sleep(Math.min(5000, 500 * 2 ** Math.min(round, 4), Math.max(100, started + options.lockWaitS * 1000 - Date.now())), options.signal);
  }
}
