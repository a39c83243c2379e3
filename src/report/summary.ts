import type { ScanReport } from '../scan/gate.js';
import type { RunReport, VmReport } from '../sync/types.js';
import { markdownCode, markdownText } from './escape.js';
import { count } from '../words.js';
import { baselineLine, driftCell, formatBytes, outcomeLine, shardsLine } from './table.js';

/** What the summary needs besides the report. */
export interface SummaryContext {
  runUrl: string;
  /** Set when the run failed before producing a report (config error, scan failure). */
  failure: { code: string; message: string } | null;
}

// GitHub rejects a step summary over 1 MiB; stay far below it.
const MAX_BYTES = 512 * 1024;
const MAX_FINDINGS = 200;


// Bounds for text in the VM table and the details list (the whole summary is capped too).
const CELL_MAX = 100;
const MESSAGE_MAX = 2000;
const NOTE_MAX = 1000;
const NOTES_PER_VM = 20;

// A rev is shown only when it is a commit hash; anything else a VM wrote is not echoed here.
const sha = (s: string | null): string => (s === null ? '—' : /^[0-9a-f]{40}$/.test(s) ? `\`${s.slice(0, 7)}\`` : '?');

/** The time of day of an ISO timestamp (UTC, ms), or a dash. */
const clock = (iso: string | null): string => (iso && /^\d{4}-\d\d-\d\dT(\d\d:\d\d:\d\d\.\d{3})Z$/.test(iso) ? `${iso.slice(11, 23)}` : '—');

function resultCell(vm: VmReport): string {
  const icon = vm.result === 'success' ? '✅' : vm.result === 'refused' ? '⛔' : vm.result === 'skipped' ? '⏸️' : '❌';
  return `${icon} ${markdownText(vm.result, CELL_MAX)}${vm.error ? ` (${markdownCode(vm.error.code, CELL_MAX)})` : ''}`;
}

/** What verify --deep found on a VM: `clean`, a warning with the counts, or a dash when it did not compare. */
function driftSummaryCell(vm: VmReport): string {
  if (!vm.drift) return '—';
  const cell = driftCell(vm.drift);
  return cell === 'clean' ? cell : `⚠️ ${markdownText(cell, CELL_MAX)}`;
}

/** One VM's error and notes as list items, each escaped and bounded. */
function detailLines(vm: VmReport): string[] {
  const id = markdownText(vm.id, CELL_MAX);
  const lines = vm.error ? [`- **${id}** ${markdownCode(vm.error.code, CELL_MAX)}: ${markdownText(vm.error.message, MESSAGE_MAX)}`] : [];
  if (vm.health_output) lines.push(`- ${id}: health command output: ${markdownCode(vm.health_output, NOTE_MAX)}`);
  for (const p of vm.drift?.paths ?? []) lines.push(`- ${id}: drift: ${markdownText(p.what, CELL_MAX)} ${markdownCode(p.path, NOTE_MAX)} (${markdownText(p.detail, CELL_MAX)})`);
  const unlisted = vm.drift ? vm.drift.changed + vm.drift.missing + vm.drift.extra - vm.drift.paths.length : 0;
  if (unlisted > 0) lines.push(`- ${id}: drift: …and ${count(unlisted, 'more path')} (see the \`results\` output)`);
  for (const note of vm.notes.slice(0, NOTES_PER_VM)) lines.push(`- ${id}: ${markdownText(note, NOTE_MAX)}`);
  if (vm.notes.length > NOTES_PER_VM) lines.push(`- ${id}: …and ${count(vm.notes.length - NOTES_PER_VM, 'more note')} (see the \`results\` output)`);
  return lines;
}

/**
 * Joins lines into at most MAX_BYTES of UTF-8, cutting at a line boundary and
 * closing an open <details> so the rest of the page renders normally.
 */
function capped(lines: string[]): string {
  const text = `${lines.join('\n')}\n`;
  if (Buffer.byteLength(text) <= MAX_BYTES) return text;
  const notice = '\n…summary truncated; the full report is in the `results` output and the job log.\n';
  const budget = MAX_BYTES - Buffer.byteLength(notice) - 64;
  const kept: string[] = [];
  let used = 0;
  for (const line of lines) {
    const size = Buffer.byteLength(line) + 1;
    if (used + size > budget) break;
    kept.push(line);
    used += size;
  }
  const open = kept.lastIndexOf('<details open><summary>Errors and notes</summary>') > kept.lastIndexOf('</details>');
  return `${kept.join('\n')}\n${open ? '\n</details>\n' : ''}${notice}`;
}

