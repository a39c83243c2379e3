import type { Config, VmConfig } from '../config/types.js';
import { getErrorMessage, VmSyncError } from '../errors.js';
import type { KnownHosts } from '../remote/known-hosts.js';
import { RshBridge } from '../remote/rsh-bridge.js';
import { runRsync, type RsyncStats } from '../remote/rsync.js';
import { VmSession } from '../remote/session.js';
import { holderIsDead, parseLockOwner, describeOwner, type LockOwner } from '../remote/lock.js';
import { RemoteTarget, UNREADABLE_LOCK_GRACE_S, type BeginOutcome, type Probe } from '../remote/target.js';
import { classifyState, type History } from './state.js';
import { failedRow, type EngineEvents, type VmReport } from './types.js';

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
  dryRun: boolean;
  /** Who this run is, as recorded in each VM's lock (the VM adds the deadline). */
  owner: Omit<LockOwner, 'deadline'>;
  /** Notes for every VM that gets the new release (e.g. a committed `.sync_rev` that was not deployed). */
  deployNotes?: string[];
  events: EngineEvents;
  /** Aborts every VM (Ctrl-C, job cancelled). */
  signal?: AbortSignal;
  /** First retry delay; doubles each time, plus jitter. */
  retryBaseMs: number;
}

function toFailure(error: unknown): VmSyncError {
  return error instanceof VmSyncError ? error : new VmSyncError('remote_command_failed', getErrorMessage(error), { cause: error });
}

const sleep = (ms: number, signal?: AbortSignal): Promise<void> =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => { clearTimeout(timer); resolve(); }, { once: true });
  });

/**
 * Runs `attempt` under the VM's hard timeout, retrying network failures
 * (unreachable, timeout of one step) with exponential backoff and jitter.
 * Never throws: the outcome is always a report row.
 */
async function withBudget(vm: VmConfig, ctx: RunContext, attempt: (report: VmReport, signal: AbortSignal, deadlineAt: number) => Promise<void>): Promise<VmReport> {
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
      if (!failure.retryable || signal.aborted || attemptNo >= ctx.config.sync.retries) {
        // An earlier attempt that failed the same way adds nothing; say how many there were instead.
        const same = `${failure.code}: ${failure.message}`;
        report.notes = report.notes.filter((note) => !note.endsWith(same));
        if (attemptNo > 0) report.error.message += ` (${attemptNo + 1} attempts)`;
        return finish(report);
      }
      earlier.push(`attempt ${attemptNo + 1} failed: ${failure.code}: ${failure.message}`);
      const delay = ctx.retryBaseMs * 2 ** attemptNo * (1 + Math.random());
      ctx.events.info(vm.id, `${failure.code}: ${failure.message} — retry ${attemptNo + 1}/${ctx.config.sync.retries} in ${(delay / 1000).toFixed(1)}s`);
      await sleep(delay, signal);
    }
  }
}

/** Connects, runs `body` with the session and target, and always closes the connection. */
async function withTarget<T>(vm: VmConfig, ctx: RunContext, signal: AbortSignal, deadlineAt: number, body: (session: VmSession, target: RemoteTarget) => Promise<T>): Promise<T> {
  const session = await VmSession.open(vm, ctx.knownHosts, { connectTimeoutMs: ctx.config.sync.connectTimeoutS * 1000, signal });
  try {
    return await body(session, new RemoteTarget(session, vm.repoPath, deadlineAt, signal));
  } finally {
    session.dispose();
  }
}

const FULL_SHA = /^[0-9a-f]{40}$/;

/** The commit a probe shows live, or null: only a full hash is ever reported as a rev. */
function liveRev(probe: Probe): string | null {
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
      `${probe.target}/.sync_rev on ${vm.id} is ${probe.sentinel === 'unreadable' ? 'not readable' : `a ${probe.sentinel}, not a file`}: vm-sync never follows or reads it. Remove it, or run sync --force to replace it with a new release.`,
    );
  }
  return classifyState(vm.id, probe.rev, ctx.commit, ctx.history);
}

/** Who held a lock, in a few words (its token for vm-sync's own records). */
function holderName(record: string): string {
  const owner = parseLockOwner(record);
  if (owner) return `${owner.token} (pid ${owner.pid} on ${owner.host}${owner.commit ? `, deploying ${owner.commit.slice(0, 12)}` : ''})`;
  return record ? record.split(' ')[0] : 'an unknown holder (empty owner record)';
}

