/**
 * The executor of a fleet release. `main` reads as its phases:
 *
 *   prepare  every VM in parallel: lock, probe, survey, decide while the
 *            secret scan runs; once it passed (tree), stage and seal a release
 *   flip     all at once, or batch by batch (rolling)
 *   verify   `.sync_rev` read back through the live path
 *   health   the health command in the live release; revert when unhealthy
 *   finish   prune, post_sync_command, unlock
 *
 * Decisions come from the pure planner (planner.ts); every remote step goes
 * through a {@link VmPort} the entry point provides. Whatever fails, each VM
 * ends with one row that says what it serves at the end.
 */
import { cliCommand, invocation, option } from '../advice.js';
import { count } from '../words.js';
import type { Config, VmConfig } from '../config/types.js';
import { getErrorMessage, VmSyncError } from '../errors.js';
import type { LockOwner } from '../remote/lock.js';
import { KILL_GRACE_S } from '../remote/agent-script.js';
import type { OpenPort, VmPort } from '../remote/port.js';
import { CLEANUP_MS, POST_OUTPUT_MAX, type BeginOutcome, type Probe, type StageResult, type StageSurvey } from '../remote/target.js';
import { maskSecrets } from '../remote/mask.js';
import { commandOutputTail } from '../remote/untrusted.js';
import { mapPool } from './pool.js';
import { afterHealth, chooseRollback, decidePrepare, planBatches, rolloutVerdict } from './planner.js';
import { classifyState, type History } from './state.js';
import { announceRow, failedRow, logAt, type EngineEvents, type EnginePhase, type LogLevel, type RolloutReport, type VmReport } from './types.js';
import { connect, liveRev, releaseOf, rsyncExcludes, sleep, toFailure } from './vm-pipeline.js';
import { holderName, staleReason, takeLock } from './vm-lock.js';
import { buildKey, type StreamOutcome } from './stream.js';

/** Everything a release needs, given by the entry point. */
export interface ReleaseContext {
  config: Config;
  openPort: OpenPort;
  history: History;
  /** The full hash being deployed. */
  commit: string;
  /**
   * The clean export of `commit` on the runner host, and the notes for every
   * VM that gets it (a committed `.sync_rev` not deployed). Asked only when a
   * VM needs the tree: a run whose VMs are all on the commit may export and
   * scan nothing; one that finds secrets then rejects, and no VM gets the tree.
   */
  tree(): Promise<{ dir: string; notes: string[] }>;
  /**
   * The longest {@link tree} may keep a VM waiting, in seconds (the secret
   * scan's `timeout_s` when it scans). The VMs connect and lock while it
   * runs: their lock and agent session last that much longer, and each VM's
   * own budget stops while it waits (see VmBudget).
   */
  treeWaitS?: number;
  force: boolean;
  /** Who this run is, as recorded in each VM's lock (the VM adds the deadline). */
  owner: Omit<LockOwner, 'deadline'>;
  /** The run's id (the runner-host journal's), recorded in each VM's revisions.log; '' when none. */
  runId?: string;
  events: EngineEvents;
  signal?: AbortSignal;
  /** First retry delay; doubles each time, plus jitter. */
  retryBaseMs: number;
  /** Seconds to wait for a VM locked by another run (0: fail at once). */
  lockWaitS: number;
  /**
   * The release stream from a VM's live commit (null: from nothing) to
   * `commit`, made once per starting commit (`src/sync/stream.ts`). Absent:
   * every transfer is rsync.
   */
  stream?: (base: string | null, vmHasZstd: boolean) => Promise<StreamOutcome>;
}

/** One VM through the phases: its row, its open port while it holds the lock, its releases. */
interface VmRun {
  vm: VmConfig;
  report: VmReport;
  started: number;
  port: VmPort | null;
  /** The probe made under the lock. */
  before: Probe | null;
  /** The sealed release to flip to (atomic layout). */
  release: string | null;
  /** The release the VM served before its flip (what a revert goes back to). */
  previous: string | null;
  /** Whether a step that can change what the VM serves was started. */
  touched: boolean;
  /** The row is final (announced). */
  done: boolean;
  /** Notes about the tree this VM gets (a committed `.sync_rev` not deployed). */
  treeNotes: string[];
  /**
   * The hard-link copy of the live release started while the scan runs (see
   * {@link FleetRelease.linkAhead}): true once the VM made it. Awaited
   * before anything else of this run on the VM that depends on it (apply,
   * unlock, which removes an unused one).
   */
  linking: Promise<boolean> | null;
}

/**
 * A VM's prepare budget: `sync.timeout_s` (plus the lock wait) of the VM's own
 * time. Time spent waiting for the run (the secret scan, before the tree is
 * ready) is not the VM's: the clock is paused meanwhile ({@link pause},
 * {@link resume}), so a slow scan never times a VM out, and a stuck VM still
 * fails on time.
 */
class VmBudget {
  private readonly controller = new AbortController();
  private timer: NodeJS.Timeout;
  private pausedAt: number | null = null;
  readonly signal: AbortSignal;
  deadlineAt: number;

  constructor(ms: number, run?: AbortSignal) {
    this.deadlineAt = Date.now() + ms;
    this.timer = this.arm();
    this.signal = run ? AbortSignal.any([run, this.controller.signal]) : this.controller.signal;
  }

  /** Stops the clock (a wait that is not the VM's). */
  pause(): void {
    if (this.pausedAt !== null || this.controller.signal.aborted) return;
    clearTimeout(this.timer);
    this.pausedAt = Date.now();
  }

