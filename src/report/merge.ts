import { invocation } from '../advice.js';
import { VmSyncError, FAILURE_CODES, type FailureCode } from '../errors.js';
import { MAX_SHARDS, shardLabel, type Shard } from '../config/shard.js';
import type { ScanReport } from '../scan/gate.js';
import { failedRow, type DriftReport, type RunReport, type ShardsReport, type VmReport } from '../sync/types.js';
import { vmBlock, vmText } from '../remote/untrusted.js';
import type { ExcludedReport } from '../sync/excluded.js';

/** One results document as read from a file: where it came from and its text. */
export interface ResultsSource {
  source: string;
  text: string;
}

/** What the merge needs besides the documents. */
export interface MergeOptions {
  /** N, when the caller knows it (the workflow's matrix size); else it is read from the documents. */
  expected?: number;
  /** The configured VMs of a shard, to give each VM of a missing or failed shard its own failed row. */
  vmsOfShard?: (shard: Shard) => Array<{ id: string; host: string }>;
  /** The config's VM order, so the merged table reads like an unsharded one. */
  order?: string[];
}

const COMMANDS = ['sync', 'rollback', 'verify', 'status', 'scan'] as const;
const RESULTS = ['success', 'failed', 'refused', 'skipped'] as const;
const STATES = ['fresh', 'up-to-date', 'behind', 'ahead', 'diverged', 'broken', 'unknown'] as const;
const ACTIONS = ['deploy', 'none', 'refuse', 'rollback', 'verify', 'status'] as const;
const HEALTH = ['passed', 'failed', 'skipped'] as const;

/** A results document, parsed: the report, or the error of a run that failed before it had one. */
interface ParsedResults {
  source: string;
  report: RunReport;
  error: { code: string; message: string } | null;
}

function invalid(source: string, what: string): VmSyncError {
  // A file name comes from another job's artifact: never print its control characters.
  return new VmSyncError('results_invalid', `${vmText(source, 1000)}: ${what}. Pass the results files written by vm-sync (the Action's results-path, or the CLI's --json output), unmodified.`);
}

function field<T>(source: string, where: string, value: unknown, check: (v: unknown) => v is T, what: string): T {
  if (!check(value)) throw invalid(source, `${where} is not ${what}`);
  return value;
}

const isString = (v: unknown): v is string => typeof v === 'string';
const isCount = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 0;
const isBool = (v: unknown): v is boolean => typeof v === 'boolean';
const isNullableString = (v: unknown): v is string | null => v === null || typeof v === 'string';
const oneOf =
  <T extends string>(values: readonly T[]) =>
  (v: unknown): v is T =>
    typeof v === 'string' && (values as readonly string[]).includes(v);
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const DRIFT_WHAT = ['changed', 'missing', 'extra'] as const;

/** A row's drift (verify --deep), checked like the rest of the row: the renderers add and list its fields. */
function parseDrift(source: string, at: string, raw: unknown): DriftReport | null {
  if (raw === undefined || raw === null) return null;
  const drift = field(source, at, raw, isObject, 'an object or null');
  const paths = field(source, `${at}.paths`, drift.paths, (v): v is unknown[] => Array.isArray(v), 'a list');
  return {
    checked: field(source, `${at}.checked`, drift.checked, isCount, 'a count'),
    changed: field(source, `${at}.changed`, drift.changed, isCount, 'a count'),
    missing: field(source, `${at}.missing`, drift.missing, isCount, 'a count'),
    extra: field(source, `${at}.extra`, drift.extra, isCount, 'a count'),
    paths: paths.map((entry, n) => {
      const p = field(source, `${at}.paths[${n}]`, entry, isObject, 'an object');
      return {
        path: field(source, `${at}.paths[${n}].path`, p.path, isString, 'a string'),
        what: field(source, `${at}.paths[${n}].what`, p.what, oneOf(DRIFT_WHAT), `one of ${DRIFT_WHAT.join(', ')}`),
        detail: field(source, `${at}.paths[${n}].detail`, p.detail, isString, 'a string'),
      };
    }),
  };
}

/** How deep a results document's free-form part (the scan report) may nest: vm-sync's own is a few levels. */
const MAX_DEPTH = 16;

/**
 * Every string of a parsed document with its control characters replaced
 * (newlines kept), as vm-sync writes them: a results file comes from another
 * job, and not every renderer escapes every field (the scan report's are shown
 * as they are). A document nested deeper than vm-sync's is refused.
 */