function staleReason(why: string): string {
  switch (why) {
    case 'deadline': return 'its deadline had passed';
    case 'legacy': return 'a lock of an older vm-sync, older than sync.timeout_s';
    case 'unreadable': return `its owner record was empty or unreadable for over ${UNREADABLE_LOCK_GRACE_S}s`;
    default: return 'its holder process no longer exists';
  }
}

/** Why a lock is held, in words that say what to do. */
function lockedError(vm: VmConfig, outcome: Extract<BeginOutcome, { held: true }>, staleAfterS: number): VmSyncError {
  const owner = parseLockOwner(outcome.record);
  const unlock = `vm-sync unlock --vm ${vm.id}`;
  if (owner) {
    return new VmSyncError('locked', `${vm.id} is locked by ${describeOwner(owner, outcome.probe.now)}: another deploy is in progress. Wait for it; if you know it is gone, run ${unlock} (--force for a holder that is still alive).`);
  }
  if (outcome.why === 'legacy') {
    return new VmSyncError('locked', `${vm.id} is locked by ${JSON.stringify(outcome.record)} (a lock of an older vm-sync, ${outcome.ageS}s old; stale after sync.timeout_s=${staleAfterS}s). Wait for it, or run ${unlock}.`);
  }
  return new VmSyncError('locked', `${vm.id} has a lock whose owner record is empty or unreadable (${outcome.record ? JSON.stringify(outcome.record) : 'empty'}, ${outcome.ageS}s old): it is treated as stale after ${UNREADABLE_LOCK_GRACE_S}s. Run ${unlock} to break it now.`);
}

/**
 * Takes the VM's lock. A lock of this same run (an earlier attempt that lost
 * its connection) or of a process on this runner host that no longer exists
 * is broken at once; the VM itself breaks one whose holder's deadline passed.
 */
async function takeLock(vm: VmConfig, target: RemoteTarget, ctx: RunContext): Promise<Extract<BeginOutcome, { held: false }>> {
  const options = { expect: ctx.commit, force: ctx.force, legacyStaleAfterS: ctx.config.sync.timeoutS };
  let outcome = await target.begin(ctx.owner, options);
  if (outcome.held) {
    const owner = parseLockOwner(outcome.record);
    if (owner && (owner.token === ctx.owner.token || holderIsDead(owner))) {
      outcome = await target.begin(ctx.owner, { ...options, expectedBreak: outcome.hex });
    }
  }
  if (outcome.held) throw Object.assign(lockedError(vm, outcome, ctx.config.sync.timeoutS), { probe: outcome.probe });
  return outcome;
}

/**
 * Deploys `ctx.commit` to one VM: connect, take the lock, then read
 * `.sync_rev` and decide (only under the lock, so a run that arrives late
 * sees what an earlier one deployed), stage a complete release, write
 * `.sync_rev`, flip, verify, prune, post-sync, unlock. Whatever fails, this
 * run's operations on the VM are stopped before the lock is released, and the
 * row's `rev_after` is read back from the VM.
 */
export function syncVm(vm: VmConfig, ctx: RunContext): Promise<VmReport> {
  return withBudget(vm, ctx, (report, signal, deadlineAt) =>
    withTarget(vm, ctx, signal, deadlineAt, async (session, target) => {
      if (ctx.dryRun) return dryRun(vm, ctx, session, target, report, signal);
      let begun: Extract<BeginOutcome, { held: false }>;
      try {
        begun = await takeLock(vm, target, ctx);
      } catch (error) {
        const probe = (error as { probe?: Probe }).probe;
        if (probe) report.rev_before = report.rev_after = liveRev(probe);
        else {
          // Cancelled or timed out while taking the lock: it may have been
          // taken after all. Stop that step, then release what is ours, and
          // report what the VM serves (nothing of this run changed it).
          if (await target.stopInterrupted()) await target.unlock(ctx.owner.token).catch(() => false);
          const now = await target.probe(true).catch(() => null);
          if (now) report.rev_before = report.rev_after = liveRev(now);
        }
        throw error;
      }
      const token = ctx.owner.token;
      // Whether a step that can change what the VM serves was started.
      let touched = false;
      let failed = true;
      try {
        report.rev_before = report.rev_after = liveRev(begun.probe);
        if (begun.tookOver) report.notes.push(`took over a stale lock left by ${holderName(begun.tookOver.record)} (${staleReason(begun.tookOver.why)})`);
        await deploy(vm, ctx, session, target, report, signal, begun, () => (touched = true));
        failed = false;
      } finally {
        if (!begun.released) await settle(vm, target, token, report, failed, touched);
      }
    }),
  );
}

