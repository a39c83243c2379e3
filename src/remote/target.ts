import crypto from 'node:crypto';
import path from 'node:path';
import { FAILURE_CODES, type FailureCode, VmSyncError } from '../errors.js';
import { agentCommand, AgentResponse, KILL_GRACE_S, parseAgentOutput } from './agent-script.js';
import { AgentSession } from './agent-session.js';
import { LISTING_LIMITS, readListingAnswer, type ListingLimits, type TreeListing } from './listing.js';
import { codeFromStderr } from './classify.js';
import { encodeLockOwner, type LockOwner } from './lock.js';
import type { RemoteGuard } from './rsh-bridge.js';
import type { ExecInput, VmSession } from './session.js';
import { vmBlock, vmText } from './untrusted.js';

/** What the target path holds on the VM. */
export type TargetKind = 'release' | 'symlink' | 'dangling' | 'dir' | 'other' | 'absent';
/** What stands at `.sync_rev` in the live tree. Only `regular` is ever read. */
export type SentinelState = 'regular' | 'absent' | 'symlink' | 'directory' | 'special' | 'unreadable';

const TARGET_KINDS: readonly TargetKind[] = ['release', 'symlink', 'dangling', 'dir', 'other', 'absent'];
const SENTINEL_STATES: readonly SentinelState[] = ['regular', 'absent', 'symlink', 'directory', 'special', 'unreadable'];

/** What `probe` found at the target path on the VM. Every text field is cleaned and bounded. */
export interface Probe {
  /** The target with `~` expanded by the VM. */
  target: string;
  /**
   * `release`: vm-sync's symlink to a release; `symlink`: a symlink vm-sync
   * did not make, to something that exists; `dangling`: a symlink to nothing
   * (vm-sync's to a missing release, with `currentRelease` set, or another).
   */
  kind: TargetKind;
  /** The release the managed symlink points at, or null. */
  currentRelease: string | null;
  sentinel: SentinelState;
  /** `.sync_rev`'s first line (at most 100 bytes), when it is a regular file; not yet validated. */
  rev: string | null;
  /** The first line of `rsync --version`, null when rsync is not on the VM's PATH. */
  rsyncVersion: string | null;
  /** The lock as it stands, or null. `record` is cleaned for display; `hex` is its exact bytes, for breaking it. */
  lock: { record: string; hex: string; kind: 'v2' | 'legacy' | 'other'; mtime: number | null } | null;
  /** The VM's clock (epoch seconds). */
  now: number;
}

/**
 * The answer to `begin`: the lock taken (with the probe made under it, and
 * the stage survey when asked for and the lock was kept), or who holds it.
 */
export type BeginOutcome =
  | { held: false; probe: Probe; released: boolean; tookOver: { record: string; why: string } | null; survey: StageSurvey | null }
  | { held: true; probe: Probe; record: string; hex: string; why: 'deadline' | 'legacy' | 'unreadable'; ageS: number };

/** How to take the lock: see {@link RemoteTarget.begin}. */
export interface BeginOptions {
  expect: string;
  force: boolean;
  legacyStaleAfterS: number;
  expectedBreak?: string;
  /** Also answer the stage survey for `expect` when the lock is kept (atomic layout), with these shared paths. */
  survey?: { sharedPaths: readonly string[] };
}

/** Where the release of `sha` is staged, beside the probed target. */
function stageDir(probed: Probe, sha: string): string {
  return path.posix.join(path.posix.dirname(probed.target), `.${path.posix.basename(probed.target)}.vm-sync`, 'releases', `${sha}.partial`);
}

/** Seconds an empty, unreadable or garbled lock is respected before it is treated as stale. */
export const UNREADABLE_LOCK_GRACE_S = 60;
/** Extra lifetime of a lock past its holder's budget, covering the final probe and unlock. */
const LOCK_MARGIN_S = KILL_GRACE_S + 20;
/** The budget of the steps that run after a failure (kill, probe, unlock). */
export const CLEANUP_MS = 15_000;

const AGENT_CODES: ReadonlySet<string> = new Set(FAILURE_CODES);

const PROBE_KEYS = ['target', 'kind', 'current', 'rev_state', 'rev', 'rsync', 'lock_record', 'lock_hex', 'lock_kind', 'lock_mtime', 'now'] as const;
const SURVEY_KEYS = ['link_dest', 'shared', 'complete', 'stream', 'zstd', 'base_state', 'base_key'] as const;
const BEGIN_KEYS = [...PROBE_KEYS, 'lock', 'lock_why', 'owner', 'owner_hex', 'age', 'took_over', 'took_over_why', 'killed_pgid', ...SURVEY_KEYS];

