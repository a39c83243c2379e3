import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { getErrorMessage } from '../errors.js';
import type { UnscannedFile } from './coverage.js';
import type { GitleaksSettings } from './gitleaks.js';
import type { GitleaksIdentity } from './identity.js';

/** What the cache and the probe record know a gitleaks build by. */
type Build = Pick<GitleaksIdentity, 'digest' | 'exact'>;

/**
 * Bumped whenever vm-sync's own scan logic changes what a clean result
 * means (coverage rules, rescans): every cache made before is then unused.
 * 2: files holding an export-subst placeholder are never cached (a cache of
 * version 1 may vouch for one).
 * 3: compressed tarballs are inflated and scanned as a stream, and archives
 * inside archives extracted and scanned the same way (gitleaks stops silently
 * at a damaged tar member header): a cache of version 2 may vouch for one.
 * 4: tars inside archives read as GNU tar reads them (members of any type it
 * unpacks, pax sizes, sparse members, lenient numeric fields, a damaged first
 * block), zips behind a stub: a cache of version 3 may vouch for one.
 */
export const SCAN_LOGIC_VERSION = '4';

/** The most entries a cache keeps; past it the cache starts again (it is only a cache). */
const MAX_ENTRIES = 1_000_000;
const ENTRY = /^[0-9a-f]{40,64} [0-9a-f]{32}$/;
const COMMIT = /^[0-9a-f]{40,64}$/;
/** What a file could not have scanned, relative to its path: `suffix` ('' or `!entry...`), reason, detail. */
export type UnscannedPart = { suffix: string; reason: UnscannedFile['reason']; detail: string };
/** Reasons that are a property of the bytes, the path and the settings (not of a moment: see {@link lasting}). */
const LASTING: ReadonlySet<string> = new Set(['binary', 'archive', 'allowlisted', 'too_large']);

/**
 * Whether an unscanned part is a property of the bytes, the path and the
 * settings, so that it may be remembered. `unreadable` is, only for an entry
 * inside an archive: gitleaks failed to parse bytes it had read (a truncated
 * tar member: "unexpected EOF"), and does so on every read of the same blob.
 * A file of the tree itself that could not be read is a moment's failure.
 */
function lasting(part: { suffix: string; reason: string }): boolean {
  return LASTING.has(part.reason) || (part.reason === 'unreadable' && part.suffix.startsWith('!'));
}
/** The most parts one file may remember, and the longest text of one: past them it is scanned every time. */
const MAX_PARTS = 100;
const MAX_PART_TEXT = 1000;

/**
 * What the secret scan already found clean on this runner host, so that a
 * deploy scans only what is new: tree entries as (blob id, path) — the path
 * too, because gitleaks rules and allowlists can match on it — and commits.
 * A tree entry with no finding but parts it could not scan (a binary, an
 * archive entry gitleaks cannot open) is remembered with those parts, so that
 * it is reported the same way without being read again (those parts keep the
 * archive entry names and reasons the report shows; the file's path is hashed
 * like every other).
 * One file set per key: the gitleaks build (its {@link GitleaksIdentity}) and
 * the exact bytes of the settings in force, plus {@link SCAN_LOGIC_VERSION}.
 * Any change to them is another key, so nothing recorded under other rules
 * is ever trusted.
 *
 * Only clean results go in (no finding, nothing left unscanned), and only
 * after a complete, strict scan: a failed, cancelled or timed-out scan
 * records nothing. A cache that cannot be read is empty, never "all clean".
 */
export class ScanCache {
  private readonly entries: Set<string>;
  private readonly commits: Set<string>;
  private readonly unscanned: Map<string, UnscannedPart[]>;
  private readonly newEntries: string[] = [];
  private readonly newCommits: string[] = [];
  private newUnscanned = 0;

  private constructor(
    private readonly dir: string,
    private readonly key: string,
    loaded: { entries: Set<string>; commits: Set<string>; unscanned: Map<string, UnscannedPart[]> },
  ) {
    this.entries = loaded.entries;
    this.commits = loaded.commits;
    this.unscanned = loaded.unscanned;
  }