/** The steps of a deploy while holding the lock. */
async function deploy(
  vm: VmConfig,
  ctx: RunContext,
  session: VmSession,
  target: RemoteTarget,
  report: VmReport,
  signal: AbortSignal,
  begun: Extract<BeginOutcome, { held: false }>,
  touching: () => void,
): Promise<void> {
  const { repository, sync } = ctx.config;
  const say = (message: string): void => ctx.events.info(vm.id, message);
  const before = begun.probe;
  const token = ctx.owner.token;
  report.state = await stateOf(vm, before, ctx, ctx.force);
  if (begun.released || (report.state === 'up-to-date' && !ctx.force)) {
    report.action = 'none';
    report.result = 'success';
    report.verified = true;
    say(`already on ${short(ctx.commit)}: nothing to do`);
    return;
  }
  if (report.state === 'ahead' && !ctx.force) {
    report.action = 'refuse';
    report.result = 'refused';
    throw new VmSyncError('refused_ahead', `${vm.id} is on ${short(report.rev_before)}, a descendant of ${short(ctx.commit)}: an older run arrived late. Use --force to roll back deliberately.`);
  }
  if (report.state === 'diverged') {
    report.notes.push(`history diverged: ${short(report.rev_before)} is not an ancestor of ${short(ctx.commit)} (rewritten history?); deploying the remote's commit`);
  }
  report.action = 'deploy';
  if (before.rsyncVersion === null) {
    throw new VmSyncError('remote_rsync_missing', `rsync is not installed on ${vm.id} (or not on ${vm.user}'s PATH): install it there (apt-get install rsync).`);
  }
  const guard = target.transferGuard();
  const bridge = await RshBridge.start(session, guard);
  try {
    const plan = { source: ctx.exportDir, rsh: bridge.rshCommand, excludes: excludes(ctx.config), ioTimeoutS: Math.max(30, sync.connectTimeoutS * 3) };
    const progress = { signal, onProgress: (p: { percent: number; rate: string }) => ctx.events.progress(vm.id, p.percent, p.rate) };
    // A transfer that fails or is cancelled may leave its rsync server running on the VM.
    const transfer = (dest: string, linkDest: string | null): Promise<RsyncStats> =>
      runRsync({ ...plan, dest, linkDest, dryRun: false }, bridge.env, progress).catch((error: unknown) => {
        guard.failed();
        throw error;
      });
    let stats: RsyncStats;
    if (repository.layout === 'atomic') {
      const { stage, linkDest, removedPartials } = await target.stage(token, ctx.commit, before);
      for (const name of removedPartials) report.notes.push(`removed an abandoned partial release ${name}`);
      say(`staging ${short(ctx.commit)} into a new release${linkDest ? ' (unchanged files hard-linked)' : ''}`);
      stats = await transfer(stage, linkDest);
      touching();
      const published = await target.publish(token, ctx.commit);
      if (published.movedAside) report.notes.push(`kept the directory that stood at ${before.target} as ${published.movedAside}`);
    } else {
      touching();
      const dest = await target.inPlaceBegin(token, before);
      stats = await transfer(dest, null);
      await target.inPlaceFinish(token, ctx.commit);
    }
    report.files_changed = stats.filesChanged;
    report.bytes_sent = stats.bytesSent;
  } finally {
    await bridge.close();
  }
  report.notes.push(...(ctx.deployNotes ?? []));

  // Verify by reading the sentinel back through the live path.
  const after = await target.probe();
  report.rev_after = liveRev(after);
  if (report.rev_after !== ctx.commit) {
    throw new VmSyncError('verify_mismatch', `${vm.id} reports ${report.rev_after ?? 'no valid .sync_rev'} after the deploy, expected ${ctx.commit}: something else is writing to ${after.target}.`);
  }
  report.verified = true;
  say(`live on ${short(ctx.commit)} (${report.files_changed} files changed, ${report.bytes_sent} bytes sent)`);

  if (repository.layout === 'atomic') {
    try {
      const pruned = await target.prune(token, repository.keepReleases);
      if (pruned.length > 0) say(`pruned ${pruned.length} old release(s)`);
    } catch (error) {
      if (signal.aborted) throw error;
      report.notes.push(`pruning old releases failed (deploy is fine): ${getErrorMessage(error)}`);
    }
  }
  if (sync.postSyncCommand) {
    say('running post_sync_command');
    await target.postSync(token, ctx.commit, sync.postSyncCommand);
  }
  report.result = 'success';
}

