import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fetchAdvice, noFetchAdvice, option } from '../advice.js';
import { VmSyncError } from '../errors.js';
import { run, type RunResult } from '../local/run.js';
import { removeIfOrphaned, scratchSiblingName } from '../local/scratch.js';
import { silentEvents, type EngineEvents } from '../sync/types.js';
import { archiveInto } from './archive.js';
import { DEFAULT_CLONE_WAIT_MS, withCloneLock } from './clone-lock.js';
import { mergeDiffOption } from './merge-diffs.js';

/** How a VM's deployed commit relates to the commit being deployed. */
export type Relation = 'up-to-date' | 'behind' | 'ahead' | 'diverged';

/** What {@link RunnerRepo.prepare} had to do to get a usable clone. */
export interface PrepareOutcome {
  /** `unfetched`: the fetch failed and the caller asked to go on with the clone as last fetched. */
  action: 'cloned' | 'fetched' | 'reused' | 'recloned' | 'unfetched';
  /** Where a corrupt clone was moved to (kept until a later re-clone moves a newer one aside). */
  movedAside: string | null;
  /** Why the fetch failed (git's output, bounded), with `unfetched`; else null. */
  fetchError: string | null;
}

/** What {@link RunnerRepo.prepare} does when the fetch fails (not corruption: the network, the credentials). */
export interface PrepareOptions {
  /** Go on with the clone as last fetched (`unfetched`) instead of failing with `git_failed`. */
  keepOnFetchFailure?: boolean;
  /** A dry run: an unusable clone is a `git_failed` that says what a sync would do, never moved aside and cloned again. */
  readOnly?: boolean;
}

/** Where the commits of other branches are fetched to when the remote will not send one by its hash. */
export const BRANCHES_NAMESPACE = 'refs/vm-sync/branches/';

const FULL_SHA = /^[0-9a-f]{40}$/;

// Messages git prints when the object store itself is damaged, as opposed to
// the network or the remote being unavailable (which must not trigger a re-clone).
const CORRUPTION = /bad object|corrupt|unable to read tree|did not send all necessary objects|packfile .* cannot be accessed|does not match index|not a git repository|invalid object|missing blob|unable to read sha1 file|Could not parse object|Could not read [0-9a-f]{40}|Failed to traverse parents|not a tree object|bad revision 'HEAD'|ambiguous argument 'HEAD'/i;

/** A git step failed because the clone's object store is damaged (moving it aside and cloning again fixes it). */
class CorruptCloneError extends VmSyncError {
  constructor(message: string) {
    super('git_failed', message);
  }
}

/** How vm-sync treats a clone it owns (the runner-host clone). */
export interface RunnerRepoOptions {
  /**
   * The clone is vm-sync's own: every step that changes it runs under the
   * runner-host lock, and a reset or export that meets corruption moves it
   * aside and clones again once. Leave false for a checkout vm-sync only
   * reads (a CI checkout given to `scan --repo`).
   */
  managed?: boolean;
  /** Where the lock-wait and moved-aside messages go. */
  events?: EngineEvents;
  /** How long to wait for another run's lock (default 300 s). */
  lockWaitMs?: number;
  /** Stops waiting for the lock. */
  signal?: AbortSignal;
}

/** What {@link RunnerRepo.prepareDeploy} does. */
export interface PrepareDeployOptions {
  /** The revision to deploy (default: `remote/branch`). */
  rev?: string;
  /** Fetch the default branch first (and a commit it does not have, see {@link RunnerRepo.locate}). */
  fetch: boolean;
  /**
   * A dry run: nothing in the clone changes (no reset, no clean: HEAD, the
   * index and the working tree stay as they were); it may fetch.
   */
  dryRun?: boolean;
  /** Deploy even when the commit is not on the default branch. */
  force: boolean;
  /** An empty directory to export the commit into. */
  exportDir: string;
  /** Asked with the resolved commit before the export; false: skip it (every VM already has the commit). */
  exportWhen?: (commit: string) => Promise<boolean>;
  /** Writes the export instead of a fresh `git archive` into `exportDir` (the kept exports, see src/git/exports.ts). */
  exporter?: (commit: string) => Promise<void>;
}

/** One VM's deployed commit, for {@link RunnerRepo.recordDeployed}. */
export interface DeployedEntry {
  vmId: string;
  sha: string;
}