/** A kept release on a VM: its directory name and the commit it holds (complete releases only). */
export interface KeptRelease {
  name: string;
  commit: string;
}

/** What `releases` lists: the live release's name (null when the target is not vm-sync's) and every kept one. */
export interface ReleaseList {
  live: string | null;
  /**
   * Where a rollback goes: the last release live before the live one (from the
   * VM's flip history) that is still complete and was not rejected; null: none.
   */
  previous: string | null;
  complete: KeptRelease[];
  incomplete: string[];
}

/** What the VM has that staging depends on (read-only; `begin` can answer it under the lock, `stage` does). */
export interface StageSurvey {
  linkDest: string | null;
  /** Shared paths that exist on the VM (excluded from the transfer). */
  sharedExisting: string[];
  /** The newest complete release of this commit kept on the VM, or null. */
  completeRelease: string | null;
  /** Whether the VM has what the stream transfer needs (GNU tar and find). */
  streamSupported: boolean;
  /** Whether the VM can unpack a zstd stream (else gzip). */
  zstd: boolean;
  /** Whether the live release can be the base of a stream (see {@link BaseState}). */
  baseState: BaseState;
  /** The build key the live release was sealed with (null: none recorded). */
  baseKey: string | null;
}

/** What `stage` answered: where to transfer, the abandoned partial releases it removed, and the survey. */
export interface StageResult extends StageSurvey {
  stage: string;
  removedPartials: string[];
}

/**
 * The live release as a base for the stream transfer: `none` (no live
 * release), `unknown` (sealed before vm-sync kept manifests), `intact`
 * (unchanged since it was sealed), `drifted` (changed on the VM since).
 */
export type BaseState = 'none' | 'unknown' | 'intact' | 'drifted';

/** How a release stream's tar is compressed: zstd where both ends run it, else gzip. */
export type StreamCodec = 'gzip' | 'zstd';
const BASE_STATES: readonly BaseState[] = ['none', 'unknown', 'intact', 'drifted'];

/** How the post-sync command ended: its exit status (null: it did not finish) and its output's tail, raw. */
export interface PostSyncOutcome {
  exit: number | null;
  output: string;
}

/** What the post-sync command's output is kept to on the runner host (its end). */
export const POST_OUTPUT_MAX = 64 * 1024;

/** Why a flip happens, and the run that made it: the VM's revisions.log records both. */
export interface FlipRecord {
  action: 'deploy' | 'revert' | 'rollback';
  /** The run id (see src/journal); '' when none. */
  run: string;
}

/** What `revisions` read: whether the VM has a revisions.log, and its last lines (raw: parse them). */
export interface RevisionsRead {
  present: boolean;
  lines: string[];
}

/** How a health command ended: its exit status (null when it ran out of time) and its last output lines. */
export interface HealthOutcome {
  exit: number | null;
  output: string;
}

const RELEASE_NAME = /^[0-9]{8}T[0-9]{6,9}Z-[0-9a-f]{12}(-[0-9]+)?$/;

/**
 * The deploy target on one VM, driven through the agent over the VM's
 * session. Each method is one remote command under a deadline on the VM; a
 * failure becomes a {@link VmSyncError} classified from what the VM said.
 * Operations that a cancellation interrupted are remembered, so
 * {@link stopInterrupted} can kill what they left running on the VM.
 */
export class RemoteTarget {
  /** Nonces of steps whose channel this run dropped: they may still run, or not have started yet. */
  private readonly interrupted = new Set<string>();
  /** The agent session every ordinary operation goes through (cleanup steps use a command of their own). */
  private agent: AgentSession | null = null;

  constructor(
    private readonly session: VmSession,
    /** The target path as configured (`~/app` or absolute). */
    private readonly path: string,
    /** When this run's budget for the VM ends (epoch ms); {@link extendTo} moves it. */
    private deadlineAt: number,
    private signal?: AbortSignal,
    /** The agent session's lifetime on the VM: the whole run's (a VM may wait for its batch). */
    private readonly sessionBudgetS: number = Math.ceil((deadlineAt - Date.now()) / 1000) + 60,
  ) {}

