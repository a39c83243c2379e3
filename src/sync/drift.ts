import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { VmSyncError } from '../errors.js';
import { run } from '../local/run.js';
import { makeScratchDir, removeScratchDirLater } from '../local/scratch.js';
import type { TreeEntry, TreeListing } from '../remote/listing.js';
import { vmText } from '../remote/untrusted.js';
import { excludeMatcher, type ExcludeMatcher } from './stream.js';
import type { DriftReport } from './types.js';

/*
 * `verify --deep`: what a VM serves, file by file, against the commit's tree
 * as vm-sync deploys it. The expected side is built from an export of the
 * commit (not from git's blobs: `.gitattributes` eol conversion changes
 * bytes, `export-ignore` drops files), less what vm-sync never deploys:
 * `.sync_rev` at the root (vm-sync's own), the rsync excludes, and the shared
 * paths (each is exactly a symlink into vm-sync's shared directory, never
 * followed). Paths are latin1 strings (one char per byte) throughout.
 */

/** How a path differs: `link` is a symlink whose target changed. */
export type DriftKind = 'changed' | 'missing' | 'extra' | 'link';

/** One path that differs, with what differs about it (`content`, `mode 0644 -> 0600`, ...). */
export interface DriftEntry {
  path: string;
  kind: DriftKind;
  detail: string;
}

/** What vm-sync leaves out of a release: rsync exclude patterns and shared paths (config form). */
export interface DeployRules {
  excludes: readonly string[];
  sharedPaths: readonly string[];
}

/** A commit's tree as vm-sync deploys it. */
export interface ExpectedTree {
  /** Every deployed entry, without `.sync_rev`, the excluded ones and the shared paths. */
  entries: TreeListing;
  /** Shared paths (latin1): each must be a symlink to its place in vm-sync's shared directory. */
  shared: string[];
  /** rsync's meaning of the excludes, null when a pattern is beyond {@link excludeMatcher}. */
  exclude: ExcludeMatcher | null;
}

const latin1 = (text: string): string => Buffer.from(text, 'utf8').toString('latin1');
const under = (rel: string, dir: string): boolean => rel.startsWith(`${dir}/`);

/**
 * Reads a tree into a listing: every entry, not following symlinks, with the
 * sha256 of every regular file. `keep` decides per path (a directory it
 * rejects is not entered).
 */
export async function readTree(root: string, keep: (rel: string, isDir: boolean) => boolean = () => true): Promise<TreeListing> {
  const entries: TreeListing = new Map();
  const files: Array<{ abs: Buffer; entry: TreeEntry }> = [];
  const rootBytes = Buffer.from(root);
  const pending: string[] = [''];
  while (pending.length > 0) {
    const dir = pending.pop() as string;
    const absDir = dir ? Buffer.concat([rootBytes, Buffer.from(`/${dir}`, 'latin1')]) : rootBytes;
    // Names as bytes: a name that is not UTF-8 must not be decoded (and so changed) on the way.
    const names = (await fs.promises.readdir(absDir, { encoding: 'buffer' })) as Buffer[];
    for (const name of names) {
      const rel = dir ? `${dir}/${name.toString('latin1')}` : name.toString('latin1');
      const abs = Buffer.concat([absDir, Buffer.from('/'), name]);
      const stat = await fs.promises.lstat(abs);
      if (!keep(rel, stat.isDirectory())) continue;
      const mode = stat.mode & 0o7777;
      if (stat.isSymbolicLink()) {
        entries.set(rel, { type: 'symlink', mode: null, size: null, target: ((await fs.promises.readlink(abs, { encoding: 'buffer' })) as Buffer).toString('latin1'), sha256: null });
      } else if (stat.isDirectory()) {
        entries.set(rel, { type: 'dir', mode, size: null, target: null, sha256: null });
        pending.push(rel);
      } else if (stat.isFile()) {
        const entry: TreeEntry = { type: 'file', mode, size: stat.size, target: null, sha256: null };
        entries.set(rel, entry);
        files.push({ abs, entry });
      } else {
        entries.set(rel, { type: stat.isFIFO() ? 'fifo' : stat.isSocket() ? 'socket' : stat.isBlockDevice() || stat.isCharacterDevice() ? 'device' : 'other', mode, size: null, target: null, sha256: null });
      }
    }
  }
  // A few files at a time: hashing streams each file, never holding a large one in memory.
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(8, files.length) }, async () => {
      while (next < files.length) {
        const job = files[next++];
        job.entry.sha256 = await hashFile(job.abs);
      }
    }),
  );
  return entries;
}

