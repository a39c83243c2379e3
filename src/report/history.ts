import type { HistoryReport } from '../journal/history.js';
import { count } from '../words.js';
import type { JournalRecord, Trigger } from '../journal/journal.js';
import { terminalLine } from './escape.js';

const CELL_MAX = 120;
const short = (sha: string | null): string => (sha && /^[0-9a-f]{40}$/.test(sha) ? sha.slice(0, 7) : '-');
/** `2026-11-22T07:01:02.345Z` as `2026-11-22 07:01:02Z`. */
const when = (iso: string): string => iso.replace('T', ' ').replace(/\.\d+Z$/, 'Z');

/** Who started a run, in a few words. */
export function triggerText(trigger: Trigger): string {
  if (trigger.kind === 'actions') return `${trigger.actor || '?'} via Actions ${trigger.run_url}`;
  return `${trigger.user}@${trigger.host}${trigger.sudo_user ? ` (sudo from ${trigger.sudo_user})` : ''}`;
}

/** A run's outcome: how many VMs succeeded, or (with `vm`) that VM's result. */
function outcome(record: JournalRecord, vm: string | null): string {
  if (vm !== null) {
    const row = record.vms.find((r) => r.id === vm);
    return row ? `${row.result}${row.code ? ` (${row.code})` : ''}` : '-';
  }
  if (record.error && record.vms.length === 0) return `failed (${record.error.code})`;
  const ok = record.vms.filter((r) => r.result === 'success').length;
  return `${ok}/${record.vms.length} ok${record.exit_code === 3 ? ' (secrets found)' : ''}`;
}

/** Left-aligned columns, two spaces apart, with a dashed line under the header. */
function table(rows: string[][]): string[] {
  const widths = rows[0].map((_, col) => Math.max(...rows.map((r) => r[col].length)));
  const lines = rows.map((r) => r.map((cell, col) => (col === r.length - 1 ? cell : cell.padEnd(widths[col]))).join('  ').trimEnd());
  lines.splice(1, 0, widths.map((w) => '-'.repeat(w)).join('  '));
  return lines;
}

/** `vm-sync history` as text: the journal's runs as a table, then the VM's revisions.log. Every cell is made printable. */
export function renderHistory(report: HistoryReport): string {
  const vm = report.vm?.id ?? null;
  const { journal } = report;
  const out: string[] = [];
  const scope = vm === null ? '' : ` that included ${vm}`;
  out.push(terminalLine(`journal ${journal.path}: ${journal.records.length === journal.total ? count(journal.total, 'run') : `the last ${journal.records.length} of ${count(journal.total, 'run')}`}${scope}`));
  if (journal.records.length > 0) {
    const rows = [['STARTED', 'RUN', 'COMMAND', 'COMMIT', 'DRY', 'SHARD', 'RESULT', 'BY']];
    for (const r of journal.records) {
      rows.push([when(r.started_at), r.run_id, r.command, short(r.commit), r.dry_run ? 'yes' : '-', r.shard ?? '-', outcome(r, vm), triggerText(r.trigger)].map((cell) => terminalLine(cell, CELL_MAX)));
    }
    out.push('', ...table(rows));
  }
  if (journal.skipped > 0) out.push('', `note: ${count(journal.skipped, 'line')} of the journal ${journal.skipped === 1 ? 'is not a record' : 'are not records'} (damaged or edited) and were skipped`);
  if (report.vm) {
    const v = report.vm;
    out.push('');
    if (v.error) out.push(terminalLine(`revisions.log on ${v.id}: could not be read: ${v.error.code}: ${v.error.message}`, 4000));
    else if (!v.present) out.push(terminalLine(`revisions.log on ${v.id}: none yet (no flip, revert or rollback since vm-sync began keeping it)`));
    else {
      out.push(terminalLine(`revisions.log on ${v.id}: the last ${v.revisions.length === 1 ? 'change' : count(v.revisions.length, 'change')}`));
      if (v.revisions.length > 0) {
        const rows = [['TIME', 'ACTION', 'FROM', 'TO', 'RUN', 'RELEASE']];
        for (const r of v.revisions) rows.push([when(r.time), r.action, short(r.from), short(r.to), r.run ?? '-', r.release ?? '-']);
        out.push('', ...table(rows));
      }
    }
    if (v.skipped > 0) out.push('', terminalLine(`note: ${count(v.skipped, 'line')} of revisions.log on ${v.id} ${v.skipped === 1 ? 'is not a record' : 'are not records'} (garbled or written by something else) and were skipped`));
  }
  return `${out.join('\n')}\n`;
}