  /** Moves the budget's end (a VM that waited for its batch gets a new budget for its flip). */
  extendTo(deadlineAt: number, signal?: AbortSignal): void {
    this.deadlineAt = deadlineAt;
    if (signal) this.signal = signal;
  }

  /** Ends the agent session (the connection is the caller's). */
  close(): void {
    this.agent?.close();
    this.agent = null;
  }

  private get vmId(): string {
    return this.session.vm.id;
  }

  /** Seconds left of the budget, for the VM-side `timeout`. */
  private budgetS(): number {
    return Math.max(1, Math.ceil((this.deadlineAt - Date.now()) / 1000));
  }

  /**
   * Runs one operation; resolves with its answer whatever it says (see {@link op} for the checked form).
   * `otherTail`: keep the last this many characters of its unframed output, as printed (a command's
   * output the caller cleans and bounds), instead of its start and end made into a message.
   */
  private async call(op: string, args: string[], cleanup: boolean, budgetOverride?: number, input?: ExecInput, otherTail?: number): Promise<{ response: AgentResponse; code: number; stderr: string; other: string }> {
    const nonce = crypto.randomBytes(12).toString('hex');
    const budgetS = cleanup ? CLEANUP_MS / 1000 : (budgetOverride ?? this.budgetS());
    try {
      if (!cleanup && !input) {
        // Ordinary operations share one agent session: one channel, no shell start per step.
        if (!this.agent?.alive) {
          this.agent = null;
          this.agent = await AgentSession.open(this.session, this.path, this.sessionBudgetS);
        }
        const agent = this.agent;
        try {
          const reply = await agent.request(op, args, { nonce, budgetS, signal: this.signal, otherTail });
          return { response: parseAgentOutput(reply.framed, nonce), code: reply.code, stderr: vmBlock(reply.stderr.trim() || agent.stderr.trim(), 2000), other: otherTail ? reply.other : vmBlock(ends(reply.other.trim()), 5200) };
        } catch (error) {
          // The session's own process must go too when its step is killed.
          this.interrupted.add(agent.nonce);
          const said = agent.stderr.trim();
          if (error instanceof VmSyncError && error.code === 'unreachable' && said) {
            const known = codeFromStderr(said);
            const missingTimeout = /timeout: (command )?not found|timeout: No such file/.test(said);
            if (known || missingTimeout) throw new VmSyncError(known ?? 'remote_command_failed', `${op} on ${this.vmId} failed: ${vmText(said.split('\n').slice(-3).join(' | '), 500)}${missingTimeout ? ' (vm-sync needs coreutils `timeout` on the VM: install coreutils)' : ''}`);
          }
          throw error;
        }
      }
      const command = agentCommand(op, this.path, { nonce, budgetS }, ...args);
      // A step with input has a channel of its own (the session's stdin carries requests); it is cancelled with the run.
      const result = await this.session.exec(command, budgetS * 1000 + (KILL_GRACE_S + 2) * 1000, input ? this.signal : undefined, nonce, undefined, input);
      return { response: parseAgentOutput(result.stdout, nonce), code: result.code, stderr: vmBlock(result.stderr.trim(), 2000), other: vmBlock(ends(result.other.trim()), 5200) };
    } catch (error) {
      // The channel is gone, but the step may still run on the VM, or start
      // there later: stopInterrupted() finds it by its nonce.
      this.interrupted.add(nonce);
      throw error;
    }
  }

  private async op(op: string, args: string[], cleanup = false, input?: ExecInput): Promise<AgentResponse> {
    const { response, code, stderr, other } = await this.call(op, args, cleanup, undefined, input);
    const agentCode = response.get('error');
    if (agentCode === null && code === 0 && response.complete) return response;
    const said = vmText(response.get('message') ?? '', 500);
    const known = agentCode !== null && agentCode !== 'failed' && AGENT_CODES.has(agentCode) ? (agentCode as FailureCode) : null;
    const missingTimeout = /timeout: (command )?not found|timeout: No such file/.test(stderr);
    const detail = said || stderr.split('\n').slice(-3).join(' | ') || (other ? `no answer; the login shell printed: ${vmText(other, 300)}` : `exit ${code}`);
    // The agent quotes the shell's own error (disk full, I/O error) in its message.
    throw new VmSyncError(known ?? codeFromStderr(`${said}\n${stderr}`) ?? 'remote_command_failed', `${op} on ${this.vmId} failed: ${detail}${missingTimeout ? ' (vm-sync needs coreutils `timeout` on the VM: install coreutils)' : ''}`);
  }