  /**
   * Opens the cache in `dir` for the gitleaks `identity` with `settings` (the
   * files the scan runs with). null when there is no usable cache directory,
   * or gitleaks could not be identified (`identity` is then that error): the
   * reason goes to `say`.
   */
  static open(dir: string | null | undefined, identity: Build | Error | null, settings: GitleaksSettings, say: (message: string) => void): ScanCache | null {
    if (!dir) return null;
    try {
      if (identity === null || identity instanceof Error) throw identity ?? new Error('gitleaks was not identified');
      if (!ownDirectory(dir, say)) return null;
      const hash = crypto.createHash('sha256');
      hash.update(`vm-sync-scan-cache ${SCAN_LOGIC_VERSION}\0${identity.digest}\0`);
      hash.update(fs.readFileSync(settings.configFile));
      hash.update('\0');
      const ignore = path.join(settings.ignoreDir, '.gitleaksignore');
      hash.update(fs.existsSync(ignore) ? fs.readFileSync(ignore) : Buffer.alloc(0));
      const key = hash.digest('hex').slice(0, 32);
      const loaded = {
        entries: readSet(path.join(dir, `${key}.entries`), ENTRY, say),
        commits: readSet(path.join(dir, `${key}.commits`), COMMIT, say),
        unscanned: readUnscanned(path.join(dir, `${key}.unscanned`), say),
      };
      return new ScanCache(dir, key, loaded);
    } catch (error) {
      say(`secret scan: the scan cache in ${dir} cannot be used (${getErrorMessage(error)}): everything is scanned`);
      return null;
    }
  }

  /**
   * Whether the file `rel` (latin1) with blob `blob` was scanned clean under
   * this key, with the same git attributes in force (`attributes`: a digest of
   * every attributes file, see gate.ts): attributes decide the bytes git
   * archive deploys (eol, working-tree-encoding, filters), not the blob alone.
   */
  hasEntry(blob: string, rel: string, attributes: string): boolean {
    return this.entries.has(entryLine(blob, rel, attributes));
  }

  /** What the file `rel` (latin1) with blob `blob` could not have scanned under this key, if it is remembered. */
  unscannedOf(blob: string, rel: string, attributes: string): readonly UnscannedPart[] | undefined {
    return this.unscanned.get(entryLine(blob, rel, attributes));
  }

  hasCommit(sha: string): boolean {
    return this.commits.has(sha);
  }

  /** Records clean results (kept in memory until {@link save}). */
  addEntries(entries: ReadonlyArray<{ blob: string; path: string }>, attributes: string): void {
    for (const e of entries) {
      const line = entryLine(e.blob, e.path, attributes);
      if (!this.entries.has(line)) {
        this.entries.add(line);
        this.newEntries.push(line);
      }
    }
  }

  /**
   * Remembers files with no finding whose only unscanned parts are lasting
   * ones (see {@link lasting}); any other is left out, and scanned again next time.
   */
  addUnscanned(files: ReadonlyArray<{ blob: string; path: string; parts: readonly UnscannedPart[] }>, attributes: string): void {
    for (const f of files) {
      const kept = f.parts.length > 0 && f.parts.length <= MAX_PARTS && f.parts.every((p) => lasting(p) && p.suffix.length + p.detail.length <= MAX_PART_TEXT);
      const line = entryLine(f.blob, f.path, attributes);
      if (!kept || this.unscanned.has(line)) continue;
      this.unscanned.set(line, f.parts.map((p) => ({ suffix: p.suffix, reason: p.reason, detail: p.detail })));
      this.newUnscanned++;
    }
  }

  addCommits(shas: readonly string[]): void {
    for (const sha of shas) {
      if (!this.commits.has(sha)) {
        this.commits.add(sha);
        this.newCommits.push(sha);
      }
    }
  }

