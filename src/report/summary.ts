import type { ScanReport } from '../scan/gate.js';
import type { RunReport, VmReport } from '../sync/types.js';
import { formatBytes } from './table.js';

/** What the summary needs besides the report. */
export interface SummaryContext {
  runUrl: string;
  /** Set when the run failed before producing a report (config error, scan failure). */
  failure: { code: string; message: string } | null;
}

// GitHub rejects a step summary over 1 MiB; stay far below it.
const MAX_BYTES = 512 * 1024;
const MAX_FINDINGS = 200;

function cell(text: string): string {
  return text.replace(/\|/g, '\\|').replace(/\r?\n/g, ' ');
}

const sha = (s: string | null): string => (s ? `\`${s.slice(0, 7)}\`` : '—');

function resultCell(vm: VmReport): string {
  const icon = vm.result === 'success' ? '✅' : vm.result === 'refused' ? '⛔' : '❌';
  return `${icon} ${vm.result}${vm.error ? ` (\`${vm.error.code}\`)` : ''}`;
}

function scanSection(scan: ScanReport): string[] {
  const lines = ['### Secret scan', ''];
  if (scan.findings.length === 0) {
    lines.push(`✅ clean — ${cell(scan.description)}`);
    return lines;
  }
  lines.push(
    `${scan.blocked ? '❌' : '⚠️'} **${scan.findings.length} possible secret(s)**${scan.blocked ? ' — the deploy was blocked, no VM was contacted' : ' — not blocking (block_on_secrets: false)'}. Scanned: ${cell(scan.description)}.`,
    '',
    '| Rule | File | Line | Commit | Author | Fingerprint |',
    '|---|---|---|---|---|---|',
  );
  for (const f of scan.findings.slice(0, MAX_FINDINGS)) {
    lines.push(`| ${cell(f.rule)} | ${cell(f.file)} | ${f.line} | ${f.commit ? `\`${f.commit}\`` : 'tree'} | ${cell(f.author ?? '—')} | \`${cell(f.fingerprint)}\` |`);
  }
  if (scan.findings.length > MAX_FINDINGS) lines.push('', `…and ${scan.findings.length - MAX_FINDINGS} more (see the SARIF file or the job log).`);
  lines.push('', 'Rotate each secret and remove it; a false positive goes into `.gitleaksignore` by its fingerprint.');
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
    lines.push('## vm-sync: failed before reaching any VM', '', `❌ \`${ctx.failure?.code ?? 'error'}\`: ${cell(ctx.failure?.message ?? 'unknown error')}`);
    if (ctx.runUrl) lines.push('', `[Workflow run](${ctx.runUrl})`);
    return `${lines.join('\n')}\n`;
  }
  const ok = report.vms.filter((vm) => vm.result === 'success').length;
  const title = report.command === 'scan' ? 'vm-sync scan' : `vm-sync ${report.command}: ${ok}/${report.vms.length} VM(s) ok`;
  lines.push(`## ${title}${report.dry_run ? ' (dry run: nothing changed)' : ''}`, '');
  if (report.commit) lines.push(`Commit \`${report.commit}\`${ctx.runUrl ? ` · [workflow run](${ctx.runUrl})` : ''}`, '');
  if (ctx.failure) lines.push(`❌ \`${ctx.failure.code}\`: ${cell(ctx.failure.message)}`, '');
  if (report.scan) lines.push(...scanSection(report.scan), '');
  if (report.vms.length > 0) {
    lines.push(
      '### VMs',
      '',
      '| VM | Host | State | Action | Result | Rev before → after | Files | Bytes | Duration | Verified |',
      '|---|---|---|---|---|---|---|---|---|---|',
    );
    for (const vm of report.vms) {
      const revs = vm.rev_before === vm.rev_after ? sha(vm.rev_after) : `${sha(vm.rev_before)} → ${sha(vm.rev_after)}`;
      lines.push(
        `| ${cell(vm.id)} | ${cell(vm.host)} | ${vm.state} | ${vm.action} | ${resultCell(vm)} | ${revs} | ${vm.files_changed} | ${formatBytes(vm.bytes_sent)} | ${(vm.duration_ms / 1000).toFixed(1)}s | ${vm.verified ? 'yes' : 'no'} |`,
      );
    }
    const details = report.vms.flatMap((vm) => [
      ...(vm.error ? [`- **${cell(vm.id)}** \`${vm.error.code}\`: ${cell(vm.error.message)}`] : []),
      ...vm.notes.map((note) => `- ${cell(vm.id)}: ${cell(note)}`),
    ]);
    if (details.length) lines.push('', '<details open><summary>Errors and notes</summary>', '', ...details, '', '</details>');
  }
  let text = `${lines.join('\n')}\n`;
  if (Buffer.byteLength(text) > MAX_BYTES) {
    text = `${text.slice(0, MAX_BYTES - 200)}\n\n…summary truncated; the full report is in the \`results\` output and the job log.\n`;
  }
  return text;
}
