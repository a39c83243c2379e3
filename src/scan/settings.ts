import fs from 'node:fs';
import path from 'node:path';
import { VmSyncError } from '../errors.js';
import { run, type RunResult } from '../local/run.js';
import type { Finding } from './findings.js';
import type { GitleaksSettings } from './gitleaks.js';

/** The file gitleaks reads per-finding exemptions from. */
export const IGNORE_FILE = '.gitleaksignore';

// gitleaks' built-in rules with its built-in allowlists: what it uses when a
// repository has no config of its own.
const DEFAULT_CONFIG = '[extend]\nuseDefault = true\n';

// Scan settings are small text files; anything bigger is not one.
const MAX_SETTINGS_BYTES = 1024 * 1024;

/** One scan settings file as a commit holds it. */
export interface SettingsFile {
  /** Its path in the repository. */
  path: string;
  /** Its blob id: two commits hold the same file when these are equal. */
  oid: string;
  text: string;
}

/** The gitleaks config and `.gitleaksignore` one commit holds (null: absent). */
export interface CommitSettings {
  /** null: no commit (gitleaks' defaults, nothing ignored). */
  commit: string | null;
  config: SettingsFile | null;
  ignore: SettingsFile | null;
}

/** How a change treats one settings file. */
export interface SettingsChange {
  path: string;
  change: 'added' | 'modified' | 'deleted';
}

function git(repoDir: string, args: string[]): Promise<RunResult> {
  return run('git', ['--literal-pathspecs', ...args], {
    cwd: repoDir,
    env: { ...process.env, GIT_TERMINAL_PROMPT: '0', LC_ALL: 'C' },
    maxOutput: 2 * MAX_SETTINGS_BYTES,
  });
}

/** A file of a commit read from git's object store (never from a working tree), or null when the commit has none. */
async function fileAt(repoDir: string, commit: string, file: string): Promise<SettingsFile | null> {
  const listed = await git(repoDir, ['ls-tree', '-l', '-z', commit, '--', file]);
  if (listed.code !== 0) throw new VmSyncError('git_failed', `git ls-tree ${commit.slice(0, 12)} -- ${file} failed in ${repoDir}: ${listed.stderr.trim().split('\n').pop()}`);
  const entry = listed.stdout.split('\0').find((e) => e.endsWith(`\t${file}`));
  if (!entry) return null;
  const [mode, type, oid, size] = entry.split('\t')[0].split(/\s+/);
  if (type !== 'blob' || (mode !== '100644' && mode !== '100755')) {
    throw new VmSyncError('config_invalid', `${file} in commit ${commit.slice(0, 12)} is not a regular file (git mode ${mode}): the secret scan reads its settings only from regular files.`);
  }
  if (Number(size) > MAX_SETTINGS_BYTES) {
    throw new VmSyncError('config_invalid', `${file} in commit ${commit.slice(0, 12)} is ${size} bytes: scan settings larger than 1 MiB are refused.`);
  }
  const blob = await git(repoDir, ['cat-file', 'blob', oid]);
  if (blob.code !== 0 || Buffer.byteLength(blob.stdout) !== Number(size)) {
    throw new VmSyncError('git_failed', `cannot read ${file} of commit ${commit.slice(0, 12)} from ${repoDir}.`);
  }
  return { path: file, oid, text: blob.stdout };
}

/** The scan settings of `commit` (null: none, gitleaks' defaults). */
export async function settingsAt(repoDir: string, commit: string | null, configPath: string): Promise<CommitSettings> {
  if (commit === null) return { commit: null, config: null, ignore: null };
  return { commit, config: await fileAt(repoDir, commit, configPath), ignore: await fileAt(repoDir, commit, IGNORE_FILE) };
}

/**
 * Writes settings into `dir` (private to this scan) and returns them in the
 * form gitleaks takes. A commit without a config gets gitleaks' defaults,
 * written out, because without `--config` gitleaks would read the
 * `.gitleaks.toml` of the tree it scans.
 */
export function writeSettings(dir: string, settings: CommitSettings): GitleaksSettings {
  const ignoreDir = path.join(dir, 'ignore');
  fs.mkdirSync(ignoreDir, { recursive: true, mode: 0o700 });
  const configFile = path.join(dir, 'gitleaks.toml');
  fs.writeFileSync(configFile, settings.config?.text ?? DEFAULT_CONFIG, { mode: 0o600 });
  if (settings.ignore) fs.writeFileSync(path.join(ignoreDir, IGNORE_FILE), settings.ignore.text, { mode: 0o600 });
  return { configFile, ignoreDir };
}

/**
 * The entries of a `.gitleaksignore`, normalised as gitleaks does: comments
 * and blank lines dropped, backslashes in the file part made slashes.
 */
export function parseIgnore(text: string | undefined): Set<string> {
  const entries = new Set<string>();
  for (const raw of (text ?? '').split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const parts = line.split(':');
    if (parts.length === 3) parts[0] = parts[0].replace(/\\/g, '/');
    else if (parts.length === 4) parts[1] = parts[1].replace(/\\/g, '/');
    entries.add(parts.join(':'));
  }
  return entries;
}

/** A fingerprint without its commit: `file:rule:line`. */
export function globalFingerprint(fingerprint: string): string {
  return fingerprint.replace(/^[0-9a-f]{40}:/, '');
}

/** Whether an ignore list exempts a finding, by its fingerprint or its commit-less form (gitleaks' rule). */
export function isIgnored(entries: ReadonlySet<string>, finding: Pick<Finding, 'fingerprint'>): boolean {
  return entries.has(finding.fingerprint) || entries.has(globalFingerprint(finding.fingerprint));
}

/** The settings files that differ between the trusted commit and the commit being deployed. */
export function settingsChanges(trusted: CommitSettings, head: CommitSettings): SettingsChange[] {
  const changes: SettingsChange[] = [];
  for (const key of ['config', 'ignore'] as const) {
    const before = trusted[key];
    const after = head[key];
    if (!before && after) changes.push({ path: after.path, change: 'added' });
    else if (before && !after) changes.push({ path: before.path, change: 'deleted' });
    else if (before && after && before.oid !== after.oid) changes.push({ path: after.path, change: 'modified' });
  }
  return changes;
}