  /** Writes what was added, atomically (another run's concurrent write may win: then this one's additions are lost, never torn). */
  save(): void {
    // Caches of other keys are never used again: dropped, but only by a scan that completed (a failed one
    // changes nothing here). The probe record is not one of them.
    for (const name of fs.readdirSync(this.dir)) if (!name.startsWith(this.key) && name !== PROBED) fs.rmSync(path.join(this.dir, name), { force: true, recursive: true });
    if (this.newEntries.length > 0) writeSet(path.join(this.dir, `${this.key}.entries`), this.entries);
    if (this.newCommits.length > 0) writeSet(path.join(this.dir, `${this.key}.commits`), this.commits);
    if (this.newUnscanned > 0) writeLines(path.join(this.dir, `${this.key}.unscanned`), [...this.unscanned].map(([entry, parts]) => JSON.stringify({ e: entry, u: parts.map((p) => [p.suffix, p.reason, p.detail]) })));
  }
}

/** A path enters the cache as a hash: the file stays small and holds no names. */
function entryLine(blob: string, rel: string, attributes: string): string {
  return `${blob} ${crypto.createHash('sha256').update(`${attributes}\0`).update(Buffer.from(rel, 'latin1')).digest('hex').slice(0, 32)}`;
}

/** A cache file larger than this is dropped unread (a string that size cannot be held). */
const MAX_FILE_BYTES = 256 * 1024 * 1024;

/** The file's text; null when it is absent. One too large is removed (said), and reads as absent. */
function readCacheFile(file: string, encoding: BufferEncoding, say: (message: string) => void): string | null {
  try {
    if (fs.statSync(file).size > MAX_FILE_BYTES) {
      say(`secret scan: the scan cache ${file} is too large: it is removed and what it held is scanned`);
      fs.rmSync(file, { force: true });
      return null;
    }
    return fs.readFileSync(file, encoding);
  } catch {
    return null;
  }
}

/** Whether `text` holds more than `max` lines, counted without splitting it (a file of nothing but newlines would not fit in memory split). */
function tooManyLines(text: string, max: number): boolean {
  let lines = 0;
  for (let at = text.indexOf('\n'); at >= 0; at = text.indexOf('\n', at + 1)) if (++lines > max) return true;
  return false;
}

function readSet(file: string, line: RegExp, say: (message: string) => void): Set<string> {
  const text = readCacheFile(file, 'latin1', say);
  if (text === null) return new Set();
  const lines = tooManyLines(text, MAX_ENTRIES) ? null : text.split('\n').filter(Boolean);
  if (lines === null || lines.length > MAX_ENTRIES || lines.some((l) => !line.test(l))) {
    say(`secret scan: the scan cache ${file} is damaged or too large: it is ignored and everything is scanned`);
    fs.rmSync(file, { force: true });
    return new Set();
  }
  return new Set(lines);
}

function writeSet(file: string, set: Set<string>): void {
  writeLines(file, [...set]);
}

function writeLines(file: string, lines: string[]): void {
  if (lines.length > MAX_ENTRIES || lines.reduce((n, l) => n + l.length + 1, 0) > MAX_FILE_BYTES) {
    fs.rmSync(file, { force: true });
    return;
  }
  const tmp = `${file}.${process.pid}.${crypto.randomBytes(4).toString('hex')}`;
  try {
    fs.writeFileSync(tmp, lines.map((l) => `${l}\n`).join(''), { mode: 0o600 });
    fs.renameSync(tmp, file);
  } finally {
    // Gone after a rename; left by a failed write or rename (a full disk): never kept.
    fs.rmSync(tmp, { force: true });
  }
}

