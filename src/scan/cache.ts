import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { getErrorMessage } from '../errors.js';
import type { GitleaksSettings } from './gitleaks.js';

/**
 * Bumped whenever vm-sync's own scan logic changes what a clean result
 * means (coverage rules, rescans): every cache made before is then unused.
 */
export const SCAN_LOGIC_VERSION = '1';

/** The most entries a cache keeps; past it the cache starts again (it is only a cache). */
const MAX_ENTRIES = 1_000_000;
const ENTRY = /^[0-9a-f]{40,64} [0-9a-f]{32}$/;
const COMMIT = /^[0-9a-f]{40,64}$/;

/**
 * What the secret scan already found clean on this runner host, so that a
 * deploy scans only what is new: tree entries as (blob id, path) — the path
 * too, because gitleaks rules and allowlists can match on it — and commits.
 * One file pair per key: the gitleaks version and the exact bytes of the
 * settings in force, plus {@link SCAN_LOGIC_VERSION}. Any change to them is
 * another key, so nothing recorded under other rules is ever trusted.
 *
 * Only clean results go in (no finding, nothing left unscanned), and only
 * after a complete, strict scan: a failed, cancelled or timed-out scan
 * records nothing. A cache that cannot be read is empty, never "all clean".
 */
export class ScanCache {
  private readonly entries: Set<string>;
  private readonly commits: Set<string>;
  private readonly newEntries: string[] = [];
  private readonly newCommits: string[] = [];

  private constructor(
    private readonly dir: string,
    private readonly key: string,
    loaded: { entries: Set<string>; commits: Set<string> },
  ) {
    this.entries = loaded.entries;
    this.commits = loaded.commits;
  }

  /**
   * Opens the cache in `dir` for `binary` with `settings` (the files the
   * scan runs with). null when there is no usable cache directory: the
   * reason goes to `say`.
   */
  static async open(dir: string | null | undefined, binary: string, settings: GitleaksSettings, say: (message: string) => void): Promise<ScanCache | null> {
    if (!dir) return null;
    try {
      fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
      const stat = fs.lstatSync(dir);
      if (!stat.isDirectory() || stat.uid !== process.getuid?.()) {
        say(`secret scan: ${dir} is not a directory of this user: no scan cache (everything is scanned)`);
        return null;
      }
      const version = await gitleaksVersion(binary);
      const hash = crypto.createHash('sha256');
      hash.update(`vm-sync-scan-cache ${SCAN_LOGIC_VERSION}\0${version}\0`);
      hash.update(fs.readFileSync(settings.configFile));
      hash.update('\0');
      const ignore = path.join(settings.ignoreDir, '.gitleaksignore');
      hash.update(fs.existsSync(ignore) ? fs.readFileSync(ignore) : Buffer.alloc(0));
      const key = hash.digest('hex').slice(0, 32);
      // Caches of other keys are never used again: drop them.
      for (const name of fs.readdirSync(dir)) if (!name.startsWith(key)) fs.rmSync(path.join(dir, name), { force: true, recursive: true });
      const loaded = { entries: readSet(path.join(dir, `${key}.entries`), ENTRY, say), commits: readSet(path.join(dir, `${key}.commits`), COMMIT, say) };
      return new ScanCache(dir, key, loaded);
    } catch (error) {
      say(`secret scan: the scan cache in ${dir} cannot be used (${getErrorMessage(error)}): everything is scanned`);
      return null;
    }
  }

  /** Whether the file `rel` (latin1) with blob `blob` was scanned clean under this key. */
  hasEntry(blob: string, rel: string): boolean {
    return this.entries.has(entryLine(blob, rel));
  }

  hasCommit(sha: string): boolean {
    return this.commits.has(sha);
  }

  /** Records clean results (kept in memory until {@link save}). */
  addEntries(entries: ReadonlyArray<{ blob: string; path: string }>): void {
    for (const e of entries) {
      const line = entryLine(e.blob, e.path);
      if (!this.entries.has(line)) {
        this.entries.add(line);
        this.newEntries.push(line);
      }
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
    if (this.newEntries.length > 0) writeSet(path.join(this.dir, `${this.key}.entries`), this.entries);
    if (this.newCommits.length > 0) writeSet(path.join(this.dir, `${this.key}.commits`), this.commits);
  }
}

/** A path enters the cache as a hash: the file stays small and holds no names. */
function entryLine(blob: string, rel: string): string {
  return `${blob} ${crypto.createHash('sha256').update(Buffer.from(rel, 'latin1')).digest('hex').slice(0, 32)}`;
}

function readSet(file: string, line: RegExp, say: (message: string) => void): Set<string> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'latin1');
  } catch {
    return new Set();
  }
  const lines = text.split('\n').filter(Boolean);
  if (lines.length > MAX_ENTRIES || lines.some((l) => !line.test(l))) {
    say(`secret scan: the scan cache ${file} is damaged or too large: it is ignored and everything is scanned`);
    fs.rmSync(file, { force: true });
    return new Set();
  }
  return new Set(lines);
}

function writeSet(file: string, set: Set<string>): void {
  if (set.size > MAX_ENTRIES) {
    fs.rmSync(file, { force: true });
    return;
  }
  const tmp = `${file}.${process.pid}.${crypto.randomBytes(4).toString('hex')}`;
  fs.writeFileSync(tmp, [...set].map((l) => `${l}\n`).join(''), { mode: 0o600 });
  fs.renameSync(tmp, file);
}

/** `gitleaks version`: part of the cache key (asked each time: a binary replaced between runs is another key). */
function gitleaksVersion(binary: string): Promise<string> {
  return new Promise<string>((resolve, reject) =>
    execFile(binary, ['version'], { timeout: 30_000 }, (error, stdout) => (error ? reject(new Error(`gitleaks version failed: ${getErrorMessage(error)}`)) : resolve(stdout.trim()))),
  );
}
