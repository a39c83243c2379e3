import type { Config } from '../config/types.js';
import { shardLabel, type Shard } from '../config/shard.js';
import { getErrorMessage, VmSyncError } from '../errors.js';
import { stateDirOf } from '../git/exports.js';
import { vmText } from '../remote/untrusted.js';
import type { EngineEvents, RunReport } from '../sync/types.js';
import { appendJournal, JOURNAL_VERSION, journalPath, triggerFromEnv, type JournalRecord, type JournalVm } from './journal.js';

/** The journal of a config's runner-host clone: in its state directory (`/srv/.app.vm-sync/journal.jsonl` for `/srv/app`). */
export function journalOf(config: Config): string {
  return journalPath(stateDirOf(config.repository.mainRepoPath));
}

/** What a finished run tells the journal. */
export interface RunOutcome {
  runId: string;
  started: Date;
  command: string;
  commit: string | null;
  dryRun: boolean;
  shard: Shard | null | undefined;
  exitCode: number;
  /** What the run ended with on each VM (empty when it stopped before them). */
  vms: JournalVm[];
  /** Why it stopped before reaching its VMs. */
  error: unknown;
}

/** A run report's rows as the journal keeps them. */
export function journalVms(report: RunReport): JournalVm[] {
  return report.vms.map((vm) => ({ id: vm.id, state: vm.state, action: vm.action, result: vm.result, code: vm.error?.code ?? null, rev: vm.rev_after }));
}

/**
 * Appends a run to the config's journal. Never fails the run: a journal that
 * cannot be written is a warning (returned, and said through `events`).
 */
export async function journalRun(config: Config, outcome: RunOutcome, events?: EngineEvents): Promise<string | null> {
  const record: JournalRecord = {
    v: JOURNAL_VERSION,
    run_id: outcome.runId,
    started_at: outcome.started.toISOString(),
    ended_at: new Date().toISOString(),
    command: outcome.command,
    trigger: triggerFromEnv(),
    commit: outcome.commit || null,
    dry_run: outcome.dryRun,
    shard: outcome.shard ? shardLabel(outcome.shard) : null,
    exit_code: outcome.exitCode,
    error: outcome.error ? { code: outcome.error instanceof VmSyncError ? outcome.error.code : 'internal_error', message: vmText(getErrorMessage(outcome.error), 500) } : null,
    vms: outcome.vms,
  };
  const file = journalOf(config);
  let warning: string | null;
  try {
    warning = await appendJournal(file, record);
  } catch (error) {
    warning = `could not append this run to the journal ${file} (vm-sync history will not show it): ${getErrorMessage(error)}`;
  }
  if (warning) events?.info(null, warning);
  return warning;
}