/**
 * The ref that records a VM's deployed commit: `refs/vm-sync/deployed/<id>`.
 * An id that is a valid ref component as it is (`vm01`, `web-1.eu`) is used
 * unchanged, so records written before this encoding existed are still found.
 * Any other id (`web.lock`, `a..b`, `vm.`) is percent-encoded: every byte
 * outside `[A-Za-z0-9_-]` as `%XX`, which leaves no `.` to break git's rules.
 * Both forms decode to the id, so two ids never share a ref.
 */
export function deployedRefName(vmId: string): string {
  const encode = (keep: RegExp): string =>
    [...Buffer.from(vmId, 'utf8')].map((b) => (keep.test(String.fromCharCode(b)) ? String.fromCharCode(b) : `%${b.toString(16).toUpperCase().padStart(2, '0')}`)).join('');
  const plain = encode(/[A-Za-z0-9_.-]/);
  const valid = plain !== '' && !plain.startsWith('.') && !plain.endsWith('.') && !plain.endsWith('.lock') && !plain.includes('..');
  return `refs/vm-sync/deployed/${valid ? plain : encode(/[A-Za-z0-9_-]/)}`;
}

/**
 * The runner host's clone of the main repository: the only place vm-sync talks
 * to the git remote. Git runs from argument arrays, never through a shell, with
 * prompts disabled so a missing credential fails instead of hanging a deploy.
 */
export class RunnerRepo {
  constructor(
    readonly dir: string,
    private readonly remote: string,
    private readonly branch: string,
    private readonly url: string | null,
    private readonly env: NodeJS.ProcessEnv = {},
    private readonly options: RunnerRepoOptions = {},
  ) {}

  /** At most one re-clone per run: a clone that is corrupt again right away is not a clone problem. */
  private recloned = false;

  private get events(): EngineEvents {
    return this.options.events ?? silentEvents;
  }

  /** How long a step waits for another run's hold of the clone lock, in seconds. */
  get lockWaitS(): number {
    return Math.ceil((this.options.lockWaitMs ?? DEFAULT_CLONE_WAIT_MS) / 1000);
  }

  /**
   * Runs `fn` holding the runner-host lock (a managed clone only; re-entrant
   * within one run). Another run holding it is waited for, with one message,
   * up to the wait limit, then `runner_busy`.
   */
  locked<T>(doing: string, fn: () => Promise<T>): Promise<T> {
    if (!this.options.managed) return fn();
    const { lockWaitMs, signal } = this.options;
    return withCloneLock(this.dir, doing, { waitMs: lockWaitMs, signal, onWait: (message) => this.events.info(null, message) }, fn);
  }

  /** `remote/branch`, the ref that decides what may be deployed. */
  get trackingRef(): string {
    return `refs/remotes/${this.remote}/${this.branch}`;
  }

  private gitEnv(): NodeJS.ProcessEnv {
    return { ...process.env, ...this.env, GIT_TERMINAL_PROMPT: '0', GIT_ASKPASS: '', LC_ALL: 'C' };
  }

  private git(args: string[], cwd: string = this.dir): Promise<RunResult> {
    return run('git', args, { cwd, env: this.gitEnv() });
  }

  private async gitOk(args: string[], what: string): Promise<string> {
    const result = await this.git(args);
    if (result.code !== 0) throw this.failure(`git ${what} failed in ${this.dir}`, result.stderr);
    return result.stdout.trim();
  }

  /** The error for a failed git step, carrying git's own (bounded) output; corruption is its own class. */
  private failure(what: string, stderr: string, advice = ''): VmSyncError {
    const message = `${what}:\n${gitOutput(stderr)}${advice ? `\n${advice}` : ''}`;
    return CORRUPTION.test(stderr) ? new CorruptCloneError(message) : new VmSyncError('git_failed', message);
  }

