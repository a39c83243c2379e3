import { cliCommand } from '../advice.js';
import { count } from '../words.js';
import { VmSyncError } from '../errors.js';
import type { RunnerRepo } from '../git/repo.js';

const ZERO = /^0{40}$/;

/** What the caller knows about the change being deployed. */
export type ScanRequest =
  /** An explicit `BASE..HEAD` (`vm-sync scan --range`). */
  | { kind: 'range'; range: string }
  /**
   * A push event: `before` and `after` as GitHub sends them (all zeros for a
   * new or deleted branch), and the pushed branch (default: the deploy branch).
   */
  | { kind: 'push'; before: string; after: string; branch?: string }
  /** A manual resync of `head`, with the commits the runner host last deployed to each VM (null: unknown). */
  | {
      kind: 'resync';
      head: string;
      deployed: Array<string | null>;
      /**
       * Whose settings to trust when nothing is recorded: gitleaks' defaults on
       * the runner host (its scan decides the deploy), or the first parent for a
       * CI checkout, which never has records (a report and a gate; the sync job
       * scans again on the runner host against what the VMs hold).
       */
      withoutRecord?: 'defaults' | 'first-parent';
    };

/** What will be scanned: the commits (a rev-list selection) and the tree of `head`. */
export interface ScanPlan {
  /** The commit whose tree is deployed (and scanned); null when there is nothing to deploy. */
  head: string | null;
  /** The commits to scan, as rev-list arguments, with their count; null: the tree only. */
  commits: { selection: string[]; count: number } | null;
  /** One sentence saying what is scanned and why (printed, and kept in reports). */
  description: string;
  /**
   * The commit whose scan settings (gitleaks config, `.gitleaksignore`) the
   * scan uses: one the scanned change cannot have written, so a change to
   * them takes effect from the next deploy, never in the commit it arrives
   * in. null: gitleaks' defaults (the change starts at a root commit).
   */
  trusted: { commit: string | null; reason: string };
}

function unresolved(message: string): VmSyncError {
  return new VmSyncError('scan_range_unresolved', `${message}. Nothing was scanned, so nothing is deployed: fetch the full history (actions/checkout with fetch-depth: 0) and try again.`);
}

async function resolveOrFail(repo: RunnerRepo, rev: string, what: string): Promise<string> {
  try {
    return await repo.resolve(rev);
  } catch {
    throw unresolved(`${what} ${rev} is not in ${repo.dir}`);
  }
}

/** Counts a selection, failing closed: a selection git cannot walk is an error, never "0 commits". */
async function counted(repo: RunnerRepo, selection: string[]): Promise<{ selection: string[]; count: number }> {
  const count = await repo.countCommits(selection);
  if (count === null) throw unresolved(`git cannot list the commits of ${selection.join(' ')}`);
  return { selection, count };
}

/**
 * In a shallow clone a rev-list silently stops at the cut, so only a plain
 * `BASE..HEAD` whose base is provably an ancestor of head can be trusted.
 */
async function requireFullHistory(repo: RunnerRepo, what: string): Promise<void> {
  if (await repo.isShallow()) throw unresolved(`${repo.dir} is a shallow clone, so the commits of ${what} cannot be listed completely`);
}

/**
 * The commit where `head`'s first-parent line leaves the scanned selection:
 * the last commit of the mainline before anything new. Its settings were in
 * force before this change; null when the line is new down to its root.
 */
async function firstParentBefore(repo: RunnerRepo, head: string, exclude: string[]): Promise<string | null> {
  const inside = await repo.countCommits(['--first-parent', head, ...(exclude.length ? ['--not', ...exclude] : [])]);
  if (inside === null) throw unresolved(`git cannot walk the first parents of ${head}`);
  try {
    return await repo.resolve(`${head}~${inside}`);
  } catch {
    return null;
  }
}


/** Of several deployed commits, one that no other descends from (the newest line); ties keep the first. */
async function newest(repo: RunnerRepo, commits: string[]): Promise<string> {
  let best = commits[0];
  for (const candidate of commits.slice(1)) {
    if ((await repo.relation(best, candidate)) === 'behind') best = candidate;
  }
  return best;
}

/** The first parent of a commit, or null for a root commit (in a shallow clone a missing parent is an error, not a root). */
async function parentOf(repo: RunnerRepo, commit: string): Promise<string | null> {
  try {
    return await repo.resolve(`${commit}~1`);
  } catch {
    if (await repo.isShallow()) throw unresolved(`the parent of ${commit.slice(0, 12)} is not in the shallow clone ${repo.dir}, so the scan settings in force before it cannot be read`);
    return null;
  }
}

function fromParent(commit: string | null, what: string): ScanPlan['trusted'] {
  return commit ? { commit, reason: what } : { commit: null, reason: "no earlier commit (a root commit): gitleaks' defaults" };
}

/**
 * Decides what the secret scan must cover. The deployed tree is always
 * scanned too (by the caller); this picks the commits:
 * - a range: exactly `BASE..HEAD`;
 * - a push: `before..after`; a new branch: the commits no other remote branch
 *   has; a force push: from the merge base; a branch deletion: nothing;
 * - a resync: everything the VMs do not have yet, or the tree only when the
 *   runner host has no record of what some VM holds.
 * Merge commits are included (gitleaks runs with `-m`), so content that came
 * in through a side branch or a conflict resolution is scanned.
 */
