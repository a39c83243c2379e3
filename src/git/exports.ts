import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { getErrorMessage, VmSyncError } from '../errors.js';
import { exportSubstIn } from './attributes.js';
import { run } from '../local/run.js';
import { ownedByDeadProcess, scratchSiblingName } from '../local/scratch.js';
import { archiveInto } from './archive.js';
import { cloneLockPath } from './clone-lock.js';

/*
 * Exports of the deployed tree kept on the runner host, in vm-sync's state
 * directory beside the clone (`<parent>/.<name>.vm-sync/exports/`), so that a
 * deploy rewrites only the paths that changed since the last one instead of
 * exporting (and later removing) the whole tree:
 *
 *   ready-<epoch ms>-<commit>/tree   a complete export, a base for later runs
 *   run-…-<owner stamp>/tree          the export one run is using (its alone)
 *   trash-…                           being removed in the background
 *
 * A run's export starts as a hard-link copy of the newest ready one (no data
 * copied); every changed path is removed (never written in place: files are
 * shared with other exports through their links) and written again by
 * `git archive` of exactly those paths, so git's own conversions apply as in
 * a full export. Snapshots are created, retired and pruned under the
 * runner-host lock (the caller's), so a base is never pruned while copied.
 */

/** One run's export of a commit. */
export interface ExportSnapshot {
  /** The tree's root. */
  dir: string;
  commit: string;
  /** The commit of the export it was derived from; null: a full export. */
  base: string | null;
  how: 'fresh' | 'incremental';
  /** Why a full export was made (no base, attributes changed …); null when incremental. */
  reason: string | null;
  /** Paths rewritten (incremental). */
  changedPaths: number;
  /** The snapshot's own directory (holds `tree`). */
  home: string;
}

const FULL_SHA = /^[0-9a-f]{40}$/;
const READY = /^ready-(\d{15})-([0-9a-f]{40})$/;
/** Above this many changed paths a full export is as cheap as rewriting them one chunk at a time. */
const MAX_INCREMENTAL_PATHS = 20_000;

/** vm-sync's runner-host state directory for a clone. */
export function stateDirOf(cloneDir: string): string {
  return path.dirname(cloneLockPath(cloneDir));
}

/** The export store of one runner-host clone. The caller holds the runner-host lock for checkout, retire and discard. */
export class ExportStore {
  private readonly dir: string;
  private readonly keep: number;

  constructor(private readonly options: { stateDir: string; repoDir: string; env?: NodeJS.ProcessEnv; keep?: number }) {
    this.dir = path.join(options.stateDir, 'exports');
    this.keep = Math.max(1, options.keep ?? 2);
  }

  /** Removes what earlier runs left: trash, and run exports whose owner died. In the background; never throws. */
  sweep(): void {
    for (const name of this.names()) {
      if (name.startsWith('trash-') || (name.startsWith('run-') && ownedByDeadProcess(name))) this.removeLater(name);
    }
  }

  /**
   * An export of `commit` for this run: derived from the newest ready export
   * when that is possible and cheaper, else a full `git archive`. Identical to
   * a full export in paths, types, modes, bytes and link targets (mtimes may
   * differ). A failure leaves nothing that could become a base.
   */
  async checkout(commit: string): Promise<ExportSnapshot> {
    if (!FULL_SHA.test(commit)) throw new VmSyncError('git_failed', `not a full commit hash: ${commit}`);
    this.ensureDir();
    const home = scratchSiblingName(path.join(this.dir, 'run'), 'export').replace(/^(.*\/)run\./, '$1run-');
    fs.mkdirSync(home, { mode: 0o700 });
    const tree = path.join(home, 'tree');
    try {
      const base = this.newestReady();
      const why = base ? await this.whyNotIncremental(base.commit, commit) : 'no earlier export on this runner';
      if (base && why === null) {
        const changed = await this.incremental(base.dir, base.commit, commit, tree);
        if (changed !== null) return { dir: tree, commit, base: base.commit, how: 'incremental', reason: null, changedPaths: changed, home };
        fs.rmSync(tree, { recursive: true, force: true });
      }
      await this.archive(commit, tree, []);
      return { dir: tree, commit, base: null, how: 'fresh', reason: why ?? 'too many changed paths', changedPaths: 0, home };
    } catch (error) {
      this.trash(path.basename(home));
      if (error instanceof VmSyncError) throw error;
      throw new VmSyncError('git_failed', `export of ${commit.slice(0, 12)} failed: ${getErrorMessage(error)}`);
    }
  }

  /** Makes a run's export a base for later runs and drops ready exports beyond `keep` (removed in the background). */
  retire(snapshot: ExportSnapshot): void {
    const ready = path.join(this.dir, `ready-${String(Date.now()).padStart(15, '0')}-${snapshot.commit}`);
    try {
      fs.renameSync(snapshot.home, ready);
    } catch {
      return; // gone already (a sweep of a run that looked dead): nothing to keep
    }
    const all = this.names()
      .filter((n) => READY.test(n))
      .sort()
      .reverse();
    for (const name of all.slice(this.keep)) this.trash(name);
  }

  /** Drops a run's export (a run whose export must not become a base). */
  discard(snapshot: ExportSnapshot): void {
    this.trash(path.basename(snapshot.home));
  }