  /**
   * Makes `dir` a healthy clone and, unless `fetch` is false, fetches the
   * default branch. Clones when absent (into a temporary sibling, renamed into
   * place only when complete, so an interrupted clone never looks valid).
   * A corrupt clone is moved aside and cloned again. A fetch that fails for
   * another reason (the network, the credentials) throws `git_failed`, or
   * with `keepOnFetchFailure` leaves the clone as it was (`unfetched`).
   * Under the runner-host lock.
   */
  prepare(fetch: boolean, options: PrepareOptions = {}): Promise<PrepareOutcome> {
    return this.locked(fetch ? 'fetching' : 'checking the clone', async () => {
      this.sweepDeadClones();
      if (!fs.existsSync(this.dir)) {
        await this.cloneInto(this.url);
        this.events.info(null, `cloned ${this.dir}`);
        return { action: 'cloned', movedAside: null, fetchError: null };
      }
      const problem = await this.healthProblem();
      if (problem === null) {
        if (!fetch) return { action: 'reused', movedAside: null, fetchError: null };
        const result = await this.fetchBranch();
        if (result.code === 0) return { action: 'fetched', movedAside: null, fetchError: null };
        if (!CORRUPTION.test(result.stderr)) {
          if (options.keepOnFetchFailure) return { action: 'unfetched', movedAside: null, fetchError: gitOutput(result.stderr) };
          throw this.failure(`git fetch ${this.remote} ${this.branch} failed`, result.stderr, fetchAdvice());
        }
        return { action: 'recloned', movedAside: await this.recloneAside(`git fetch reported corruption:\n${gitOutput(result.stderr)}`, options.readOnly), fetchError: null };
      }
      return { action: 'recloned', movedAside: await this.recloneAside(problem, options.readOnly), fetchError: null };
    });
  }

  /**
   * Moves the clone aside as `<dir>.corrupt-<UTC time>` (never deleted at
   * once: it is evidence), clones again, and then removes older
   * `<dir>.corrupt-*` copies so only this newest one is kept. Returns where
   * the clone went. Once per run. `readOnly` (a dry run): throws instead,
   * saying what a sync would do.
   */
  private async recloneAside(problem: string, readOnly = false): Promise<string> {
    if (readOnly) {
      throw new VmSyncError('git_failed', `${this.dir} is not a usable clone, and a dry run changes nothing on the runner host: a sync moves it aside as ${path.basename(this.dir)}.corrupt-<UTC time> and clones again (vm-sync doctor checks it). The problem: ${problem}`);
    }
    const url = this.url ?? (await this.configuredUrl());
    if (url === null) {
      throw new VmSyncError('git_failed', `${this.dir} is not a usable clone and repository.url is not set: set it so vm-sync can clone again, or repair the clone by hand. The problem: ${problem}`);
    }
    if (this.recloned) {
      throw new VmSyncError('git_failed', `${this.dir} is corrupt again right after a fresh clone: check the runner host's disk and the remote repository. The problem: ${problem}`);
    }
    this.recloned = true;
    let aside = `${this.dir}.corrupt-${timestamp()}`;
    for (let n = 2; fs.existsSync(aside); n++) aside = `${this.dir}.corrupt-${timestamp()}-${n}`;
    fs.renameSync(this.dir, aside);
    await this.cloneInto(url);
    this.events.info(null, `runner-host repo was corrupt: moved to ${aside} and cloned again`);
    this.pruneCorruptCopies(aside);
    return aside;
  }

  /** Removes `<dir>.corrupt-*` directories other than `keep` (this user's, never through a symlink). */
  private pruneCorruptCopies(keep: string): void {
    const parent = path.dirname(this.dir);
    const pattern = new RegExp(`^${escapeRegExp(path.basename(this.dir))}\\.corrupt-\\d{8}T\\d{6}Z(-\\d+)?$`);
    for (const name of fs.readdirSync(parent)) {
      const full = path.join(parent, name);
      if (!pattern.test(name) || full === keep) continue;
      try {
        const stat = fs.lstatSync(full);
        if (!stat.isDirectory() || stat.uid !== process.getuid?.()) continue;
        fs.rmSync(full, { recursive: true, force: true });
        this.events.info(null, `removed an older corrupt copy of the runner-host repo: ${full}`);
      } catch {
        // Best effort: an old copy left behind costs disk, not correctness.
      }
    }
  }

  /** Removes half-made clones (`<dir>.vm-sync-clone-*`) of runs that died mid-clone. */
  private sweepDeadClones(): void {
    const parent = path.dirname(this.dir);
    const prefix = `${path.basename(this.dir)}.vm-sync-clone-`;
    let names: string[];
    try {
      names = fs.readdirSync(parent);
    } catch {
      return;
    }
    for (const name of names) if (name.startsWith(prefix)) removeIfOrphaned(path.join(parent, name));
  }

