import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { VmSyncError } from '../errors.js';
import { run, type RunResult } from '../local/run.js';

/** How a VM's deployed commit relates to the commit being deployed. */
export type Relation = 'up-to-date' | 'behind' | 'ahead' | 'diverged';

/** What {@link RunnerRepo.prepare} had to do to get a usable clone. */
export interface PrepareOutcome {
  action: 'cloned' | 'fetched' | 'reused' | 'recloned';
  /** Where a corrupt clone was moved to (it is never deleted). */
  movedAside: string | null;
}

const FULL_SHA = /^[0-9a-f]{40}$/;

// Messages git prints when the object store itself is damaged, as opposed to
// the network or the remote being unavailable (which must not trigger a re-clone).
const CORRUPTION = /bad object|corrupt|unable to read tree|did not send all necessary objects|packfile .* cannot be accessed|not a git repository|invalid object|missing blob|unable to read sha1 file|Could not parse object|bad revision 'HEAD'|ambiguous argument 'HEAD'/i;

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
  ) {}

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
    if (result.code !== 0) {
      throw new VmSyncError('git_failed', `git ${what} failed in ${this.dir}: ${lastLine(result.stderr)}`);
    }
    return result.stdout.trim();
  }

  /**
   * Makes `dir` a healthy clone and, unless `fetch` is false, fetches the
   * default branch. Clones when absent (into a temporary sibling, renamed into
   * place only when complete, so an interrupted clone never looks valid).
   * A corrupt clone is moved aside, never deleted, and cloned again.
   */
  async prepare(fetch: boolean): Promise<PrepareOutcome> {
    if (!fs.existsSync(this.dir)) {
      await this.cloneInto(this.url);
      return { action: 'cloned', movedAside: null };
    }
    const problem = await this.healthProblem();
    if (problem === null) {
      if (!fetch) return { action: 'reused', movedAside: null };
      const result = await this.fetchBranch();
      if (result.code === 0) return { action: 'fetched', movedAside: null };
      if (!CORRUPTION.test(result.stderr)) {
        throw new VmSyncError('git_failed', `git fetch ${this.remote} ${this.branch} failed: ${lastLine(result.stderr)}. Check the network and the runner's credentials for the remote, or run with --no-fetch.`);
      }
    }
    const url = this.url ?? (await this.configuredUrl());
    if (url === null) {
      throw new VmSyncError('git_failed', `${this.dir} is not a usable clone (${problem ?? 'fetch reported corruption'}) and repository.url is not set: set it so vm-sync can clone again, or repair the clone by hand.`);
    }
    const aside = `${this.dir}.corrupt-${timestamp()}`;
    fs.renameSync(this.dir, aside);
    await this.cloneInto(url);
    return { action: 'recloned', movedAside: aside };
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
    return this.git(['fetch', '--prune', '--no-tags', '--quiet', this.remote, `+refs/heads/${this.branch}:${this.trackingRef}`]);
  }

  private async cloneInto(url: string | null): Promise<void> {
    if (url === null) {
      throw new VmSyncError('git_failed', `repository.main_repo_path ${this.dir} does not exist and repository.url is not set: clone it there, or set repository.url.`);
    }
    const parent = path.dirname(this.dir);
    fs.mkdirSync(parent, { recursive: true });
    const temp = `${this.dir}.vm-sync-clone-${crypto.randomBytes(4).toString('hex')}`;
    const result = await this.git(
      ['clone', '--quiet', '--no-tags', '--origin', this.remote, '--branch', this.branch, '--', url, temp],
      parent,
    );
    if (result.code !== 0) {
      fs.rmSync(temp, { recursive: true, force: true });
      throw new VmSyncError('git_failed', `git clone of ${url} failed: ${lastLine(result.stderr)}`);
    }
    fs.renameSync(temp, this.dir);
  }

  /** The full hash of a revision, or a clear error when the clone does not have it. */
  async resolve(rev: string): Promise<string> {
    if (rev.startsWith('-')) throw new VmSyncError('git_failed', `not a revision: ${rev}`);
    const result = await this.git(['rev-parse', '--verify', '--quiet', `${rev}^{commit}`]);
    const sha = result.stdout.trim();
    if (result.code !== 0 || !FULL_SHA.test(sha)) {
      throw new VmSyncError('git_failed', `commit ${rev} is not in ${this.dir}: push it, or fetch (drop --no-fetch).`);
    }
    return sha;
  }

  /** Whether `sha` is reachable from `remote/default_branch`. */
  async isOnBranch(sha: string): Promise<boolean> {
    return (await this.git(['merge-base', '--is-ancestor', sha, this.trackingRef])).code === 0;
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
   * diffed against each parent, as the scan sees them). Commits that only
   * touch binary files, delete lines or change modes add no text, and a
   * scanner rightly reports them as nothing to scan.
   */
  async countCommitsAddingText(selection: string[]): Promise<number | null> {
    const result = await this.git(['log', '-m', '--no-renames', '--format=%x00%H', '--numstat', ...selection, '--']);
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

  /** Records the commit a VM was last deployed with, so a later manual resync knows what to scan. */
  async recordDeployed(vmId: string, sha: string): Promise<void> {
    await this.gitOk(['update-ref', `refs/vm-sync/deployed/${vmId}`, sha], 'update-ref');
  }

  /** The commit recorded for a VM by {@link recordDeployed}, or null. */
  async deployed(vmId: string): Promise<string | null> {
    const result = await this.git(['rev-parse', '--verify', '--quiet', `refs/vm-sync/deployed/${vmId}^{commit}`]);
    return result.code === 0 ? result.stdout.trim() : null;
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

  /** Brings the working tree to exactly `sha`: reset, never merge; untracked and ignored files removed. */
  async checkout(sha: string): Promise<void> {
    await this.gitOk(['reset', '--quiet', '--hard', sha], `reset --hard ${sha}`);
    await this.gitOk(['clean', '-ffdxq'], 'clean -ffdx');
  }

  /**
   * Writes a clean export of `sha` (no `.git`, nothing untracked, frozen while
   * rsync reads it) into the empty directory `dest`, via `git archive | tar -x`.
   */
  async exportTree(sha: string, dest: string): Promise<void> {
    fs.mkdirSync(dest, { recursive: true });
    // rsync -p copies the export's modes: the tree root must be 0755 and files
    // 0644/0755 as git records them (git archive's default umask 002 would
    // make everything group-writable on the VMs).
    fs.chmodSync(dest, 0o755);
    const archive = spawn('git', ['-c', 'tar.umask=022', 'archive', '--format=tar', sha], { cwd: this.dir, env: this.gitEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    const tar = spawn('tar', ['-x', '-f', '-', '-C', dest], { stdio: ['pipe', 'ignore', 'pipe'] });
    archive.stdout.pipe(tar.stdin);
    const status = (child: ReturnType<typeof spawn>): Promise<{ code: number | null; stderr: string }> =>
      new Promise((resolve, reject) => {
        let stderr = '';
        child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
        child.on('error', reject);
        child.on('close', (code) => resolve({ code, stderr }));
      });
    const [a, t] = await Promise.all([status(archive), status(tar)]);
    if (a.code !== 0 || t.code !== 0) {
      throw new VmSyncError('git_failed', `export of ${sha} failed: ${lastLine(a.stderr || t.stderr)}`);
    }
  }
}

function lastLine(text: string): string {
  const lines = text.trim().split('\n').filter(Boolean);
  return lines.at(-1) ?? 'no error output';
}

function timestamp(date = new Date()): string {
  return date.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
}