function hashFile(file: Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const hash = crypto.createHash('sha256');
    fs.createReadStream(file)
      .on('error', reject)
      .on('data', (chunk) => hash.update(chunk))
      .on('end', () => resolve(hash.digest('hex')));
  });
}

/**
 * The commit's tree as vm-sync deploys it, from its export. With exclude
 * patterns {@link excludeMatcher} does not understand, rsync itself applies
 * them: the export is copied (hard links, into `scratchDir`) through rsync
 * with the same excludes, so the expected side is exactly what rsync sends.
 */
export async function expectedTree(exportDir: string, rules: DeployRules, scratchDir: string): Promise<ExpectedTree> {
  const shared = rules.sharedPaths.map(latin1);
  const exclude = excludeMatcher(rules.excludes);
  let root = exportDir;
  if (!exclude) {
    root = path.join(scratchDir, 'filtered');
    const args = ['-rlpt', `--link-dest=${path.resolve(exportDir)}`, ...rules.excludes.map((p) => `--exclude=${p}`), `${exportDir}/`, `${root}/`];
    const result = await run('rsync', args, { maxOutput: 4000 });
    if (result.code !== 0) throw new VmSyncError('rsync_failed', `could not apply rsync_excludes to the export for the deep verify (rsync exited ${result.code}): ${result.stderr.trim().split('\n').slice(-2).join(' | ')}`);
  }
  const entries = await readTree(root, (rel, isDir) => rel !== '.sync_rev' && !shared.some((s) => rel === s || under(rel, s)) && !(exclude?.(rel, isDir) ?? false));
  // The release's seal step creates a shared path's missing parents as directories.
  for (const s of shared) {
    const parts = s.split('/');
    for (let i = 1; i < parts.length; i++) {
      const parent = parts.slice(0, i).join('/');
      if (!entries.has(parent)) entries.set(parent, { type: 'dir', mode: null, size: null, target: null, sha256: null });
    }
  }
  return { entries, shared, exclude };
}

const octal = (mode: number | null): string => (mode === null ? '?' : `0${mode.toString(8).padStart(3, '0')}`);

/** How `actual` differs from `expected` at one path, or null when it does not. */
function differs(expected: TreeEntry, actual: TreeEntry): { kind: 'changed' | 'link'; detail: string } | null {
  if (expected.type !== actual.type) return { kind: 'changed', detail: `type ${expected.type} -> ${actual.type}` };
  if (expected.type === 'symlink') return expected.target === actual.target ? null : { kind: 'link', detail: 'symlink target' };
  const what: string[] = [];
  if (expected.type === 'file' && (expected.sha256 !== actual.sha256 || expected.size !== actual.size)) what.push('content');
  if (expected.mode !== null && expected.mode !== actual.mode) what.push(`mode ${octal(expected.mode)} -> ${octal(actual.mode)}`);
  return what.length ? { kind: 'changed', detail: what.join(', ') } : null;
}

/**
 * Compares what a VM serves with the expected tree: every path is one of
 * `changed` (content, mode or type), `missing`, `extra` or `link` (a symlink's
 * target). `sharedTarget` gives the link a shared path must be on this VM.
 * Not compared: `.sync_rev`, whatever lies under a shared path (the VM's
 * data), VM-only paths the excludes cover, and, when the excludes are beyond
 * the matcher, every VM-only path. Sorted by path (bytes). Pure.
 */