  /**
   * Runs a step; if it fails because the clone is corrupt, moves the clone
   * aside, clones again and runs it once more. Only a managed clone is ever
   * re-cloned.
   */
  private async recovering<T>(step: () => Promise<T>, readOnly = false): Promise<T> {
    try {
      return await step();
    } catch (error) {
      if (!(error instanceof CorruptCloneError) || !this.options.managed) throw error;
      await this.recloneAside(error.message, readOnly);
      return step();
    }
  }

  /** Why the clone is unusable, or null when it looks healthy. */
  private async healthProblem(): Promise<string | null> {
    if (!fs.existsSync(path.join(this.dir, '.git'))) return 'no .git directory';
    const head = await this.git(['rev-parse', '--verify', '--quiet', 'HEAD^{tree}']);
    if (head.code !== 0) return 'HEAD does not resolve to a tree';
    const objects = await this.git(['cat-file', '-e', 'HEAD^{tree}']);
    if (objects.code !== 0) return 'HEAD tree object is missing';
    return null;
  }

  private async configuredUrl(): Promise<string | null> {
    const result = await this.git(['config', '--get', `remote.${this.remote}.url`]);
    return result.code === 0 && result.stdout.trim() !== '' ? result.stdout.trim() : null;
  }

  private fetchBranch(): Promise<RunResult> {
    // An automatic gc that detaches would go on writing in the clone after the lock is released.
    return this.git(['-c', 'gc.autoDetach=false', '-c', 'maintenance.autoDetach=false', 'fetch', '--prune', '--no-tags', '--quiet', this.remote, `+refs/heads/${this.branch}:${this.trackingRef}`]);
  }

  private async cloneInto(url: string | null): Promise<void> {
    if (url === null) {
      throw new VmSyncError('git_failed', `repository.main_repo_path ${this.dir} does not exist and repository.url is not set: clone it there, or set repository.url.`);
    }
    const parent = path.dirname(this.dir);
    fs.mkdirSync(parent, { recursive: true });
    // Named after this process, so a clone cut short by kill -9 is removed by the next run.
    const temp = scratchSiblingName(this.dir, 'clone');
    const result = await this.git(
      ['clone', '--quiet', '--no-tags', '--origin', this.remote, '--branch', this.branch, '--', url, temp],
      parent,
    );
    if (result.code !== 0) {
      fs.rmSync(temp, { recursive: true, force: true });
      throw new VmSyncError('git_failed', `git clone of ${anonymizeUrls(url)} failed:\n${gitOutput(result.stderr)}`);
    }
    fs.renameSync(temp, this.dir);
  }

  /** The full hash of a revision, or a clear error when the clone does not have it. */
  async resolve(rev: string): Promise<string> {
    const sha = await this.tryResolve(rev);
    if (sha === null) throw new VmSyncError('git_failed', `commit ${rev} is not in the runner-host clone ${this.dir}.`);
    return sha;
  }

  /** The full hash of a revision, or null when the clone does not have it (a ref to a missing object is corruption). */
  private async tryResolve(rev: string): Promise<string | null> {
    if (rev.startsWith('-')) throw new VmSyncError('git_failed', `not a revision: ${rev}`);
    const result = await this.git(['rev-parse', '--verify', '--quiet', `${rev}^{commit}`]);
    const sha = result.stdout.trim();
    if (result.code === 0 && FULL_SHA.test(sha)) return sha;
    // A ref whose commit object is gone is a damaged clone, not an unknown commit.
    const named = await this.git(['rev-parse', '--verify', '--quiet', rev]);
    const target = named.stdout.trim();
    const isHash = /^[0-9a-f]{4,40}$/i.test(rev);
    if (!isHash && named.code === 0 && FULL_SHA.test(target) && (await this.git(['cat-file', '-e', target])).code !== 0) {
      throw new CorruptCloneError(`${rev} points to ${target}, which is missing from ${this.dir}`);
    }
    return null;
  }

  /** The commit at the tip of `remote/default_branch` as this clone last fetched it. */
  async tip(): Promise<string> {
    const sha = await this.tryResolve(this.trackingRef);
    if (sha === null) {
      throw new VmSyncError('git_failed', `the runner-host clone ${this.dir} has no ${this.remote}/${this.branch}: check repository.remote and repository.default_branch, and that the branch exists on the remote.`);
    }
    return sha;
  }

