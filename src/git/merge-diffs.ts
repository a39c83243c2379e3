import { run } from '../local/run.js';

/**
 * The `git log` option that makes a merge show the lines it adds, as the
 * secret scan (gitleaks' `--log-opts`) and the count of commits that add text
 * both read history.
 *
 * A merge is diffed against its **first parent** only. That diff holds every
 * line of the merge that its first parent lacks: what came in from the other
 * side, and any conflict resolution. A line the merge has and its first parent
 * also has came through the first parent's own history, whose commits are
 * scanned in the same range, or lie before it and are trusted. Diffing against
 * every parent as well (`-m`) adds nothing, and costs a great deal: a long-lived
 * topic branch merged into git/git is diffed against a second parent years
 * behind, which is most of the tree each time (14 s of gitleaks for
 * `HEAD~40..HEAD` of git/git against under 1 s).
 *
 * `--diff-merges` exists from git 2.31; an older git gets `-m`, which covers
 * the same lines at that cost.
 */
export type MergeDiffOption = '--diff-merges=first-parent' | '-m';

let cached: Promise<MergeDiffOption> | null = null;

/** The option for the `git` on PATH (asked once per process). */
export function mergeDiffOption(env?: NodeJS.ProcessEnv): Promise<MergeDiffOption> {
  cached ??= run('git', ['--version'], { env })
    .then((result) => optionForVersion(result.code === 0 ? result.stdout : ''))
    .catch(() => '-m' as const);
  return cached;
}

/** The option for a `git --version` answer ("git version 2.39.5"); `-m` when it cannot be read. */
export function optionForVersion(versionText: string): MergeDiffOption {
  const match = /git version (\d+)\.(\d+)/.exec(versionText);
  if (!match) return '-m';
  const [major, minor] = [Number(match[1]), Number(match[2])];
  return major > 2 || (major === 2 && minor >= 31) ? '--diff-merges=first-parent' : '-m';
}
