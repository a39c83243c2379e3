import type { FailureCode } from '../errors.js';
import type { ScanReport } from '../scan/gate.js';
import type { ExcludedReport } from './excluded.js';

/**
 * Where a VM stood before the run, relative to the deploy commit. `broken`:
 * the target is a symlink to a release that is gone (nothing is served).
 */
export type VmState = 'fresh' | 'up-to-date' | 'behind' | 'ahead' | 'diverged' | 'broken' | 'unknown';

/** What the run did (or, with --dry-run, would do) on a VM. */
export type VmAction = 'deploy' | 'none' | 'refuse' | 'rollback' | 'verify' | 'status';

/** How it ended for the VM. */
export type VmResultKind = 'success' | 'failed' | 'refused' | 'skipped';

/** One VM's row of the report: the `vms[]` entries of the `--json` document. */
export interface VmReport {
  id: string;
  host: string;
  state: VmState;
  action: VmAction;
  result: VmResultKind;
  rev_before: string | null;
  rev_after: string | null;
  files_changed: number;
  bytes_sent: number;
  duration_ms: number;
  verified: boolean;
  /** Things the user should know that are not failures (a directory kept aside, a diverged history). */
  notes: string[];
  error: { code: FailureCode; message: string } | null;
  /** When the VM's new release was complete on it, not yet live (ISO 8601, ms); null when none was staged. */
  staged_at: string | null;
  /** When the VM's live path was switched to the new release (ISO 8601, ms); null when it was not. */
  flipped_at: string | null;
  /** The health check after the flip: `skipped` when there is no health_command or the VM did not flip. */
  health: 'passed' | 'failed' | 'skipped';
  /** The health command's last output lines when it failed (bounded, cleaned). */
  health_output: string | null;
  /** The release live at the end (atomic layout), null when unknown or not vm-sync's. */
  release: string | null;
  /** `verify --deep`: how what the VM serves differs from its commit's tree; null when not checked. */
  drift?: DriftReport | null;
  /** post_sync_command on this VM; null when it did not run. */
  post_sync?: PostSyncReport | null;
}

/**
 * How post_sync_command ended on a VM: its exit status (null: it did not
 * finish) and the end of its output, stdout and stderr in order: at most the
 * last 200 lines and 64 KB, escape sequences and control characters removed,
 * secrets masked (src/remote/mask.ts).
 */
export interface PostSyncReport {
  exit_code: number | null;
  output_tail: string;
}

/**
 * What `verify --deep` found on a VM: how many deployed paths it compared,
 * how many differ (a symlink's target counts as changed), and the first of
 * them, made printable (a VM names them: never shown raw).
 */
export interface DriftReport {
  checked: number;
  changed: number;
  missing: number;
  extra: number;
  paths: Array<{ path: string; what: 'changed' | 'missing' | 'extra'; detail: string }>;
}

/**
 * A VM's row before anything is known: failed, until the pipeline says
 * otherwise. Also the row of a VM the run could not finish (with `error`).
 */
export function failedRow(vm: { id: string; host: string }, error: VmReport['error'] = null, notes: string[] = []): VmReport {
  return {
    id: vm.id,
    host: vm.host,
    state: 'unknown',
    action: 'none',
    result: 'failed',
    rev_before: null,
    rev_after: null,
    files_changed: 0,
    bytes_sent: 0,
    duration_ms: 0,
    verified: false,
    notes,
    error,
    staged_at: null,
    flipped_at: null,
    health: 'skipped',
    health_output: null,
    release: null,
    drift: null,
    post_sync: null,
  };
}

/**
 * What `commit` is when the user named none (status, verify, scan): the tip of
 * `ref` (`origin/main`), and whether this run fetched it. `note` says it in
 * words: `fetched just now`, or why it is the tip as last fetched.
 */
export interface Baseline {
  ref: string;
  fetched: boolean;
  note: string;
}