function cleaned<T>(source: string, value: T, depth = 0): T {
  if (typeof value === 'string') return vmBlock(value, Number.MAX_SAFE_INTEGER) as T;
  if (value === null || typeof value !== 'object') return value;
  if (depth > MAX_DEPTH) throw invalid(source, `is nested more than ${MAX_DEPTH} levels deep`);
  if (Array.isArray(value)) return value.map((v) => cleaned(source, v, depth + 1)) as T;
  return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, cleaned(source, v, depth + 1)])) as T;
}

/** One VM row, every field the report promises required (a truncated or edited row is refused, not guessed). */
function parseRow(source: string, raw: unknown, i: number): VmReport {
  const at = `vms[${i}]`;
  const row = field(source, at, raw, isObject, 'an object');
  const error = row.error === null ? null : field(source, `${at}.error`, row.error, isObject, 'an object or null');
  const notes = field(source, `${at}.notes`, row.notes, (v): v is unknown[] => Array.isArray(v), 'a list');
  return {
    id: field(source, `${at}.id`, row.id, isString, 'a string'),
    host: field(source, `${at}.host`, row.host, isString, 'a string'),
    state: field(source, `${at}.state`, row.state, oneOf(STATES), `one of ${STATES.join(', ')}`),
    action: field(source, `${at}.action`, row.action, oneOf(ACTIONS), `one of ${ACTIONS.join(', ')}`),
    result: field(source, `${at}.result`, row.result, oneOf(RESULTS), `one of ${RESULTS.join(', ')}`),
    rev_before: field(source, `${at}.rev_before`, row.rev_before, isNullableString, 'a string or null'),
    rev_after: field(source, `${at}.rev_after`, row.rev_after, isNullableString, 'a string or null'),
    files_changed: field(source, `${at}.files_changed`, row.files_changed, isCount, 'a count'),
    bytes_sent: field(source, `${at}.bytes_sent`, row.bytes_sent, isCount, 'a count'),
    duration_ms: field(source, `${at}.duration_ms`, row.duration_ms, isCount, 'a count'),
    verified: field(source, `${at}.verified`, row.verified, isBool, 'true or false'),
    notes: notes.map((note, n) => field(source, `${at}.notes[${n}]`, note, isString, 'a string')),
    error: error
      ? {
          code: field(source, `${at}.error.code`, error.code, oneOf(FAILURE_CODES), 'a vm-sync failure code'),
          message: field(source, `${at}.error.message`, error.message, isString, 'a string'),
        }
      : null,
    staged_at: field(source, `${at}.staged_at`, row.staged_at ?? null, isNullableString, 'a string or null'),
    flipped_at: field(source, `${at}.flipped_at`, row.flipped_at ?? null, isNullableString, 'a string or null'),
    health: field(source, `${at}.health`, row.health ?? 'skipped', oneOf(HEALTH), `one of ${HEALTH.join(', ')}`),
    health_output: field(source, `${at}.health_output`, row.health_output ?? null, isNullableString, 'a string or null'),
    release: field(source, `${at}.release`, row.release ?? null, isNullableString, 'a string or null'),
    drift: parseDrift(source, `${at}.drift`, row.drift),
    post_sync: parsePostSync(source, `${at}.post_sync`, row.post_sync),
  };
}

/** A row's post_sync (exit status and output tail), checked like the rest of the row. */
function parsePostSync(source: string, at: string, raw: unknown): VmReport['post_sync'] {
  if (raw === undefined || raw === null) return null;
  const post = field(source, at, raw, isObject, 'an object or null');
  return {
    exit_code: field(source, `${at}.exit_code`, post.exit_code, (v): v is number | null => v === null || (typeof v === 'number' && Number.isSafeInteger(v)), 'a whole number or null'),
    output_tail: field(source, `${at}.output_tail`, post.output_tail, isString, 'a string'),
  };
}

/** The run's notes: a list of strings, or absent. */
function parseNotes(source: string, raw: unknown): string[] {
  if (raw === undefined || raw === null) return [];
  const notes = field(source, 'notes', raw, (v): v is unknown[] => Array.isArray(v), 'a list');
  return notes.map((note, n) => field(source, `notes[${n}]`, note, isString, 'a string'));
}

/** What rsync_excludes left out (sync), checked: a count and lists of strings; null when absent. */
function parseExcluded(source: string, raw: unknown): ExcludedReport | null {
  if (raw === undefined || raw === null) return null;
  const excluded = field(source, 'excluded', raw, isObject, 'an object or null');
  const strings = (name: 'paths' | 'patterns'): string[] =>
    field(source, `excluded.${name}`, excluded[name], (v): v is unknown[] => Array.isArray(v), 'a list').map((p, n) => field(source, `excluded.${name}[${n}]`, p, isString, 'a string'));
  return { count: field(source, 'excluded.count', excluded.count, isCount, 'a count'), paths: strings('paths'), patterns: strings('patterns') };
}