  /**
   * Resolves the commit a user named (`--commit`, input `commit`), fetching
   * it when the clone does not have it and `fetch` is allowed: first by its
   * hash from the remote (servers that allow it, GitHub among them for
   * reachable commits), then, for an abbreviated hash, a branch name or a
   * server that refuses, every branch of the remote into
   * `refs/vm-sync/branches/` (never into the remote-tracking refs, which say
   * what is deployable). A commit on no branch of the remote is an error that
   * says how to deploy it. Returns the hash and the fetched branches that
   * hold it (empty when it was not looked for there).
   */
  async locate(rev: string, fetch: boolean): Promise<{ sha: string; branches: string[] }> {
    const present = await this.tryResolve(rev);
    if (present !== null) return { sha: present, branches: [] };
    if (!fetch) {
      throw new VmSyncError('git_failed', `commit ${rev} is not in the runner-host clone ${this.dir}, which was not fetched: ${noFetchAdvice()}, or push it to ${this.remote} first.`);
    }
    return this.locked(`fetching ${rev}`, async () => {
      if (FULL_SHA.test(rev)) {
        // No ref is written: the commit is deployed (and recorded under refs/vm-sync/deployed/) or forgotten.
        // --refmap= (empty): the configured refspec would otherwise update remote-tracking refs on the side.
        const byHash = await this.git(['-c', 'gc.autoDetach=false', 'fetch', '--no-tags', '--quiet', '--no-write-fetch-head', '--refmap=', this.remote, rev]);
        if (byHash.code === 0 && (await this.hasCommit(rev))) {
          this.events.info(null, `fetched ${rev.slice(0, 12)} from ${this.remote} by its hash`);
          return { sha: rev, branches: [] };
        }
      }
      const all = await this.git(['-c', 'gc.autoDetach=false', 'fetch', '--prune', '--no-tags', '--quiet', '--no-write-fetch-head', '--refmap=', this.remote, `+refs/heads/*:${BRANCHES_NAMESPACE}*`]);
      if (all.code !== 0) throw this.failure(`git fetch of the branches of ${this.remote} (looking for ${rev}) failed`, all.stderr, fetchAdvice());
      const found = (await this.tryResolve(rev)) ?? (isBranchName(rev) ? await this.tryResolve(`${BRANCHES_NAMESPACE}${rev}`) : null);
      if (found === null) {
        throw new VmSyncError(
          'git_failed',
          `commit ${rev} is not on any branch of ${this.remote} (every branch was fetched just now): push it to a branch first (git push ${this.remote} ${rev}:refs/heads/NAME); to deploy it without ${option('force')}, merge it into ${this.branch}.`,
        );
      }
      const branches = await this.branchesHolding(found);
      this.events.info(null, `fetched the branches of ${this.remote}: ${found.slice(0, 12)} is on ${branches.length ? branches.join(', ') : 'none of them'}`);
      return { sha: found, branches };
    });
  }

  /** The fetched branches (`refs/vm-sync/branches/`) whose history holds `sha`, by name. */
  private async branchesHolding(sha: string): Promise<string[]> {
    const result = await this.git(['for-each-ref', '--format=%(refname)', '--contains', sha, BRANCHES_NAMESPACE]);
    return result.code === 0 ? result.stdout.split('\n').filter(Boolean).map((ref) => ref.slice(BRANCHES_NAMESPACE.length)) : [];
  }

  /** Whether `sha` is reachable from `remote/default_branch`; a git failure (a damaged history) throws. */
  async isOnBranch(sha: string): Promise<boolean> {
    const result = await this.git(['merge-base', '--is-ancestor', sha, this.trackingRef]);
    // A commit missing on the way makes git answer "not an ancestor" (exit 1), with only its stderr telling why.
    if ((result.code === 0 || result.code === 1) && !CORRUPTION.test(result.stderr)) return result.code === 0;
    throw this.failure(`git merge-base --is-ancestor ${sha} ${this.trackingRef} failed in ${this.dir}`, result.stderr);
  }

