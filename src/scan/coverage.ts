import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { makeScratchDir, removeScratchDirLater } from '../local/scratch.js';
import { findingFromFingerprint, printable, type Finding } from './findings.js';
import { runGitleaks, scanEnds, scanTimeout, type GitleaksSettings, type GitleaksSkip, type ScanLimits } from './gitleaks.js';
import { inflate, type Compression } from './inflate.js';
import { findNestedArchives, type NestedScan } from './nested.js';
import { isIgnored } from './settings.js';

/** Something deployed that the scan could not read, and why. */
export interface UnscannedFile {
  /** Its path in the deployed tree; `archive!entry` for an entry inside an archive. */
  path: string;
  reason: 'binary' | 'archive' | 'allowlisted' | 'too_large' | 'unreadable';
  /** What exactly, in a few words. */
  detail: string;
  /**
   * Not a property of the file but of this scan (a per-scan budget was used
   * up by other files): never remembered by the scan cache.
   */
  transient?: true;
}

/** The deployed tree's scan: findings, and what could not be scanned. */
export interface TreeScan {
  findings: Finding[];
  unscanned: UnscannedFile[];
  /** Config files gitleaks extended (from its log), for the caller to vet. */
  extended: string[];
}

type ArchiveKind = 'zip' | 'tar' | 'gz' | 'tar.gz' | 'bz2' | 'xz' | 'zst' | '7z' | 'rar';

/** A file the first pass skipped, scanned again under a name no path allowlist matches. */
interface Rescan {
  /** Path in the deployed tree. */
  original: string;
  /** Where its bytes are (inside the export; a Buffer for a name that is not UTF-8). */
  file: fs.PathLike;
  archive: ArchiveKind | null;
  attempt: number;
  /**
   * Scan the file's bytes as text, whatever its name or first bytes say: a
   * copy behind one newline, so gitleaks' type sniffing (magic bytes at the
   * start) and archive handling (by name) cannot skip it. Lines map back - 1.
   */
  raw?: boolean;
  /**
   * With `raw`: scan the compressed stream's inflated bytes instead (a tarball's bytes outside its entries,
   * and every member after a header gitleaks rejects, are inside the stream).
   */
  inflate?: Compression;
}

// Names gitleaks opens as archives (it picks the format by name alone, and an
// archive it cannot read, or bytes outside its entries, are skipped silently).
const ARCHIVE_NAME = /\.(zip|jar|war|ear|apk|aar|whl|nupkg|tar|tgz|gz|tbz2?|bz2|txz|xz|tzst|zst|7z|rar|br|lz4|sz|lz|lzma|z)$/i;
/** The largest file scanned byte for byte (a raw copy); larger ones are reported. */
const RAW_MAX = 16 * 1024 * 1024;
/** All inflated streams of one scan together (each is at most 4 × RAW_MAX); past it, what is left is reported. */
const INFLATED_MAX = 1024 * 1024 * 1024;