function parseShardField(source: string, raw: unknown): Shard | null {
  if (raw === undefined || raw === null) return null;
  const shard = field(source, 'shard', raw, isObject, 'an object');
  const count = field(source, 'shard.count', shard.count, (v): v is number => isCount(v) && v >= 1 && v <= MAX_SHARDS, `a count from 1 to ${MAX_SHARDS}`);
  const index = field(source, 'shard.index', shard.index, (v): v is number => isCount(v) && v >= 1 && v <= count, `from 1 to ${count}`);
  return { index, count };
}

/** Parses one results document; anything that is not one is `results_invalid`, naming the file and the field. */
export function parseResults(input: ResultsSource): ParsedResults {
  let raw: unknown;
  try {
    raw = JSON.parse(input.text);
  } catch {
    throw invalid(input.source, 'is not JSON');
  }
  const doc = cleaned(input.source, field(input.source, 'the document', raw, isObject, 'a JSON object'));
  if (isObject(doc.truncated)) throw invalid(input.source, 'was shortened to fit an output (it has "truncated"): write the shard results with the results-path input instead of the results output');
  const command = field(input.source, 'command', doc.command, oneOf(COMMANDS), `one of ${COMMANDS.join(', ')}`);
  const rows = field(input.source, 'vms', doc.vms, (v): v is unknown[] => Array.isArray(v), 'a list');
  const error = doc.error === undefined ? null : field(input.source, 'error', doc.error, isObject, 'an object');
  const report: RunReport = {
    command,
    commit: doc.commit === null ? '' : field(input.source, 'commit', doc.commit, isString, 'a string or null'),
    dry_run: field(input.source, 'dry_run', doc.dry_run ?? false, isBool, 'true or false'),
    // The scan report is vm-sync's own and is shown through the escaping renderers; its shape is checked where it matters.
    scan: doc.scan === null || doc.scan === undefined ? null : (field(input.source, 'scan', doc.scan, isObject, 'an object or null') as unknown as ScanReport),
    vms: rows.map((row, i) => parseRow(input.source, row, i)),
    shard: parseShardField(input.source, doc.shard),
    notes: parseNotes(input.source, doc.notes),
    excluded: parseExcluded(input.source, doc.excluded),
  };
  if (report.scan && !Array.isArray(report.scan.findings)) throw invalid(input.source, 'scan.findings is not a list');
  return {
    source: input.source,
    report,
    error: error ? { code: field(input.source, 'error.code', error.code, isString, 'a string'), message: field(input.source, 'error.message', error.message, isString, 'a string') } : null,
  };
}

/**
 * Merges the results of a sharded run (and, optionally, of the scan job) into
 * one report, as if one runner had done it all. A pure function of its input:
 * - every shard 1..N must be there; a missing one fails each of its VMs with
 *   `shard_missing` (or, without the config, fails the merge);
 * - a shard that failed before reaching its VMs fails each of them with its code;
 * - the shards must agree on N, the command and the commit; a VM in two shards,
 *   or a shard twice, is `results_invalid` (the inputs are not one deploy).
 */