  /** Starts it again: the deadline moves by the time paused. */
  resume(): void {
    if (this.pausedAt === null) return;
    this.deadlineAt += Date.now() - this.pausedAt;
    this.pausedAt = null;
    if (!this.controller.signal.aborted) this.timer = this.arm();
  }

  private arm(): NodeJS.Timeout {
    // Unref'd like AbortSignal.timeout: a budget never keeps the process alive.
    return setTimeout(() => this.controller.abort(new DOMException('the VM budget ran out', 'TimeoutError')), Math.max(0, this.deadlineAt - Date.now())).unref();
  }
}

/** The post_sync_command output a row keeps (the end), and the lines a failure message quotes. */
const POST_SYNC_LINES = 200;
const POST_SYNC_FAILURE_LINES = 20;

const now = (): string => new Date().toISOString();
/** rsync's I/O timeout: no data for this long aborts a transfer (a few connect timeouts, at least 30 s). */
const ioTimeoutS = (config: Config): number => Math.max(30, config.sync.connectTimeoutS * 3);
const short = (sha: string | null): string => (sha ? sha.slice(0, 12) : 'none');

/**
 * The executor. Each phase takes the VMs still in the release and drops the
 * ones it finishes (failed, halted, done); `rows()` is the final report.
 */
class FleetRelease {
  private readonly runs: VmRun[];
  private readonly token: string;
  private readonly budgetMs: number;
  /** How long the VMs' agent sessions may live: the whole run's worst case. */
  private readonly sessionBudgetS: number;
  /** What releases are built with beyond the commit (see `buildKey`): a stream builds only on a release of the same key. */
  private readonly buildKey: string;
  readonly rollout: RolloutReport;

  constructor(
    private readonly ctx: ReleaseContext,
    vms: readonly VmConfig[],
  ) {
    this.runs = vms.map((vm) => ({ vm, report: failedRow(vm), started: Date.now(), port: null, before: null, release: null, previous: null, touched: false, done: false, treeNotes: [], linking: null }));
    this.token = ctx.owner.token;
    const { sync, rollout } = ctx.config;
    this.budgetMs = sync.timeoutS * 1000;
    this.sessionBudgetS = sessionBudgetS(ctx.config, vms.length, ctx.lockWaitS + (ctx.treeWaitS ?? 0));
    this.buildKey = buildKey(rsyncExcludes(ctx.config, []), ctx.config.repository.sharedPaths.map((s) => s.path));
    this.rollout = { strategy: rollout.strategy, batches: [], halted: false, halted_reason: null };
  }

  private say(run: VmRun, message: string, phase: EnginePhase, level: LogLevel = 'info'): void {
    logAt(this.ctx.events, level, run.vm.id, message, phase);
  }

  /** The run's signal combined with a fresh per-VM budget. */
  private budget(extraMs = 0): { signal: AbortSignal; deadlineAt: number } {
    const ms = this.budgetMs + extraMs;
    const deadline = AbortSignal.timeout(ms);
    return { signal: this.ctx.signal ? AbortSignal.any([this.ctx.signal, deadline]) : deadline, deadlineAt: Date.now() + ms };
  }

  /** The fleet release, phase by phase. */
  async main(): Promise<VmReport[]> {
    const { rollout, repository } = this.ctx.config;
    await this.prepare();
    // Nothing flips before the tree is cleared (the secret scan passed): for the atomic layout every staged
    // VM already waited for it; in place, the transfer is the flip, so the whole fleet waits here.
    if (this.active().length > 0) {
      const blocked = await this.ctx.tree().then(
        () => null,
        (error: unknown) => toFailure(error),
      );
      if (blocked) await Promise.all(this.active().map((run) => this.fail(run, blocked)));
    }
    const staged = this.active();
    const total = this.runs.length;
    const batches = planBatches(staged.map((run) => run.vm.id), rollout);
    this.rollout.batches = batches;
    for (const [index, ids] of batches.entries()) {
      const failed = this.runs.filter((run) => run.done && run.report.result !== 'success').length;
      if (rolloutVerdict(failed, total, rollout.maxFailed) === 'halt') {
        await this.halt(`${failed} of ${count(total, 'VM')} failed, more than rollout.max_failed allows`, batches.slice(index).flat());
        break;
      }
      if (this.ctx.signal?.aborted) break;
      const batch = this.active().filter((run) => ids.includes(run.vm.id));
      await this.renew(batch, this.active().filter((run) => !ids.includes(run.vm.id)));
      await this.flip(this.active().filter((run) => batch.includes(run)));
      await this.verify(this.active().filter((run) => batch.includes(run)));
      if (rollout.healthCommand) await this.health(this.active().filter((run) => batch.includes(run)), rollout.healthCommand);
      await this.finish(this.active().filter((run) => batch.includes(run)), repository.keepReleases);
    }
    // Cancelled between batches: what is left stays on its release, staged.
    for (const run of this.active()) await this.fail(run, new VmSyncError('interrupted', `run interrupted before ${run.vm.id} flipped: it serves its old release, with the new one staged`));
    return this.runs.map((run) => run.report);
  }

  /** The VMs still in the release: staged, holding their lock, not yet final. */
  private active(): VmRun[] {
    return this.runs.filter((run) => !run.done && run.port !== null);
  }