  /**
   * A guard for this run's transfer (see RshBridge.start): the VM's rsync
   * server runs under the run's deadline, and `failed()` marks it for
   * {@link stopInterrupted}, which kills it on the VM if it is still there.
   */
  transferGuard(): RemoteGuard & { failed(): void } {
    const nonce = crypto.randomBytes(12).toString('hex');
    return { nonce, budgetS: () => this.budgetS(), failed: () => this.interrupted.add(nonce) };
  }

  /** Reads where the VM stands; changes nothing. */
  async probe(cleanup = false): Promise<Probe> {
    return parseProbe((await this.op('probe', [], cleanup)).only(PROBE_KEYS));
  }

  /**
   * Takes the lock (breaking `expectedBreak` first if it is still exactly that
   * record), then probes under it. With `expect` equal to the live commit and
   * no `force`, the lock is released again at once (`released`).
   */
  async begin(owner: Omit<LockOwner, 'deadline'>, options: BeginOptions): Promise<BeginOutcome> {
    const lockBudget = this.budgetS() + LOCK_MARGIN_S;
    const out = await this.op('begin', [
      encodeLockOwner(owner),
      String(lockBudget),
      options.expect,
      options.force ? '1' : '0',
      String(UNREADABLE_LOCK_GRACE_S),
      String(options.legacyStaleAfterS),
      options.expectedBreak ?? '',
      options.survey ? '1' : '0',
      ...(options.survey?.sharedPaths ?? []),
    ]);
    out.only(BEGIN_KEYS);
    const probe = parseProbe(out);
    const lock = out.all('lock')[0];
    if (lock === 'held') {
      return {
        held: true,
        probe,
        record: vmText(out.require('owner'), 1000),
        hex: hexOnly(out.require('owner_hex')),
        why: out.oneOf('lock_why', ['deadline', 'legacy', 'unreadable'] as const),
        ageS: toInt(out.require('age')),
      };
    }
    if (lock !== 'acquired') throw new VmSyncError('remote_command_failed', `begin on ${this.vmId}: unexpected lock=${vmText(lock ?? '', 40)}`);
    const took = out.all('took_over').at(-1);
    const released = out.all('lock').includes('released');
    return {
      held: false,
      probe,
      released,
      tookOver: took !== undefined ? { record: vmText(took, 1000), why: vmText(out.get('took_over_why') ?? 'dead holder', 40) } : null,
      // Asked for and the lock kept: every field required, as stage's.
      survey: options.survey && !released ? this.surveyOf(out, probe, options.expect, options.survey.sharedPaths) : null,
    };
  }

  /** Releases the lock if this run still holds it; never removes another run's lock. Runs on a budget of its own. */
  async unlock(token: string): Promise<boolean> {
    return (await this.op('unlock', [token], true)).get('lock') === 'released';
  }

  /** Breaks the lock if it is still exactly the one read (its `hex`); false when it changed meanwhile. */
  async breakLock(hex: string): Promise<boolean> {
    return (await this.op('break', [hex], true)).get('lock') === 'broken';
  }

  /**
   * Removes abandoned partial stages of other commits, then makes this
   * commit's stage; returns where to stage, what to hard-link from, and which
   * of the shared paths already exist on the VM (excluded from the transfer).
   */
  async stage(token: string, sha: string, probed: Probe, sharedPaths: readonly string[] = []): Promise<StageResult> {
    const out = (await this.op('stage', [token, sha, ...sharedPaths])).only(['stage', 'removed_partial', ...SURVEY_KEYS]);
    // rsync writes there with --delete: only the one directory it must be.
    const expected = stageDir(probed, sha);
    const stage = out.require('stage');
    if (stage !== expected) throw new VmSyncError('remote_command_failed', `stage on ${this.vmId} answered ${vmText(stage)}, not ${expected}: refusing to transfer there`);
    return { stage, removedPartials: out.all('removed_partial').map((p) => vmText(p)), ...this.surveyOf(out, probed, sha, sharedPaths) };
  }