/** The whole run: the `--json` document. */
export interface RunReport {
  command: 'sync' | 'rollback' | 'verify' | 'status' | 'scan';
  /** This run's id, as in the runner-host journal and each VM's revisions.log (absent: a merged report). */
  run_id?: string;
  commit: string;
  /** status, verify, scan: what `commit` was taken from (absent for other commands). */
  baseline?: Baseline | null;
  dry_run: boolean;
  /** Things about the whole run the user should know that are not failures (committed paths not deployed). */
  notes?: string[];
  /** sync: the committed paths `rsync_excludes` leaves out of the deployed tree; null when not listed (nothing exported). */
  excluded?: ExcludedReport | null;
  /** The secret-scan gate's outcome; null when scanning is disabled or the command does not scan. */
  scan: ScanReport | null;
  /** How the release was rolled out (sync of an atomic layout), null for other commands. */
  rollout?: RolloutReport | null;
  /** Last flip minus first flip over the VMs that flipped, in ms; null when none flipped. */
  flip_skew_ms?: number | null;
  /** Empty when a dry run's scan blocked it (no VM was contacted); a blocked sync has a `secrets_found` row per VM it did not send it to. */
  vms: VmReport[];
  /** The shard this run covered (`--shard K/N`); absent when it covered the whole selection. */
  shard?: { index: number; count: number } | null;
  /** `report --merge`: how the shards of the deploy came back (missing and failed ones fail the run). */
  shards?: ShardsReport | null;
}

/** How the shards of one deploy came back: what `report --merge` adds to the report. */
export interface ShardsReport {
  /** How many shards the deploy was split into (N of `K/N`). */
  expected: number;
  /** The shards whose results were found, ascending. */
  received: number[];
  /** The shards with no results: their job failed or was cancelled before writing them. */
  missing: number[];
  /** Shards whose job wrote results saying it failed before reaching its VMs. */
  failed: Array<{ index: number; code: string; message: string }>;
}

/** The rollout of one run: its batches (VM ids, in flip order) and whether it stopped early. */
export interface RolloutReport {
  strategy: 'all-at-once' | 'rolling';
  batches: string[][];
  halted: boolean;
  halted_reason: string | null;
}

/**
 * The named steps of the engine, for `--log-format json`. A VM's events come
 * in this order: `prepare` (connect, lock, probe, decide), `transfer` (stage
 * the release), `flip`, `verify`, `health`, `finish` (prune, post_sync_command,
 * unlock; its last line is the VM's result). `rollback` and `inspect` (status,
 * verify) are the phases of those commands; `export` and `scan` are the
 * run's own (the scan runs while the VMs are in `prepare`).
 */
export type EnginePhase = 'prepare' | 'transfer' | 'flip' | 'verify' | 'health' | 'finish' | 'rollback' | 'inspect' | 'export' | 'scan';

/** How much an engine line matters: `-q` keeps warn and error, `-v` adds debug. */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

/**
 * Progress and log lines from the engine; the CLI prints them, the action
 * groups them. `phase` names the step a line belongs to (absent: no single
 * one). The optional levels fall back to `info` (warn, error) or to nothing
 * (debug), so a sink that knows only `info` sees what it always saw.
 */
export interface EngineEvents {
  info(vmId: string | null, message: string, phase?: EnginePhase): void;
  progress(vmId: string, percent: number, rate: string): void;
  /** Detail for `-v`: connection attempts, each phase starting. */
  debug?(vmId: string | null, message: string, phase?: EnginePhase): void;
  /** Something went wrong and the run goes on (a retry). */
  warn?(vmId: string | null, message: string, phase?: EnginePhase): void;
  /** A VM's run ended in failure (its result line). */
  error?(vmId: string | null, message: string, phase?: EnginePhase): void;
  /** A VM's pipeline is starting (the action posts a pending status). */
  vmStarted?(vmId: string): void;
  /** A VM's pipeline ended, successfully or not. */
  vmFinished?(report: VmReport): void;
}

export const silentEvents: EngineEvents = { info: () => undefined, progress: () => undefined };

/** Sends one line at `level`, falling back to `info` when the sink has no such level (debug: dropped). */
export function logAt(events: EngineEvents, level: LogLevel, vmId: string | null, message: string, phase?: EnginePhase): void {
  if (level === 'debug') events.debug?.(vmId, message, phase);
  else if (level === 'warn' && events.warn) events.warn(vmId, message, phase);
  else if (level === 'error' && events.error) events.error(vmId, message, phase);
  else events.info(vmId, message, phase);
}

/**
 * Announces a VM's final row: one `finish` line with its result (an error
 * line when it failed or was refused, a warning when skipped), then
 * `vmFinished`. Every command ends each VM through here.
 */
export function announceRow(events: EngineEvents, report: VmReport): VmReport {
  const level: LogLevel = report.result === 'success' ? 'info' : report.result === 'skipped' ? 'warn' : 'error';
  logAt(events, level, report.id, report.error ? `${report.result}: ${report.error.code}: ${report.error.message}` : report.result, 'finish');
  events.vmFinished?.(report);
  return report;
}
