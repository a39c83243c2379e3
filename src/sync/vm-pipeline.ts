import crypto from 'node:crypto';
import type { Config, VmConfig } from '../config/types.js';
import { invocation, option } from '../advice.js';
import { getErrorMessage, VmSyncError } from '../errors.js';
import type { KnownHosts } from '../remote/known-hosts.js';
import { RshBridge } from '../remote/rsh-bridge.js';
import { runRsync } from '../remote/rsync.js';
import { VmSession } from '../remote/session.js';
import { RemoteTarget, type Probe } from '../remote/target.js';
import { compareTrees, driftReport, sentinelMatches, sharedLinkTarget, type ExpectedTree } from './drift.js';
import { dryRunNotes, stateDirOfTarget, targetPlan } from './dry-run.js';
import { classifyState, type History } from './state.js';
import { failedRow, logAt, type EngineEvents, type EnginePhase, type VmReport } from './types.js';

/** Everything a per-VM run needs, shared by all VMs of one run. */
export interface RunContext {
  config: Config;
  knownHosts: KnownHosts;
  history: History;
  /** The full hash being deployed or checked. */
  commit: string;
  /** Clean export of `commit` on the runner host (sync only). */
  exportDir: string;
  force: boolean;
  events: EngineEvents;
  /** Aborts every VM (Ctrl-C, job cancelled). */
  signal?: AbortSignal;
  /** First retry delay; doubles each time, plus jitter. */
  retryBaseMs: number;
}

/** Any error as a {@link VmSyncError} (a stray one is a remote command that failed). */
export function toFailure(error: unknown): VmSyncError {
  return error instanceof VmSyncError ? error : new VmSyncError('remote_command_failed', getErrorMessage(error), { cause: error });
}

/** Waits `ms`, or less when `signal` aborts. */
export const sleep = (ms: number, signal?: AbortSignal): Promise<void> =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => { clearTimeout(timer); resolve(); }, { once: true });
  });

/**
 * Runs `attempt` under the VM's hard timeout, retrying network failures
 * (unreachable, timeout of one step) up to `retries` times with exponential
 * backoff and jitter. Never throws: the outcome is always a report row.
 */
async function withBudget(
  vm: VmConfig,
  ctx: RunContext,
  phase: EnginePhase,
  retries: number,
  attempt: (report: VmReport, signal: AbortSignal, deadlineAt: number) => Promise<void>,
): Promise<VmReport> {
  const started = Date.now();
  const deadlineAt = started + ctx.config.sync.timeoutS * 1000;
  const deadline = AbortSignal.timeout(ctx.config.sync.timeoutS * 1000);
  const signal = ctx.signal ? AbortSignal.any([ctx.signal, deadline]) : deadline;
  const finish = (report: VmReport): VmReport => ({ ...report, duration_ms: Date.now() - started });
  const earlier: string[] = []; // failed attempts, reported as notes on the final row
  for (let attemptNo = 0; ; attemptNo++) {
    const report = failedRow(vm);
    report.notes.push(...earlier);
    try {
      await attempt(report, signal, deadlineAt);
      return finish({ ...report, error: null });
    } catch (error) {
      let failure = toFailure(error);
      if (signal.aborted) {
        failure = ctx.signal?.aborted
          ? new VmSyncError('interrupted', `run interrupted before ${vm.id} finished; what it serves now is in rev_after`)
          : new VmSyncError('timeout', `${vm.id} did not finish within sync.timeout_s=${ctx.config.sync.timeoutS}s (last step: ${failure.message})`);
      }
      report.result = report.result === 'refused' ? 'refused' : 'failed';
      report.error = { code: failure.code, message: failure.message };
      if (!failure.retryable || signal.aborted || attemptNo >= retries) {
        // An earlier attempt that failed the same way adds nothing; say how many there were instead.
        const same = `${failure.code}: ${failure.message}`;
        report.notes = report.notes.filter((note) => !note.endsWith(same));
        if (attemptNo > 0) report.error.message += ` (${attemptNo + 1} attempts)`;
        return finish(report);
      }
      earlier.push(`attempt ${attemptNo + 1} failed: ${failure.code}: ${failure.message}`);
      const delay = ctx.retryBaseMs * 2 ** attemptNo * (1 + Math.random());
      logAt(ctx.events, 'warn', vm.id, `${failure.code}: ${failure.message} — retry ${attemptNo + 1}/${retries} in ${(delay / 1000).toFixed(1)}s`, phase);
      await sleep(delay, signal);
    }
  }
}