  /** Phase 1: every VM in parallel, capped by sync.concurrency. */
  private async prepare(): Promise<void> {
    await mapPool(this.runs, this.ctx.config.sync.concurrency, async (run) => {
      this.ctx.events.vmStarted?.(run.vm.id);
      try {
        await this.prepareWithRetries(run);
      } catch (error) {
        // A defect: the VM still ends with a row, and its lock is released; -v shows where.
        this.say(run, `internal error: ${error instanceof Error && error.stack ? error.stack : getErrorMessage(error)}`, 'prepare', 'debug');
        await this.fail(run, new VmSyncError('internal_error', `vm-sync failed on ${run.vm.id} (a defect, please report it): ${getErrorMessage(error)}`));
      }
    });
  }

  /** Retries network failures of the prepare phase with exponential backoff and jitter. */
  private async prepareWithRetries(run: VmRun): Promise<void> {
    const { sync } = this.ctx.config;
    const earlier: string[] = [];
    const budget = new VmBudget(this.budgetMs + this.ctx.lockWaitS * 1000, this.ctx.signal);
    const { signal } = budget;
    for (let attempt = 0; ; attempt++) {
      run.report = { ...failedRow(run.vm), notes: [...earlier] };
      try {
        await this.prepareVm(run, budget);
        return;
      } catch (error) {
        let failure = toFailure(error);
        if (signal.aborted) {
          failure = this.ctx.signal?.aborted
            ? new VmSyncError('interrupted', `run interrupted before ${run.vm.id} finished; what it serves now is in rev_after`)
            : new VmSyncError('timeout', `${run.vm.id} did not finish within sync.timeout_s=${sync.timeoutS}s (last step: ${failure.message})`);
        }
        if (!failure.retryable || signal.aborted || attempt >= sync.retries) {
          const same = `${failure.code}: ${failure.message}`;
          run.report.notes = run.report.notes.filter((note) => !note.endsWith(same));
          if (attempt > 0) failure = new VmSyncError(failure.code, `${failure.message} (${attempt + 1} attempts)`);
          await this.fail(run, failure);
          return;
        }
        await this.settle(run, true);
        run.port?.close();
        run.port = null;
        run.linking = null;
        earlier.push(`attempt ${attempt + 1} failed: ${failure.code}: ${failure.message}`);
        const delay = this.ctx.retryBaseMs * 2 ** attempt * (1 + Math.random());
        this.say(run, `${failure.code}: ${failure.message} — retry ${attempt + 1}/${sync.retries} in ${(delay / 1000).toFixed(1)}s`, 'prepare', 'warn');
        await sleep(delay, signal);
      }
    }
  }

