import { describeFinding } from '../scan/findings.js';
import type { DriftReport, RunReport, VmReport } from '../sync/types.js';
import { paint, type Tone } from './colour.js';
import { count } from '../words.js';
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

/** The order outcome words are listed in: the good news first, then what needs a look. */
const OUTCOME_ORDER = ['deployed', 'would be deployed', 'rolled back', 'up to date', 'behind', 'ahead', 'diverged', 'fresh', 'broken', 'drifted', 'would be refused', 'unknown', 'refused', 'skipped', 'failed'];

/** One VM's outcome as the headline counts it. */
function outcomeOf(report: RunReport, vm: VmReport): string {
  const state = vm.state === 'up-to-date' ? 'up to date' : vm.state;
  if (report.command === 'status' || report.command === 'verify') {
    // verify fails a VM that is not on the commit: where it stands is the news, not "failed".
    if (vm.result === 'success' || vm.error?.code === 'verify_mismatch') return state;
    if (vm.error?.code === 'release_drifted') return 'drifted';
    return vm.result;
  }
  if (vm.result !== 'success') return vm.result;
  if (vm.action === 'deploy') return report.dry_run ? 'would be deployed' : 'deployed';
  if (vm.action === 'rollback') return 'rolled back';
  if (vm.action === 'refuse') return 'would be refused';
  return 'up to date';
}

/**
 * The run's outcome in words, counted over its VMs: `2 up to date, 1 behind`
 * (status, verify: where each VM stands, and `failed` for one not reached),
 * `3 deployed, 1 failed` (sync), `2 would be deployed, 1 up to date` (dry run),
 * `no VM` when none was selected. Shared by the table and the job summary.
 */
export function outcomeLine(report: RunReport): string {
  if (report.vms.length === 0) return 'no VM';
  const tally = new Map<string, number>();
  for (const vm of report.vms) {
    const word = outcomeOf(report, vm);
    tally.set(word, (tally.get(word) ?? 0) + 1);
  }
  const rank = (word: string): number => (OUTCOME_ORDER.includes(word) ? OUTCOME_ORDER.indexOf(word) : OUTCOME_ORDER.length);
  return [...tally].sort(([a], [b]) => rank(a) - rank(b)).map(([word, n]) => `${n} ${word}`).join(', ');
}

/**
 * What the commit of a status, verify or scan is, in one line (null when the
 * user named it or the command has none): `compared with origin/main,
 * fetched just now`, or a clear warning that the fetch failed.
 */
export function baselineLine(report: RunReport): string | null {
  const b = report.baseline;
  if (!b) return null;
  const verb = report.command === 'scan' ? 'scanned' : 'compared with';
  return `${b.fetched ? '' : 'WARNING: '}${verb} ${b.ref} at ${report.commit.slice(0, 12)}, ${b.note}`;
}