  /**
   * `sync`'s work in the clone, under one hold of the runner-host lock:
   * fetch (clone or re-clone when needed), resolve the commit, require it to
   * be on the default branch (unless `force`), reset the working tree to it
   * and export it into `exportDir`. A step that meets corruption moves the
   * clone aside, clones again and redoes the steps once. Returns the commit.
   */
  prepareDeploy(options: PrepareDeployOptions): Promise<string> {
    return this.locked(`sync: fetch, ${options.dryRun ? '' : 'reset and '}export ${options.rev ?? this.trackingRef}`, async () => {
      await this.prepare(options.fetch, { readOnly: options.dryRun });
      return this.recovering(async () => {
        const { sha: commit, branches } = options.rev ? await this.locate(options.rev, options.fetch) : { sha: await this.tip(), branches: [] };
        if (!options.force && !(await this.isOnBranch(commit))) {
          const where = branches.length ? ` (it is on ${this.remote}'s ${branches.length === 1 ? 'branch' : 'branches'} ${branches.join(', ')})` : '';
          throw new VmSyncError(
            'commit_not_on_branch',
            `${commit} is not on ${this.remote}/${this.branch}${where}: only merged commits are deployed. Merge it into ${this.branch}, or deploy it anyway with ${option('force')}.`,
          );
        }
        // A dry run leaves the clone's HEAD, index and working tree as they were: it only reads the commit.
        if (!options.dryRun) await this.checkoutSteps(commit);
        if (options.exportWhen && !(await options.exportWhen(commit))) return commit;
        if (options.exporter) {
          await options.exporter(commit);
          return commit;
        }
        fs.rmSync(options.exportDir, { recursive: true, force: true });
        await this.exportSteps(commit, options.exportDir);
        return commit;
      }, options.dryRun);
    });
  }

  /** Whether the clone holds this commit object. */
  async hasCommit(sha: string): Promise<boolean> {
    return FULL_SHA.test(sha) && (await this.git(['cat-file', '-e', `${sha}^{commit}`])).code === 0;
  }

  /**
   * Classifies a VM's deployed commit against the deploy commit using this
   * clone's history. A commit the clone does not know (history rewritten on
   * the remote) is `diverged`.
   */
  async relation(vmRev: string, deploy: string): Promise<Relation> {
    if (vmRev === deploy) return 'up-to-date';
    if (!(await this.hasCommit(vmRev))) return 'diverged';
    if ((await this.git(['merge-base', '--is-ancestor', vmRev, deploy])).code === 0) return 'behind';
    if ((await this.git(['merge-base', '--is-ancestor', deploy, vmRev])).code === 0) return 'ahead';
    return 'diverged';
  }

  /** Whether the clone has truncated history (a shallow clone cannot prove what a range holds). */
  async isShallow(): Promise<boolean> {
    return (await this.gitOk(['rev-parse', '--is-shallow-repository'], 'rev-parse --is-shallow-repository')) === 'true';
  }

  /** Commits in a rev-list selection (`['A..B']`, `['B', '--not', 'X']`); null when git cannot resolve it. */
  async countCommits(selection: string[], noMerges = false): Promise<number | null> {
    const result = await this.git(['rev-list', '--count', ...(noMerges ? ['--no-merges'] : []), ...selection, '--']);
    return result.code === 0 ? Number(result.stdout.trim()) : null;
  }

  /**
   * How many commits of a selection add at least one line of text (merges
   * diffed as the scan sees them: see {@link mergeDiffOption}). Commits that only
   * touch binary files, delete lines or change modes add no text, and a
   * scanner rightly reports them as nothing to scan.
   */
  async countCommitsAddingText(selection: string[]): Promise<number | null> {
    // With rename detection, as gitleaks' own `git log -p` sees commits: a pure rename adds no line there, so
    // counting it here would fail a scan that is complete (scan_range_unresolved on a commit that only moves a file).
    const result = await this.git(['log', await mergeDiffOption(), '-M', '--format=%x00%H', '--numstat', ...selection, '--']);
    if (result.code !== 0) return null;
    const adding = new Set<string>();
    for (const block of result.stdout.split('\0').filter(Boolean)) {
      const [sha, ...lines] = block.split('\n');
      if (lines.some((line) => /^[1-9]\d*\t/.test(line))) adding.add(sha.trim());
    }
    return adding.size;
  }

  /** The best common ancestor of two commits, or null when they share none. */
  async mergeBase(a: string, b: string): Promise<string | null> {
    const result = await this.git(['merge-base', a, b]);
    return result.code === 0 ? result.stdout.trim() : null;
  }

  /** Tips of every remote-tracking branch except `except` (the branch being deployed). */
  async otherRemoteTips(except: string): Promise<string[]> {
    const out = await this.gitOk(['for-each-ref', '--format=%(refname) %(objectname)', 'refs/remotes/'], 'for-each-ref');
    return out
      .split('\n')
      .filter(Boolean)
      .map((line) => line.split(' '))
      .filter(([ref]) => ref !== except && !ref.endsWith('/HEAD'))
      .map(([, sha]) => sha);
  }

