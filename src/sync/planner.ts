/**
 * The decisions of a fleet release, as pure functions of what the VMs
 * reported and what the operator asked for. No I/O here: the executor
 * (release.ts) gathers the facts, asks, and carries the answer out.
 */
import { invocation, option } from '../advice.js';
import type { FailureCode } from '../errors.js';
import type { Layout, Quantity, RolloutConfig } from '../config/types.js';
import { resolveQuantity } from '../config/rollout.js';
import type { SentinelState } from '../remote/target.js';
import type { VmState } from './types.js';

/** What a VM reported under its lock, classified against the commit. */
export interface PrepareFacts {
  /** Where the VM stands (null: its sentinel is not a file vm-sync can read). */
  state: VmState | null;
  sentinel: SentinelState;
  /** The VM released the lock itself: it already serves the commit. */
  releasedAtBegin: boolean;
  rsyncPresent: boolean;
}

/** What the prepare phase does on one VM. */
export type PrepareDecision =
  | { kind: 'none' }
  | { kind: 'refuse'; code: FailureCode; result: 'refused' | 'failed'; message: string }
  | { kind: 'stage'; notes: string[] };

/**
 * Decides the prepare phase for one VM: nothing (already on the commit),
 * refuse (a VM ahead of the commit, an unreadable sentinel, no rsync), or
 * stage a new release. `--force` stages over anything but a missing rsync.
 */
export function decidePrepare(vmId: string, facts: PrepareFacts, options: { force: boolean; commit: string }): PrepareDecision {
  const short = options.commit.slice(0, 12);
  if (facts.sentinel !== 'regular' && facts.sentinel !== 'absent' && !options.force) {
    return {
      kind: 'refuse',
      code: 'sentinel_unreadable',
      result: 'failed',
      message: `.sync_rev on ${vmId} is ${facts.sentinel === 'unreadable' ? 'not readable' : `a ${facts.sentinel}, not a file`}: vm-sync never follows or reads it. Remove it, or run ${invocation('sync', [['force'], ['vm', vmId]])} to replace it with a new release.`,
    };
  }
  if (!options.force && (facts.releasedAtBegin || facts.state === 'up-to-date')) return { kind: 'none' };
  if (!options.force && facts.state === 'ahead') {
    return { kind: 'refuse', code: 'refused_ahead', result: 'refused', message: `${vmId} is on a descendant of ${short}: an older run arrived late. Use ${option('force')} to deploy the older commit deliberately (or ${invocation('rollback')}).` };
  }
  if (!facts.rsyncPresent) {
    return { kind: 'refuse', code: 'remote_rsync_missing', result: 'failed', message: `rsync is not installed on ${vmId} (or not on the SSH user's PATH): install it there (apt-get install rsync).` };
  }
  const notes = facts.state === 'diverged' ? [`history diverged: the VM's commit is not an ancestor of ${short} (rewritten history?); deploying the remote's commit`] : [];
  return { kind: 'stage', notes };
}

/**
 * The flip batches, in config order: one batch of every staged VM for
 * all-at-once; `batch_size` (a count or a share of the staged VMs) for rolling.
 */
export function planBatches(ids: readonly string[], rollout: Pick<RolloutConfig, 'strategy' | 'batchSize'>): string[][] {
  if (ids.length === 0) return [];
  if (rollout.strategy === 'all-at-once') return [[...ids]];
  const size = Math.max(1, resolveQuantity(rollout.batchSize, ids.length, 'up'));
  const batches: string[][] = [];
  for (let i = 0; i < ids.length; i += size) batches.push(ids.slice(i, i + size));
  return batches;
}

/** Whether the rollout goes on: it halts once more VMs failed than `max_failed` allows (of `total` selected). */
export function rolloutVerdict(failed: number, total: number, maxFailed: Quantity): 'continue' | 'halt' {
  return failed > resolveQuantity(maxFailed, total, 'down') ? 'halt' : 'continue';
}

/** After a health check: keep the new release, or flip back to the one the VM had. */
export function afterHealth(health: { exit: number | null }, options: { revertUnhealthy: boolean; previous: string | null; layout: Layout }): 'keep' | 'revert' | 'keep-unhealthy' {
  if (health.exit === 0) return 'keep';
  return options.revertUnhealthy && options.previous !== null && options.layout === 'atomic' ? 'revert' : 'keep-unhealthy';
}

/** A kept release as the rollback planner sees it. */
export interface ReleaseFact {
  name: string;
  commit: string;
}

/** What a rollback does on one VM. */
export type RollbackDecision = { kind: 'flip'; release: ReleaseFact } | { kind: 'none'; release: ReleaseFact } | { kind: 'refuse'; message: string };

/**
 * Where a rollback goes: to the kept complete release of `to` (the newest
 * one of that commit), or, without `to`, to `previous`: the release the VM
 * served before the live one (its flip history, skipping releases that were
 * rejected: rolled back from or reverted as unhealthy).
 */
export function chooseRollback(vmId: string, list: { live: string | null; previous: string | null; complete: readonly ReleaseFact[] }, to: string | null): RollbackDecision {
  const sorted = [...list.complete].sort((a, b) => (a.name < b.name ? 1 : a.name > b.name ? -1 : 0));
  const kept = sorted.length ? `it keeps ${sorted.map((r) => `${r.commit.slice(0, 12)} (${r.name})`).join(', ')}` : 'it keeps no complete release';
  if (to !== null) {
    // Already serving a release of that commit (there may be an older and a newer one): nothing to do.
    const live = sorted.find((r) => r.name === list.live && r.commit === to);
    if (live) return { kind: 'none', release: live };
    const match = sorted.find((r) => r.commit === to);
    if (!match) return { kind: 'refuse', message: `${vmId} keeps no release of ${to.slice(0, 12)}: ${kept}. Deploy that commit with ${invocation('sync', [['commit', to.slice(0, 12)], ['force']])} instead.` };
    return match.name === list.live ? { kind: 'none', release: match } : { kind: 'flip', release: match };
  }
  if (list.live === null) return { kind: 'refuse', message: `${vmId} serves no release of vm-sync, so there is nothing to roll back from (${kept}).` };
  const previous = sorted.find((r) => r.name === list.previous && r.name !== list.live);
  if (!previous) return { kind: 'refuse', message: `${vmId} keeps no release it served before the live one (${list.live}) that it may go back to (releases rolled back from or reverted as unhealthy do not count): ${kept}. Use ${invocation('rollback', [['to', 'SHA']])} to pick one, or raise repository.keep_releases to keep more.` };
  return { kind: 'flip', release: previous };
}