  /** Connect, lock, probe, decide, and stage + seal the release (atomic layout). */
  private async prepareVm(run: VmRun, budget: VmBudget): Promise<void> {
    const { config, commit, force } = this.ctx;
    const { signal } = budget;
    // The VM's side (its lock's deadline, each step's timeout) also covers the longest wait for the tree.
    const deadlineAt = budget.deadlineAt + (this.ctx.treeWaitS ?? 0) * 1000;
    const port = await connect(run.vm, this.ctx.events, 'prepare', config.sync.connectTimeoutS, () =>
      this.ctx.openPort(run.vm, { signal, deadlineAt, sessionBudgetS: this.sessionBudgetS, connectTimeoutMs: config.sync.connectTimeoutS * 1000 }),
    );
    run.port = port;
    this.say(run, this.ctx.lockWaitS > 0 ? `taking the deploy lock (waiting up to ${this.ctx.lockWaitS}s for another run)` : 'taking the deploy lock', 'prepare', 'debug');
    let begun: Extract<BeginOutcome, { held: false }>;
    try {
      begun = await takeLock(run.vm, port, {
        owner: this.ctx.owner,
        expect: commit,
        force,
        staleAfterS: config.sync.timeoutS,
        lockWaitS: this.ctx.lockWaitS,
        signal,
        onWait: (message) => this.say(run, message, 'prepare'),
        // What staging needs, learnt under the lock while the scan runs (read-only: nothing is staged yet).
        ...(config.repository.layout === 'atomic' ? { survey: { sharedPaths: config.repository.sharedPaths.map((s) => s.path) } } : {}),
      });
    } catch (error) {
      const probe = (error as { probe?: Probe }).probe;
      if (probe) {
        run.report.rev_before = run.report.rev_after = liveRev(probe);
        run.report.release = releaseOf(probe);
      } else {
        // Cancelled or timed out while taking the lock: it may have been taken
        // after all. Stop that step, release what is ours, report what it serves.
        if (await port.stopInterrupted()) await port.unlock(this.token).catch(() => false);
        const seen = await port.probe(true).catch(() => null);
        if (seen) {
          run.report.rev_before = run.report.rev_after = liveRev(seen);
          run.report.release = releaseOf(seen);
        }
      }
      port.close();
      run.port = null;
      throw error;
    }
    const report = run.report;
    const before = begun.probe;
    run.before = before;
    report.rev_before = report.rev_after = liveRev(before);
    report.release = releaseOf(before);
    if (begun.tookOver) report.notes.push(`took over a stale lock left by ${holderName(begun.tookOver.record)} (${staleReason(begun.tookOver.why)})`);
    const readable = before.sentinel === 'regular' || before.sentinel === 'absent';
    report.state = readable ? await classifyState(run.vm.id, before.rev, commit, this.ctx.history, before.kind).catch((error: unknown) => {
      if (force) return 'unknown' as const;
      throw error;
    }) : 'unknown';
    const decision = decidePrepare(run.vm.id, { state: readable ? report.state : null, sentinel: before.sentinel, releasedAtBegin: begun.released, rsyncPresent: before.rsyncVersion !== null }, { force, commit });
    if (decision.kind === 'none') {
      report.action = 'none';
      report.result = 'success';
      report.verified = true;
      this.say(run, `already on ${short(commit)}: nothing to do`, 'prepare');
      if (!begun.released) await port.unlock(this.token).catch(() => false);
      this.close(run);
      return;
    }
    if (decision.kind === 'refuse') {
      report.action = decision.code === 'refused_ahead' ? 'refuse' : 'deploy';
      report.result = decision.result;
      throw new VmSyncError(decision.code, decision.message);
    }
    report.notes.push(...decision.notes);
    report.action = 'deploy';
    if (config.repository.layout !== 'atomic') return; // in place: the transfer is the flip
    // The tree is ready once the secret scan passed (it runs while the VMs connect and lock): until
    // then nothing is staged, so a blocked deploy leaves nothing on the VM.
    // The wait is the run's, not the VM's: the VM's budget stops meanwhile, and starts again where it stopped.
    const shared = config.repository.sharedPaths;
    const removedPartials = (names: readonly string[]): void => {
      for (const name of names) report.notes.push(`removed an abandoned partial release ${name}`);
    };
    this.linkAhead(run, port, begun.survey);
    const waitFrom = Date.now();
    budget.pause();
    let tree: { dir: string; notes: string[] };
    try {
      tree = await this.ctx.tree();
    } finally {
      budget.resume();
    }
    run.treeNotes = tree.notes;
    port.extendTo(budget.deadlineAt, signal);
    // The lock's deadline covers the longest wait treeWaitS foresaw; a wait that outlasted it (git work
    // around the scan, a slow export made on demand) renews the lock before anything else is done under it.
    // (Under a second, the lock's own margin covers it.)
    const waited = Date.now() - waitFrom;
    if (waited >= 1000 && waited > (this.ctx.treeWaitS ?? 0) * 1000) await port.renew(this.token);
    // stage is the step that makes the partial release; the stream's apply makes its own, so with the
    // survey begin answered, a stream transfer needs no stage step (one round trip fewer after the scan).
    const stage = async (): Promise<StageResult> => {
      await this.copyAheadSettled(run, port);
      const result = await port.stage(this.token, commit, before, shared.map((s) => s.path));
      removedPartials(result.removedPartials);
      return result;
    };
    let staged: StageResult | null = null;
    const survey: StageSurvey = begun.survey ?? (staged = await stage());
    if (survey.completeRelease && !force) {
      // Staged by an earlier run that did not flip it (a halted rollout, a revert): nothing to send.
      run.release = survey.completeRelease;
      report.staged_at = now();
      report.notes.push(`reused the release ${survey.completeRelease} staged earlier: nothing transferred (${option('force')} stages afresh)`);
      this.say(run, `reusing ${survey.completeRelease}, staged earlier`, 'transfer');
      return;
    }
    const stats =
      (await this.streamed(run, port, survey, removedPartials)) ??
      (await (async () => {
        const into = staged ?? (await stage());
        this.say(run, `staging ${short(commit)} into a new release through rsync${into.linkDest ? ' (unchanged files hard-linked)' : ''}`, 'transfer');
        return port.transfer(
          { source: tree.dir, dest: into.stage, linkDest: into.linkDest, excludes: rsyncExcludes(config, into.sharedExisting), ioTimeoutS: ioTimeoutS(config) },
          (p) => this.ctx.events.progress(run.vm.id, p.percent, p.rate),
        );
      })());
    report.files_changed = stats.filesChanged;
    report.bytes_sent = stats.bytesSent;
    const sealed = await port.seal(this.token, commit, shared, this.buildKey);
    for (const p of sealed.seeded) report.notes.push(`shared path ${p} seeded from this release`);
    for (const p of sealed.created) report.notes.push(`shared path ${p} created empty (the commit does not have it)`);
    run.release = sealed.release;
    report.staged_at = now();
    this.say(run, `staged ${short(commit)} as ${sealed.release} (${count(stats.filesChanged, 'file')} changed, ${count(stats.bytesSent, 'byte')} sent)`, 'transfer');
  }

  /**
   * While the scan runs, a VM that will most likely take the stream transfer
   * from its live release makes the hard-link copy of that release the
   * stream builds on (the slowest part of `apply` on a large tree, and it
   * needs nothing of the commit). A copy that cannot be made costs nothing
   * but the time: `apply` then makes it itself, or rsync stages as before.
   */
  private linkAhead(run: VmRun, port: VmPort, survey: StageSurvey | null): void {
    const live = run.before ? releaseOf(run.before) : null;
    if (!survey || !this.ctx.stream || !live || !run.before || !run.report.rev_before) return;
    // A commit this runner does not have (diverged) gives no stream to build on.
    if (run.report.state !== 'behind' && run.report.state !== 'ahead' && run.report.state !== 'up-to-date') return;
    if (!survey.streamSupported || survey.baseState !== 'intact' || survey.baseKey !== this.buildKey) return;
    if (survey.completeRelease && !this.ctx.force) return;
    const before = run.before;
    run.linking = port.link(this.token, this.ctx.commit, live, before).then(
      (made) => made,
      (error: unknown) => {
        this.say(run, `could not prepare the copy of ${live} ahead of the stream (${getErrorMessage(error)}): apply makes it`, 'prepare', 'debug');
        return false;
      },
    );
  }