/** Connects, runs `body` with the session and target, and always closes the connection. */
async function withTarget<T>(vm: VmConfig, ctx: RunContext, phase: EnginePhase, signal: AbortSignal, deadlineAt: number, body: (session: VmSession, target: RemoteTarget) => Promise<T>): Promise<T> {
  const session = await connect(vm, ctx.events, phase, ctx.config.sync.connectTimeoutS, () => VmSession.open(vm, ctx.knownHosts, { connectTimeoutMs: ctx.config.sync.connectTimeoutS * 1000, signal }));
  try {
    return await body(session, new RemoteTarget(session, vm.repoPath, deadlineAt, signal));
  } finally {
    session.dispose();
  }
}

/**
 * One SSH connection attempt, with `-v` lines before and after it (how long
 * the handshake took, or how it failed): what an operator needs to tell a
 * slow VM from an unreachable one.
 */
export async function connect<T>(vm: VmConfig, events: EngineEvents, phase: EnginePhase, connectTimeoutS: number, open: () => Promise<T>): Promise<T> {
  const via = vm.jump ? ` via ${vm.jump.name}` : '';
  logAt(events, 'debug', vm.id, `connecting to ${vm.user}@${vm.host}:${vm.port}${via} (connect_timeout_s=${connectTimeoutS})`, phase);
  const started = Date.now();
  try {
    const opened = await open();
    logAt(events, 'debug', vm.id, `connected in ${Date.now() - started} ms`, phase);
    return opened;
  } catch (error) {
    logAt(events, 'debug', vm.id, `connection failed after ${Date.now() - started} ms: ${toFailure(error).code}`, phase);
    throw error;
  }
}

const FULL_SHA = /^[0-9a-f]{40}$/;

/** The commit a probe shows live, or null: only a full hash is ever reported as a rev. */
export function liveRev(probe: Probe): string | null {
  return probe.rev !== null && FULL_SHA.test(probe.rev.trim()) ? probe.rev.trim() : null;
}

/**
 * Where the VM stands against the commit. A sentinel that is not a regular
 * file (a symlink, FIFO, directory) is never read or followed: it is an error,
 * or with --force a VM in an unknown state that gets a fresh release.
 */
async function stateOf(vm: VmConfig, probe: Probe, ctx: RunContext, force: boolean): Promise<VmReport['state']> {
  if (probe.sentinel !== 'regular' && probe.sentinel !== 'absent') {
    if (force) return 'unknown';
    throw new VmSyncError(
      'sentinel_unreadable',
      `${probe.target}/.sync_rev on ${vm.id} is ${probe.sentinel === 'unreadable' ? 'not readable' : `a ${probe.sentinel}, not a file`}: vm-sync never follows or reads it. Remove it, or run ${invocation('sync', [['force'], ['vm', vm.id]])} to replace it with a new release.`,
    );
  }
  return classifyState(vm.id, probe.rev, ctx.commit, ctx.history, probe.kind);
}

/**
 * `vm-sync sync --dry-run` on one VM: compares the export with what is live
 * now; nothing is written on the VM and no lock is taken.
 */
export function dryRunVm(vm: VmConfig, ctx: RunContext): Promise<VmReport> {
  return withBudget(vm, ctx, 'prepare', ctx.config.sync.retries, (report, signal, deadlineAt) =>
    withTarget(vm, ctx, 'prepare', signal, deadlineAt, (session, target) => dryRun(vm, ctx, session, target, report, signal)),
  );
}

