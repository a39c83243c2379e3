import type { Config, VmConfig } from '../config/types.js';
import { getErrorMessage, VmSyncError } from '../errors.js';
import type { KnownHosts } from '../remote/known-hosts.js';
import { RshBridge } from '../remote/rsh-bridge.js';
import { runRsync, type RsyncStats } from '../remote/rsync.js';
import { VmSession } from '../remote/session.js';
import { RemoteTarget } from '../remote/target.js';
import { classifyState, type History } from './state.js';
import type { EngineEvents, VmReport } from './types.js';

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
  lockToken: string;
  events: EngineEvents;
  /** Aborts every VM (Ctrl-C, job cancelled). */
  signal?: AbortSignal;
  /** First retry delay; doubles each time, plus jitter. */
  retryBaseMs: number;
}

function emptyReport(vm: VmConfig): VmReport {
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
    notes: [],
    error: null,
  };
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
async function withBudget(vm: VmConfig, ctx: RunContext, attempt: (report: VmReport, signal: AbortSignal) => Promise<void>): Promise<VmReport> {
  const started = Date.now();
  const deadline = AbortSignal.timeout(ctx.config.sync.timeoutS * 1000);
  const signal = ctx.signal ? AbortSignal.any([ctx.signal, deadline]) : deadline;
  const finish = (report: VmReport): VmReport => ({ ...report, duration_ms: Date.now() - started });
  const earlier: string[] = []; // failed attempts, reported as notes on the final row
  for (let attemptNo = 0; ; attemptNo++) {
    const report = emptyReport(vm);
    report.notes.push(...earlier);
    try {
      await attempt(report, signal);
      return finish({ ...report, error: null });
    } catch (error) {
      let failure = toFailure(error);
      if (signal.aborted) {
        failure = ctx.signal?.aborted
          ? new VmSyncError('interrupted', `run interrupted before ${vm.id} finished; it stays on its last complete release`)
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
async function withTarget<T>(vm: VmConfig, ctx: RunContext, signal: AbortSignal, body: (session: VmSession, target: RemoteTarget) => Promise<T>): Promise<T> {
  const session = await VmSession.open(vm, ctx.knownHosts, { connectTimeoutMs: ctx.config.sync.connectTimeoutS * 1000, signal });
  try {
    return await body(session, new RemoteTarget(session, vm.repoPath, ctx.config.sync.timeoutS * 1000, signal));
  } finally {
    session.dispose();
  }
}

/**
 * Deploys `ctx.commit` to one VM: connect, lock, read `.sync_rev` and classify,
 * stage a complete release, write `.sync_rev`, flip, verify, prune, post-sync,
 * unlock. A failure at any step before the flip leaves the VM on its last
 * complete release.
 */
export function syncVm(vm: VmConfig, ctx: RunContext): Promise<VmReport> {
  return withBudget(vm, ctx, (report, signal) =>
    withTarget(vm, ctx, signal, async (session, target) => {
      const { repository, sync } = ctx.config;
      const say = (message: string): void => ctx.events.info(vm.id, message);

      // Read where the VM stands and decide.
      const before = await target.probe();
      report.rev_before = before.rev;
      report.rev_after = before.rev;
      report.state = await classifyState(vm.id, before.rev, ctx.commit, ctx.history);
      if (report.state === 'up-to-date' && !ctx.force) {
        report.action = 'none';
        report.result = 'success';
        report.verified = true;
        say(`already on ${short(ctx.commit)}: nothing to do`);
        return;
      }
      if (report.state === 'ahead' && !ctx.force) {
        report.action = 'refuse';
        report.result = 'refused';
        throw new VmSyncError('refused_ahead', `${vm.id} is on ${short(before.rev)}, a descendant of ${short(ctx.commit)}: an older run arrived late. Use --force to roll back deliberately.`);
      }
      if (report.state === 'diverged') {
        report.notes.push(`history diverged: ${short(before.rev)} is not an ancestor of ${short(ctx.commit)} (rewritten history?); deploying the remote's commit`);
      }
      report.action = 'deploy';
      if (before.rsyncVersion === null) {
        throw new VmSyncError('remote_rsync_missing', `rsync is not installed on ${vm.id} (or not on ${vm.user}'s PATH): install it there (apt-get install rsync).`);
      }

      const bridge = await RshBridge.start(session);
      try {
        const plan = { source: ctx.exportDir, rsh: bridge.rshCommand, excludes: excludes(ctx.config), ioTimeoutS: Math.max(30, sync.connectTimeoutS * 3) };
        const progress = { signal, onProgress: (p: { percent: number; rate: string }) => ctx.events.progress(vm.id, p.percent, p.rate) };

        if (ctx.dryRun) {
          // Compare against what is live now; nothing is written on the VM.
          const stats = await runRsync({ ...plan, dest: before.currentRelease ?? before.target, linkDest: null, dryRun: true }, bridge.env, { signal });
          report.files_changed = stats.filesChanged;
          report.result = 'success';
          for (const change of stats.changes.slice(0, 20)) report.notes.push(`would change: ${change}`);
          return;
        }

        const lock = await target.lock(ctx.lockToken, sync.timeoutS);
        if (lock.held && lock.owner !== ctx.lockToken) {
          throw new VmSyncError('locked', `${vm.id} is locked by ${lock.owner} for ${lock.ageS}s (another deploy in progress). Wait for it; the lock is considered stale after sync.timeout_s=${sync.timeoutS}s.`);
        }
        if (!lock.held && lock.staleOwner) report.notes.push(`took over a stale lock left by ${lock.staleOwner}`);
        try {
          let stats: RsyncStats;
          if (repository.layout === 'atomic') {
            const { stage, linkDest } = await target.stageDir(ctx.commit);
            say(`staging ${short(ctx.commit)} into a new release${linkDest ? ' (unchanged files hard-linked)' : ''}`);
            stats = await runRsync({ ...plan, dest: stage, linkDest, dryRun: false }, bridge.env, progress);
            const published = await target.publish(ctx.commit, stage);
            if (published.movedAside) report.notes.push(`kept the directory that stood at ${before.target} as ${published.movedAside}`);
          } else {
            await target.inPlaceBegin();
            stats = await runRsync({ ...plan, dest: before.target, linkDest: null, dryRun: false }, bridge.env, progress);
            await target.inPlaceFinish(ctx.commit);
          }
          report.files_changed = stats.filesChanged;
          report.bytes_sent = stats.bytesSent;

          // Verify by reading the sentinel back through the live path.
          const after = await target.probe();
          report.rev_after = after.rev;
          if (after.rev !== ctx.commit) {
            throw new VmSyncError('verify_mismatch', `${vm.id} reports ${after.rev ?? 'no .sync_rev'} after the deploy, expected ${ctx.commit}: something else is writing to ${after.target}.`);
          }
          report.verified = true;
          say(`live on ${short(ctx.commit)} (${stats.filesChanged} files changed, ${stats.bytesSent} bytes sent)`);

          if (repository.layout === 'atomic') {
            try {
              const pruned = await target.prune(repository.keepReleases);
              if (pruned.length > 0) say(`pruned ${pruned.length} old release(s)`);
            } catch (error) {
              report.notes.push(`pruning old releases failed (deploy is fine): ${getErrorMessage(error)}`);
            }
          }
          if (sync.postSyncCommand) {
            say('running post_sync_command');
            await target.postSync(ctx.commit, sync.postSyncCommand);
          }
          report.result = 'success';
        } finally {
          await unlockQuietly(session, vm, ctx, report);
        }
      } finally {
        await bridge.close();
      }
    }),
  );
}

/** Releases our lock even after a timeout, on a fresh budget; a failure only adds a note. */
async function unlockQuietly(session: VmSession, vm: VmConfig, ctx: RunContext, report: VmReport): Promise<void> {
  try {
    await new RemoteTarget(session, vm.repoPath, 15_000).unlock(ctx.lockToken);
  } catch (error) {
    report.notes.push(`could not release the lock (it goes stale after ${ctx.config.sync.timeoutS}s): ${getErrorMessage(error)}`);
  }
}

/**
 * Reads one VM's `.sync_rev` and classifies it (`vm-sync status`), and with
 * `verify` also requires it to equal the commit (`vm-sync verify`).
 */
export function inspectVm(vm: VmConfig, ctx: RunContext, mode: 'verify' | 'status'): Promise<VmReport> {
  return withBudget(vm, ctx, (report, signal) =>
    withTarget(vm, ctx, signal, async (_session, target) => {
      report.action = mode;
      const probe = await target.probe();
      report.rev_before = probe.rev;
      report.rev_after = probe.rev;
      report.state = await classifyState(vm.id, probe.rev, ctx.commit, ctx.history);
      if (probe.lock) report.notes.push(`lock present: ${probe.lock}`);
      report.verified = probe.rev === ctx.commit;
      if (mode === 'verify' && !report.verified) {
        throw new VmSyncError('verify_mismatch', `${vm.id} is on ${probe.rev ? short(probe.rev) : 'nothing (no .sync_rev)'}, expected ${short(ctx.commit)} (${report.state}): run vm-sync sync.`);
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