  /**
   * Waits for the copy ahead (stage and apply both empty the directory it
   * fills: never beside it); true when it was made. A copy that failed may
   * have been cut off with its channel, its `cp -al` still running on the VM:
   * that is stopped first, or the attempt ends.
   */
  private async copyAheadSettled(run: VmRun, port: VmPort): Promise<boolean> {
    if (!run.linking) return false;
    if (await run.linking) return true;
    if (!(await port.stopInterrupted())) {
      throw new VmSyncError('remote_command_failed', `could not confirm that the copy of the live release started on ${run.vm.id} stopped: not staging beside it (deploy again)`);
    }
    return false;
  }

  /**
   * The stream transfer, when it applies: the VM has GNU tar and find, and
   * either serves no release (the whole tree) or serves one that is exactly
   * what vm-sync sealed, of a commit this runner can diff from. Otherwise
   * null, with the reason in the row when the user should know it (a drifted
   * release is repaired by rsync, which compares every file).
   */
  private async streamed(run: VmRun, port: VmPort, staged: StageSurvey, removedPartials: (names: readonly string[]) => void): Promise<{ filesChanged: number; bytesSent: number } | null> {
    const { stream, commit } = this.ctx;
    if (!stream || !staged.streamSupported) return null;
    const live = run.before ? releaseOf(run.before) : null;
    if (staged.baseState === 'drifted') {
      run.report.notes.push(`release ${live} was changed on ${run.vm.id} after vm-sync sealed it (drift): staged through rsync, which compares every file; the new release is exactly the commit`);
      return null;
    }
    if (staged.baseState === 'unknown') return null; // sealed by a vm-sync that kept no manifest
    if (staged.baseState === 'intact' && staged.baseKey !== this.buildKey) {
      run.report.notes.push(`release ${live} was built with other rsync_excludes or shared_paths than now: staged through rsync`);
      return null;
    }
    const base = staged.baseState === 'intact' ? run.report.rev_before : null;
    if (staged.baseState === 'intact' && !base) return null;
    const outcome = await stream(base, staged.zstd);
    if (!outcome.ok) {
      this.say(run, `stream transfer not possible (${outcome.reason}): using rsync`, 'transfer');
      return null;
    }
    const { stream: made } = outcome;
    this.say(run, `staging ${short(commit)} from ${base ? `${short(base)} (${made.files} changed files, ${made.removals} removed)` : 'nothing (the whole tree)'} as one ${made.bytes}-byte ${made.codec} stream`, 'transfer');
    try {
      const linked = (await this.copyAheadSettled(run, port)) && base !== null;
      const applied = await port.apply(this.token, commit, base ? live : null, made.file, made.codec, (sent) => this.ctx.events.progress(run.vm.id, Math.floor((100 * sent) / Math.max(1, made.bytes)), ''), linked);
      removedPartials(applied.removedPartials);
    } catch (error) {
      const failure = toFailure(error);
      if (failure.code !== 'release_drifted' && failure.code !== 'stream_failed') throw failure;
      run.report.notes.push(`stream transfer refused by ${run.vm.id} (${failure.message}): staged through rsync instead`);
      return null;
    }
    return { filesChanged: made.files, bytesSent: made.bytes };
  }

  /**
   * Before a batch flips, its VMs get a fresh budget and their locks a new
   * deadline, and so do the VMs still waiting for a later batch (one round
   * trip each, in parallel): a batch may take up to a whole budget, and a
   * waiting VM's lock must not expire meanwhile.
   */
  private async renew(batch: VmRun[], waiting: VmRun[]): Promise<void> {
    // A batch's budget covers its health check on top of sync.timeout_s: a slow check is judged by
    // health_timeout_s (and reverted), never cut off by the run's budget.
    const { healthCommand, healthTimeoutS } = this.ctx.config.rollout;
    const healthMs = healthCommand ? (healthTimeoutS + KILL_GRACE_S + 5) * 1000 : 0;
    await Promise.all(
      [...batch, ...waiting].map(async (run) => {
        const port = run.port as VmPort;
        const { signal, deadlineAt } = this.budget(healthMs);
        port.extendTo(deadlineAt, signal);
        try {
          await port.renew(this.token);
        } catch (error) {
          await this.fail(run, this.cause(run, error));
        }
      }),
    );
  }

  /** Phase 2: switch each VM's live path to its new release, all in parallel. */
  private async flip(batch: VmRun[]): Promise<void> {
    const { config, commit } = this.ctx;
    await Promise.all(
      batch.map((run) =>
        this.step(run, async (port) => {
          run.touched = true;
          if (config.repository.layout === 'atomic') {
            this.say(run, `switching the live path to ${run.release}`, 'flip', 'debug');
            const flipped = await port.flip(this.token, run.release as string, false, { action: 'deploy', run: this.ctx.runId ?? '' });
            run.report.flipped_at = now();
            run.previous = flipped.previous;
            if (flipped.movedAside) run.report.notes.push(`kept the directory that stood at ${run.before?.target} as ${flipped.movedAside}`);
            this.say(run, `flipped to ${run.release}${flipped.previous ? ` (was ${flipped.previous})` : ''}`, 'flip');
            return;
          }
          // In place: no staging is possible; the transfer is the flip.
          this.say(run, `transferring ${short(commit)} into the live directory (layout in-place)`, 'transfer');
          const tree = await this.ctx.tree();
          run.treeNotes = tree.notes;
          const dest = await port.inPlaceBegin(this.token, run.before as Probe);
          const stats = await port.transfer({ source: tree.dir, dest, linkDest: null, excludes: rsyncExcludes(config, []), ioTimeoutS: ioTimeoutS(config) }, (p) =>
            this.ctx.events.progress(run.vm.id, p.percent, p.rate),
          );
          await port.inPlaceFinish(this.token, commit, { from: run.report.rev_before, run: this.ctx.runId ?? '' });
          run.report.files_changed = stats.filesChanged;
          run.report.bytes_sent = stats.bytesSent;
          run.report.flipped_at = now();
          this.say(run, `wrote .sync_rev ${short(commit)} in place (${stats.filesChanged} files changed, ${stats.bytesSent} bytes sent)`, 'flip');
        }),
      ),
    );
  }

