import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { getErrorMessage, VmSyncError } from '../errors.js';
import { mergeDiffOption } from '../git/merge-diffs.js';
import { run } from '../local/run.js';
import { makeScratchDir } from '../local/scratch.js';
import type { ProbeRecord } from './cache.js';
import { sanitizeFindings, type Finding } from './findings.js';
import { unchangedSince, type GitleaksIdentity } from './identity.js';

/** Why gitleaks left something out, as its debug log says. */
export type SkipKind = 'allowlist-dir' | 'allowlist-file' | 'binary' | 'archive-depth' | 'archive-unknown' | 'too-large' | 'unreadable';

/** One thing gitleaks did not scan: `path` is relative to the scan root (`a.zip!inner/x` inside archives). */
export interface GitleaksSkip {
  kind: SkipKind;
  path: string;
  /** The MIME type of a binary file, or gitleaks' own words for the other kinds. */
  detail: string;
}

/** What one gitleaks run found (already sanitised) and what its log says about coverage. */
export interface GitleaksResult {
  findings: Finding[];
  /** gitleaks' own "N commits scanned" (git mode), to check against our count. */
  commitsScanned: number | null;
  skips: GitleaksSkip[];
  /** Fingerprints gitleaks dropped because some ignore file listed them (the caller decides whether that was allowed). */
  suppressed: string[];
  /** Config files gitleaks pulled in through `[extend] path` (its built-in defaults are not listed). */
  extended: string[];
}

/** What to scan: commits of a repository (a rev-list selection), or a directory tree. */
export type GitleaksTarget = { mode: 'git'; gitDir: string; selection: string[] } | { mode: 'dir'; root: string };

/**
 * The scan's settings, always explicit files in a private directory: with no
 * `--config`, gitleaks would read `.gitleaks.toml` from the tree under scan.
 */
export interface GitleaksSettings {
  configFile: string;
  /** A directory whose `.gitleaksignore` (if any) applies. */
  ignoreDir: string;
}

/** The time budget shared by every gitleaks run of one scan. */
export interface ScanLimits {
  /** Epoch ms by which the whole scan must be done. */
  deadline: number;
  /** The configured limit, for messages. */
  timeoutS: number;
  signal?: AbortSignal;
  /** Called every {@link HEARTBEAT_S} seconds while one gitleaks run lasts (progress on long scans). */
  onLongRun?: (seconds: number) => void;
}

/** A signal that fires when the scan ends without passing: its deadline, or the caller's cancel. */
export function scanEnds(limits: ScanLimits): AbortSignal {
  const timer = AbortSignal.timeout(Math.max(1, limits.deadline - Date.now()));
  return limits.signal ? AbortSignal.any([limits.signal, timer]) : timer;
}

/** How often a long gitleaks run says it is still going. */
export const HEARTBEAT_S = 10;

/** How deep gitleaks opens archives inside archives; deeper ones are reported as not scanned. */
export const MAX_ARCHIVE_DEPTH = 6;

/**
 * Finds the gitleaks binary: an explicit path (config or action input), then
 * `$VM_SYNC_GITLEAKS`, then `PATH`. A missing binary is an error, never a
 * skipped scan.
 */
export function locateGitleaks(explicit: string | null | undefined): string {
  const candidates = explicit ? [explicit] : process.env.VM_SYNC_GITLEAKS ? [process.env.VM_SYNC_GITLEAKS] : (process.env.PATH ?? '').split(path.delimiter).filter(Boolean).map((d) => path.join(d, 'gitleaks'));
  for (const candidate of candidates) {
    try {
      fs.accessSync(candidate, fs.constants.X_OK);
      if (fs.statSync(candidate).isFile()) return candidate;
    } catch {
      // next
    }
  }
  throw new VmSyncError(
    'gitleaks_missing',
    explicit
      ? `gitleaks not found or not executable at ${explicit}: fix secret_scanning.gitleaks_path.`
      : 'gitleaks is not on PATH: install it (https://github.com/gitleaks/gitleaks, v8.30.x), set secret_scanning.gitleaks_path, or disable repository.secret_scanning (not recommended).',
  );
}