  /** The survey fields of `begin`'s or `stage`'s answer, each required. */
  private surveyOf(out: AgentResponse, probed: Probe, sha: string, sharedPaths: readonly string[]): StageSurvey {
    const linkDest = out.require('link_dest');
    const releases = path.posix.dirname(stageDir(probed, sha));
    if (linkDest && linkDest !== probed.target && path.posix.dirname(linkDest) !== releases) throw new VmSyncError('remote_command_failed', `${this.vmId} answered an unexpected link-dest ${vmText(linkDest)}`);
    const complete = out.require('complete');
    return {
      linkDest: linkDest || null,
      sharedExisting: out.all('shared').filter((p) => sharedPaths.includes(p)),
      completeRelease: complete ? releaseName(complete, this.vmId) : null,
      streamSupported: out.oneOf('stream', ['0', '1'] as const) === '1',
      zstd: out.oneOf('zstd', ['0', '1'] as const) === '1',
      baseState: out.oneOf('base_state', BASE_STATES),
      baseKey: out.get('base_key'),
    };
  }

  /**
   * Makes this commit's partial release a hard-link copy of `base` (the live
   * release, which the VM checks is unchanged since it was sealed): the part
   * of {@link apply}'s work that needs nothing of the commit, so it can run
   * while the secret scan does. `apply` with `linked` builds on it; `unlock`
   * removes it when the run ends without that. False when it was not made: a
   * partial release of this commit is there already (it is not touched before
   * the scan passed).
   */
  async link(token: string, sha: string, base: string, probed: Probe): Promise<boolean> {
    const linked = (await this.op('link', [token, sha, base])).only(['linked']).require('linked');
    // '': a partial release of this commit is already there, and stays untouched until the scan passed.
    if (linked === '') return false;
    const expected = stageDir(probed, sha);
    if (linked !== expected) throw new VmSyncError('remote_command_failed', `link on ${this.vmId} answered ${vmText(linked)}, not ${expected}`);
    return true;
  }

  /**
   * Builds this commit's staged release from a stream file (see
   * `src/sync/stream.ts`): a hard-link copy of `base` (the live release,
   * which the VM checks is unchanged since it was sealed) or nothing, minus
   * the paths the stream removes, plus what it carries. Fails with
   * `release_drifted` when the base is not what vm-sync sealed. With
   * `linked`, the copy {@link link} made is used when the VM confirms this
   * run made it from `base`.
   */
  async apply(token: string, sha: string, base: string | null, file: string, codec: StreamCodec, onSent?: (bytes: number) => void, linked = false): Promise<{ removed: number; removedPartials: string[] }> {
    const out = (await this.op('apply', [token, sha, base ?? '', codec, linked ? '1' : '0'], false, { path: file, onSent })).only(['removed', 'stage', 'removed_partial']);
    return { removed: toInt(out.require('removed')), removedPartials: out.all('removed_partial').map((p) => vmText(p)) };
  }

  /**
   * Completes the staged release: writes `.sync_rev`, links the shared paths
   * (`d:path` / `f:path`, seeding the ones the VM lacks), writes the
   * completion marker (with `key`, see `buildKey`) and gives it its final
   * name. Nothing live changes.
   */
  async seal(token: string, sha: string, shared: ReadonlyArray<{ path: string; dir: boolean }> = [], key = '0'): Promise<{ release: string; seeded: string[]; created: string[] }> {
    const out = (await this.op('seal', [token, sha, key, ...shared.map((s) => `${s.dir ? 'd' : 'f'}:${s.path}`)])).only(['release', 'seeded', 'created']);
    return { release: releaseName(out.require('release'), this.vmId), seeded: out.all('seeded').map((p) => vmText(p)), created: out.all('created').map((p) => vmText(p)) };
  }

  /**
   * Points the target at a complete kept release; returns the release it
   * replaced (null: none of vm-sync's). With `reject`, the replaced release is
   * marked as one a rollback never goes back to (it was reverted or rolled back from).
   * `record` says why, for the VM's revisions.log.
   */
  async flip(token: string, release: string, reject = false, record: FlipRecord = { action: 'deploy', run: '' }): Promise<{ previous: string | null; movedAside: string | null }> {
    const out = (await this.op('flip', [token, release, reject ? '1' : '0', record.action, record.run])).only(['previous', 'moved_aside', 'release']);
    if (out.require('release') !== release) throw new VmSyncError('remote_command_failed', `flip on ${this.vmId} answered ${vmText(out.require('release'))}, not ${release}`);
    const previous = out.require('previous');
    const aside = out.get('moved_aside');
    return { previous: previous ? releaseName(previous, this.vmId) : null, movedAside: aside === null ? null : vmText(aside) };
  }