/** Whether a file gitleaks called binary is really text (a text file that merely starts with a magic number). */
function mostlyText(file: fs.PathLike): boolean {
  const head = Buffer.alloc(64 * 1024);
  let n: number;
  try {
    const fd = fs.openSync(file, 'r');
    try {
      n = fs.readSync(fd, head, 0, head.length, 0);
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return false;
  }
  if (n === 0) return false;
  let printable = 0;
  for (let i = 0; i < n; i++) {
    const c = head[i];
    if (c === 9 || c === 10 || c === 13 || (c >= 32 && c !== 127)) printable++;
  }
  return printable / n >= 0.9;
}

const COMPRESSED: ReadonlySet<ArchiveKind> = new Set(['gz', 'bz2', 'xz', 'zst']);

/**
 * The archive format of a file, by its first bytes, or null. gitleaks only
 * opens archives whose *name* says what they are (`.tgz`, `.jar` are skipped
 * as binary), so the second pass names them by content. For gzip, the start
 * is inflated to tell a tarball from a single compressed file.
 */
function sniffArchive(file: fs.PathLike): ArchiveKind | null {
  const head = Buffer.alloc(64 * 1024);
  let b: Buffer;
  try {
    const fd = fs.openSync(file, 'r');
    try {
      b = head.subarray(0, fs.readSync(fd, head, 0, head.length, 0));
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return null;
  }
  const starts = (...bytes: number[]): boolean => bytes.every((v, i) => b[i] === v);
  const isTar = (buf: Buffer): boolean => buf.length >= 262 && buf.toString('latin1', 257, 262) === 'ustar';
  if (starts(0x50, 0x4b, 0x03, 0x04) || starts(0x50, 0x4b, 0x05, 0x06)) return 'zip';
  if (starts(0x1f, 0x8b)) {
    try {
      return isTar(zlib.gunzipSync(b, { finishFlush: zlib.constants.Z_SYNC_FLUSH })) ? 'tar.gz' : 'gz';
    } catch {
      return 'gz';
    }
  }
  if (starts(0x42, 0x5a, 0x68)) return 'bz2';
  if (starts(0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00)) return 'xz';
  if (starts(0x28, 0xb5, 0x2f, 0xfd)) return 'zst';
  if (starts(0x37, 0x7a, 0xbc, 0xaf, 0x27, 0x1c)) return '7z';
  if (starts(0x52, 0x61, 0x72, 0x21, 0x1a, 0x07)) return 'rar';
  if (isTar(b)) return 'tar';
  return null;
}

/**
 * The name a skipped file gets in the second pass: its own base name (so
 * rules that look at file names still apply), then, if a path allowlist
 * still matches that, a neutral one. Archives are named after their format;
 * a compressed file that turns out to hold a tarball is renamed `.tar.*`.
 */
function nameFor(entry: Rescan): string {
  if (entry.raw) return 'content';
  if (entry.archive) return entry.attempt === 0 || !COMPRESSED.has(entry.archive) ? `archive.${entry.archive}` : `archive.tar.${entry.archive}`;
  const base = path.basename(entry.original);
  // A name that findings would show escaped could not be mapped back: use the neutral one at once.
  return entry.attempt === 0 && printable(base) === base ? base : 'content';
}

/** `rel` inside `root` (never outside it), or null. */
function inside(root: string, rel: string): string | null {
  const full = path.resolve(root, rel);
  return full === root || full.startsWith(`${root}${path.sep}`) ? full : null;
}

function lstat(file: string): fs.Stats | null {
  try {
    return fs.lstatSync(file);
  } catch {
    return null;
  }
}

/** Every regular file under `dir` (symlinks are deployed as links: they carry no content of their own). */
function filesUnder(dir: string, rel: string): string[] {
  const out: string[] = [];
  const walk = (abs: string, relDir: string): void => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(abs, { withFileTypes: true });
    } catch {
      return; // a directory whose name is not UTF-8: filesWithOddNames() walks those by bytes
    }
    for (const entry of entries) {
      const childRel = relDir === '.' ? entry.name : `${relDir}/${entry.name}`;
      if (entry.isDirectory()) walk(path.join(abs, entry.name), childRel);
      else if (entry.isFile()) out.push(childRel);
    }
  };
  walk(dir, rel);
  return out;
}

/** Regular files whose names are not valid UTF-8: their real (byte) path, and a printable name for reports. */
function filesWithOddNames(root: string): Array<{ file: Buffer; shown: string }> {
  const out: Array<{ file: Buffer; shown: string }> = [];
  const walk = (abs: Buffer, shown: string, odd: boolean): void => {
    for (const entry of fs.readdirSync(abs, { withFileTypes: true, encoding: 'buffer' })) {
      const name = entry.name as unknown as Buffer;
      const text = name.toString('utf8');
      const childOdd = odd || !Buffer.from(text, 'utf8').equals(name);
      const child = Buffer.concat([abs, Buffer.from('/'), name]);
      const childShown = shown ? `${shown}/${text}` : text;
      if (entry.isDirectory()) walk(child, childShown, childOdd);
      else if (entry.isFile() && childOdd) out.push({ file: child, shown: childShown });
    }
  };
  walk(Buffer.from(root), '', false);
  return out;
}

const ENTRIES_SKIPPED = 'entries inside it were skipped by a path allowlist (images, lock files, node_modules/, vendor/ ...)';