  /** Phase 3: `.sync_rev` read back through the live path must be the commit. */
  private async verify(batch: VmRun[]): Promise<void> {
    const { commit } = this.ctx;
    await Promise.all(
      batch.map((run) =>
        this.step(run, async (port) => {
          this.say(run, 'reading .sync_rev back through the live path', 'verify', 'debug');
          const after = await port.probe();
          run.report.rev_after = liveRev(after);
          run.report.release = releaseOf(after);
          if (run.report.rev_after !== commit) {
            throw new VmSyncError('verify_mismatch', `${run.vm.id} reports ${run.report.rev_after ?? 'no valid .sync_rev'} after the flip, expected ${commit}: something else is writing to ${after.target}.`);
          }
          run.report.verified = true;
          run.report.notes.push(...run.treeNotes);
          this.say(run, `live on ${short(commit)}`, 'verify');
        }),
      ),
    );
  }

  /** Phase 4: the health command in the new release; an unhealthy VM goes back to the release it had. */
  private async health(batch: VmRun[], command: string): Promise<void> {
    const { config, commit } = this.ctx;
    await Promise.all(
      batch.map((run) =>
        this.step(run, async (port) => {
          this.say(run, `running health_command (health_timeout_s=${config.rollout.healthTimeoutS})`, 'health', 'debug');
          const outcome = await port.health(this.token, commit, command, config.rollout.healthTimeoutS);
          if (outcome.exit === 0) {
            run.report.health = 'passed';
            this.say(run, 'health check passed', 'health');
            return;
          }
          run.report.health = 'failed';
          run.report.health_output = outcome.output || null;
          const why = outcome.exit === null ? `did not finish within rollout.health_timeout_s=${config.rollout.healthTimeoutS}s` : `exited ${outcome.exit}`;
          const next = afterHealth(outcome, { revertUnhealthy: config.rollout.revertUnhealthy, previous: run.previous, layout: config.repository.layout });
          if (next === 'revert') {
            // The unhealthy release is rejected: a later rollback never goes back to it.
            await port.flip(this.token, run.previous as string, true, { action: 'revert', run: this.ctx.runId ?? '' });
            const back = await port.probe();
            run.report.rev_after = liveRev(back);
            run.report.release = releaseOf(back);
            run.report.verified = false;
            throw new VmSyncError('health_failed', `health_command ${why} on ${run.vm.id} after the flip to ${short(commit)}: flipped back to ${run.previous} (now serving ${short(run.report.rev_after)}). Fix the release and deploy again.`);
          }
          const reason = config.repository.layout !== 'atomic' ? 'the in-place layout keeps no release to go back to' : run.previous === null ? 'it had no release of vm-sync before' : 'rollout.revert_unhealthy is false';
          throw new VmSyncError('health_failed', `health_command ${why} on ${run.vm.id} after the flip to ${short(commit)}; it still serves ${short(commit)} (${reason}). Fix it, or run vm-sync rollback.`);
        }),
      ),
    );
  }

  /** Phase 5: prune, post_sync_command, unlock. */
  private async finish(batch: VmRun[], keep: number): Promise<void> {
    const { config } = this.ctx;
    await Promise.all(
      batch.map((run) =>
        this.step(run, async (port) => {
          this.say(run, 'finishing: prune old releases, post_sync_command, unlock', 'finish', 'debug');
          if (config.repository.layout === 'atomic') {
            try {
              const pruned = await port.prune(this.token, keep);
              if (pruned.length > 0) this.say(run, `pruned ${count(pruned.length, 'old release')}`, 'finish');
            } catch (error) {
              if (this.ctx.signal?.aborted) throw error;
              run.report.notes.push(`pruning old releases failed (deploy is fine): ${getErrorMessage(error)}`);
            }
          }
          if (config.sync.postSyncCommand) await this.postSync(run, port, config.sync.postSyncCommand);
          run.report.result = 'success';
          run.report.error = null;
          await port.unlock(this.token).catch((error: unknown) => {
            run.report.notes.push(`could not release the lock (it expires at its deadline, or run ${cliCommand(`vm-sync unlock --vm ${run.vm.id}`)}): ${getErrorMessage(error)}`);
          });
          this.close(run);
        }),
      ),
    );
  }