export function compareTrees(expected: ExpectedTree, actual: TreeListing, sharedTarget: (rel: string) => string): DriftEntry[] {
  const drift: DriftEntry[] = [];
  for (const [rel, want] of expected.entries) {
    const have = actual.get(rel);
    if (!have) drift.push({ path: rel, kind: 'missing', detail: want.type });
    else {
      const d = differs(want, have);
      if (d) drift.push({ path: rel, ...d });
    }
  }
  for (const rel of expected.shared) {
    const have = actual.get(rel);
    const target = sharedTarget(rel);
    if (!have) drift.push({ path: rel, kind: 'missing', detail: 'shared path link' });
    else if (have.type !== 'symlink') drift.push({ path: rel, kind: 'changed', detail: `type symlink -> ${have.type} (a shared path must link to vm-sync's shared directory)` });
    else if (have.target !== target) drift.push({ path: rel, kind: 'link', detail: "symlink target (not vm-sync's shared directory)" });
  }
  if (expected.exclude) {
    const exclude = expected.exclude;
    for (const [rel, have] of actual) {
      if (rel === '.sync_rev' || expected.entries.has(rel) || expected.shared.includes(rel)) continue;
      if (expected.shared.some((s) => under(rel, s))) continue;
      if (exclude(rel, have.type === 'dir')) continue;
      drift.push({ path: rel, kind: 'extra', detail: have.type });
    }
  }
  return drift.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

/** How many drifted paths a report row lists (the counts cover all of them). */
export const DRIFT_PATHS_MAX = 20;

/** The report's `drift` field: counts, and the first paths made printable. */
export function driftReport(drift: readonly DriftEntry[], checked: number, max: number = DRIFT_PATHS_MAX): DriftReport {
  return {
    checked,
    changed: drift.filter((d) => d.kind === 'changed' || d.kind === 'link').length,
    missing: drift.filter((d) => d.kind === 'missing').length,
    extra: drift.filter((d) => d.kind === 'extra').length,
    paths: drift.slice(0, max).map((d) => ({ path: printablePath(d.path), what: d.kind === 'link' ? 'changed' : d.kind, detail: d.detail })),
  };
}

// Characters that reorder or hide text on a terminal or a web page: shown as escapes.
const INVISIBLE = /[\u0080-\u009f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]/u;

/**
 * A path (latin1, one char per byte, as a VM named it) as printable text:
 * valid UTF-8 shown as such; a control byte, a byte that is not part of valid
 * UTF-8, and a backslash as `\xNN`; characters that reorder or hide text as
 * `\u{…}`. Unambiguous, one line, and bounded.
 */
export function printablePath(rel: string, max = 300): string {
  const bytes = Buffer.from(rel, 'latin1');
  let out = '';
  for (let i = 0; i < bytes.length && out.length <= max; ) {
    const b = bytes[i];
    const len = b >= 0xf0 && b <= 0xf4 ? 4 : b >= 0xe0 ? 3 : b >= 0xc2 && b < 0xe0 ? 2 : 1;
    if (b >= 0x20 && b < 0x7f && b !== 0x5c) {
      out += String.fromCharCode(b);
      i++;
      continue;
    }
    if (len > 1 && i + len <= bytes.length) {
      const slice = bytes.subarray(i, i + len);
      const text = slice.toString('utf8');
      // Valid only when it decodes to one code point that encodes back to the same bytes.
      if ([...text].length === 1 && !text.includes('\ufffd') && Buffer.from(text, 'utf8').equals(slice)) {
        out += INVISIBLE.test(text) ? `\\u{${(text.codePointAt(0) as number).toString(16)}}` : text;
        i += len;
        continue;
      }
    }
    out += `\\x${b.toString(16).padStart(2, '0')}`;
    i++;
  }
  return vmText(out, max);
}

/** The link a shared path must be on a VM whose target (as the VM expanded it) is `target`: agent.sh `seal` makes it. */
export function sharedLinkTarget(target: string): (rel: string) => string {
  const stateDir = `${path.posix.dirname(target)}/.${path.posix.basename(target)}.vm-sync`;
  return (rel) => latin1(`${stateDir}/shared/`) + rel;
}

/** Whether `.sync_rev` in a listing holds exactly `rev` (as vm-sync writes it, or without the newline). */
export function sentinelMatches(listing: TreeListing, rev: string): boolean {
  const entry = listing.get('.sync_rev');
  if (!entry || entry.type !== 'file') return false;
  const digest = (text: string): string => crypto.createHash('sha256').update(text).digest('hex');
  return entry.sha256 === digest(`${rev}\n`) || entry.sha256 === digest(rev);
}

/**
 * The expected trees of one run: each commit the VMs serve is exported once
 * (into a private scratch directory, removed as soon as its listing is made)
 * and turned into an {@link ExpectedTree}, shared by every VM on it.
 */
export class ExpectedTrees {
  private readonly made = new Map<string, Promise<ExpectedTree>>();
  private scratch: string | null = null;

  constructor(
    private readonly repo: { exportTree(sha: string, dest: string): Promise<void> },
    private readonly rules: DeployRules,
  ) {}

  /** The expected tree of `sha` (a full hash), made on first demand. */
  for(sha: string): Promise<ExpectedTree> {
    let tree = this.made.get(sha);
    if (!tree) {
      tree = this.make(sha);
      this.made.set(sha, tree);
    }
    return tree;
  }

  private async make(sha: string): Promise<ExpectedTree> {
    this.scratch ??= makeScratchDir('deep');
    const dir = path.join(this.scratch, sha);
    fs.mkdirSync(dir);
    try {
      await this.repo.exportTree(sha, path.join(dir, 'tree'));
      return await expectedTree(path.join(dir, 'tree'), this.rules, dir);
    } finally {
      removeScratchDirLater(dir);
    }
  }

  /** Removes the scratch directory (call once every VM is done). */
  close(): void {
    if (this.scratch) removeScratchDirLater(this.scratch);
  }
}