/** The rollout in one line: strategy, batches, flip skew, and why it stopped when it did. */
export function rolloutLine(report: RunReport): string | null {
  const rollout = report.rollout;
  if (!rollout) return null;
  const parts = [`rollout: ${rollout.strategy}`];
  if (rollout.strategy === 'rolling') parts.push(count(rollout.batches.length, 'batch'));
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

const RESULT_COLUMN = 4;
const RESULT_TONE: Record<VmReport['result'], Tone> = { success: 'ok', failed: 'bad', refused: 'bad', skipped: 'warn' };

/**
 * The readable report of a run: a header line, an aligned table with one row
 * per VM, then every error and note in full (a table cell is too small for
 * the sentence that tells the user what to do). Pure: same report, same text.
 * With `colour` (a terminal), each RESULT cell is coloured by the VM's result.
 */
export function renderTable(report: RunReport, options: { colour?: boolean } = {}): string {
  const scan = renderScan(report);
  const shards = shardsLine(report);
  const baseline = baselineLine(report);
  if (report.vms.length === 0) return (baseline ? `${terminalLine(baseline, MESSAGE_MAX)}\n` : '') + scan + (shards ? `${terminalLine(shards, MESSAGE_MAX)}\n` : '');
  // The health column only when a health check ran.
  const withHealth = report.vms.some((vm) => vm.health !== 'skipped');
  // The drift column only when verify --deep compared a VM's files.
  const withDrift = report.vms.some((vm) => vm.drift);
  const header = ['VM', 'HOST', 'STATE', 'ACTION', 'RESULT', 'REV', 'FILES', 'BYTES', 'TIME', 'VERIFIED', ...(withHealth ? ['HEALTH'] : []), ...(withDrift ? ['DRIFT'] : [])];
  const rows = [header, ...report.vms.map((vm) => row(vm, withHealth, withDrift))];
  const widths = header.map((_, col) => Math.max(...rows.map((r) => r[col].length)));
  // Padded first, coloured after: the escape sequences must not count towards a column's width.
  const lines = rows.map((r, i) =>
    r
      .map((cell, col) => (i > 0 && col === RESULT_COLUMN && options.colour ? paint(cell, RESULT_TONE[report.vms[i - 1].result] ?? 'warn', true) + ' '.repeat(widths[col] - cell.length) : cell.padEnd(widths[col])))
      .join('  ')
      .trimEnd(),
  );
  lines.splice(1, 0, widths.map((w) => '-'.repeat(w)).join('  '));

  const subject = report.command === 'rollback' ? (report.commit ? `to ${terminalLine(report.commit.slice(0, 12))}` : "to each VM's previous release") : `of ${terminalLine(report.commit.slice(0, 12))}`;
  const shard = report.shard ? ` [shard ${report.shard.index}/${report.shard.count}]` : '';
  const title = `vm-sync ${report.command}${shard}${report.dry_run ? ' (dry run: nothing changed)' : ''} ${subject}: ${terminalLine(outcomeLine(report))}`;
  const details: string[] = [];
  for (const vm of report.vms) {
    const id = terminalLine(vm.id, CELL_MAX);
    if (vm.error) details.push(terminalLine(`${id}: ${vm.error.code}: ${vm.error.message}`, MESSAGE_MAX));
    if (vm.health_output) details.push(terminalLine(`${id}: health output: ${vm.health_output}`, MESSAGE_MAX));
    for (const p of vm.drift?.paths ?? []) details.push(terminalLine(`${id}: drift: ${p.what}: ${p.path} (${p.detail})`, MESSAGE_MAX));
    const unlisted = vm.drift ? vm.drift.changed + vm.drift.missing + vm.drift.extra - vm.drift.paths.length : 0;
    if (unlisted > 0) details.push(`${id}: drift: …and ${count(unlisted, 'more path')} (the counts are in the DRIFT column)`);
    for (const note of vm.notes.slice(0, NOTES_PER_VM)) details.push(terminalLine(`${id}: note: ${note}`, MESSAGE_MAX));
    if (vm.notes.length > NOTES_PER_VM) details.push(`${id}: note: …and ${count(vm.notes.length - NOTES_PER_VM, 'more note')} (see --json)`);
  }
  const rollout = rolloutLine(report);
  const runNotes = (report.notes ?? []).map((note) => terminalLine(`note: ${note}`, MESSAGE_MAX));
  return scan + [title, ...(baseline ? [terminalLine(baseline, MESSAGE_MAX)] : []), ...(shards ? [terminalLine(shards, MESSAGE_MAX)] : []), ...(rollout ? [rollout] : []), ...runNotes, '', ...lines, ...(details.length ? ['', ...details] : [])].join('\n') + '\n';
}

/** The secret-scan part of the report: what was scanned and each finding (never the secret itself). */
function renderScan(report: RunReport): string {
  const scan = report.scan;
  if (!scan) return '';
  const verdict = scan.findings.length === 0
    ? 'clean'
    : `${count(scan.findings.length, 'possible secret')}${scan.blocked ? `: DEPLOY BLOCKED, ${report.vms.length === 0 ? 'no VM was contacted' : 'no VM was sent it'}` : ' (not blocking: block_on_secrets is false)'}`;
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
    lines.push(`  not scanned: ${count(total, 'deployed file or archive entry', 'deployed files or archive entries')} (binaries, archives gitleaks cannot open):`);
    for (const u of unscanned.slice(0, 10)) lines.push(terminalLine(`    - ${u.path}: ${u.reason}: ${u.detail}`));
    if (total > 10) lines.push(`    - ...and ${total - 10} more (see --json)`);
  }
  return `${lines.join('\n')}\n\n`;
}