/** What a skip that cannot be undone by renaming means for the report. */
function unscannedFor(skip: GitleaksSkip, at: string, isArchive: boolean): UnscannedFile {
  switch (skip.kind) {
    case 'allowlist-dir':
    case 'allowlist-file':
      return isArchive ? { path: at, reason: 'archive', detail: ENTRIES_SKIPPED } : { path: at, reason: 'allowlisted', detail: 'a path allowlist of the scan settings matches it under every name tried' };
    case 'binary':
      return /zip|gzip|x-tar|bzip|x-xz|zstd|7z|rar|java-archive/.test(skip.detail)
        ? { path: at, reason: 'archive', detail: `an archive inside an archive, under a name gitleaks does not open (${skip.detail})` }
        : { path: at, reason: 'binary', detail: `binary file (${skip.detail})` };
    case 'archive-depth':
    case 'archive-unknown':
      return { path: at, reason: 'archive', detail: skip.detail };
    case 'too-large':
      return { path: at, reason: 'too_large', detail: skip.detail };
    default:
      return { path: at, reason: 'unreadable', detail: skip.detail };
  }
}

/**
 * Scans the deployed tree so that nothing in it escapes: gitleaks' default
 * config skips whole paths (node_modules/, vendor/, lock files, go.sum,
 * images, fonts, `.gitleaks.toml` ...) and archives whose name it does not
 * know. Pass 1 scans the export as it is; every file it skipped by a path
 * allowlist, and every archive it skipped as binary, is scanned again from a
 * private directory of hard links with neutral names (`<n>/<base name>`,
 * then `<n>/content`; archives as `archive.<format>`), and the findings are
 * mapped back to the real path and fingerprint (`file:rule:line`). gitleaks
 * cannot apply `.gitleaksignore` to the renamed files, so the trusted ignore
 * list is applied here. Archives and compressed streams inside the tree's
 * archives (as deep as gitleaks opens them) are extracted to a private
 * directory and scanned like files of the tree (see nested.ts): gitleaks stops
 * silently in a tarball at a damaged member header. Whatever still could not
 * be scanned is returned with the reason.
 *
 * Findings that gitleaks dropped because of an ignore list other than the
 * trusted one (it always loads the scanned tree's own `.gitleaksignore`) are
 * restored from its log.
 */