export async function planScan(repo: RunnerRepo, request: ScanRequest): Promise<ScanPlan> {
  if (request.kind === 'range') {
    const parts = request.range.split('..');
    if (parts.length !== 2 || parts.some((p) => p === '' || p.startsWith('.'))) {
      throw new VmSyncError('config_invalid', `--range must be BASE..HEAD, not '${request.range}'`);
    }
    const base = await resolveOrFail(repo, parts[0], 'range base');
    const head = await resolveOrFail(repo, parts[1], 'range head');
    if ((await repo.isShallow()) && (await repo.relation(base, head)) !== 'behind' && base !== head) {
      throw unresolved(`${repo.dir} is shallow and ${parts[0]} is not an ancestor of ${parts[1]} in it`);
    }
    const commits = await counted(repo, [`${base}..${head}`]);
    return {
      head,
      commits,
      description: `the ${count(commits.count, 'commit')} of ${base.slice(0, 12)}..${head.slice(0, 12)} and the tree of ${head.slice(0, 12)}`,
      trusted: { commit: base, reason: 'the base of the range' },
    };
  }

  if (request.kind === 'push') {
    if (ZERO.test(request.after)) return { head: null, commits: null, description: 'branch deleted: nothing to deploy, nothing to scan', trusted: { commit: null, reason: 'nothing to scan' } };
    const head = await resolveOrFail(repo, request.after, 'pushed commit');
    const known = !ZERO.test(request.before) && (await repo.hasCommit(request.before));
    if (known) {
      const relation = await repo.relation(request.before, head);
      if (relation === 'behind' || relation === 'up-to-date') {
        const plan = await planScan(repo, { kind: 'range', range: `${request.before}..${head}` });
        return { ...plan, trusted: { commit: plan.trusted.commit, reason: 'the branch tip before the push' } };
      }
      // Force push: what `after` has beyond the history both share.
      await requireFullHistory(repo, 'a force push');
      const base = await repo.mergeBase(request.before, head);
      const commits = await counted(repo, base ? [`${base}..${head}`] : [head]);
      return {
        head,
        commits,
        description: `force push: the ${count(commits.count, 'commit')} after the merge base ${base ? base.slice(0, 12) : '(none: whole history)'} and the tree of ${head.slice(0, 12)}`,
        trusted: { commit: await repo.resolve(request.before), reason: 'the branch tip before the (force) push' },
      };
    }
    // A new branch, or a `before` the clone never saw (force-pushed away): the
    // commits that no other remote branch already has.
    await requireFullHistory(repo, 'a new branch');
    const pushed = request.branch ? repo.trackingRef.replace(/[^/]+$/, request.branch.replace(/^refs\/heads\//, '')) : repo.trackingRef;
    const others = await repo.otherRemoteTips(pushed);
    const commits = await counted(repo, others.length ? [head, '--not', ...others] : [head]);
    const why = ZERO.test(request.before) ? 'new branch' : `previous tip ${request.before.slice(0, 12)} is unknown here`;
    return {
      head,
      commits,
      description: `${why}: the ${count(commits.count, 'commit')} no other remote branch has and the tree of ${head.slice(0, 12)}`,
      trusted: fromParent(await firstParentBefore(repo, head, others), 'the last commit before the pushed ones on the first-parent line'),
    };
  }

  const deployed = request.deployed;
  // Each distinct record is checked once (a fleet usually holds one or two commits), all at once.
  const distinct = [...new Set(deployed.filter((rev): rev is string => !!rev))];
  const [head, present] = await Promise.all([resolveOrFail(repo, request.head, 'commit'), Promise.all(distinct.map((rev) => repo.hasCommit(rev)))]);
  const here = new Set(distinct.filter((_, i) => present[i]));
  const known = deployed.filter((rev): rev is string => !!rev && here.has(rev));
  // The settings of what the VMs run were in force when it was deployed. With
  // no record at all, nothing in the history being deployed can be trusted
  // (an earlier commit of the same unscanned history could have weakened the
  // scan), so gitleaks' own defaults apply until a deploy is recorded.
  const unique = [...new Set(known)];
  const trusting = async (): Promise<ScanPlan['trusted']> =>
    unique.length
      ? { commit: await newest(repo, unique), reason: 'the commit this runner last deployed' }
      : request.withoutRecord === 'first-parent'
        ? fromParent(await parentOf(repo, head), 'the first parent of the commit being scanned (a checkout with no deploy recorded; the sync job scans again against what the VMs hold)')
        : { commit: null, reason: `no deploy recorded on this runner yet: gitleaks' defaults (the repository's own scan settings apply from the first recorded deploy on; ${cliCommand('vm-sync sync --scan-base REV')} names a commit to trust)` };
  if (deployed.length === 0 || known.length !== deployed.length) {
    return { head, commits: null, description: `resync: what some VM holds is unknown to this runner, so the whole tree of ${head.slice(0, 12)} is scanned`, trusted: await trusting() };
  }
  // Independent questions to git, asked at once.
  const [trusted, commits] = await Promise.all([trusting(), requireFullHistory(repo, 'a resync').then(() => counted(repo, [head, '--not', ...unique]))]);
  return { head, commits, description: `resync: the ${count(commits.count, 'commit')} the VMs do not have yet and the tree of ${head.slice(0, 12)}`, trusted };
}