  /**
   * Records the commit each VM was last deployed with (so a later manual
   * resync scans only what is new to it), in one `git update-ref --stdin`
   * transaction under the runner-host lock. Every VM id works (see
   * {@link deployedRefName}); entries whose sha is not a full hash of a commit
   * in the clone are skipped rather than failing the others; for an id listed
   * twice, the last entry wins. Throws (`git_failed`, `runner_busy`) only
   * when git or the lock fails as a whole.
   */
  async recordDeployed(entries: readonly DeployedEntry[]): Promise<void>;
  /** One VM's record (the single-entry form of the batch above). */
  async recordDeployed(vmId: string, sha: string): Promise<void>;
  async recordDeployed(first: readonly DeployedEntry[] | string, sha?: string): Promise<void> {
    const entries = typeof first === 'string' ? [{ vmId: first, sha: sha ?? '' }] : first;
    const latest = new Map<string, string>();
    for (const entry of entries) if (entry.vmId !== '' && FULL_SHA.test(entry.sha)) latest.set(entry.vmId, entry.sha);
    if (latest.size === 0) return;
    await this.locked('recording deployed commits', async () => {
      // update-ref refuses a missing object and would then fail the whole transaction.
      const present = await this.commitsPresent([...new Set(latest.values())]);
      const lines = [...latest].filter(([, commit]) => present.has(commit)).map(([vmId, commit]) => `update ${deployedRefName(vmId)} ${commit}\n`);
      if (lines.length === 0) return;
      const result = await this.gitWithInput(['update-ref', '--stdin'], `start\n${lines.join('')}prepare\ncommit\n`);
      if (result.code !== 0) throw this.failure(`could not record the deployed commits in ${this.dir}`, result.stderr);
    });
  }

  /** The commit recorded for a VM by {@link recordDeployed}, or null. */
  async deployed(vmId: string): Promise<string | null> {
    const result = await this.git(['rev-parse', '--verify', '--quiet', `${deployedRefName(vmId)}^{commit}`]);
    return result.code === 0 ? result.stdout.trim() : null;
  }

  /**
   * The commit recorded for each VM (null: none), in the order given, read
   * with one `git for-each-ref` however many VMs there are: a fleet of a
   * hundred costs one git start, not a hundred.
   */
  async deployedOf(vmIds: readonly string[]): Promise<Array<string | null>> {
    const result = await this.git(['for-each-ref', '--format=%(objecttype) %(objectname) %(refname)', 'refs/vm-sync/deployed/']);
    if (result.code !== 0) return Promise.all(vmIds.map((id) => this.deployed(id)));
    const recorded = new Map<string, { type: string; sha: string }>();
    for (const line of result.stdout.split('\n')) {
      const [type, sha, ref] = line.split(' ');
      if (ref) recorded.set(ref, { type, sha });
    }
    // vm-sync records commits; anything else there (a tag someone wrote) is read as deployed() reads it.
    return Promise.all(
      vmIds.map((id) => {
        const found = recorded.get(deployedRefName(id));
        return !found ? null : found.type === 'commit' ? found.sha : this.deployed(id);
      }),
    );
  }

  /** Which of `shas` are commits the clone holds (one `cat-file --batch-check`). */
  private async commitsPresent(shas: string[]): Promise<Set<string>> {
    const result = await this.gitWithInput(['cat-file', '--batch-check=%(objectname) %(objecttype)'], shas.map((s) => `${s}\n`).join(''));
    const present = new Set<string>();
    for (const line of result.stdout.split('\n')) {
      const [sha, type] = line.split(' ');
      if (type === 'commit') present.add(sha);
    }
    return present;
  }

  private gitWithInput(args: string[], input: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
    return new Promise((resolve, reject) => {
      const child = spawn('git', args, { cwd: this.dir, env: this.gitEnv(), stdio: ['pipe', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
      child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-65536)));
      child.on('error', reject);
      child.on('close', (code) => resolve({ code, stdout, stderr }));
      child.stdin.on('error', () => undefined); // git exiting early is reported through its status
      child.stdin.end(input);
    });
  }

