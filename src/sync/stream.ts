import { execFile, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { getErrorMessage, VmSyncError } from '../errors.js';
import type { StreamCodec } from '../remote/target.js';
import { exportSubstIn } from '../git/attributes.js';
import { gitBytes } from '../git/bytes.js';

/*
 * The stream transfer: a release built on the VM as a hard-link copy of the
 * release it serves, minus the paths that changed, plus their new content,
 * taken from `git diff` between the two commits. The content travels as one
 * compressed tar (zstd where the runner host and the VM both run it, else
 * gzip) made once per distinct starting commit and codec, and sent as it is
 * to every VM on that commit: no per-file checksum of the whole tree on either
 * side, and the compression is paid once for the fleet. A VM with no release
 * gets the whole tree the same way (one stream for all of them).
 *
 * Stream file layout (what agent.sh `apply` reads on stdin):
 *   <path to remove, printf %b escapes>\n ... .\n    then the compressed tar.
 *
 * Paths are handled as latin1 strings throughout: one char per byte, so a
 * name that is not UTF-8 survives byte for byte.
 */

/** How many streams {@link ReleaseStreams.prefetch} makes ahead, at most. */
export const PREFETCH_STREAMS = 2;

/** One stream, ready to send. */
export interface ReleaseStream {
  /** The commit it starts from (the VM's live release holds it), null: the whole tree. */
  base: string | null;
  /** How its tar is compressed. */
  codec: StreamCodec;
  file: string;
  /** Paths removed from the base copy before unpacking (changed or deleted ones). */
  removals: number;
  /** Regular files it carries (as rsync counts "files transferred": not symlinks, not directories). */
  files: number;
  /** Its size, header included. */
  bytes: number;
}

/** A stream, or why this VM goes through rsync instead. */
export type StreamOutcome = { ok: true; stream: ReleaseStream } | { ok: false; reason: string };

/** What the streams are built from. */
export interface StreamSource {
  /** The runner-host clone (for `git diff`). */
  repoDir: string;
  commit: string;
  /** The export of `commit` (produced on first demand). */
  tree: () => Promise<{ dir: string }>;
  /** rsync exclude patterns in force (`rsyncExcludes`): the stream must leave out what rsync would. */
  excludes: readonly string[];
  /** Configured shared paths: never part of a stream (the seal step links them). */
  sharedPaths: readonly string[];
  /** A private directory for the stream files (removed by the caller). */
  scratchDir: string;
  env?: NodeJS.ProcessEnv;
}

/**
 * What a release was built with, beyond its commit: the exclude patterns and
 * the shared paths. A stream builds on a release only when they are the same
 * now (else files excluded since, or a shared path added since, would stay).
 */
export function buildKey(excludes: readonly string[], sharedPaths: readonly string[]): string {
  return crypto.createHash('sha256').update(JSON.stringify({ excludes: [...excludes], shared: [...sharedPaths] })).digest('hex').slice(0, 32);
}

/** Whether `rel` (latin1, `/`-separated) is left out; null when a pattern is beyond what this understands. */
export type ExcludeMatcher = (rel: string, isDir: boolean) => boolean;

/**
 * A matcher with rsync's meaning for the exclude patterns it understands:
 * `name` (no slash, no wildcard: any entry of that name, at any depth),
 * `name/` (directories only), `/a/b` (anchored at the tree's root). Anything
 * else (wildcards, `**`, an unanchored `a/b`) returns null, and the caller
 * uses rsync, which knows them all.
 */
export function excludeMatcher(patterns: readonly string[]): ExcludeMatcher | null {
  const names: Array<{ name: string; dirOnly: boolean }> = [];
  const anchored: Array<{ path: string; dirOnly: boolean }> = [];
  for (const raw of patterns) {
    // rsync reads `- x` and `+ x` as an exclude and an include of x, and `!` as "clear the list".
    if (raw.startsWith('- ') || raw.startsWith('+ ') || raw.startsWith('!')) return null;
    const dirOnly = raw.endsWith('/') && raw.length > 1;
    const pattern = dirOnly ? raw.slice(0, -1) : raw;
    if (pattern === '' || /[*?[\]\\]/.test(pattern)) return null;
    const bytes = Buffer.from(pattern, 'utf8').toString('latin1');
    if (bytes.startsWith('/')) {
      const rest = bytes.slice(1);
      if (rest === '' || rest.split('/').some((c) => c === '' || c === '.' || c === '..')) return null;
      anchored.push({ path: rest, dirOnly });
    } else if (bytes.includes('/')) {
      return null;
    } else {
      names.push({ name: bytes, dirOnly });
    }
  }
  return (rel, isDir) => {
    const parts = rel.split('/');
    for (let i = 0; i < parts.length; i++) {
      const last = i === parts.length - 1;
      const dir = !last || isDir;
      if (names.some((n) => n.name === parts[i] && (dir || !n.dirOnly))) return true;
      const prefix = parts.slice(0, i + 1).join('/');
      if (anchored.some((a) => a.path === prefix && (dir || !a.dirOnly))) return true;
    }
    return false;
  };
}

/** One entry of `git diff --raw -z`: its status letter and path (latin1). */
interface DiffEntry {
  status: string;
  path: string;
}

/** Parses `git diff --raw -z --no-renames` output (`:mode mode sha sha S\0path\0` records). */
export function parseRawDiff(out: Buffer): DiffEntry[] {
  const fields = out.toString('latin1').split('\0');
  const entries: DiffEntry[] = [];
  for (let i = 0; i + 1 < fields.length; i += 2) {
    const meta = fields[i];
    if (meta === '' && i === fields.length - 1) break;
    const status = meta.split(' ')[4];
    if (!meta.startsWith(':') || !status) throw new VmSyncError('git_failed', `unexpected git diff record: ${JSON.stringify(meta.slice(0, 80))}`);
    entries.push({ status: status[0], path: fields[i + 1] });
  }
  return entries;
}

/** A path's bytes as printf %b escapes (the stream header's form; agent.sh decodes them). */
export function encodeStreamPath(rel: string): string {
  let out = '';
  for (const byte of Buffer.from(rel, 'latin1')) {
    const c = String.fromCharCode(byte);
    out += /[A-Za-z0-9._,:/@+-]/.test(c) ? c : `\\0${byte.toString(8).padStart(3, '0')}`;
  }
  return out;
}

/** The streams of one deploy, made once per starting commit, on first demand. */
export class ReleaseStreams {
  private readonly made = new Map<string, Promise<StreamOutcome>>();
  /** What prefetch started (it may not be in `made` yet: the codec is decided first). */
  private readonly asked: Array<Promise<unknown>> = [];
  private readonly exclude: ExcludeMatcher | null;
  private substChecked?: Promise<string | null>;

  constructor(private readonly source: StreamSource) {
    this.exclude = excludeMatcher(source.excludes);
  }

  /**
   * The stream from `base` (a commit the VM's live release holds; null: none)
   * to the commit, compressed with zstd when `vmHasZstd` and the runner host
   * runs zstd too, else with gzip.
   */
  async for(base: string | null, vmHasZstd = false): Promise<StreamOutcome> {
    const codec: StreamCodec = vmHasZstd && (await runnerHasZstd(this.source.env)) ? 'zstd' : 'gzip';
    const key = `${codec}:${base ?? ''}`;
    let made = this.made.get(key);
    if (!made) {
      // A stream that cannot be made (a defect, a full disk) costs speed, not the deploy: rsync takes over.
      made = this.make(base, codec).catch((error: unknown): StreamOutcome => ({ ok: false, reason: getErrorMessage(error) }));
      this.made.set(key, made);
    }
    return made;
  }

  /**
   * Starts making, in the background, the streams VMs are likely to ask for:
   * from each commit this runner recorded on a VM of the run, and from
   * nothing for a VM with no record. The stream is then ready, or nearly,
   * when the VM has been connected, locked and staged, instead of being made
   * after that on the critical path. A guess that turns out wrong costs one
   * stream's CPU; zstd is assumed (what most VMs run).
   */
  prefetch(bases: ReadonlyArray<string | null>): void {
    const counts = new Map<string | null, number>();
    for (const base of bases) counts.set(base, (counts.get(base) ?? 0) + 1);
    // The most common starting points only, one after the other: a fleet spread over many commits must not
    // start a git diff, tar and zstd for each of them at once, beside the SSH handshakes, and a run that
    // ends early waits for at most these (see settled()). The rest are made when a VM asks.
    const likely = [...counts].sort((a, b) => b[1] - a[1]).slice(0, PREFETCH_STREAMS).map(([base]) => base);
    let previous: Promise<unknown> = Promise.resolve();
    for (const base of likely) {
      const next = previous.then(() => this.for(base, true));
      this.asked.push(next);
      previous = next;
    }
  }

  /** Waits for every stream being made (before its scratch directory goes). */
  async settled(): Promise<void> {
    await Promise.all(this.asked);
    await Promise.all(this.made.values());
  }

  private async make(base: string | null, codec: StreamCodec): Promise<StreamOutcome> {
    const exclude = this.exclude;
    if (!exclude) return { ok: false, reason: 'rsync_excludes has patterns only rsync understands (wildcards or unanchored paths)' };
    const { dir } = await this.source.tree();
    let removals: string[] = [];
    let members: string[];
    if (base === null) {
      members = this.wholeTree(dir, exclude);
    } else {
      const diff = await this.diff(base);
      if (typeof diff === 'string') return { ok: false, reason: diff };
      // .gitattributes decide the bytes of files the diff does not list (export-ignore, eol, export-subst):
      // a changed one, or an export-subst anywhere (its output names the commit), needs every file compared.
      const attrs = diff.find((e) => e.path === '.gitattributes' || e.path.endsWith('/.gitattributes'));
      if (attrs) return { ok: false, reason: `${printableLatin1(attrs.path)} changed, which can change files the diff does not list` };
      const subst = await this.exportSubst();
      if (subst) return { ok: false, reason: subst };
      const shared = this.source.sharedPaths.map((p) => Buffer.from(p, 'utf8').toString('latin1'));
      const under = (rel: string, p: string): boolean => rel === p || rel.startsWith(`${p}/`);
      // A change to a parent of a shared path (a directory replaced by a file) needs rsync's full view.
      const parentOfShared = diff.find((e) => shared.some((p) => p.startsWith(`${e.path}/`)));
      if (parentOfShared) return { ok: false, reason: `the change touches ${printableLatin1(parentOfShared.path)}, a parent of a shared path` };
      const kept = diff.filter((e) => !shared.some((p) => under(e.path, p)));
      // Excluded paths are removed too (they are absent, so it costs nothing): the agent then removes
      // the directories the change left empty, as rsync --delete would. A modified path (M: content or
      // mode, same type) needs no removal: tar unlinks it before writing the new one, never writing
      // through the hard link to the live release (the agent unsets TAR_OPTIONS, so no --overwrite).
      // Each removal costs the VM a few programs.
      // One the export lacks (export-ignore'd by the runner host's own attributes) is removed as before.
      removals = kept.filter((e) => e.status !== 'A' && (e.status !== 'M' || lstatLatin1(dir, e.path) === null)).map((e) => e.path);
      members = this.withParents(dir, kept, exclude);
    }
    const file = path.join(this.source.scratchDir, `stream-${base ?? 'full'}.${codec}`);
    const files = await writeStream(file, dir, removals, members, codec, this.source.env);
    return { ok: true, stream: { base, codec, file, removals: removals.length, files, bytes: fs.statSync(file).size } };
  }

  /** Changed paths between `base` and the commit, or why the stream cannot be made. */
  private async diff(base: string): Promise<DiffEntry[] | string> {
    const args = ['diff', '--raw', '-z', '--no-renames', '--no-abbrev', '--no-ext-diff', '--no-textconv', base, this.source.commit, '--'];
    // Bytes, not text: a path that is not UTF-8 must survive.
    const out = await gitBytes(this.source.repoDir, args, { env: this.source.env, maxBuffer: 256 * 1024 * 1024 });
    if (!out) return `the runner-host clone cannot diff ${base.slice(0, 12)}..${this.source.commit.slice(0, 12)}`;
    return parseRawDiff(out);
  }

  /** Every entry of the export that rsync would send, parents before children. */
  private wholeTree(root: string, exclude: ExcludeMatcher): string[] {
    const out: string[] = [];
    const walk = (abs: Buffer, rel: string): void => {
      for (const entry of fs.readdirSync(abs, { withFileTypes: true, encoding: 'buffer' })) {
        const name = (entry.name as unknown as Buffer).toString('latin1');
        const childRel = rel ? `${rel}/${name}` : name;
        const isDir = entry.isDirectory();
        if (exclude(childRel, isDir)) continue;
        out.push(childRel);
        if (isDir) walk(Buffer.concat([abs, Buffer.from('/'), entry.name as unknown as Buffer]), childRel);
      }
    };
    walk(Buffer.from(root), '');
    return out;
  }

  /**
   * The added or changed paths that exist in the export, each preceded by its
   * parent directories (once), and the parent directories of every other
   * changed path that the export still has: the agent removes the directories
   * a removal left empty, and one whose remaining entries are all excluded
   * must come back, as rsync sends it.
   */
  private withParents(root: string, entries: DiffEntry[], exclude: ExcludeMatcher): string[] {
    const out: string[] = [];
    const seen = new Set<string>();
    const add = (rel: string): void => {
      if (seen.has(rel)) return;
      seen.add(rel);
      out.push(rel);
    };
    for (const { status, path: rel } of entries) {
      const parts = rel.split('/');
      let parentsOk = true;
      for (let i = 1; i < parts.length && parentsOk; i++) {
        const prefix = parts.slice(0, i).join('/');
        if (seen.has(prefix)) continue;
        parentsOk = lstatLatin1(root, prefix)?.isDirectory() === true && !exclude(prefix, true);
        if (parentsOk) add(prefix);
      }
      if (!parentsOk || status === 'D') continue;
      const stat = lstatLatin1(root, rel);
      if (!stat) continue; // export-ignore'd, or under a path git archive does not write
      if (exclude(rel, stat.isDirectory())) continue;
      add(rel);
    }
    return out;
  }

  /** Why no stream can be made for the commit because of export-subst (null: none is used); checked once. */
  private exportSubst(): Promise<string | null> {
    this.substChecked ??= exportSubstIn(this.source.repoDir, this.source.commit, this.source.env).then((subst) =>
      subst.kind === 'none' ? null : subst.kind === 'uses' ? `${printableLatin1(subst.path)} uses export-subst (its files name the commit)` : subst.why,
    );
    return this.substChecked;
  }
}

function lstatLatin1(root: string, rel: string): fs.Stats | null {
  try {
    return fs.lstatSync(Buffer.concat([Buffer.from(root), Buffer.from('/'), Buffer.from(rel, 'latin1')]));
  } catch {
    return null;
  }
}

function printableLatin1(rel: string): string {
  // eslint-disable-next-line no-control-regex
  return Buffer.from(rel, 'latin1').toString('utf8').replace(/[\u0000-\u001f\u007f-\u009f]/g, '?');
}

/**
 * The compressor of each codec. The stream is made on the critical path and
 * unpacked on every VM, so both ends' CPU counts: zstd at its default level
 * packs git/git's 48 MB tree into 11.8 MB in 0.3 s and unpacks it in 0.1 s;
 * `gzip -1` takes 0.7 s for 15.2 MB and 0.4 s to unpack.
 */
const COMPRESSORS: Record<StreamCodec, [string, string[]]> = {
  zstd: ['zstd', ['-3', '-q', '-c']],
  gzip: ['gzip', ['-1', '-n', '-c']],
};

let zstdRuns: Promise<boolean> | null = null;

/** Whether zstd runs on the runner host (asked once per process). */
function runnerHasZstd(env?: NodeJS.ProcessEnv): Promise<boolean> {
  zstdRuns ??= new Promise((resolve) => {
    execFile('zstd', ['-q', '-V'], { env: env ?? process.env, timeout: 10_000 }, (error) => resolve(!error));
  });
  return zstdRuns;
}

/**
 * Writes the stream file: the removal header, then `tar -c --no-recursion` of
 * `members` (read from `root`) through the codec's compressor. Returns how
 * many regular files it holds.
 */
async function writeStream(file: string, root: string, removals: string[], members: string[], codec: StreamCodec, env?: NodeJS.ProcessEnv): Promise<number> {
  const list = `${file}.list`;
  fs.writeFileSync(list, Buffer.from(members.map((m) => `${m}\0`).join(''), 'latin1'), { mode: 0o600 });
  fs.writeFileSync(file, `${removals.map((r) => `${encodeStreamPath(r)}\n`).join('')}.\n`, { mode: 0o600 });
  let files = 0;
  for (const m of members) if (lstatLatin1(root, m)?.isFile()) files++;
  const out = fs.openSync(file, 'a');
  try {
    const tar = spawn('tar', ['-c', '-f', '-', '--format=gnu', '--numeric-owner', '--owner=0', '--group=0', '-C', root, '--no-recursion', '--null', '-T', list], {
      env: { ...(env ?? process.env), LC_ALL: 'C' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const [program, args] = COMPRESSORS[codec];
    const compress = spawn(program, args, { stdio: ['pipe', out, 'pipe'] });
    tar.stdout.pipe(compress.stdin as NodeJS.WritableStream);
    const status = (child: ReturnType<typeof spawn>): Promise<{ code: number | null; stderr: string }> =>
      new Promise((resolve, reject) => {
        let stderr = '';
        child.stderr?.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-2000)));
        child.on('error', reject);
        child.on('close', (code) => resolve({ code, stderr }));
      });
    const [t, c] = await Promise.all([status(tar), status(compress)]);
    if (t.code !== 0 || c.code !== 0) throw new VmSyncError('internal_error', `could not build the release stream (tar exited ${t.code}, ${program} ${c.code}): ${(t.stderr || c.stderr).trim().slice(0, 500)}`);
  } catch (error) {
    if (error instanceof VmSyncError) throw error;
    throw new VmSyncError('internal_error', `could not build the release stream: ${getErrorMessage(error)}`);
  } finally {
    fs.closeSync(out);
    fs.rmSync(list, { force: true });
  }
  return files;
}