/**
 * The end of every locked deploy: after a failure, stop what this run still
 * has running on the VM and read back what the VM serves now, so the row
 * reports the truth; then release the lock (only once nothing of this run is
 * left running there). Runs on a budget of its own: the run's may be spent.
 */
async function settle(vm: VmConfig, target: RemoteTarget, token: string, report: VmReport, failed: boolean, touched: boolean): Promise<void> {
  let safeToUnlock = true;
  if (failed) {
    safeToUnlock = await target.stopInterrupted();
    if (!safeToUnlock) report.notes.push(`could not confirm that this run's steps on ${vm.id} stopped: the lock is left to expire at its deadline`);
    try {
      const now = await target.probe(true);
      if (report.rev_after !== liveRev(now) && touched) report.notes.push(`after the failure ${vm.id} serves ${short(liveRev(now))}`);
      report.rev_after = liveRev(now);
    } catch (error) {
      if (touched) {
        report.rev_after = null;
        report.notes.push(`could not read what ${vm.id} serves after the failure (${getErrorMessage(error)}): check it with vm-sync status`);
      }
    }
  }
  if (!safeToUnlock) return;
  try {
    await target.unlock(token);
  } catch (error) {
    report.notes.push(`could not release the lock (it expires at its deadline, or run vm-sync unlock --vm ${vm.id}): ${getErrorMessage(error)}`);
  }
}

/** Compares the export with what is live now; nothing is written on the VM and no lock is taken. */
async function dryRun(vm: VmConfig, ctx: RunContext, session: VmSession, target: RemoteTarget, report: VmReport, signal: AbortSignal): Promise<void> {
  const before = await target.probe();
  report.rev_before = report.rev_after = liveRev(before);
  report.state = await stateOf(vm, before, ctx, ctx.force);
  report.action = report.state === 'up-to-date' && !ctx.force ? 'none' : report.state === 'ahead' && !ctx.force ? 'refuse' : 'deploy';
  if (before.lock) report.notes.push(`lock present: ${before.lock.record || '(empty owner)'}`);
  const bridge = await RshBridge.start(session);
  try {
    const dest = before.currentRelease ?? before.target;
    const stats = await runRsync({ source: ctx.exportDir, rsh: bridge.rshCommand, excludes: excludes(ctx.config), ioTimeoutS: 30, dest, linkDest: null, dryRun: true }, bridge.env, { signal });
    report.files_changed = stats.filesChanged;
    for (const change of stats.changes.slice(0, 20)) report.notes.push(`would change: ${change}`);
  } finally {
    await bridge.close();
  }
  report.result = 'success';
}

/**
 * Reads one VM's `.sync_rev` and classifies it (`vm-sync status`), and with
 * `verify` also requires it to equal the commit (`vm-sync verify`).
 */
export function inspectVm(vm: VmConfig, ctx: RunContext, mode: 'verify' | 'status'): Promise<VmReport> {
  return withBudget(vm, ctx, (report, signal, deadlineAt) =>
    withTarget(vm, ctx, signal, deadlineAt, async (_session, target) => {
      report.action = mode;
      const probe = await target.probe();
      report.rev_before = report.rev_after = liveRev(probe);
      if (probe.lock) report.notes.push(`lock present: ${probe.lock.record || '(empty owner)'}`);
      report.state = await stateOf(vm, probe, ctx, false);
      report.verified = report.rev_after === ctx.commit;
      if (mode === 'verify' && !report.verified) {
        throw new VmSyncError('verify_mismatch', `${vm.id} is on ${report.rev_after ? short(report.rev_after) : 'nothing (no .sync_rev)'}, expected ${short(ctx.commit)} (${report.state}): run vm-sync sync.`);
      }
      report.result = 'success';
    }),
  );
}

function excludes(config: Config): string[] {
  const list = [...config.repository.rsyncExcludes];
  if (config.repository.excludeDotGit && !list.includes('.git')) list.push('.git');
  return list;
}

function short(sha: string | null): string {
  return sha ? sha.slice(0, 12) : 'none';
}