  /** Total bytes of the files in a commit's tree (what a fresh deploy would need on a VM). */
  async treeBytes(sha: string): Promise<number> {
    const out = await this.gitOk(['ls-tree', '-r', '-l', '-z', sha], 'ls-tree');
    let total = 0;
    for (const record of out.split('\0')) {
      const size = Number(record.split(/\s+/)[3]);
      if (Number.isFinite(size)) total += size;
    }
    return total;
  }

  /**
   * Brings the working tree to exactly `sha`: reset, never merge; untracked
   * and ignored files removed. Under the runner-host lock; on corruption a
   * managed clone is cloned again and the reset retried once.
   */
  checkout(sha: string): Promise<void> {
    return this.locked(`reset to ${sha.slice(0, 12)}`, () => this.recovering(() => this.checkoutSteps(sha)));
  }

  private async checkoutSteps(sha: string): Promise<void> {
    await this.gitOk(['reset', '--quiet', '--hard', sha], `reset --hard ${sha}`);
    await this.gitOk(['clean', '-ffdxq'], 'clean -ffdx');
  }

  /**
   * Writes a clean export of `sha` (no `.git`, nothing untracked, frozen while
   * rsync reads it) into the directory `dest` (absent or empty), via
   * `git archive | tar -x`: the whole tree, or only `paths` (UTF-8 names, taken
   * literally). Under the runner-host lock; on corruption a managed clone is
   * cloned again and the export redone once.
   */
  exportTree(sha: string, dest: string, paths?: string[]): Promise<void> {
    return this.locked(`export of ${sha.slice(0, 12)}`, () =>
      this.recovering(async () => {
        try {
          await this.exportSteps(sha, dest, paths);
        } catch (error) {
          // A half-written export must not mix into the retry.
          fs.rmSync(dest, { recursive: true, force: true });
          throw error;
        }
      }),
    );
  }

  private async exportSteps(sha: string, dest: string, paths?: string[]): Promise<void> {
    const done = await archiveInto({ repoDir: this.dir, env: this.gitEnv(), commit: sha, dest, paths });
    if (!done.ok) throw this.failure(`export of ${sha} failed (git archive exited ${done.archiveCode}, tar ${done.tarCode})`, done.stderr);
  }
}

const OUTPUT_LINES = 20;
const OUTPUT_CHARS = 2000;

/**
 * git's error output for a message: whole, but bounded (its last
 * {@link OUTPUT_LINES} distinct lines, at most {@link OUTPUT_CHARS}
 * characters), with repeated lines counted instead of repeated, terminal
 * control characters replaced and credentials in URLs masked. The line that
 * names the culprit ("remove the file manually": which file) is kept.
 */
export function gitOutput(stderr: string): string {
  const lines: Array<{ text: string; times: number }> = [];
  for (const raw of stderr.replace(/\r\n?/g, '\n').split('\n')) {
    // eslint-disable-next-line no-control-regex
    const text = anonymizeUrls(raw.replace(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g, '?')).trimEnd();
    if (text === '') continue;
    const last = lines.at(-1);
    if (last?.text === text) last.times++;
    else lines.push({ text, times: 1 });
  }
  if (lines.length === 0) return '(git printed nothing)';
  const kept = lines.slice(-OUTPUT_LINES);
  let text = kept.map((l) => (l.times > 1 ? `${l.text} (${l.times} times)` : l.text)).join('\n');
  if (text.length > OUTPUT_CHARS) text = `…${text.slice(text.length - OUTPUT_CHARS)}`;
  const cut = lines.length - kept.length;
  return cut > 0 ? `(${cut} earlier line${cut === 1 ? '' : 's'} cut)\n${text}` : text;
}

/** `https://user:token@host/…` → `https://***@host/…`: a URL's credentials never reach a message. */
/** Text with the user and password of any URL in it masked (`https://***@host/...`). */
export function anonymizeUrls(text: string): string {
  return text.replace(/([a-z][a-z0-9+.-]*:\/\/)[^/@\s]+@/gi, '$1***@');
}

/** Whether `name` could be a branch name (so `refs/vm-sync/branches/<name>` may hold it). */
function isBranchName(name: string): boolean {
  return /^[A-Za-z0-9_][A-Za-z0-9._/-]{0,200}$/.test(name) && !name.includes('..') && !name.includes('//') && !name.endsWith('/') && !name.endsWith('.lock');
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

function timestamp(date = new Date()): string {
  return date.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
}
