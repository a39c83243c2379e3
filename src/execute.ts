import type { Config } from './config/types.js';
import { shardLabel } from './config/shard.js';
import { mergeResults } from './report/merge.js';
import { readResultsFiles } from './report/results-files.js';
import { VmSyncError } from './errors.js';
import { newRunId } from './journal/journal.js';
import { journalRun, journalVms } from './journal/record.js';
import { exitCodeFor, runInspect, runRollback, runScan, runSync, selectVms, type InspectOptions, type RollbackOptions, type ScanOptions, type SyncOptions } from './sync/fleet.js';
import type { RunReport } from './sync/types.js';

/** One engine command, as the CLI and the Action both build it from their input. */
export type Command =
  | { name: 'sync'; options: SyncOptions }
  | { name: 'rollback'; options: RollbackOptions }
  | { name: 'verify' | 'status'; options: InspectOptions }
  | { name: 'scan'; options: ScanOptions };

/**
 * Runs one command against the fleet and returns its report. The CLI
 * (cli.ts) and the Action (main.ts) only parse their input into a
 * {@link Command} and present the report; everything between is here.
 * A sharded run's report says which shard it covered, so `report --merge`
 * can tell a missing shard from an empty one. Every run but a scan (which
 * reaches no VM) gets a run id and a line in the runner-host journal, also
 * when it fails before reaching its VMs.
 */
export async function execute(config: Config, command: Command): Promise<RunReport> {
  const runId = command.options.runId ?? newRunId();
  const started = new Date();
  const withId = { ...command, options: { ...command.options, runId } } as Command;
  let report: RunReport;
  try {
    report = await shardedRun(config, withId);
  } catch (error) {
    if (command.name !== 'scan') {
      await journalRun(config, { runId, started, command: command.name, commit: (command.name === 'rollback' ? command.options.to : command.options.commit) ?? null, dryRun: isDryRun(command), shard: command.options.shard, exitCode: exitCodeOf(error), vms: [], error }, command.options.events);
    }
    throw error;
  }
  const notes = [...(report.notes ?? [])];
  if (command.name !== 'scan') {
    const warning = await journalRun(config, { runId, started, command: command.name, commit: report.commit, dryRun: report.dry_run, shard: report.shard, exitCode: exitCodeFor(report), vms: journalVms(report), error: null }, command.options.events);
    if (warning) notes.push(warning);
  }
  return { ...report, run_id: runId, ...(notes.length > 0 ? { notes } : {}) };
}

function isDryRun(command: Command): boolean {
  return command.name === 'sync' && Boolean(command.options.dryRun);
}

/** The exit code a run that threw ends with (as the CLI maps it): 2 for a config error, else 1. */
function exitCodeOf(error: unknown): number {
  return error instanceof VmSyncError && error.code === 'config_invalid' ? 2 : 1;
}

async function shardedRun(config: Config, command: Command): Promise<RunReport> {
  const shard = command.options.shard;
  if (shard && command.name !== 'scan' && selectVms(config, command.options.vms, shard).length === 0) {
    // Nothing to do here, and nothing to fetch, export or scan for it: the other shards have the VMs.
    command.options.events?.info(null, `shard ${shardLabel(shard)} has no VM${command.options.vms?.length ? ' among those selected' : ''}: nothing to do`);
    return { command: command.name, commit: '', dry_run: isDryRun(command), scan: null, vms: [], shard };
  }
  const report = await run(config, command);
  return shard ? { ...report, shard } : report;
}

function run(config: Config, command: Command): Promise<RunReport> {
  switch (command.name) {
    case 'sync':
      return runSync(config, command.options);
    case 'rollback':
      return runRollback(config, command.options);
    case 'scan':
      return runScan(config, command.options);
    default:
      return runInspect(config, command.name, command.options);
  }
}

/**
 * `report --merge` / `command: report`: one report from the results files
 * of a sharded run. With the config, each VM of a missing or failed shard gets
 * its own failed row, in config order; `expected` is N when the caller knows
 * it; `allowMissing` (the Action) treats an absent path as "no shard wrote
 * results".
 */
export function mergeShards(config: Config | null, paths: string[], options: { expected?: number; allowMissing?: boolean } = {}): RunReport {
  return mergeResults(readResultsFiles(paths, { allowMissing: options.allowMissing }), {
    expected: options.expected,
    vmsOfShard: config ? (shard) => selectVms(config, undefined, shard) : undefined,
    order: config?.vms.map((vm) => vm.id),
  });
}