  /**
   * Runs post_sync_command on a VM: its output's tail (cleaned, masked) goes
   * into the row and the VM's log lines; a failure keeps its last lines in
   * the message. The release stays live either way.
   */
  private async postSync(run: VmRun, port: VmPort, command: string): Promise<void> {
    this.say(run, 'running post_sync_command', 'finish');
    const outcome = await port.postSync(this.token, this.ctx.commit, command);
    const tail = maskSecrets(commandOutputTail(outcome.output, POST_SYNC_LINES, POST_OUTPUT_MAX));
    run.report.post_sync = { exit_code: outcome.exit, output_tail: tail };
    const lines = tail === '' ? [] : tail.split('\n');
    for (const line of lines) this.say(run, `post_sync: ${line}`, 'finish');
    if (outcome.exit === 0) return;
    const why = outcome.exit === null ? 'did not finish' : `exited ${outcome.exit}`;
    const last = lines.slice(-POST_SYNC_FAILURE_LINES).join(' | ');
    throw new VmSyncError('post_sync_failed', `post_sync_command ${why} on ${run.vm.id}: ${last || 'no output'}. The new release is live; fix the command and run ${invocation('sync', [['force'], ['vm', run.vm.id]])} to run it again.`);
  }

  /** Runs one VM's step of a phase; a failure ends that VM's release (settled, unlocked, reported). */
  private async step(run: VmRun, body: (port: VmPort) => Promise<void>): Promise<void> {
    if (run.done || !run.port) return;
    try {
      await body(run.port);
    } catch (error) {
      await this.fail(run, this.cause(run, error));
    }
  }

  /**
   * What a step's error means for the row: once the run is cancelled, any
   * step cut short (a session cancelled reports `timeout`) was interrupted;
   * a health verdict already reached stands.
   */
  private cause(run: VmRun, error: unknown): VmSyncError {
    const failure = toFailure(error);
    if (this.ctx.signal?.aborted && failure.code !== 'health_failed') return new VmSyncError('interrupted', `run interrupted during ${run.vm.id}'s release; what it serves now is in rev_after`);
    return failure;
  }

  /** The VMs not yet flipped when the rollout stops: they keep their release, the new one staged. */
  private async halt(reason: string, ids: string[]): Promise<void> {
    this.rollout.halted = true;
    this.rollout.halted_reason = reason;
    const halted = this.active().filter((r) => ids.includes(r.vm.id));
    for (const run of halted) {
      run.report.result = 'skipped';
      run.report.error = {
        code: 'rollout_halted',
        message: `not flipped: the rollout stopped (${reason}). ${run.vm.id} still serves ${short(run.report.rev_before)}${run.release ? `, with ${short(this.ctx.commit)} staged as ${run.release}` : ''}. Fix the failed VMs and deploy again.`,
      };
    }
    await Promise.all(
      halted.map(async (run) => {
        run.port?.extendTo(Date.now() + CLEANUP_MS, AbortSignal.timeout(CLEANUP_MS));
        await this.settle(run, false);
        this.close(run);
      }),
    );
  }

  /** Ends a VM's release with a failure: stop what is left of this run on it, read back what it serves, unlock. */
  private async fail(run: VmRun, failure: VmSyncError): Promise<void> {
    if (run.done) return;
    const report = run.report;
    if (report.result !== 'refused') report.result = 'failed';
    report.error = { code: failure.code, message: failure.message };
    if (run.port) await this.settle(run, true);
    this.close(run);
  }

  /**
   * After a failure: stop this run's steps still running on the VM, read
   * back what it serves, then release the lock (only once nothing of this
   * run is left running there). On a budget of its own: the run's may be spent.
   */
  private async settle(run: VmRun, failed: boolean): Promise<void> {
    const port = run.port;
    if (!port) return;
    const { report } = run;
    // The copy made ahead still being made: unlock (which removes it) comes after it, never beside it.
    if (run.linking) await run.linking;
    port.extendTo(Date.now() + CLEANUP_MS, AbortSignal.timeout(CLEANUP_MS));
    let safeToUnlock = true;
    if (failed) {
      safeToUnlock = await port.stopInterrupted();
      if (!safeToUnlock) report.notes.push(`could not confirm that this run's steps on ${run.vm.id} stopped: the lock is left to expire at its deadline`);
      try {
        const seen = await port.probe(true);
        if (report.rev_after !== liveRev(seen) && run.touched) report.notes.push(`after the failure ${run.vm.id} serves ${short(liveRev(seen))}`);
        report.rev_after = liveRev(seen);
        report.release = releaseOf(seen) ?? report.release;
      } catch (error) {
        if (run.touched) {
          report.rev_after = null;
          report.notes.push(`could not read what ${run.vm.id} serves after the failure (${getErrorMessage(error)}): check it with vm-sync status`);
        }
      }
    }
    if (!safeToUnlock) return;
    try {
      await port.unlock(this.token);
    } catch (error) {
      report.notes.push(`could not release the lock (it expires at its deadline, or run ${cliCommand(`vm-sync unlock --vm ${run.vm.id}`)}): ${getErrorMessage(error)}`);
    }
  }

  /** Makes the row final: closes the port and announces it. */
  private close(run: VmRun): void {
    if (run.done) return;
    run.done = true;
    run.port?.close();
    run.port = null;
    run.report.duration_ms = Date.now() - run.started;
    announceRow(this.ctx.events, run.report);
  }
}

/**
 * How long a VM's agent session may live in a fleet release of `vmCount` VMs:
 * the whole run's worst case (lock wait, prepare, then a budget and a health
 * check per batch), a bound for a session nobody closed, never a deadline.
 */
export function sessionBudgetS(config: Config, vmCount: number, lockWaitS: number): number {
  const { sync, rollout } = config;
  const batches = planBatches(Array.from({ length: vmCount }, (_, i) => String(i)), rollout).length;
  return lockWaitS + sync.timeoutS * (2 + batches) + rollout.healthTimeoutS * batches + 60;
}