/** The remembered unscanned files; any line that is not exactly what {@link ScanCache.save} writes voids the whole file. */
function readUnscanned(file: string, say: (message: string) => void): Map<string, UnscannedPart[]> {
  const text = readCacheFile(file, 'utf8', say);
  if (text === null) return new Map();
  const out = new Map<string, UnscannedPart[]>();
  const lines = tooManyLines(text, MAX_ENTRIES) ? null : text.split('\n').filter(Boolean);
  const valid =
    lines !== null &&
    lines.length <= MAX_ENTRIES &&
    lines.every((line) => {
      let parsed: unknown;
      try {
        parsed = JSON.parse(line);
      } catch {
        return false;
      }
      const { e, u } = (parsed ?? {}) as { e?: unknown; u?: unknown };
      if (typeof e !== 'string' || !ENTRY.test(e) || !Array.isArray(u) || u.length === 0 || u.length > MAX_PARTS) return false;
      const parts: UnscannedPart[] = [];
      for (const part of u) {
        if (!Array.isArray(part) || part.length !== 3 || !part.every((x) => typeof x === 'string')) return false;
        const [suffix, reason, detail] = part as [string, string, string];
        if (!lasting({ suffix, reason }) || (suffix !== '' && !suffix.startsWith('!')) || suffix.length + detail.length > MAX_PART_TEXT) return false;
        parts.push({ suffix, reason: reason as UnscannedPart['reason'], detail });
      }
      out.set(e, parts);
      return true;
    });
  if (!valid) {
    say(`secret scan: the scan cache ${file} is damaged or too large: it is ignored and those files are scanned`);
    fs.rmSync(file, { force: true });
    return new Map();
  }
  return out;
}

/**
 * The cache directory's file naming the gitleaks builds that passed the log
 * probe. Its number is the probe's version: a vm-sync whose probe checks more
 * uses another name, so that builds proven by an older probe are proven again.
 */
const PROBED = 'probed-1';
/** How many builds it remembers (the newest). */
const MAX_PROBED = 8;
/** Larger than what MAX_PROBED digests take: not a record vm-sync wrote. */
const MAX_PROBED_BYTES = 4096;
const DIGEST = /^[0-9a-f]{64}$/;

/**
 * `dir` exists (made 0700 if not) and is a directory of this user that no
 * other user can write to (so every file in it is this user's); said when not.
 */
function ownDirectory(dir: string, say: (message: string) => void): boolean {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const stat = fs.lstatSync(dir);
  if (!stat.isDirectory() || stat.uid !== process.getuid?.()) {
    say(`secret scan: ${dir} is not a directory of this user: no scan cache (everything is scanned)`);
    return false;
  }
  if ((stat.mode & 0o022) !== 0) {
    say(`secret scan: ${dir} can be written by other users: no scan cache (everything is scanned); chmod go-w ${dir}`);
    return false;
  }
  return true;
}

/**
 * The gitleaks builds (by the digest of their executable) that passed the
 * probe vm-sync runs before it trusts a build's logs (`checkGitleaksLogs`),
 * kept with the scan cache so that each run does not start gitleaks once
 * more to prove it again: the probe's answer is a property of the bytes.
 * Only exact identities (an executable, not a wrapper) are recorded.
 */
export class ProbeRecord {
  private constructor(
    private readonly file: string,
    private readonly digests: string[],
  ) {}

  /** The record in the cache directory `dir`; null when there is none to use (no directory, or not this user's). */
  static open(dir: string | null | undefined, say: (message: string) => void): ProbeRecord | null {
    if (!dir) return null;
    try {
      if (!ownDirectory(dir, say)) return null;
      const file = path.join(dir, PROBED);
      const size = fs.lstatSync(file, { throwIfNoEntry: false })?.size ?? 0;
      const text = size <= MAX_PROBED_BYTES ? (readCacheFile(file, 'latin1', say) ?? '') : '';
      const lines = text.split('\n').filter(Boolean);
      // Anything but what add() writes is dropped whole: the probe then runs again.
      return new ProbeRecord(file, lines.length <= MAX_PROBED && lines.every((l) => DIGEST.test(l)) ? lines : []);
    } catch {
      return null;
    }
  }

  has(identity: Build): boolean {
    return identity.exact && this.digests.includes(identity.digest);
  }

  /** Records that `identity` passed; best effort (a record that cannot be written only means the next run probes again). */
  add(identity: Build): void {
    if (!identity.exact || this.digests.includes(identity.digest)) return;
    this.digests.push(identity.digest);
    try {
      writeLines(this.file, this.digests.slice(-MAX_PROBED));
    } catch {
      // best effort, see above
    }
  }
}
