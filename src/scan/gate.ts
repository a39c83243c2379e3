import fs from 'node:fs';
import path from 'node:path';
import type { SecretScanningConfig } from '../config/types.js';
import { VmSyncError } from '../errors.js';
import type { EngineEvents } from '../sync/types.js';
import { describeFinding, type Finding } from './findings.js';
import { locateGitleaks, runGitleaks, type GitleaksSettings } from './gitleaks.js';
import type { ScanPlan } from './plan.js';

/** The outcome of the secret-scan gate: the `scan` part of reports and `--json`. */
export interface ScanReport {
  /** What was scanned and why. */
  description: string;
  commits_scanned: number;
  tree_scanned: boolean;
  findings: Finding[];
  /** True when findings stop the deploy (`block_on_secrets: true`). */
  blocked: boolean;
}

export interface GateInputs {
  settings: SecretScanningConfig;
  plan: ScanPlan;
  /** The runner-host repository (commits are scanned there). */
  repoDir: string;
  /** Counts the commits of a selection that add text (RunnerRepo.countCommitsAddingText). */
  countCommitsAddingText: (selection: string[]) => Promise<number | null>;
  /** The clean export of `plan.head` (its tree is scanned there); null when there is no tree. */
  exportDir: string | null;
  events: EngineEvents;
  signal?: AbortSignal;
}

/**
 * The scan settings from the deployed commit's tree: its `.gitleaksignore`, and
 * its gitleaks config (absent default file: gitleaks' built-in rules; a
 * configured non-default path must exist).
 */
function settingsFrom(root: string, configPath: string): GitleaksSettings {
  const file = path.join(root, configPath);
  if (fs.existsSync(file)) return { ignoreDir: root, configFile: file };
  if (configPath !== '.gitleaks.toml') {
    throw new VmSyncError('config_invalid', `repository.secret_scanning.config_path '${configPath}' does not exist in the commit being deployed.`);
  }
  return { ignoreDir: root, configFile: null };
}

/**
 * Scans the commits being deployed and the exact tree being deployed with
 * gitleaks, failing closed: our own count of the commits must be matched by
 * what gitleaks says it scanned, and any gitleaks failure is an error.
 */
export async function runSecretScan(inputs: GateInputs): Promise<ScanReport> {
  const { settings, plan, events } = inputs;
  const binary = locateGitleaks(settings.gitleaksPath);
  const findings: Finding[] = [];
  let commitsScanned = 0;
  events.info(null, `secret scan: ${plan.description}`);
  // Settings come from the commit being deployed; with no tree (nothing to deploy), from the checkout.
  const scanSettings = settingsFrom(inputs.exportDir ?? inputs.repoDir, settings.configPath);

  if (plan.commits && plan.commits.count > 0) {
    const result = await runGitleaks(binary, { mode: 'git', root: inputs.repoDir, selection: plan.commits.selection }, scanSettings, inputs.signal);
    // gitleaks 8.27+ exits 0 with "no leaks found" when its git log fails: a
    // scan that saw no commits where some add text is not a pass. (Commits
    // that add no text, e.g. binary-only changes, are not counted by gitleaks.)
    const withText = await inputs.countCommitsAddingText(plan.commits.selection);
    const scanned = result.commitsScanned;
    if (withText === null || scanned === null || (withText > 0 && scanned === 0) || scanned > plan.commits.count) {
      throw new VmSyncError('scan_range_unresolved', `gitleaks scanned ${scanned ?? 'an unknown number of'} commit(s) where ${withText ?? 'an unknown number'} of the ${plan.commits.count} add text: the scan cannot be trusted, so nothing is deployed.`);
    }
    commitsScanned = scanned;
    findings.push(...result.findings);
  }
  if (inputs.exportDir) {
    const result = await runGitleaks(binary, { mode: 'dir', root: inputs.exportDir }, scanSettings, inputs.signal);
    findings.push(...result.findings);
  }

  const blocked = findings.length > 0 && settings.blockOnSecrets;
  for (const finding of findings) events.info(null, `secret scan: ${blocked ? 'BLOCKING' : 'found'}: ${describeFinding(finding)}`);
  if (findings.length > 0 && !settings.blockOnSecrets) {
    events.info(null, `WARNING: ${findings.length} possible secret(s) found and repository.secret_scanning.block_on_secrets is false: the deploy goes on. Rotate them.`);
  } else if (findings.length === 0) {
    events.info(null, `secret scan: clean (${commitsScanned} commit(s)${inputs.exportDir ? ' and the deployed tree' : ''})`);
  }
  return { description: plan.description, commits_scanned: commitsScanned, tree_scanned: inputs.exportDir !== null, findings, blocked };
}