  /** The kept releases and the live one; read-only, needs no lock. */
  async releases(): Promise<ReleaseList> {
    const out = (await this.op('releases', [])).only(['live', 'previous', 'release', 'incomplete']);
    const live = out.require('live');
    const previous = out.require('previous');
    const complete = out.all('release').map((line): KeptRelease => {
      const [name, commit] = line.split(' ');
      if (!commit || !/^[0-9a-f]{40}$/.test(commit)) throw new VmSyncError('remote_command_failed', `releases on ${this.vmId}: a completion marker without a commit (${vmText(line, 120)})`);
      return { name: releaseName(name, this.vmId), commit };
    });
    return { live: live ? vmText(live, 200) : null, previous: previous ? releaseName(previous, this.vmId) : null, complete, incomplete: out.all('incomplete').map((n) => vmText(n, 200)) };
  }

  /** The last `limit` lines of the VM's revisions.log (read-only, no lock; each line raw, cut at 400 bytes). */
  async revisions(limit: number): Promise<RevisionsRead> {
    const out = (await this.op('revisions', [String(Math.max(1, Math.floor(limit)))])).only(['log', 'revision']);
    return { present: out.oneOf('log', ['present', 'absent'] as const) === 'present', lines: out.all('revision') };
  }

  /** Extends this run's lock to the budget's end (plus the margin); fails with lock_lost when it is gone. */
  async renew(token: string): Promise<void> {
    const out = (await this.op('renew', [token, String(this.budgetS() + LOCK_MARGIN_S)])).only(['deadline']);
    toInt(out.require('deadline'));
  }

  /**
   * Runs the health command in the live release with `timeoutS` as its whole
   * budget. Never throws for the command's own failure or timeout: that is
   * the outcome; only the VM's or the lock's failures throw.
   */
  async health(token: string, sha: string, command: string, timeoutS: number): Promise<HealthOutcome> {
    const { response, code, stderr, other } = await this.call('health', [token, sha, command], false, timeoutS);
    if (response.get('error') !== null) await this.op('health', [token, sha, command]); // lock lost and the like: the checked form says why
    // Its start and its end: a failing check says why at its end, a long line is cut in the middle.
    const output = vmBlock(other.length > 2000 ? `${other.slice(0, 500)}\n[…]\n${other.slice(-1500)}` : other, 2100);
    if (!response.complete) {
      // Killed by its timeout (124, or 137 after the grace): unhealthy.
      return { exit: null, output: output || vmBlock(stderr, 1000) };
    }
    response.only(['exit']);
    const exit = toInt(response.require('exit'));
    return { exit: code === 0 ? exit : exit || code, output };
  }

  async inPlaceBegin(token: string, probed: Probe): Promise<string> {
    const target = (await this.op('inplace-begin', [token])).require('target');
    if (target !== probed.target) throw new VmSyncError('remote_command_failed', `inplace-begin on ${this.vmId} answered ${vmText(target)}, not ${probed.target}: refusing to transfer there`);
    return target;
  }

  /** Writes `.sync_rev` after an in-place transfer; `from` (the commit it held) and `run` go into revisions.log. */
  async inPlaceFinish(token: string, sha: string, record: { from: string | null; run: string } = { from: null, run: '' }): Promise<void> {
    await this.op('inplace-finish', [token, sha, record.from ?? '', record.run]);
  }

  /** Removes releases beyond `keep` complete ones (never the live one or the one before it) and abandoned stages. */
  async prune(token: string, keep: number): Promise<string[]> {
    return (await this.op('prune', [token, String(keep)])).only(['pruned']).all('pruned').map((p) => vmText(p));
  }

  /**
   * Every entry of the live release (`release`) or of the target directory
   * (`dir`) with the sha256 of every regular file, nothing followed; read-only,
   * needs no lock. It travels byte-exact on a channel of its own (names may
   * hold any byte but NUL), bounded by `limits` and the run's deadline.
   */
  async listing(kind: 'release' | 'dir', limits: ListingLimits = LISTING_LIMITS): Promise<TreeListing> {
    const nonce = crypto.randomBytes(12).toString('hex');
    const budgetS = this.budgetS();
    const command = agentCommand('listing', this.path, { nonce, budgetS }, String(limits.maxEntries), kind);
    try {
      const result = await this.session.execRaw(command, budgetS * 1000 + (KILL_GRACE_S + 2) * 1000, limits.maxCompressedBytes, this.signal);
      // A channel cut at the byte cap leaves the listing running on the VM until it notices.
      if (result.overflowed) this.interrupted.add(nonce);
      return readListingAnswer(result, nonce, this.vmId, limits);
    } catch (error) {
      this.interrupted.add(nonce);
      throw error;
    }
  }