/**
 * Compares the export with what a sync would start from, and says what it
 * would do, in words; nothing is written on the VM and no lock is taken.
 * It compares with the live release, or the directory at the target (which
 * the real sync hard-links from, then moves aside), or with nothing (a new
 * release from scratch): see {@link targetPlan}.
 */
async function dryRun(vm: VmConfig, ctx: RunContext, session: VmSession, target: RemoteTarget, report: VmReport, signal: AbortSignal): Promise<void> {
  const before = await target.probe();
  report.rev_before = report.rev_after = liveRev(before);
  report.release = releaseOf(before);
  report.state = await stateOf(vm, before, ctx, ctx.force);
  report.action = report.state === 'up-to-date' && !ctx.force ? 'none' : report.state === 'ahead' && !ctx.force ? 'refuse' : 'deploy';
  if (before.lock) report.notes.push(`lock present: ${before.lock.record || '(empty owner)'}`);
  if (report.state === 'broken') report.notes.push(brokenNote(before));
  const plan = targetPlan(before, ctx.config.repository.layout);
  if (plan.wouldFail && report.action === 'deploy') {
    throw new VmSyncError('remote_command_failed', `a sync would fail on ${vm.id}: ${plan.wouldFail} (${before.target}). Remove it, or set repository.layout: atomic (which moves it aside and keeps it).`);
  }
  const bridge = await RshBridge.start(session);
  try {
    // A path that cannot exist on the VM stands for "nothing": rsync's dry run then lists the whole tree as added.
    const nothing = `${stateDirOfTarget(before.target)}/releases/${ctx.commit}.dry-run-${crypto.randomBytes(6).toString('hex')}`;
    const dest = plan.compareWith === 'release' && before.currentRelease ? before.currentRelease : plan.compareWith === 'target' ? before.target : nothing;
    const stats = await runRsync({ source: ctx.exportDir, rsh: bridge.rshCommand, excludes: rsyncExcludes(ctx.config, ctx.config.repository.sharedPaths.map((s) => s.path)), ioTimeoutS: 30, dest, linkDest: null, dryRun: true }, bridge.env, { signal });
    const counts = stats.counts ?? { add: 0, change: 0, delete: 0 };
    // An up-to-date VM gets nothing (unless forced): its differences are drift, which verify --deep reports.
    report.files_changed = report.action === 'deploy' ? stats.filesChanged : 0;
    if (report.action === 'deploy') report.notes.push(...dryRunNotes(before.target, plan, stats.changes, counts));
    else if (report.action === 'none') report.notes.push(`already on ${short(ctx.commit)}: nothing would be sent`);
    else report.notes.push(`would refuse: ${vm.id} is on a descendant of ${short(ctx.commit)}; ${option('force')} deploys the older commit anyway`);
  } finally {
    await bridge.close();
  }
  report.result = 'success';
}

/** What a `broken` VM is, for its row: the target points at a release that is gone. */
function brokenNote(probe: Probe): string {
  const release = releaseOf(probe);
  return `${probe.target} is a symlink to ${release ? `the release ${release}, which is gone` : 'nothing'}: the VM serves nothing there; a sync deploys a new release`;
}

/** `verify --deep`: where the expected tree of a commit comes from (one export per commit, shared by the VMs on it). */
export interface DeepCheck {
  expected(sha: string): Promise<ExpectedTree>;
}

/**
 * Reads one VM's `.sync_rev` and classifies it (`vm-sync status`), and with
 * `verify` also requires it to equal the commit (`vm-sync verify`). With
 * `deep` (verify only) it also lists what the VM serves and compares it, file
 * by file, with the tree of the commit the VM claims: a VM that differs fails
 * with `release_drifted`, its row's `drift` saying how.
 */