export async function scanTree(binary: string, exportDir: string, settings: GitleaksSettings, ignore: ReadonlySet<string>, limits: ScanLimits, inflatedMax = INFLATED_MAX): Promise<TreeScan> {
  const root = path.resolve(exportDir);
  const first = await runGitleaks(binary, { mode: 'dir', root }, settings, limits);
  const findings: Finding[] = [...first.findings];
  for (const fingerprint of first.suppressed) {
    if (!isIgnored(ignore, { fingerprint })) findings.push(findingFromFingerprint(fingerprint, 'tree'));
  }

  const unscanned: UnscannedFile[] = [];
  const rescans = new Map<string, Rescan>();
  const queue = (rel: string, file: fs.PathLike, archive: ArchiveKind | null, attempt = 0): void => {
    if (!rescans.has(rel)) rescans.set(rel, { original: rel, file, archive, attempt });
    // An archive is also read byte for byte: gitleaks reads only its entries,
    // never what sits before, between or after them.
    if (archive || ARCHIVE_NAME.test(rel)) queueRaw(rel, file);
  };
  const queueRaw = (rel: string, file: fs.PathLike): void => {
    let size: number;
    try {
      size = fs.lstatSync(file).size;
    } catch {
      return; // a name gitleaks and this walk see differently: the byte-exact walk queues it
    }
    if (size > RAW_MAX) unscanned.push({ path: rel, reason: 'too_large', detail: `its bytes outside archive entries are not scanned above ${RAW_MAX / 1024 / 1024} MB` });
    else if (!rescans.has(`${rel}\0raw`)) rescans.set(`${rel}\0raw`, { original: rel, file, archive: null, attempt: 1, raw: true });
    const kind = sniffArchive(file);
    const compression: Compression | null = kind === 'tar.gz' ? 'gz' : kind === 'gz' || kind === 'zst' || kind === 'xz' || kind === 'bz2' ? kind : null;
    if (compression && !rescans.has(`${rel}\0inflate`)) rescans.set(`${rel}\0inflate`, { original: rel, file, archive: null, attempt: 1, raw: true, inflate: compression });
  };
  // gitleaks reports a file name that is not UTF-8 with U+FFFD in its place,
  // a path nobody can open: such files are rescanned under neutral names.
  const odd = filesWithOddNames(root);
  for (const o of odd) queue(o.shown, o.file, sniffArchive(o.file), 1);
  const files = filesUnder(root, '.');
  for (const rel of files) if (ARCHIVE_NAME.test(rel)) queueRaw(rel, path.join(root, rel));

  // Archives inside archives (gitleaks opens them, and stops silently in a tarball at a damaged member header):
  // extracted to a private directory and given a file's treatment, their bytes and inflated stream scanned as text.
  const scratch = makeScratchDir('scannested');
  try {
    let nested: NestedScan;
    try {
      nested = await findNestedArchives([...files.map((rel) => ({ shown: rel, file: path.join(root, rel) })), ...odd], scratch, scanEnds(limits));
    } catch (error) {
      if (limits.signal?.aborted || (error as Error).name !== 'AbortError') throw error;
      throw scanTimeout(limits, 'vm-sync searched the archives of the deployed tree for archives inside them');
    }
    unscanned.push(...nested.unscanned);
    const nestedAt = new Map(nested.archives.map((a) => [a.path, a]));
    for (const a of nested.archives) queueRaw(a.path, a.file);
    for (const skip of first.skips) {
      const full = inside(root, skip.path);
      const stat = full ? lstat(full) : null;
      if (skip.kind === 'allowlist-dir' && full && stat?.isDirectory()) {
        for (const rel of filesUnder(full, skip.path)) queue(rel, path.join(root, rel), sniffArchive(path.join(root, rel)));
      } else if (full && stat?.isFile()) {
        // A file of the tree itself (not an entry inside an archive).
        const archive = sniffArchive(full);
        if (skip.kind === 'allowlist-file' || (skip.kind === 'binary' && archive)) queue(skip.path, full, archive);
        else if (skip.kind === 'binary' && mostlyText(full)) queueRaw(skip.path, full);
        // A file gitleaks took for an archive by its name and could not open: its bytes are scanned as text.
        else if (skip.kind === 'unreadable' && /could not open it/.test(skip.detail)) queueRaw(skip.path, full);
        else unscanned.push(unscannedFor(skip, skip.path, archive !== null));
      } else if (skip.path.includes('!')) {
        // An archive inside an archive under a name gitleaks does not open: extracted, it is opened under its
        // format's name. Still reported as gitleaks left it (what the report and the scan cache have always said).
        const inner = skip.kind === 'binary' ? nestedAt.get(skip.path) : undefined;
        const kind = inner ? sniffArchive(inner.file) : null;
        if (inner && kind) queue(skip.path, inner.file, kind);
        unscanned.push(unscannedFor(skip, skip.path, true));
      } else if (!skip.path.includes('\ufffd')) {
        // Never drop a skip: what cannot be mapped back is reported.
        unscanned.push(unscannedFor(skip, skip.path, false));
      }
    }

    let pending = [...rescans.values()];
    const budget = { left: inflatedMax, max: inflatedMax };
    for (let round = 0; pending.length > 0 && round < 2; round++) {
      const result = await rescan(binary, pending, settings, limits, budget);
      for (const f of result.findings) if (!isIgnored(ignore, f)) findings.push(f);
      unscanned.push(...result.unscanned);
      pending = result.retry.map((entry) => ({ ...entry, attempt: entry.attempt + 1 }));
    }

    const seenFindings = new Map(findings.map((f) => [f.fingerprint || `${f.file}:${f.rule}:${f.line}`, f]));
    const seenUnscanned = new Map(unscanned.map((u) => [`${u.path}\0${u.reason}`, { ...u, path: printable(u.path) }]));
    return {
      findings: [...seenFindings.values()],
      unscanned: [...seenUnscanned.values()].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0)),
      extended: first.extended,
    };
  } finally {
    // Archives unpacked for the scan: removed without holding up the event loop.
    removeScratchDirLater(scratch);
  }
}

/** A rescan's file that could not be read (a moment's failure: never remembered). */
function unreadable(entry: Rescan, error: unknown): UnscannedFile {
  return { path: entry.original, reason: 'unreadable', detail: (error as NodeJS.ErrnoException).code ?? 'cannot read' };
}