/** The scan verdict; `contacted`: the run reached VMs before it found them (their rows say what each got). */
function scanSection(scan: ScanReport, contacted: boolean): string[] {
  const lines = ['### Secret scan', ''];
  if (scan.findings.length === 0) {
    lines.push(`✅ clean — ${markdownText(scan.description, MESSAGE_MAX)}`);
  } else {
    lines.push(
      `${scan.blocked ? '❌' : '⚠️'} **${count(scan.findings.length, 'possible secret')}**${scan.blocked ? ` — the deploy was blocked, ${contacted ? 'no VM was sent it' : 'no VM was contacted'}` : ' — not blocking (block_on_secrets: false)'}. Scanned: ${markdownText(scan.description, MESSAGE_MAX)}.`,
      '',
      '| Rule | File | Line | Commit | Author | Fingerprint |',
      '|---|---|---|---|---|---|',
    );
    for (const f of scan.findings.slice(0, MAX_FINDINGS)) {
      lines.push(`| ${markdownText(f.rule, CELL_MAX)} | ${markdownText(f.file, CELL_MAX * 2)} | ${f.line} | ${f.commit ? markdownCode(f.commit, CELL_MAX) : 'tree'} | ${markdownText(f.author ?? '—', CELL_MAX)} | ${markdownText(f.fingerprint, CELL_MAX * 3)} |`);
    }
    if (scan.findings.length > MAX_FINDINGS) lines.push('', `…and ${scan.findings.length - MAX_FINDINGS} more (see the SARIF file or the job log).`);
    lines.push('', 'Rotate each secret and remove it; a false positive goes into `.gitleaksignore` by its fingerprint.');
  }
  // Where the scan's own settings came from, and a change to them: it applies from the next deploy, and a weakening is called out.
  const settings = scan.configuration;
  if (settings) {
    const from = settings.commit ? `commit ${markdownCode(settings.commit.slice(0, 12), CELL_MAX)}` : "gitleaks' defaults";
    lines.push('', `Scan settings: ${from} (${markdownText(settings.reason, CELL_MAX)})${settings.files.length ? `: ${settings.files.map((f) => markdownCode(f, CELL_MAX)).join(', ')}` : ''}.`);
    if (settings.changed.length > 0) {
      const changed = settings.changed.map((c) => `${markdownCode(c.path, CELL_MAX)} (${c.change})`).join(', ');
      lines.push('', `⚠️ **This change modifies the scan settings**: ${changed}. They take effect from the next deploy; this one was scanned with the settings of ${from}.`);
    }
    for (const sentence of settings.weakening.slice(0, 10)) lines.push('', `❗ **It weakens the scan**: ${markdownText(sentence, MESSAGE_MAX)}.`);
  }
  // What could not be scanned, and why (the first few; the JSON report has up to 1000).
  const unscanned = scan.unscanned ?? [];
  if ((scan.unscanned_count ?? unscanned.length) > 0) {
    const total = scan.unscanned_count ?? unscanned.length;
    lines.push('', `ℹ️ **${count(total, 'deployed file or archive entry', 'deployed files or archive entries')} could not be scanned**:`, '');
    for (const u of unscanned.slice(0, 10)) lines.push(`- ${markdownCode(u.path, CELL_MAX)} — ${u.reason}: ${markdownText(u.detail, CELL_MAX)}`);
    if (total > 10) lines.push(`- …and ${total - 10} more (see the \`results\` output or the job log).`);
  }
  return lines;
}

/**
 * The job summary of a run, as markdown: the commit, the scan result and one
 * row per VM, then every error and note in full. A pure function of its
 * inputs (snapshot-tested); never contains a secret, since the report holds
 * none.
 */