// ANSI colours gitleaks may still emit, and anything token-shaped: gitleaks'
// own error lines are shown to the user only after both are removed, so that
// no secret can reach a log even if an error message quoted one.
// eslint-disable-next-line no-control-regex
const ANSI = /\u001b\[[0-9;]*m/g;
const TOKENISH = /[A-Za-z0-9+/=_-]{20,}/g;

/** A gitleaks log line made safe to print. */
export function scrubLogLine(line: string): string {
  return line.replace(ANSI, '').replace(TOKENISH, '[scrubbed]').slice(0, 300);
}

/**
 * Undoes Go's `strconv.Quote`, which gitleaks' logger applies to field values
 * holding spaces, quotes, backslashes or non-ASCII bytes. Works on bytes, so
 * a quoted non-UTF-8 name decodes the way Node decodes directory entries.
 */
export function goUnquote(value: string): string {
  if (!(value.length >= 2 && value.startsWith('"') && value.endsWith('"'))) return value;
  const body = value.slice(1, -1);
  const bytes: number[] = [];
  const simple: Record<string, number> = { a: 7, b: 8, f: 12, n: 10, r: 13, t: 9, v: 11, '\\': 92, '"': 34, "'": 39 };
  for (let i = 0; i < body.length; ) {
    const c = body[i];
    if (c !== '\\') {
      const cp = body.codePointAt(i) ?? 0;
      bytes.push(...Buffer.from(String.fromCodePoint(cp), 'utf8'));
      i += cp > 0xffff ? 2 : 1;
      continue;
    }
    const e = body[i + 1];
    if (e in simple) {
      bytes.push(simple[e]);
      i += 2;
    } else if (e === 'x') {
      bytes.push(parseInt(body.slice(i + 2, i + 4), 16));
      i += 4;
    } else if (e === 'u' || e === 'U') {
      const n = e === 'u' ? 4 : 8;
      bytes.push(...Buffer.from(String.fromCodePoint(parseInt(body.slice(i + 2, i + 2 + n), 16)), 'utf8'));
      i += 2 + n;
    } else if (/[0-7]/.test(e ?? '')) {
      bytes.push(parseInt(body.slice(i + 1, i + 4), 8) & 0xff);
      i += 4;
    } else {
      bytes.push(92);
      i += 1;
    }
  }
  return Buffer.from(bytes).toString('utf8');
}

/** One parsed gitleaks log line: level, message and the value of one field. */
interface LogLine {
  level: string;
  message: string;
  field(name: string): string | null;
}

// "4:06AM DBG message key=value key="quoted value"" (zerolog's console format;
// fields are sorted by name and values quoted with Go's strconv.Quote).
const LOG_LINE = /^\S+ (TRC|DBG|INF|WRN|ERR|FTL) (.*)$/;

function parseLogLine(raw: string): LogLine | null {
  const match = LOG_LINE.exec(raw.replace(ANSI, ''));
  if (!match) return null;
  const rest = match[2];
  return {
    level: match[1],
    message: rest,
    field(name: string): string | null {
      const value = new RegExp(`(?:^| )${name}=("(?:[^"\\\\]|\\\\.)*"|[^\\s"]+)(?= |$)`).exec(rest);
      return value ? goUnquote(value[1]) : null;
    },
  };
}

/**
 * What a line of gitleaks' debug log says about coverage, or null. Only lines
 * that start with gitleaks' own time and level are read: decoded content
 * (which gitleaks logs at debug level, quoted) cannot start a line.
 */
export function readSkip(raw: string): GitleaksSkip | null {
  const line = parseLogLine(raw);
  if (!line) return null;
  const at = line.field('path');
  if (at === null) return null;
  // gitleaks opens files as archives by name (a text file named `fetch.br-x` is taken for brotli) and logs
  // a file it then cannot decode as an error: that file is not scanned, which the caller reports or rescans.
  const error = line.field('error');
  if (line.level === 'ERR' && line.message.startsWith('error=') && error?.startsWith('could not read file: ')) {
    return { kind: 'unreadable', path: at, detail: `gitleaks could not open it (${scrubLogLine(error.slice('could not read file: '.length)).slice(0, 80)})` };
  }
  if (line.level !== 'DBG' && line.level !== 'WRN') return null;
  const m = line.message;
  if (m.startsWith('skipping directory: global allowlist')) return { kind: 'allowlist-dir', path: at, detail: 'path allowlist' };
  if (m.startsWith('skipping file: global allowlist')) return { kind: 'allowlist-file', path: at, detail: 'path allowlist' };
  if (m.startsWith('skipping binary file')) return { kind: 'binary', path: at, detail: line.field('mime_type') ?? 'unknown type' };
  if (m.startsWith('skipping archive: exceeds max archive depth')) return { kind: 'archive-depth', path: at, detail: `nested deeper than ${MAX_ARCHIVE_DEPTH} archives` };
  if (m.startsWith('skipping unknown archive type')) return { kind: 'archive-unknown', path: at, detail: 'an archive type gitleaks cannot open' };
  if (m.startsWith('skipping file: too large')) return { kind: 'too-large', path: at, detail: 'larger than gitleaks accepts' };
  if (m.startsWith('skipping file: permission denied') || m.startsWith('skipping directory')) return { kind: 'unreadable', path: at, detail: 'permission denied' };
  return null;
}

/** The fingerprint of a finding gitleaks dropped because an ignore file listed it, or null. */
export function readSuppressed(raw: string): string | null {
  const line = parseLogLine(raw);
  if (!line || line.level !== 'DBG' || !line.message.startsWith('skipping finding: ')) return null;
  if (!/^skipping finding: (global )?fingerprint/.test(line.message)) return null;
  return line.field('fingerprint');
}

/** Splits streamed output into whole lines. */
function lineReader(onLine: (line: string) => void): { push(chunk: string): void; end(): void } {
  let carry = '';
  return {
    push(chunk: string): void {
      const parts = (carry + chunk).split('\n');
      carry = parts.pop() ?? '';
      // A line longer than any gitleaks writes for coverage is decoded content: drop it.
      if (carry.length > 1 << 20) carry = '';
      for (const part of parts) onLine(part);
    },
    end(): void {
      if (carry) onLine(carry);
      carry = '';
    },
  };
}

/** Thrown when a scan ran out of `secret_scanning.timeout_s`. */
export function scanTimeout(limits: ScanLimits, what: string): VmSyncError {
  return new VmSyncError(
    'scan_timeout',
    `the secret scan did not finish within repository.secret_scanning.timeout_s (${limits.timeoutS} s) while ${what}; a scan that did not finish is not a pass, so nothing is deployed. Raise timeout_s, or make the large files in the deployed tree smaller (gitleaks is slowest on long single-line files).`,
  );
}

/**
 * Runs gitleaks with every setting that keeps secrets out of logs: `--redact`,
 * no `-v`, the JSON report to a file in a private directory that is deleted
 * afterwards. `--exit-code 2` tells "leaks found" (2) from "gitleaks failed".
 *
 * The log runs at debug level because that is where gitleaks says what it
 * skipped. That log also holds decoded content (base64 segments, quoted), so
 * it is only parsed line by line for known messages and never printed; only
 * error lines are shown, scrubbed.
 *
 * Nothing the scanned tree holds may steer the run: the config and the
 * ignore directory are always given explicitly, `gitleaks:allow` comments are
 * ignored, git mode reads the git directory (a working tree's
 * `.gitleaksignore` would be loaded automatically), and dir mode runs inside
 * `target.root` with the path `.`, so fingerprints are relative paths.
 *
 * Time: gitleaks' own `--timeout` stops the scan but then reports the part it
 * scanned as a normal result, so a run is killed at the deadline and any run
 * that reaches it is a {@link scanTimeout}, whatever gitleaks said.
 */
export async function runGitleaks(binary: string, target: GitleaksTarget, settings: GitleaksSettings, limits: ScanLimits): Promise<GitleaksResult> {
  const privateDir = makeScratchDir('gitleaks');
  const report = path.join(privateDir, 'report.json');
  const what = target.mode === 'git' ? 'gitleaks scanned the commits' : 'gitleaks scanned the deployed tree';
  try {
    const remainingMs = limits.deadline - Date.now();
    if (remainingMs <= 0) throw scanTimeout(limits, what);
    const args = [
      target.mode,
      ...(target.mode === 'git' ? ['--log-opts', [await mergeDiffOption(), ...target.selection].join(' ')] : ['--max-archive-depth', String(MAX_ARCHIVE_DEPTH)]),
      '--redact',
      '--exit-code', '2',
      '--report-format', 'json',
      '--report-path', report,
      '--no-banner',
      '--no-color',
      '--log-level', 'debug',
      '--ignore-gitleaks-allow',
      '--timeout', String(Math.ceil(remainingMs / 1000) + 5),
      '--gitleaks-ignore-path', settings.ignoreDir,
      '--config', settings.configFile,
      target.mode === 'git' ? target.gitDir : '.',
    ];
    // The operator's environment must not swap in another config behind the scan's back.
    const env = { ...process.env };
    delete env.GITLEAKS_CONFIG;
    delete env.GITLEAKS_CONFIG_TOML;

    const skips: GitleaksSkip[] = [];
    const suppressed: string[] = [];
    const extended: string[] = [];
    const errors: string[] = [];
    let commitsScanned: number | null = null;
    const onLine = (raw: string): void => {
      const clean = raw.replace(ANSI, '');
      const skip = readSkip(clean);
      if (skip) return void skips.push(skip);
      const fingerprint = readSuppressed(clean);
      if (fingerprint !== null) return void suppressed.push(fingerprint);
      const line = parseLogLine(clean);
      if (line?.level === 'DBG' && line.message.startsWith('extending config with ') && line.message !== 'extending config with default config') {
        extended.push(line.message.slice('extending config with '.length));
      } else if (line?.level === 'INF' && /^\d+ commits scanned/.test(line.message)) {
        commitsScanned = Number(/^\d+/.exec(line.message)?.[0]);
      } else if ((line && (line.level === 'ERR' || line.level === 'FTL')) || (!line && /^(?:ERR|FTL)\b|^panic:/.test(clean))) {
        if (errors.length < 3) errors.push(scrubLogLine(clean));
      }
    };
    const stderr = lineReader(onLine);
    const stdout = lineReader(onLine);
    const signal = scanEnds(limits);
    const started = Date.now();
    const heartbeat = limits.onLongRun ? setInterval(() => limits.onLongRun?.(Math.round((Date.now() - started) / 1000)), HEARTBEAT_S * 1000) : null;
    let result;
    try {
      result = await run(binary, args, {
        cwd: target.mode === 'git' ? privateDir : target.root,
        env,
        signal,
        maxOutput: 4096,
        onStderr: (chunk) => stderr.push(chunk),
        onStdout: (chunk) => stdout.push(chunk),
      });
    } catch (error) {
      throw new VmSyncError('gitleaks_missing', `cannot run gitleaks at ${binary}: ${getErrorMessage(error)}`);
    } finally {
      if (heartbeat) clearInterval(heartbeat);
    }
    stderr.end();
    stdout.end();
    if (!limits.signal?.aborted && (signal.aborted || Date.now() - started >= remainingMs)) throw scanTimeout(limits, what);
    if ((result.code !== 0 && result.code !== 2) || errors.length > 0) {
      const detail = errors.join(' | ') || `exit ${result.code ?? result.signal}`;
      throw new VmSyncError('scan_failed', `gitleaks ${target.mode} scan failed (exit ${result.code ?? result.signal}): ${detail}. The deploy is blocked until a scan succeeds.`);
    }
    let raw: unknown = [];
    try {
      raw = JSON.parse(fs.readFileSync(report, 'utf8'));
    } catch {
      throw new VmSyncError('scan_failed', `gitleaks exited ${result.code} but wrote no readable report: the deploy is blocked until a scan succeeds.`);
    }
    const findings = sanitizeFindings(raw, target.mode === 'git' ? 'commits' : 'tree');
    if (result.code === 0 && findings.length > 0) throw new VmSyncError('scan_failed', 'gitleaks reported findings but exited 0: refusing to trust this scan.');
    if (result.code === 2 && findings.length === 0) throw new VmSyncError('scan_failed', 'gitleaks reported leaks but its report lists none: refusing to trust this scan.');
    return { findings, commitsScanned, skips, suppressed, extended };
  } finally {
    fs.rmSync(privateDir, { recursive: true, force: true });
  }
}

const verified = new Map<string, Promise<void>>();

/**
 * Proves, once per gitleaks build, that it logs the messages vm-sync relies
 * on to find what it skipped (a path allowlist, a binary, an ignored
 * fingerprint). A build that words them differently would otherwise make
 * skipped files look scanned; this fails closed instead.
 *
 * Once per process for any build; once per runner host for an exact
 * `identity` (an executable, by its digest) when a `record` is given: a
 * release build pays about 0.3 s of start-up for each gitleaks run.
 */
export function checkGitleaksLogs(binary: string, limits: ScanLimits, identity?: GitleaksIdentity | null, record?: ProbeRecord | null): Promise<void> {
  if (identity && record?.has(identity)) return Promise.resolve();
  const key = identity ? `${binary}\0${identity.digest}` : binary;
  let check = verified.get(key);
  if (!check) {
    check = probeLogs(binary, limits).then(() => {
      // Only the bytes that were identified, if they are still what ran.
      if (identity && unchangedSince(binary, identity)) record?.add(identity);
    });
    verified.set(key, check);
    check.catch(() => verified.delete(key));
  }
  return check;
}

async function probeLogs(binary: string, limits: ScanLimits): Promise<void> {
  const dir = makeScratchDir('gitleaksprobe');
  try {
    const alnum = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
    // A random token in GitHub's format, generated here and never printed.
    const token = `ghp_${Array.from(crypto.randomBytes(36), (b) => alnum[b % alnum.length]).join('')}`;
    const root = path.join(dir, 'tree');
    fs.mkdirSync(path.join(root, 'node_modules', 'p'), { recursive: true });
    fs.writeFileSync(path.join(root, 'node_modules', 'p', 'i.js'), `t=${token}\n`);
    fs.writeFileSync(path.join(root, 'a b.png'), `t=${token}\n`);
    fs.writeFileSync(path.join(root, 'z.dat'), zlib.gzipSync(`t=${token}\n`));
    fs.writeFileSync(path.join(root, 'ignored.txt'), `t=${token}\n`);
    fs.writeFileSync(path.join(root, '.gitleaksignore'), 'ignored.txt:github-pat:1\n');
    fs.writeFileSync(path.join(dir, 'config.toml'), '[extend]\nuseDefault = true\n');
    const result = await runGitleaks(binary, { mode: 'dir', root }, { configFile: path.join(dir, 'config.toml'), ignoreDir: dir }, limits);
    const has = (kind: SkipKind, at: string): boolean => result.skips.some((s) => s.kind === kind && s.path === at);
    const ok = has('allowlist-dir', 'node_modules') && has('allowlist-file', 'a b.png') && has('binary', 'z.dat') && result.suppressed.includes('ignored.txt:github-pat:1');
    if (!ok) {
      throw new VmSyncError(
        'scan_failed',
        `gitleaks at ${binary} does not log what it skips the way vm-sync reads it (gitleaks 8.30.x does), so vm-sync cannot prove the whole deployed tree was scanned: use gitleaks 8.30.x.`,
      );
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