/** One second-pass round over `entries`: findings mapped back, what is still skipped, and what to try under another name. */
async function rescan(binary: string, entries: Rescan[], settings: GitleaksSettings, limits: ScanLimits, budget: { left: number; max: number }): Promise<{ findings: Finding[]; unscanned: UnscannedFile[]; retry: Rescan[] }> {
  const view = makeScratchDir('scanview');
  const unscanned: UnscannedFile[] = [];
  const retry: Rescan[] = [];
  try {
    // No ignore list in the view: the renamed paths match none; the caller applies the trusted one.
    const empty = path.join(view, 'no-ignore');
    const scanRoot = path.join(view, 'v');
    fs.mkdirSync(empty);
    fs.mkdirSync(scanRoot);
    const names = entries.map(nameFor);
    for (const [i, entry] of entries.entries()) {
      const target = path.join(scanRoot, String(i), names[i]);
      fs.mkdirSync(path.dirname(target));
      if (entry.inflate) {
        // The inflated stream, or the reason it cannot be had: reported, never a copy of the compressed bytes.
        let bytes: Buffer;
        try {
          bytes = fs.readFileSync(entry.file);
        } catch (error) {
          unscanned.push(unreadable(entry, error));
          continue;
        }
        const inflated = await inflate(entry.inflate, bytes, RAW_MAX * 4, { signal: scanEnds(limits), cwd: view });
        if (inflated.bytes && inflated.bytes.length > budget.left) {
          // Many small streams that inflate large (gzip bombs) must not fill the runner host's disk.
          unscanned.push({ path: entry.original, reason: 'too_large', transient: true, detail: `not inflated to be scanned: the scan's ${budget.max >= 1 << 20 ? `${Math.round(budget.max / (1 << 20))} MB` : `${Math.round(budget.max / 1024)} KB`} for inflated streams is used up (deploy fewer or smaller compressed files, or unpacked ones)` });
          continue;
        }
        if (inflated.bytes) {
          budget.left -= inflated.bytes.length;
          fs.writeFileSync(target, Buffer.concat([Buffer.from('\n'), inflated.bytes]));
        }
        if (inflated.problem) unscanned.push({ path: entry.original, ...inflated.problem });
        continue;
      }
      try {
        if (entry.raw) fs.writeFileSync(target, Buffer.concat([Buffer.from('\n'), fs.readFileSync(entry.file)]));
        // A hard link costs nothing and cannot change under the scan; a copy when the export is on another filesystem.
        else fs.linkSync(entry.file, target);
      } catch {
        try {
          fs.copyFileSync(entry.file, target);
        } catch (error) {
          unscanned.push(unreadable(entry, error));
        }
      }
    }
    const result = await runGitleaks(binary, { mode: 'dir', root: scanRoot }, { configFile: settings.configFile, ignoreDir: empty }, limits);

    // `<n>/<name>` or `<n>/<name>!entry...` -> the entry and the part inside it.
    const locate = (at: string): { entry: Rescan; index: number; inner: string } | null => {
      const slash = at.indexOf('/');
      const index = Number(slash < 0 ? at : at.slice(0, slash));
      const entry = entries[index];
      if (!Number.isInteger(index) || !entry) return null;
      const rest = slash < 0 ? '' : at.slice(slash + 1);
      if (rest === '' || rest === names[index]) return { entry, index, inner: '' };
      return rest.startsWith(`${names[index]}!`) ? { entry, index, inner: rest.slice(names[index].length) } : null;
    };

    const findings: Finding[] = [];
    for (const f of result.findings) {
      const where = locate(f.file);
      if (!where) continue;
      const file = printable(`${where.entry.original}${where.inner}`);
      const line = where.entry.raw ? Math.max(1, f.line - 1) : f.line;
      findings.push({ ...f, file, line, fingerprint: `${file}:${f.rule}:${line}` });
    }
    const retried = new Set<number>();
    for (const skip of result.skips) {
      const targets = skip.path === '.' ? entries.map((entry, index) => ({ entry, index, inner: '' })) : [locate(skip.path)];
      for (const where of targets) {
        if (!where || retried.has(where.index)) continue;
        const { entry, inner } = where;
        const own = inner === '';
        const renameHelps =
          !entry.raw &&
          own &&
          entry.attempt === 0 &&
          ((!entry.archive && (skip.kind === 'allowlist-file' || skip.kind === 'allowlist-dir')) ||
            (entry.archive !== null && COMPRESSED.has(entry.archive) && skip.kind === 'binary' && skip.detail === 'application/x-tar'));
        if (renameHelps) {
          retried.add(where.index);
          retry.push(entry);
        } else {
          unscanned.push(unscannedFor(skip, `${entry.original}${inner}`, own ? entry.archive !== null : skip.kind.startsWith('allowlist')));
        }
      }
    }
    return { findings, unscanned, retry };
  } finally {
    fs.rmSync(view, { recursive: true, force: true });
  }
}