export function renderSummary(report: RunReport | null, ctx: SummaryContext): string {
  const lines: string[] = [];
  if (!report) {
    lines.push('## vm-sync: failed before reaching any VM', '', `❌ ${markdownCode(ctx.failure?.code ?? 'error', CELL_MAX)}: ${markdownText(ctx.failure?.message ?? 'unknown error', MESSAGE_MAX)}`);
    if (ctx.runUrl) lines.push('', `[Workflow run](${ctx.runUrl})`);
    return capped(lines);
  }
  const shard = report.shard ? ` (shard ${report.shard.index}/${report.shard.count})` : report.shards ? ` (${count(report.shards.expected, 'shard')} merged)` : '';
  const title = report.command === 'scan' ? 'vm-sync scan' : `vm-sync ${report.command}${shard}: ${markdownText(outcomeLine(report), MESSAGE_MAX)}`;
  lines.push(`## ${title}${report.dry_run ? ' (dry run: nothing changed)' : ''}`, '');
  if (report.commit) lines.push(`Commit ${markdownCode(report.commit, CELL_MAX)}${ctx.runUrl ? ` · [workflow run](${ctx.runUrl})` : ''}`, '');
  const baseline = baselineLine(report);
  if (baseline) lines.push(`${report.baseline?.fetched ? 'ℹ️' : '⚠️'} ${markdownText(baseline, MESSAGE_MAX)}`, '');
  if (ctx.failure) lines.push(`❌ ${markdownCode(ctx.failure.code, CELL_MAX)}: ${markdownText(ctx.failure.message, MESSAGE_MAX)}`, '');
  const shards = shardsLine(report);
  if (shards) lines.push(`${report.shards && (report.shards.missing.length > 0 || report.shards.failed.length > 0) ? '❌' : '✅'} ${markdownText(shards, MESSAGE_MAX)}`, '');
  if (report.scan) lines.push(...scanSection(report.scan, report.vms.length > 0), '');
  if (report.rollout) {
    const r = report.rollout;
    const skew = report.flip_skew_ms === null || report.flip_skew_ms === undefined ? '' : ` · flip skew **${report.flip_skew_ms} ms**`;
    lines.push(`Rollout: ${markdownText(r.strategy, CELL_MAX)}${r.strategy === 'rolling' ? ` in ${count(r.batches.length, 'batch')}` : ''}${skew}`, '');
    if (r.halted) lines.push(`⛔ Rollout halted: ${markdownText(r.halted_reason ?? 'stopped', MESSAGE_MAX)}. The VMs not flipped keep their release, with the new one staged.`, '');
  }
  // Things about the whole run that are not failures (committed paths rsync_excludes left out).
  for (const note of (report.notes ?? []).slice(0, NOTES_PER_VM)) lines.push(`ℹ️ ${markdownText(note, MESSAGE_MAX)}`, '');
  if (report.vms.length > 0) {
    // A release run shows when each VM was staged and flipped, and its health check.
    const phases = Boolean(report.rollout);
    // verify --deep shows what it found in each VM's files.
    const withDrift = report.vms.some((vm) => vm.drift);
    lines.push(
      '### VMs',
      '',
      `| VM | Host | State | Action | Result | Rev before → after | Files | Bytes | Duration | Verified |${phases ? ' Staged | Flipped | Health |' : ''}${withDrift ? ' Drift |' : ''}`,
      `|---|---|---|---|---|---|---|---|---|---|${phases ? '---|---|---|' : ''}${withDrift ? '---|' : ''}`,
    );
    for (const vm of report.vms) {
      const revs = vm.rev_before === vm.rev_after ? sha(vm.rev_after) : `${sha(vm.rev_before)} → ${sha(vm.rev_after)}`;
      const extra = (phases ? ` ${clock(vm.staged_at)} | ${clock(vm.flipped_at)} | ${markdownText(vm.health, CELL_MAX)} |` : '') + (withDrift ? ` ${driftSummaryCell(vm)} |` : '');
      lines.push(
        `| ${markdownText(vm.id, CELL_MAX)} | ${markdownText(vm.host, CELL_MAX)} | ${markdownText(vm.state, CELL_MAX)} | ${markdownText(vm.action, CELL_MAX)} | ${resultCell(vm)} | ${revs} | ${vm.files_changed} | ${formatBytes(vm.bytes_sent)} | ${(vm.duration_ms / 1000).toFixed(1)}s | ${vm.verified ? 'yes' : 'no'} |${extra}`,
      );
    }
    const details = report.vms.flatMap(detailLines);
    if (details.length) lines.push('', '<details open><summary>Errors and notes</summary>', '', ...details, '', '</details>');
  }
  return capped(lines);
}