export function inspectVm(vm: VmConfig, ctx: RunContext, mode: 'verify' | 'status', deep?: DeepCheck): Promise<VmReport> {
  // One attempt, bounded by connect_timeout_s: a read-only look answers now
  // (unreachable, timeout) rather than after sync.retries rounds of backoff.
  return withBudget(vm, ctx, 'inspect', 0, (report, signal, deadlineAt) =>
    withTarget(vm, ctx, 'inspect', signal, deadlineAt, async (_session, target) => {
      report.action = mode;
      const probe = await target.probe();
      report.rev_before = report.rev_after = liveRev(probe);
      report.release = releaseOf(probe);
      if (probe.lock) report.notes.push(`lock present: ${probe.lock.record || '(empty owner)'}`);
      report.state = await stateOf(vm, probe, ctx, false);
      if (report.state === 'broken') report.notes.push(brokenNote(probe));
      report.verified = report.rev_after === ctx.commit;
      const served = report.rev_after;
      if (deep && served !== null && (probe.kind === 'release' || probe.kind === 'dir')) {
        try {
          await checkDrift(vm, ctx, target, probe, served, report, deep);
        } catch (error) {
          // The VM is on another commit: that is the failure to report; its content is a note.
          if (served === ctx.commit) throw error;
          report.notes.push(`content not compared: ${toFailure(error).message}`);
        }
      }
      if (mode === 'verify' && !report.verified) {
        const on = report.state === 'broken' ? 'nothing (its live release is gone)' : report.rev_after ? short(report.rev_after) : 'nothing (no .sync_rev)';
        throw new VmSyncError('verify_mismatch', `${vm.id} is on ${on}, expected ${short(ctx.commit)} (${report.state}): run ${invocation('sync', [['vm', vm.id]])}.`);
      }
      const drift = report.drift;
      if (drift && drift.changed + drift.missing + drift.extra > 0) {
        report.verified = false;
        const counts = [`${drift.changed} changed`, `${drift.missing} missing`, `${drift.extra} extra`].join(', ');
        throw new VmSyncError(
          'release_drifted',
          `${vm.id} serves ${short(served)}, but its files differ from that commit's tree (${counts}): they were changed on the VM by hand. Restore them with ${invocation('sync', [['force'], ['vm', vm.id]])} (it rebuilds the release from the commit through rsync), or commit the change and deploy it.`,
        );
      }
      report.result = 'success';
    }),
  );
}

/** Lists what the VM serves and sets the row's `drift` against the tree of `served`. */
async function checkDrift(vm: VmConfig, ctx: RunContext, target: RemoteTarget, probe: Probe, served: string, report: VmReport, deep: DeepCheck): Promise<void> {
  const expected = await deep.expected(served);
  const listing = await target.listing(probe.kind === 'release' ? 'release' : 'dir');
  // The listing is of what serves `served` only if its own .sync_rev still says so (a deploy may have flipped meanwhile).
  if (!sentinelMatches(listing, served)) {
    throw new VmSyncError('remote_command_failed', `what ${vm.id} serves changed while the deep verify read it (its .sync_rev no longer holds ${short(served)}): run ${invocation('verify', [['deep'], ['vm', vm.id]])} again.`);
  }
  const drift = compareTrees(expected, listing, sharedLinkTarget(probe.target));
  report.drift = driftReport(drift, expected.entries.size + expected.shared.length);
  if (!expected.exclude) {
    report.notes.push('rsync_excludes has patterns the deep verify cannot match on the VM (wildcards or unanchored paths): files only the VM has were not compared, so none is reported as extra');
  }
  if (served !== ctx.commit && drift.length > 0) report.notes.push(`its files also differ from ${short(served)}'s tree: see drift`);
}

/**
 * The rsync excludes of a transfer: the configured ones, `.git` unless it is
 * deployed, and the given shared paths anchored at the release root (their
 * copy on the VM is the VM's, never the tree's).
 */
export function rsyncExcludes(config: Config, sharedPaths: readonly string[]): string[] {
  const list = [...config.repository.rsyncExcludes];
  if (config.repository.excludeDotGit && !list.includes('.git')) list.push('.git');
  for (const p of sharedPaths) list.push(`/${p}`);
  return list;
}

/** The name of the release a probe found live (vm-sync's symlink), or null. */
export function releaseOf(probe: Probe): string | null {
  return probe.currentRelease ? (probe.currentRelease.split('/').pop() ?? null) : null;
}

function short(sha: string | null): string {
  return sha ? sha.slice(0, 12) : 'none';
}