  private ensureDir(): void {
    fs.mkdirSync(this.options.stateDir, { recursive: true, mode: 0o700 });
    const stat = fs.lstatSync(this.options.stateDir);
    if (!stat.isDirectory() || stat.uid !== process.getuid?.()) {
      throw new VmSyncError('unsafe_state_dir', `${this.options.stateDir} is not a directory owned by this user: vm-sync keeps its exports there and refuses to use it. Check who made it, then remove it.`);
    }
    try {
      fs.mkdirSync(this.dir, { mode: 0o700 });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    const own = fs.lstatSync(this.dir);
    if (!own.isDirectory() || own.uid !== process.getuid?.()) throw new VmSyncError('unsafe_state_dir', `${this.dir} is not a directory owned by this user: remove it.`);
  }

  private names(): string[] {
    try {
      return fs.readdirSync(this.dir);
    } catch {
      return [];
    }
  }

  private newestReady(): { dir: string; commit: string } | null {
    const name = this.names()
      .filter((n) => READY.test(n))
      .sort()
      .at(-1);
    if (!name) return null;
    const dir = path.join(this.dir, name, 'tree');
    return fs.existsSync(dir) ? { dir, commit: (READY.exec(name) as RegExpExecArray)[2] } : null;
  }

  /** Renames a snapshot out of the way at once, and removes it in the background. */
  private trash(name: string): void {
    const to = `trash-${Date.now()}-${Math.random().toString(36).slice(2, 8)}`;
    try {
      fs.renameSync(path.join(this.dir, name), path.join(this.dir, to));
    } catch {
      return;
    }
    this.removeLater(to);
  }

  private removeLater(name: string): void {
    void fs.promises.rm(path.join(this.dir, name), { recursive: true, force: true }).catch(() => undefined);
  }

  private git(args: string[]): Promise<{ ok: boolean; out: Buffer; err: string }> {
    return new Promise((resolve) =>
      execFile('git', args, { cwd: this.options.repoDir, env: { ...(this.options.env ?? process.env), LC_ALL: 'C' }, encoding: 'buffer', maxBuffer: 512 * 1024 * 1024 }, (error, stdout, stderr) =>
        resolve({ ok: !error, out: stdout, err: stderr.toString('utf8').slice(-2000) }),
      ),
    );
  }

  /**
   * Why the export of `commit` cannot be derived from `base`'s (null: it can).
   * `.gitattributes` decide how git archive writes every file (eol, export-ignore,
   * export-subst): a change to one, or an export-subst anywhere (its content
   * depends on the commit), means a full export.
   */
  private async whyNotIncremental(base: string, commit: string): Promise<string | null> {
    if (!(await this.git(['cat-file', '-e', `${base}^{commit}`])).ok) return `the last export's commit ${base.slice(0, 12)} is not in the clone`;
    const names = await this.git(['diff', '--name-only', '-z', '--no-renames', base, commit, '--']);
    if (!names.ok) return 'git cannot diff the last export against this commit';
    if (names.out.toString('latin1').split('\0').some((p) => p === '.gitattributes' || p.endsWith('/.gitattributes'))) return 'a .gitattributes changed';
    const subst = await exportSubstIn(this.options.repoDir, commit, this.options.env);
    return subst.kind === 'none' ? null : subst.kind === 'uses' ? `${subst.path} uses export-subst` : subst.why;
  }

  /** Hard-link copy of `baseTree`, then the changed paths rewritten. null: too many changes, or names argv cannot carry. */
  private async incremental(baseTree: string, base: string, commit: string, tree: string): Promise<number | null> {
    const diff = await this.git(['diff', '--raw', '-z', '--no-renames', '--no-abbrev', base, commit, '--']);
    if (!diff.ok) throw new VmSyncError('git_failed', `git diff ${base.slice(0, 12)} ${commit.slice(0, 12)} failed: ${diff.err}`);
    const fields = diff.out.toString('latin1').split('\0');
    const removed: string[] = [];
    const written: string[] = [];
    for (let i = 0; i + 1 < fields.length; i += 2) {
      const status = fields[i].split(' ')[4]?.[0];
      const rel = fields[i + 1];
      if (!status || !rel) continue;
      // argv carries UTF-8 only: a name that is not UTF-8 goes through a full export.
      if (Buffer.from(Buffer.from(rel, 'latin1').toString('utf8'), 'utf8').toString('latin1') !== rel) return null;
      if (status !== 'A') removed.push(rel);
      if (status !== 'D') written.push(Buffer.from(rel, 'latin1').toString('utf8'));
    }
    if (removed.length + written.length > MAX_INCREMENTAL_PATHS) return null;
    await spawnOk('cp', ['-al', '--', baseTree, tree]);
    for (const rel of removed) {
      const full = path.join(tree, Buffer.from(rel, 'latin1').toString('utf8'));
      fs.rmSync(full, { recursive: true, force: true });
      // A directory the change emptied goes too: a full export never has one.
      for (let dir = path.dirname(full); dir.startsWith(`${tree}/`); dir = path.dirname(dir)) {
        try {
          fs.rmdirSync(dir);
        } catch {
          break;
        }
      }
    }
    if (written.length > 0) await this.archive(commit, tree, written);
    return removed.length + written.length;
  }

  /** `git archive` of `commit` (or of just `paths` in it) unpacked into `dest`. */
  private async archive(commit: string, dest: string, paths: string[]): Promise<void> {
    const done = await archiveInto({ repoDir: this.options.repoDir, env: this.options.env, commit, dest, paths: paths.length ? paths : undefined });
    if (!done.ok) throw new VmSyncError('git_failed', `export of ${commit.slice(0, 12)} failed (git archive exited ${done.archiveCode}, tar ${done.tarCode}): ${done.stderr.trim().slice(-1000)}`);
  }
}

async function spawnOk(command: string, args: string[]): Promise<void> {
  const result = await run(command, args, { maxOutput: 4000 });
  if (result.code !== 0) throw new VmSyncError('git_failed', `${command} ${args[0]} failed: ${result.stderr.trim().slice(-500)}`);
}
