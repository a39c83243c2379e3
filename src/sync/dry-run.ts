import path from 'node:path';
import type { Layout } from '../config/types.js';
import type { ChangeCounts, ItemizedChange } from '../remote/rsync.js';
import type { Probe } from '../remote/target.js';
import { vmText } from '../remote/untrusted.js';
import { count } from '../words.js';

/*
 * What `sync --dry-run` predicts on one VM, in words. Pure: the facts come
 * from the probe and from rsync's itemised dry run; the sentences are made
 * here. The predictions follow what the real sync does (agent.sh): `stage`
 * hard-links from the live release, or from a plain directory at the target;
 * `flip` moves whatever stands at the target aside when vm-sync did not make
 * it (a directory, a file, a symlink of someone else's), into
 * `<parent>/.<name>.vm-sync/previous-<UTC time>`.
 */

/** How many changed paths a dry run lists by name (the counts cover all of them). */
export const DRY_RUN_LISTED = 10;

/** What the real sync would do with the target before it points it at the new release. */
export interface TargetPlan {
  /** Where the dry run compares the commit's tree: the live release, the directory at the target, or nothing (a path that does not exist). */
  compareWith: 'release' | 'target' | 'nothing';
  /** What stands at the target and is moved aside, in words (`the directory`), or null when nothing is. */
  movedAside: string | null;
  /** Why a real sync would fail on this target (in-place layout over a symlink or a file), or null. */
  wouldFail: string | null;
}

/** vm-sync's state directory for a target, as agent.sh names it: `<parent>/.<name>.vm-sync`. */
export function stateDirOfTarget(target: string): string {
  return `${path.posix.dirname(target)}/.${path.posix.basename(target)}.vm-sync`;
}

/**
 * What the real sync does with what it found at the target. Atomic layout:
 * the live release is the base; a directory vm-sync did not create is the
 * base of the new release's hard links and is moved aside at the flip; a
 * file or a symlink that is not vm-sync's is moved aside and the release
 * built from nothing; a dangling symlink of vm-sync's is replaced. In-place
 * layout: the target directory is rewritten, a symlink or a file there fails.
 */
export function targetPlan(probe: Pick<Probe, 'kind' | 'currentRelease'>, layout: Layout): TargetPlan {
  const what = probe.kind === 'dir' ? 'the directory' : probe.kind === 'other' ? 'the file' : probe.kind === 'symlink' || probe.kind === 'dangling' ? 'the symlink' : null;
  if (layout !== 'atomic') {
    if (probe.kind === 'dir') return { compareWith: 'target', movedAside: null, wouldFail: null };
    if (probe.kind === 'absent') return { compareWith: 'nothing', movedAside: null, wouldFail: null };
    return { compareWith: 'nothing', movedAside: null, wouldFail: `${what} at the target is not a directory, and layout in-place deploys into a directory` };
  }
  if (probe.kind === 'release') return { compareWith: 'release', movedAside: null, wouldFail: null };
  if (probe.kind === 'dir') return { compareWith: 'target', movedAside: what, wouldFail: null };
  // vm-sync's own symlink to a release that is gone is simply replaced; anything else of someone else's is kept.
  const ours = probe.kind === 'dangling' && probe.currentRelease !== null;
  return { compareWith: 'nothing', movedAside: probe.kind === 'absent' || ours ? null : what, wouldFail: null };
}

/**
 * The notes of one VM's dry run: the move-aside, then one line of counts,
 * then the first {@link DRY_RUN_LISTED} files by name and how many more.
 * Directories are never counted as files; they are listed only when no
 * file changes (a new empty directory is still a change to say).
 */
export function dryRunNotes(target: string, plan: TargetPlan, changes: readonly ItemizedChange[], counts: ChangeCounts): string[] {
  const notes: string[] = [];
  if (plan.movedAside) {
    notes.push(
      `would move ${plan.movedAside} at ${vmText(target)} aside to ${vmText(stateDirOfTarget(target))}/previous-<UTC time> (vm-sync did not create it, so it is kept, never deleted) and point ${vmText(target)} at the new release`,
    );
  }
  // What only the VM has is deleted from a release, but from a directory moved aside it is only left out of the new release.
  const deleteVerb = plan.movedAside ? 'leave out' : 'delete';
  const parts = [counts.add ? `add ${count(counts.add, 'file')}` : '', counts.change ? `change ${count(counts.change, 'file')}` : '', counts.delete ? `${deleteVerb} ${count(counts.delete, 'file')}` : ''].filter(Boolean);
  const total = counts.add + counts.change + counts.delete;
  notes.push(parts.length === 0 ? 'no file would change' : `would ${parts.length === 1 ? parts[0] : `${parts.slice(0, -1).join(', ')} and ${parts.at(-1)}`}`);
  const files = changes.filter((c) => !c.dir);
  const listed = (files.length > 0 ? files : changes).slice(0, DRY_RUN_LISTED);
  for (const c of listed) notes.push(`would ${c.kind === 'delete' ? deleteVerb : c.kind}: ${vmText(c.path, 500)}`);
  const more = (files.length > 0 ? total : changes.length) - listed.length;
  if (more > 0) notes.push(`…and ${count(more, files.length > 0 ? 'more file' : 'more path')}`);
  if (plan.movedAside && counts.delete > 0) notes.push(`the ${count(counts.delete, 'file')} left out ${counts.delete === 1 ? 'stays' : 'stay'} in the copy moved aside`);
  return notes;
}