export function mergeResults(sources: readonly ResultsSource[], options: MergeOptions = {}): RunReport {
  const parsed = sources.map(parseResults);
  const scans = parsed.filter((p) => p.report.command === 'scan');
  const shards = parsed.filter((p) => p.report.command !== 'scan');

  const counts = new Set(shards.map((p) => p.report.shard?.count ?? 1));
  if (options.expected !== undefined) counts.add(options.expected);
  if (counts.size > 1) throw invalid(shards.map((p) => p.source).join(', '), `the results disagree on the number of shards (${[...counts].sort((a, b) => a - b).join(', ')}): merge the results of one deploy, with the shards input set to its matrix size`);
  const expected = [...counts][0];
  if (expected === undefined) {
    throw new VmSyncError('results_invalid', 'no shard results to merge (only scan results, or none at all): set the shards input (the number of shards) so every shard is reported missing, or pass the shards\' results files');
  }

  const byIndex = new Map<number, ParsedResults>();
  for (const p of shards) {
    const index = p.report.shard?.index ?? 1;
    const other = byIndex.get(index);
    if (other) throw invalid(p.source, `shard ${index}/${expected} is also in ${other.source}: pass each shard's results once`);
    byIndex.set(index, p);
  }
  const commands = new Set(shards.map((p) => p.report.command));
  if (commands.size > 1) throw invalid(shards.map((p) => p.source).join(', '), `the shards ran different commands (${[...commands].join(', ')})`);
  const dryRuns = new Set(shards.filter((p) => p.report.vms.length > 0 || p.error).map((p) => p.report.dry_run));
  if (dryRuns.size > 1) throw invalid(shards.map((p) => p.source).join(', '), 'some shards were dry runs and some were not: merge the results of one deploy');
  const commits = new Set([...shards, ...scans].map((p) => p.report.commit).filter((c) => c !== ''));
  if (commits.size > 1) throw invalid([...shards, ...scans].map((p) => p.source).join(', '), `the results are of different commits (${[...commits].join(', ')}): merge the results of one deploy`);

  const rows = new Map<string, VmReport>();
  const add = (row: VmReport, source: string): void => {
    if (rows.has(row.id)) throw invalid(source, `VM ${JSON.stringify(row.id)} is in two shards' results`);
    rows.set(row.id, row);
  };
  // Which shard each configured VM is in: a row in another shard's results is not that VM's (a VM's shard is a hash of its id).
  const owner = new Map<string, number>();
  if (options.vmsOfShard) {
    for (let index = 1; index <= expected; index++) for (const vm of options.vmsOfShard({ index, count: expected })) owner.set(vm.id, index);
  }
  const missing: number[] = [];
  const failed: ShardsReport['failed'] = [];
  for (let index = 1; index <= expected; index++) {
    const label = shardLabel({ index, count: expected });
    const p = byIndex.get(index);
    if (!p) {
      missing.push(index);
      for (const vm of options.vmsOfShard?.({ index, count: expected }) ?? []) {
        add(failedRow(vm, { code: 'shard_missing', message: `shard ${label}, which has ${vm.id}, wrote no results: its job failed or was cancelled before the end, so what ${vm.id} serves now is unknown. Open that job's log, check the VMs with ${invocation('status', [['shard', label]])}, then re-run the failed job.` }), `shard ${label}`);
      }
      continue;
    }
    for (const row of p.report.vms) {
      const home = owner.get(row.id);
      if (home !== undefined && home !== index && !rows.has(row.id)) throw invalid(p.source, `VM ${JSON.stringify(row.id)} is in shard ${shardLabel({ index: home, count: expected })}, not in shard ${label} whose results these are`);
      add(row, p.source);
    }
    if (p.error) {
      failed.push({ index, ...p.error });
      const code: FailureCode = (FAILURE_CODES as readonly string[]).includes(p.error.code) ? (p.error.code as FailureCode) : 'internal_error';
      for (const vm of options.vmsOfShard?.({ index, count: expected }) ?? []) {
        if (!rows.has(vm.id)) add(failedRow(vm, { code, message: `shard ${label} failed before reaching ${vm.id}: ${p.error.message}` }), p.source);
      }
    }
  }

  const rank = new Map((options.order ?? []).map((id, i) => [id, i]));
  const vms = [...rows.values()].sort((a, b) => (rank.get(a.id) ?? Infinity) - (rank.get(b.id) ?? Infinity) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const flips = vms.map((vm) => (vm.flipped_at ? Date.parse(vm.flipped_at) : NaN)).filter((t) => Number.isFinite(t));
  // The scan job's verdict when there is one (the shards then skip it), else a shard's own scan.
  const scan = scans.find((p) => p.report.scan)?.report.scan ?? shards.find((p) => p.report.scan?.blocked)?.report.scan ?? shards.find((p) => p.report.scan)?.report.scan ?? null;
  return {
    command: shards[0]?.report.command ?? 'sync',
    commit: [...commits][0] ?? '',
    dry_run: shards.some((p) => p.report.dry_run),
    scan,
    rollout: null,
    // Fleet-wide: the skew between the first and the last VM to flip, over every shard.
    flip_skew_ms: flips.length > 0 ? Math.max(...flips) - Math.min(...flips) : null,
    vms,
    shards: { expected, received: [...byIndex.keys()].sort((a, b) => a - b), missing, failed },
    // Every shard deployed the same tree with the same config: their run notes repeat, said once.
    notes: [...new Set(shards.flatMap((p) => p.report.notes ?? []))],
    excluded: shards.find((p) => p.report.excluded)?.report.excluded ?? null,
  };
}
