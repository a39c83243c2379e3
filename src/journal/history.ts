import fs from 'node:fs';
import type { Config } from '../config/types.js';
import { getErrorMessage, VmSyncError } from '../errors.js';
import { KnownHosts } from '../remote/known-hosts.js';
import { parseRevisions, type Revision } from '../remote/revisions.js';
import { VmSession } from '../remote/session.js';
import { RemoteTarget } from '../remote/target.js';
import { selectVms } from '../sync/fleet.js';
import { readJournal, type JournalRecord } from './journal.js';
import { journalOf } from './record.js';

/** Most records (and revisions.log lines) `history` shows; `--limit` goes up to it. */
export const HISTORY_MAX = 1000;
/** Default `--limit`. */
export const HISTORY_DEFAULT = 20;
/** How long reading a VM's revisions.log may take once connected. */
const READ_BUDGET_MS = 30_000;

/** What `vm-sync history` shows: the `--json` document. */
export interface HistoryReport {
  command: 'history';
  journal: {
    /** The journal file (its rotated predecessor, `journal.1.jsonl`, is read too). */
    path: string;
    /** The newest `limit` records (of the VM, with `--vm`), oldest first. */
    records: JournalRecord[];
    /** How many records matched before `limit`. */
    total: number;
    /** Lines that were not records (damaged, edited): skipped, never shown. */
    skipped: number;
  };
  /** With `--vm`: that VM's revisions.log; null without. */
  vm: {
    id: string;
    /** Whether the VM has a revisions.log (null when it could not be asked). */
    present: boolean | null;
    /** Its newest `limit` lines that are records, oldest first. */
    revisions: Revision[];
    /** Lines that were not records (garbled, hostile): skipped and counted, never shown. */
    skipped: number;
    /** Why it could not be read (one attempt), or null. */
    error: { code: string; message: string } | null;
  } | null;
}

/** Reads the last `limit` lines of one VM's revisions.log: one connection, one attempt, the connect timeout of the config. */
async function vmRevisions(config: Config, id: string, limit: number): Promise<NonNullable<HistoryReport['vm']>> {
  const [vm] = selectVms(config, [id]);
  const row: NonNullable<HistoryReport['vm']> = { id: vm.id, present: null, revisions: [], skipped: 0, error: null };
  let session: VmSession | null = null;
  let target: RemoteTarget | null = null;
  try {
    const knownHosts = new KnownHosts(fs.readFileSync(config.knownHostsPath, 'utf8'));
    session = await VmSession.open(vm, knownHosts, { connectTimeoutMs: config.sync.connectTimeoutS * 1000, signal: AbortSignal.timeout(config.sync.connectTimeoutS * 1000 + READ_BUDGET_MS) });
    target = new RemoteTarget(session, vm.repoPath, Date.now() + READ_BUDGET_MS, AbortSignal.timeout(READ_BUDGET_MS + 5000));
    const read = await target.revisions(limit);
    const parsed = parseRevisions(read.lines);
    row.present = read.present;
    row.revisions = parsed.revisions;
    row.skipped = parsed.skipped;
  } catch (error) {
    row.error = { code: error instanceof VmSyncError ? error.code : 'remote_command_failed', message: getErrorMessage(error) };
  } finally {
    target?.close();
    session?.dispose();
  }
  return row;
}

/**
 * `vm-sync history`: the runner-host journal (the newest `limit` runs; with
 * `vm`, the runs that included that VM) and, with `vm`, that VM's
 * revisions.log. Read-only everywhere.
 */
export async function runHistory(config: Config, options: { vm?: string; limit?: number } = {}): Promise<HistoryReport> {
  const limit = options.limit ?? HISTORY_DEFAULT;
  if (!Number.isInteger(limit) || limit < 1 || limit > HISTORY_MAX) throw new VmSyncError('config_invalid', `--limit must be a whole number from 1 to ${HISTORY_MAX}, not '${options.limit}'`);
  if (options.vm !== undefined) selectVms(config, [options.vm]); // an unknown id is a usage error, before anything is read
  const file = journalOf(config);
  const read = readJournal(file);
  const matching = options.vm === undefined ? read.records : read.records.filter((r) => r.vms.some((vm) => vm.id === options.vm));
  const journal = { path: file, records: matching.slice(-limit), total: matching.length, skipped: read.skipped };
  const vm = options.vm === undefined ? null : await vmRevisions(config, options.vm, limit);
  return { command: 'history', journal, vm };
}
