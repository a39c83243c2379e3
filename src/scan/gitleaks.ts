import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { getErrorMessage, VmSyncError } from '../errors.js';
import { run } from '../local/run.js';
import { sanitizeFindings, type Finding } from './findings.js';

/** What one gitleaks run found (already sanitised). */
export interface GitleaksResult {
  findings: Finding[];
  /** gitleaks' own "N commits scanned" (git mode), to check against our count. */
  commitsScanned: number | null;
}

/** What to scan: commits of a repository (a rev-list selection), or a directory tree. */
export type GitleaksTarget = { mode: 'git'; root: string; selection: string[] } | { mode: 'dir'; root: string };

/**
 * Where the scan's settings come from: the `.gitleaksignore` directory and the
 * config file, both taken from the commit being deployed (its export), never
 * from whatever the working tree happens to hold.
 */
export interface GitleaksSettings {
  ignoreDir: string;
  configFile: string | null;
}

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
 * Runs gitleaks with every setting that keeps secrets out of logs: `--redact`,
 * no `-v`, log level info (trace would print candidates), the JSON report to a
 * file in a private directory that is deleted afterwards. `--exit-code 2` tells
 * "leaks found" (2) from "gitleaks failed" (anything but 0 and 2).
 *
 * gitleaks runs inside `target.root` with the path `.`, so its fingerprints
 * are relative paths (what `.gitleaksignore` entries use).
 */
export async function runGitleaks(binary: string, target: GitleaksTarget, settings: GitleaksSettings, signal?: AbortSignal): Promise<GitleaksResult> {
  const privateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-gitleaks-'));
  const report = path.join(privateDir, 'report.json');
  try {
    const args = [
      target.mode,
      ...(target.mode === 'git' ? ['--log-opts', ['-m', ...target.selection].join(' ')] : []),
      '--redact',
      '--exit-code', '2',
      '--report-format', 'json',
      '--report-path', report,
      '--no-banner',
      '--no-color',
      '--log-level', 'info',
      '--gitleaks-ignore-path', settings.ignoreDir,
      ...(settings.configFile ? ['--config', settings.configFile] : []),
      '.',
    ];
    // The operator's environment must not swap in another config behind the repository's back.
    const env = { ...process.env };
    delete env.GITLEAKS_CONFIG;
    delete env.GITLEAKS_CONFIG_TOML;
    let result;
    try {
      result = await run(binary, args, { cwd: target.root, env, signal, maxOutput: 64 * 1024 });
    } catch (error) {
      throw new VmSyncError('gitleaks_missing', `cannot run gitleaks at ${binary}: ${getErrorMessage(error)}`);
    }
    const log = result.stderr.replace(ANSI, '') + result.stdout.replace(ANSI, '');
    const errors = log.split('\n').filter((l) => /\b(ERR|FTL)\b|panic:/.test(l));
    if ((result.code !== 0 && result.code !== 2) || errors.length > 0) {
      const detail = errors.slice(0, 3).map(scrubLogLine).join(' | ') || `exit ${result.code ?? result.signal}`;
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
    const scanned = /(\d+) commits scanned/.exec(log);
    return { findings, commitsScanned: scanned ? Number(scanned[1]) : null };
  } finally {
    fs.rmSync(privateDir, { recursive: true, force: true });
  }
}
