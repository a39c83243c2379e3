import { describeFinding } from '../scan/findings.js';
import type { DriftReport, RunReport, VmReport } from '../sync/types.js';
import { terminalLine } from './escape.js';

// A rev is shown only when it is a commit hash; anything else a VM wrote is not echoed here.
const short = (sha: string | null): string => (sha === null ? '-' : /^[0-9a-f]{40}$/.test(sha) ? sha.slice(0, 7) : '?');

/** Bounds for table cells and for each error or note printed under the table. */
const CELL_MAX = 80;
const MESSAGE_MAX = 4000;
const NOTES_PER_VM = 20;

/** Bytes in a compact human form (1.2 MB). */
export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const units = ['KB', 'MB', 'GB', 'TB'];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(1)} ${units[unit]}`;
}

function formatDuration(ms: number): string {
  return ms < 1000 ? `${ms}ms` : `${(ms / 1000).toFixed(1)}s`;
}

/** A drift check in a few words: `clean`, `2 changed, 1 extra`, or `-` when it did not run. */
export function driftCell(drift: DriftReport | null | undefined): string {
  if (!drift) return '-';
  const parts = [drift.changed ? `${drift.changed} changed` : '', drift.missing ? `${drift.missing} missing` : '', drift.extra ? `${drift.extra} extra` : ''].filter(Boolean);
  return parts.length ? parts.join(', ') : 'clean';
}

function row(vm: VmReport, withHealth: boolean, withDrift: boolean): string[] {
  const revs = vm.rev_before === vm.rev_after ? short(vm.rev_after) : `${short(vm.rev_before)} -> ${short(vm.rev_after)}`;
  return [
    terminalLine(vm.id, CELL_MAX),
    terminalLine(vm.host, CELL_MAX),
    vm.state,
    vm.action,
    terminalLine(vm.error ? `${vm.result} (${vm.error.code})` : vm.result, CELL_MAX),
    revs,
    String(vm.files_changed),
    formatBytes(vm.bytes_sent),
    formatDuration(vm.duration_ms),
    vm.verified ? 'yes' : 'no',
    ...(withHealth ? [vm.health] : []),
    ...(withDrift ? [driftCell(vm.drift)] : []),
  ];
}

/** The rollout in one line: strategy, batches, flip skew, and why it stopped when it did. */
export function rolloutLine(report: RunReport): string | null {
  const rollout = report.rollout;
  if (!rollout) return null;
  const parts = [`rollout: ${rollout.strategy}`];
  if (rollout.strategy === 'rolling') parts.push(`${rollout.batches.length} batch${rollout.batches.length === 1 ? '' : 'es'}`);
  if (report.flip_skew_ms !== null && report.flip_skew_ms !== undefined) parts.push(`flip skew ${report.flip_skew_ms} ms`);
  if (rollout.halted) parts.push(`HALTED: ${rollout.halted_reason ?? 'stopped'}; the VMs not flipped keep their release, the new one staged`);
  return terminalLine(parts.join(', '), MESSAGE_MAX);
}

/**
 * How the shards of a merged run came back, in one line (null for a run that
 * was not merged). Shared by the table and the job summary, which escape it.
 */
export function shardsLine(report: RunReport): string | null {
  const shards = report.shards;
  if (!shards) return null;
  const parts = [`shards: ${shards.received.length} of ${shards.expected} reported`];
  if (shards.missing.length > 0) {
    parts.push(`MISSING ${shards.missing.map((i) => `${i}/${shards.expected}`).join(', ')}: their jobs wrote no results, so what their VMs serve is unknown (re-run the failed jobs)`);
  }
  for (const f of shards.failed) parts.push(`shard ${f.index}/${shards.expected} FAILED before reaching its VMs: ${f.code}: ${f.message}`);
  return parts.join('; ');
}

/**
 * The readable report of a run: a header line, an aligned table with one row
 * per VM, then every error and note in full (a table cell is too small for
 * the sentence that tells the user what to do). Pure: same report, same text.
 */
export function renderTable(report: RunReport): string {
  const scan = renderScan(report);
  const shards = shardsLine(report);
  if (report.vms.length === 0) return scan + (shards ? `${terminalLine(shards, MESSAGE_MAX)}\n` : '');
  // The health column only when a health check ran.
  const withHealth = report.vms.some((vm) => vm.health !== 'skipped');
  // The drift column only when verify --deep compared a VM's files.
  const withDrift = report.vms.some((vm) => vm.drift);
  const header = ['VM', 'HOST', 'STATE', 'ACTION', 'RESULT', 'REV', 'FILES', 'BYTES', 'TIME', 'VERIFIED', ...(withHealth ? ['HEALTH'] : []), ...(withDrift ? ['DRIFT'] : [])];
  const rows = [header, ...report.vms.map((vm) => row(vm, withHealth, withDrift))];
  const widths = header.map((_, col) => Math.max(...rows.map((r) => r[col].length)));
  const lines = rows.map((r) => r.map((cell, col) => cell.padEnd(widths[col])).join('  ').trimEnd());
  lines.splice(1, 0, widths.map((w) => '-'.repeat(w)).join('  '));

  const ok = report.vms.filter((vm) => vm.result === 'success').length;
  const subject = report.command === 'rollback' ? (report.commit ? `to ${terminalLine(report.commit.slice(0, 12))}` : "to each VM's previous release") : `of ${terminalLine(report.commit.slice(0, 12))}`;
  const shard = report.shard ? ` [shard ${report.shard.index}/${report.shard.count}]` : '';
  const title = `vm-sync ${report.command}${shard}${report.dry_run ? ' (dry run: nothing changed)' : ''} ${subject}: ${ok}/${report.vms.length} VM(s) ok`;
  const details: string[] = [];
  for (const vm of report.vms) {
    const id = terminalLine(vm.id, CELL_MAX);
    if (vm.error) details.push(terminalLine(`${id}: ${vm.error.code}: ${vm.error.message}`, MESSAGE_MAX));
    if (vm.health_output) details.push(terminalLine(`${id}: health output: ${vm.health_output}`, MESSAGE_MAX));
    for (const p of vm.drift?.paths ?? []) details.push(terminalLine(`${id}: drift: ${p.what}: ${p.path} (${p.detail})`, MESSAGE_MAX));
    const unlisted = vm.drift ? vm.drift.changed + vm.drift.missing + vm.drift.extra - vm.drift.paths.length : 0;
    if (unlisted > 0) details.push(`${id}: drift: …and ${unlisted} more path(s) (the counts are in the DRIFT column)`);
    for (const note of vm.notes.slice(0, NOTES_PER_VM)) details.push(terminalLine(`${id}: note: ${note}`, MESSAGE_MAX));
    if (vm.notes.length > NOTES_PER_VM) details.push(`${id}: note: …and ${vm.notes.length - NOTES_PER_VM} more (see --json)`);
  }
  const rollout = rolloutLine(report);
  const runNotes = (report.notes ?? []).map((note) => terminalLine(`note: ${note}`, MESSAGE_MAX));
  return scan + [title, ...(shards ? [terminalLine(shards, MESSAGE_MAX)] : []), ...(rollout ? [rollout] : []), ...runNotes, '', ...lines, ...(details.length ? ['', ...details] : [])].join('\n') + '\n';
}

/** The secret-scan part of the report: what was scanned and each finding (never the secret itself). */
function renderScan(report: RunReport): string {
  const scan = report.scan;
  if (!scan) return '';
  const verdict = scan.findings.length === 0
    ? 'clean'
    : `${scan.findings.length} possible secret(s)${scan.blocked ? `: DEPLOY BLOCKED, ${report.vms.length === 0 ? 'no VM was contacted' : 'no VM was sent it'}` : ' (not blocking: block_on_secrets is false)'}`;
  const lines = [`secret scan: ${verdict}`, terminalLine(`  scanned: ${scan.description}`)];
  for (const finding of scan.findings) lines.push(terminalLine(`  - ${describeFinding(finding)}`));
  if (scan.findings.length > 0) lines.push('  Rotate each secret and remove it from the repository; a false positive goes into .gitleaksignore by its fingerprint.');
  const settings = scan.configuration;
  if (settings) {
    const from = settings.commit ? `commit ${settings.commit.slice(0, 12)}` : "gitleaks' defaults";
    lines.push(terminalLine(`  scan settings: ${from} (${settings.reason})${settings.files.length ? `: ${settings.files.join(', ')}` : ''}`));
    if (settings.changed.length > 0) {
      const changed = settings.changed.map((c) => `${c.path} (${c.change})`).join(', ');
      lines.push(terminalLine(`  SCAN SETTINGS CHANGED by this change: ${changed}; they take effect from the next deploy, this one was scanned with the settings of ${from}`));
    }
    for (const sentence of settings.weakening) lines.push(terminalLine(`  WEAKENS THE SCAN: ${sentence}`));
  }
  const unscanned = scan.unscanned ?? [];
  const total = scan.unscanned_count ?? unscanned.length;
  if (total > 0) {
    lines.push(`  not scanned: ${total} deployed file(s) or archive entries (binaries, archives gitleaks cannot open):`);
    for (const u of unscanned.slice(0, 10)) lines.push(terminalLine(`    - ${u.path}: ${u.reason}: ${u.detail}`));
    if (total > 10) lines.push(`    - ...and ${total - 10} more (see --json)`);
  }
  return `${lines.join('\n')}\n\n`;
}