  /** Whether a deploy could write beside the target, and the free space there. */
  async writability(): Promise<{ parent: string; existing: string; writable: boolean; availableKb: number | null; timeout: string | null }> {
    const out = await this.op('doctor', []);
    const kb = Number(out.get('avail_kb'));
    return {
      parent: vmText(out.require('parent')),
      existing: vmText(out.require('existing')),
      writable: out.require('writable') === '1',
      availableKb: out.get('avail_kb') && Number.isFinite(kb) ? kb : null,
      timeout: out.get('timeout') ? vmText(out.require('timeout')) : null,
    };
  }

  /**
   * Runs the configured post-sync command in the live release, under the
   * run's deadline, and returns its exit status (null: stopped before it
   * ended) and the tail of its output (stdout and stderr, in order; at most
   * {@link POST_OUTPUT_MAX} characters, as the VM printed it: the caller
   * cleans and masks it). Only the VM's or the lock's failures throw.
   */
  async postSync(token: string, sha: string, command: string): Promise<PostSyncOutcome> {
    // A budget spent or a cancellation throws here, as for any step (the output is lost with the channel).
    const { response, code, stderr, other } = await this.call('post', [token, sha, command], false, undefined, undefined, POST_OUTPUT_MAX);
    if (response.get('error') !== null) await this.op('post', [token, sha, command]); // lock lost and the like: the checked form says why
    if (!response.complete) return { exit: null, output: other || stderr };
    response.only(['exit']);
    const exit = toInt(response.require('exit'));
    return { exit: code === 0 ? exit : exit || code, output: other };
  }

  /**
   * Kills, on the VM, the process groups of operations whose channel this run
   * dropped (a cancelled run or a spent budget): closing a channel does not
   * stop the remote process. Returns false when they could not be confirmed
   * stopped.
   */
  async stopInterrupted(): Promise<boolean> {
    if (this.interrupted.size === 0) return true;
    try {
      await this.op('kill', [...this.interrupted], true);
      this.interrupted.clear();
      return true;
    } catch {
      return false;
    }
  }
}

/** A release name as the agent makes them; anything else is a protocol error, never a path to use. */
function releaseName(value: string, vmId: string): string {
  if (!RELEASE_NAME.test(value)) throw new VmSyncError('remote_command_failed', `the agent on ${vmId} named a release ${JSON.stringify(vmText(value, 80))}, which is not a release name`);
  return value;
}

/** Long output as its first 1000 and last 4000 characters: a command says why it failed at its end. */
function ends(text: string): string {
  return text.length <= 5000 ? text : `${text.slice(0, 1000)}\n[…]\n${text.slice(-4000)}`;
}

function hexOnly(value: string): string {
  return /^[0-9a-f]*$/.test(value) ? value : '';
}

function toInt(value: string): number {
  const n = Number(value);
  return Number.isSafeInteger(n) ? n : 0;
}

/** The probe part of a response, every field required and checked. */
function parseProbe(out: AgentResponse): Probe {
  const sentinel = out.oneOf('rev_state', SENTINEL_STATES);
  const lockKind = out.get('lock_kind');
  const mtime = Number(out.get('lock_mtime'));
  return {
    target: vmText(out.require('target')),
    kind: out.oneOf('kind', TARGET_KINDS),
    currentRelease: out.require('current') ? vmText(out.require('current')) : null,
    sentinel,
    rev: sentinel === 'regular' ? vmText(out.require('rev'), 100) : null,
    rsyncVersion: out.require('rsync') ? vmText(out.require('rsync'), 120) : null,
    lock:
      lockKind === null
        ? null
        : { record: vmText(out.get('lock_record') ?? '', 1000), hex: hexOnly(out.get('lock_hex') ?? ''), kind: lockKind === 'v2' || lockKind === 'legacy' ? lockKind : 'other', mtime: out.get('lock_mtime') && Number.isSafeInteger(mtime) ? mtime : null },
    now: toInt(out.require('now')),
  };
}