/** A fleet release's outcome: the rows, how it was rolled out, and the flip skew. */
export interface ReleaseOutcome {
  vms: VmReport[];
  rollout: RolloutReport;
  flip_skew_ms: number | null;
}

/** Deploys `ctx.commit` to `vms` as one fleet release (see the module comment). Never throws for a VM. */
export async function releaseFleet(ctx: ReleaseContext, vms: readonly VmConfig[]): Promise<ReleaseOutcome> {
  const release = new FleetRelease(ctx, vms);
  const rows = await release.main();
  const flips = rows.map((row) => row.flipped_at).filter((at): at is string => at !== null).map((at) => Date.parse(at));
  return { vms: rows, rollout: release.rollout, flip_skew_ms: flips.length ? Math.max(...flips) - Math.min(...flips) : null };
}

/** Everything a rollback needs, given by the entry point. */
export interface RollbackContext {
  config: Config;
  openPort: OpenPort;
  /** The commit to go back to (full hash), or null: each VM's previous release. */
  to: string | null;
  owner: Omit<LockOwner, 'deadline'>;
  /** The run's id, recorded in each VM's revisions.log; '' when none. */
  runId?: string;
  events: EngineEvents;
  signal?: AbortSignal;
  lockWaitS: number;
}

/**
 * `vm-sync rollback`: on every VM in parallel, lock, list the kept releases,
 * flip to the chosen one, read `.sync_rev` back, unlock. Transfers nothing.
 */
export async function rollbackFleet(ctx: RollbackContext, vms: readonly VmConfig[]): Promise<VmReport[]> {
  const { config } = ctx;
  return mapPool(vms, config.sync.concurrency, async (vm) => {
    ctx.events.vmStarted?.(vm.id);
    const started = Date.now();
    const report: VmReport = { ...failedRow(vm), action: 'rollback' };
    const ms = config.sync.timeoutS * 1000 + ctx.lockWaitS * 1000;
    const deadline = AbortSignal.timeout(ms);
    const signal = ctx.signal ? AbortSignal.any([ctx.signal, deadline]) : deadline;
    let port: VmPort | null = null;
    let locked = false;
    try {
      if (config.repository.layout !== 'atomic') throw new VmSyncError('no_release', `${vm.id}: layout in-place keeps no releases to roll back to; deploy the commit you want with ${invocation('sync', [['commit', 'SHA'], ['force']])}`);
      port = await connect(vm, ctx.events, 'rollback', config.sync.connectTimeoutS, () =>
        ctx.openPort(vm, { signal, deadlineAt: Date.now() + ms, sessionBudgetS: Math.ceil(ms / 1000) + 60, connectTimeoutMs: config.sync.connectTimeoutS * 1000 }),
      );
      let begun: Extract<BeginOutcome, { held: false }>;
      try {
        begun = await takeLock(vm, port, { owner: ctx.owner, expect: '', force: false, staleAfterS: config.sync.timeoutS, lockWaitS: ctx.lockWaitS, signal, onWait: (m) => ctx.events.info(vm.id, m, 'rollback') });
      } catch (error) {
        // Without an answer the VM may have taken the lock for us: stop that step, then release what is ours.
        if (!(error as { probe?: Probe }).probe) locked = true;
        throw error;
      }
      locked = true;
      report.rev_before = report.rev_after = liveRev(begun.probe);
      const list = await port.releases();
      const decision = chooseRollback(vm.id, list, ctx.to);
      if (decision.kind === 'refuse') throw new VmSyncError('no_release', decision.message);
      if (decision.kind === 'flip') {
        // A plain rollback rejects the release it leaves; --to is a deliberate move either way.
        await port.flip(ctx.owner.token, decision.release.name, ctx.to === null, { action: 'rollback', run: ctx.runId ?? '' });
        report.flipped_at = now();
      } else {
        report.action = 'none';
      }
      const after = await port.probe();
      report.rev_after = liveRev(after);
      report.release = releaseOf(after);
      if (report.rev_after !== decision.release.commit) {
        throw new VmSyncError('verify_mismatch', `${vm.id} reports ${report.rev_after ?? 'no valid .sync_rev'} after the rollback, expected ${decision.release.commit}: the release ${decision.release.name} was changed by hand; deploy instead.`);
      }
      report.verified = true;
      report.result = 'success';
      ctx.events.info(vm.id, decision.kind === 'flip' ? `rolled back to ${short(decision.release.commit)} (${decision.release.name})` : `already on ${short(decision.release.commit)}`, 'rollback');
    } catch (error) {
      const failure = toFailure(error);
      const probe = (error as { probe?: Probe }).probe;
      if (probe) {
        report.rev_before = report.rev_after = liveRev(probe);
        report.release = releaseOf(probe);
      }
      report.error = { code: signal.aborted && failure.code !== 'no_release' ? (ctx.signal?.aborted ? 'interrupted' : 'timeout') : failure.code, message: failure.message };
      report.result = 'failed';
      if (port) {
        port.extendTo(Date.now() + CLEANUP_MS, AbortSignal.timeout(CLEANUP_MS));
        if (!(await port.stopInterrupted())) locked = false;
        const seen = await port.probe(true).catch(() => null);
        if (seen) {
          report.rev_after = liveRev(seen);
          report.release = releaseOf(seen);
        }
      }
    } finally {
      if (port && locked) await port.unlock(ctx.owner.token).catch(() => false);
      port?.close();
      report.duration_ms = Date.now() - started;
      announceRow(ctx.events, report);
    }
    return report;
  });
}
