import { VmSyncError } from '../errors.js';
import type { TargetKind } from '../remote/target.js';
import type { VmState } from './types.js';

const FULL_SHA = /^[0-9a-f]{40}$/;

/** The part of the runner-host repository that state classification needs. */
export interface History {
  relation(vmRev: string, deploy: string): Promise<'up-to-date' | 'behind' | 'ahead' | 'diverged'>;
}

/**
 * A {@link History} that asks `history` once per pair of commits: VMs on the
 * same commit (most of a fleet) share one answer instead of costing two git
 * processes each. For one run, whose clone does not change meanwhile; a
 * question that failed is asked again.
 */
export function askedOnce(history: History): History {
  const answers = new Map<string, ReturnType<History['relation']>>();
  return {
    relation(vmRev, deploy) {
      const key = `${vmRev} ${deploy}`;
      let answer = answers.get(key);
      if (!answer) {
        answer = history.relation(vmRev, deploy);
        answers.set(key, answer);
        answer.catch(() => answers.delete(key));
      }
      return answer;
    },
  };
}

/**
 * Where a VM stands against the deploy commit:
 * - `broken`: the target is a symlink to nothing (`kind` `dangling`: its live
 *   release is gone), so the VM serves nothing; never `fresh`;
 * - `fresh`: no `.sync_rev` (never deployed);
 * - `up-to-date`: same commit;
 * - `behind`: the VM's commit is an ancestor (the normal deploy);
 * - `ahead`: the deploy commit is an ancestor of the VM's (an older run arriving late);
 * - `diverged`: neither, or a commit the runner-host repo does not know (history rewritten).
 * A sentinel that is not a full commit hash is an error, never `fresh`.
 */
export async function classifyState(vmId: string, rev: string | null, deploy: string, history: History, kind?: TargetKind): Promise<VmState> {
  if (kind === 'dangling') return 'broken';
  if (rev === null) return 'fresh';
  const trimmed = rev.trim();
  if (!FULL_SHA.test(trimmed)) {
    throw new VmSyncError(
      'sentinel_unreadable',
      `.sync_rev on ${vmId} holds ${JSON.stringify(trimmed.slice(0, 60))}, not a commit hash: something other than vm-sync wrote it. Remove it to treat the VM as fresh.`,
    );
  }
  return history.relation(trimmed, deploy);
}
