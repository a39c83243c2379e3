/*
 * A scripted fleet for the release executor's unit tests: an OpenPort whose
 * ports model one VM each (its lock, its kept releases, the live one) and
 * record every call in one global sequence. A test scripts each VM's
 * answers: failures per operation, slow steps (a promise the step waits
 * for), health outcomes, a VM that releases its lock at begin.
 */
import { parseConfig } from '../../src/config/load.js';
import type { Config, VmConfig } from '../../src/config/types.js';
import { VmSyncError } from '../../src/errors.js';
import type { LockOwner } from '../../src/remote/lock.js';
import type { TreeListing } from '../../src/remote/listing.js';
import type { OpenPort, TransferPlan, VmPort } from '../../src/remote/port.js';
import type { BaseState, BeginOutcome, HealthOutcome, PostSyncOutcome, Probe, ReleaseList, SentinelState, StageSurvey } from '../../src/remote/target.js';
import type { History } from '../../src/sync/state.js';
import type { EngineEvents, VmReport } from '../../src/sync/types.js';

export type Op =
  | 'open' | 'probe' | 'begin' | 'stage' | 'transfer' | 'link' | 'apply' | 'seal' | 'flip' | 'inPlaceBegin' | 'inPlaceFinish' | 'releases' | 'listing' | 'renew' | 'health' | 'prune'
  | 'postSync' | 'unlock' | 'breakLock' | 'stopInterrupted' | 'extendTo' | 'close';

/** One call on a port (or an `open`), in the order they happened across the whole fleet. */
export interface Call {
  seq: number;
  /** performance.now() when the call was made. */
  t: number;
  vm: string;
  /** Which port of this VM (0: the first connection, 1: a retry's, ...). */
  port: number;
  op: Op;
  args: unknown[];
  /** Set when the call answered: whether it threw. */
  threw?: boolean;
  /** begin only: the answer left this run holding the lock. */
  took?: boolean;
}

/** A release kept on a fake VM. */
export interface FakeRelease {
  name: string;
  commit: string;
}

/** How one VM behaves. */
export interface VmScript {
  /** Kept complete releases, oldest first; the last one is live unless `live` says otherwise. */
  releases?: FakeRelease[];
  /** The live release's name (null: the target is not vm-sync's; `.sync_rev` absent). */
  live?: string | null;
  /** Overrides what stands at `.sync_rev` (e.g. a symlink). */
  sentinel?: SentinelState;
  rsync?: boolean;
  /** Errors thrown by successive calls of an operation (null: that call succeeds); consumed across ports. */
  failures?: Partial<Record<Op, (Error | null)[]>>;
  /** Like `failures`, but the operation takes effect on the VM first and only its answer is lost. */
  lostAnswers?: Partial<Record<Op, (Error | null)[]>>;
  /** Each call of the operation waits for this before it answers. */
  gates?: Partial<Record<Op, Promise<unknown>>>;
  /** Delay in ms before the operation answers. */
  delays?: Partial<Record<Op, number>>;
  /** Health outcomes of successive calls; the last repeats. Default: exit 0. */
  health?: HealthOutcome[];
  /** Another run's lock record standing on the VM. */
  lockedBy?: string | null;
  /** The VM has GNU tar and find (stage answers stream=1); default false: every transfer is rsync. */
  stream?: boolean;
  /** The VM runs zstd (stage answers zstd=1); default false. */
  zstd?: boolean;
  /** What stage says of the live release as a stream base; default: intact when live, else none. */
  baseState?: BaseState;
  /** The build key stage reports for the live release (default: none recorded). */
  baseKey?: string | null;
  /** Begin never releases the lock at once, even on the expected commit (an agent that keeps it). */
  keepsLockAtBegin?: boolean;
  /** What `listing` answers (default: an empty tree). */
  listing?: TreeListing;
  /** How post_sync_command ends (default: exit 0, no output). */
  postSync?: PostSyncOutcome;
}

export const NEW = '1111111111111111111111111111111111111111';
export const OLD = '2222222222222222222222222222222222222222';
export const OLDER = '3333333333333333333333333333333333333333';
export const AHEAD = '4444444444444444444444444444444444444444';

let nameCounter = 0;
/** A release name as the agent makes them (`YYYYMMDDTHHMMSSmmmZ-<sha12>`), one second later each time, from 2026-11-22. */
export function releaseName(commit: string, at?: Date): string {
  const when = at ?? new Date(Date.UTC(2026, 10, 22, 7, 0, 0) + ++nameCounter * 1000);
  return `${when.toISOString().replace(/[-:]/g, '').replace('.', '')}-${commit.slice(0, 12)}`;
}

/** The state of one fake VM, shared by every port opened to it. */
export class FakeVm {
  readonly releases = new Map<string, string>();
  live: string | null;
  lock: string | null;
  readonly target: string;
  /** Every release flipped to, in order (agent.sh's `history`). */
  readonly history: string[] = [];
  /** Releases rolled back from or reverted as unhealthy. */
  readonly rejected = new Set<string>();
  private readonly consumed = new Map<string, number>();
  private healthCalls = 0;

  constructor(
    readonly id: string,
    readonly script: VmScript,
  ) {
    for (const r of script.releases ?? []) this.releases.set(r.name, r.commit);
    this.live = script.live !== undefined ? script.live : (script.releases?.at(-1)?.name ?? null);
    this.lock = script.lockedBy ?? null;
    this.target = `/home/deploy/app-${id}`;
  }

  /** The scripted error of this call of `op`, if any. */
  nextFailure(op: Op, which: 'failures' | 'lostAnswers' = 'failures'): Error | null {
    const list = this.script[which]?.[op];
    if (!list) return null;
    const key = `${which}:${op}`;
    const n = this.consumed.get(key) ?? 0;
    this.consumed.set(key, n + 1);
    return list[n] ?? null;
  }

  nextHealth(): HealthOutcome {
    const list = this.script.health ?? [{ exit: 0, output: '' }];
    return list[Math.min(this.healthCalls++, list.length - 1)];
  }

  /** As agent.sh previous_of: the last release flipped to before the live one, kept and not rejected; else the newest older by name. */
  previousRelease(): string | null {
    const usable = (name: string): boolean => name !== this.live && this.releases.has(name) && !this.rejected.has(name);
    const fromHistory = [...this.history].reverse().find(usable);
    if (fromHistory) return fromHistory;
    if (this.live === null) return null;
    return [...this.releases.keys()].filter(usable).filter((name) => name < (this.live as string)).sort().reverse()[0] ?? null;
  }

  liveCommit(): string | null {
    return this.live === null ? null : (this.releases.get(this.live) ?? null);
  }

  probe(): Probe {
    const commit = this.liveCommit();
    const sentinel: SentinelState = this.script.sentinel ?? (commit === null ? 'absent' : 'regular');
    return {
      target: this.target,
      kind: this.live === null ? 'absent' : 'release',
      currentRelease: this.live === null ? null : `/home/deploy/.app-${this.id}.vm-sync/releases/${this.live}`,
      sentinel,
      rev: sentinel === 'regular' ? commit : null,
      rsyncVersion: this.script.rsync === false ? null : 'rsync  version 3.2.7  protocol version 31',
      lock: this.lock === null ? null : { record: this.lock, hex: Buffer.from(this.lock).toString('hex'), kind: 'other', mtime: null },
      now: Math.floor(Date.now() / 1000),
    };
  }

  requireLock(token: string, op: string): void {
    if (this.lock !== token) throw new VmSyncError('lock_lost', `${op} on ${this.id}: the lock is not ours (${this.lock ?? 'none'})`);
  }
}

/** The fleet: every VM's state, every call, and the OpenPort to hand the executor. */
export class FakeFleet {
  readonly vms = new Map<string, FakeVm>();
  readonly calls: Call[] = [];
  /** Calls made on a port after it was closed (a defect of the executor). */
  readonly afterClose: Call[] = [];
  private seq = 0;
  private readonly portsOpened = new Map<string, number>();
  /** Per VM and port: how many times it was closed. */
  readonly closes = new Map<string, number>();

  constructor(scripts: Record<string, VmScript>) {
    for (const [id, script] of Object.entries(scripts)) this.vms.set(id, new FakeVm(id, script));
  }

  vm(id: string): FakeVm {
    const vm = this.vms.get(id);
    if (!vm) throw new Error(`no fake VM ${id}`);
    return vm;
  }

  private record(vm: string, port: number, op: Op, args: unknown[]): Call {
    const call: Call = { seq: ++this.seq, t: performance.now(), vm, port, op, args };
    this.calls.push(call);
    return call;
  }

  /** The calls of one VM (and optionally one operation), in order. */
  of(vm: string, op?: Op): Call[] {
    return this.calls.filter((c) => c.vm === vm && (op === undefined || c.op === op));
  }

  /** Resolves once `predicate` holds over the calls made so far (polled). */
  async until(predicate: (calls: Call[]) => boolean, timeoutMs = 5000): Promise<void> {
    const started = Date.now();
    while (!predicate(this.calls)) {
      if (Date.now() - started > timeoutMs) throw new Error('fake fleet: condition not reached');
      await new Promise((r) => setTimeout(r, 2));
    }
  }

  /** Ports opened to a VM. */
  ports(vm: string): number {
    return this.portsOpened.get(vm) ?? 0;
  }

  readonly openPort: OpenPort = async (vmConfig: VmConfig, options) => {
    const vm = this.vm(vmConfig.id);
    const index = this.portsOpened.get(vm.id) ?? 0;
    this.portsOpened.set(vm.id, index + 1);
    const open = this.record(vm.id, index, 'open', [options.deadlineAt, options.sessionBudgetS]);
    const failure = vm.nextFailure('open');
    if (failure) {
      open.threw = true;
      throw failure;
    }
    return this.port(vm, index);
  };

  private port(vm: FakeVm, index: number): VmPort {
    let closed = false;
    const key = `${vm.id}#${index}`;
    /** Every operation: recorded, refused after close, then scripted waits and failures, then the model. */
    const op = <T>(name: Op, args: unknown[], body: (call: Call) => T): Promise<T> => {
      const call = this.record(vm.id, index, name, args);
      if (closed) this.afterClose.push(call);
      return (async () => {
        try {
          const gate = vm.script.gates?.[name];
          if (gate) await gate;
          const delay = vm.script.delays?.[name];
          if (delay) await new Promise((r) => setTimeout(r, delay));
          const failure = vm.nextFailure(name);
          if (failure) throw failure;
          const answer = body(call);
          const lost = vm.nextFailure(name, 'lostAnswers');
          if (lost) throw lost;
          return answer;
        } catch (error) {
          call.threw = true;
          throw error;
        }
      })();
    };
    // What begin (asked for it) and stage answer of the VM (see agent.sh survey).
    const survey = (sha: string): StageSurvey => ({
      linkDest: vm.live,
      sharedExisting: [],
      // The newest complete release of this commit kept on the VM, for the caller to reuse.
      completeRelease: [...vm.releases].filter(([, commit]) => commit === sha).map(([name]) => name).sort().at(-1) ?? null,
      streamSupported: vm.script.stream ?? false,
      zstd: vm.script.zstd ?? false,
      baseState: vm.script.baseState ?? (vm.live ? 'intact' : 'none'),
      baseKey: vm.script.baseKey === undefined ? null : vm.script.baseKey,
    });
    const port: VmPort = {
      probe: (cleanup) => op('probe', [cleanup], () => vm.probe()),
      begin: (owner: Omit<LockOwner, 'deadline'>, options) =>
        op('begin', [owner, options], (call): BeginOutcome => {
          if (vm.lock !== null && vm.lock !== owner.token && !(options.expectedBreak && Buffer.from(vm.lock).toString('hex') === options.expectedBreak)) {
            return { held: true, probe: vm.probe(), record: vm.lock, hex: Buffer.from(vm.lock).toString('hex'), why: 'deadline', ageS: 5 };
          }
          vm.lock = owner.token;
          const probe = vm.probe();
          // As agent.sh: released at once when not forced and the live `.sync_rev` is the expected commit.
          const released = !vm.script.keepsLockAtBegin && !options.force && probe.sentinel === 'regular' && probe.rev === options.expect;
          if (released) vm.lock = null;
          call.took = !released;
          // As agent.sh: the stage survey, when asked for and the lock is kept.
          return { held: false, probe, released, tookOver: null, survey: options.survey && !released ? survey(options.expect) : null };
        }),
      stage: (token, sha, probed, sharedPaths) =>
        op('stage', [token, sha, probed, sharedPaths], () => {
          vm.requireLock(token, 'stage');
          return { stage: `/home/deploy/.app-${vm.id}.vm-sync/releases/${sha}.partial`, removedPartials: [], ...survey(sha) };
        }),
      transfer: (plan: TransferPlan) => op('transfer', [plan], () => ({ filesChanged: 3, bytesSent: 1234, changes: [] })),
      link: (token, sha, base) =>
        op('link', [token, sha, base], () => {
          vm.requireLock(token, 'link');
          if (base !== vm.live) throw new VmSyncError('release_drifted', `the live release is no longer ${base}`);
          return true;
        }),
      apply: (token, sha, base, file, codec, _onSent, linked) =>
        op('apply', [token, sha, base, file, codec, linked ?? false], () => {
          vm.requireLock(token, 'apply');
          if (base !== null && base !== vm.live) throw new VmSyncError('release_drifted', `the live release is no longer ${base}`);
          return { removed: 0, removedPartials: [] };
        }),
      seal: (token, sha, shared, key) =>
        op('seal', [token, sha, shared, key], () => {
          vm.requireLock(token, 'seal');
          const release = releaseName(sha);
          vm.releases.set(release, sha);
          return { release, seeded: [], created: [] };
        }),
      flip: (token, release, reject) =>
        op('flip', [token, release, reject ?? false], () => {
          vm.requireLock(token, 'flip');
          if (!vm.releases.has(release)) throw new VmSyncError('no_release', `release ${release} is not kept complete on ${vm.id}`);
          const previous = vm.live;
          vm.live = release;
          // As agent.sh: the history of flips, and the rejected release a rollback never goes back to.
          vm.rejected.delete(release);
          if (reject && previous) vm.rejected.add(previous);
          vm.history.push(release);
          return { previous, movedAside: null };
        }),
      inPlaceBegin: (token) => op('inPlaceBegin', [token], () => vm.target),
      inPlaceFinish: (token, sha) => op('inPlaceFinish', [token, sha], () => undefined),
      releases: () =>
        op('releases', [], (): ReleaseList => ({ live: vm.live, previous: vm.previousRelease(), complete: [...vm.releases].map(([name, commit]) => ({ name, commit })), incomplete: [] })),
      listing: (kind) => op('listing', [kind], (): TreeListing => new Map(vm.script.listing ?? [])),
      renew: (token) => op('renew', [token], () => vm.requireLock(token, 'renew')),
      health: (token, sha, command, timeoutS) =>
        op('health', [token, sha, command, timeoutS], () => {
          vm.requireLock(token, 'health');
          return vm.nextHealth();
        }),
      prune: (token, keep) => op('prune', [token, keep], () => [] as string[]),
      postSync: (token, sha, command) => op('postSync', [token, sha, command], () => vm.script.postSync ?? { exit: 0, output: '' }),
      unlock: (token) =>
        op('unlock', [token], () => {
          if (vm.lock !== token) return false;
          vm.lock = null;
          return true;
        }),
      breakLock: (hex) => op('breakLock', [hex], () => false),
      stopInterrupted: () => op('stopInterrupted', [], () => true),
      extendTo: (deadlineAt) => {
        const call = this.record(vm.id, index, 'extendTo', [deadlineAt]);
        if (closed) this.afterClose.push(call);
      },
      close: () => {
        this.record(vm.id, index, 'close', []);
        closed = true;
        this.closes.set(key, (this.closes.get(key) ?? 0) + 1);
      },
    };
    return port;
  }

  /**
   * Lock bookkeeping per port: `taken` counts begin calls that left this run
   * holding the lock (not held by another, not released by the VM at once),
   * `unlocks` the unlock calls. Each port that took the lock must unlock it once.
   */
  lockLedger(): { port: string; taken: number; unlocks: number }[] {
    const ledger = new Map<string, { port: string; taken: number; unlocks: number }>();
    for (const c of this.calls) {
      if (c.op === 'open') ledger.set(`${c.vm}#${c.port}`, { port: `${c.vm}#${c.port}`, taken: 0, unlocks: 0 });
      const entry = ledger.get(`${c.vm}#${c.port}`);
      if (!entry) continue;
      if (c.op === 'unlock') entry.unlocks++;
      if (c.op === 'begin' && c.took) entry.taken++;
    }
    return [...ledger.values()];
  }
}

/** A History as the runner-host clone would answer for the fake commits: OLDER < OLD < NEW < AHEAD. */
export const fakeHistory: History = {
  relation: async (vmRev, deploy) => {
    const order = [OLDER, OLD, NEW, AHEAD];
    const a = order.indexOf(vmRev);
    const b = order.indexOf(deploy);
    if (a < 0 || b < 0) return 'diverged';
    if (a === b) return 'up-to-date';
    return a < b ? 'behind' : 'ahead';
  },
};

/** A config of `ids` (in this order) with the given YAML lines under `rollout:`, `sync:` and `repository:`. */
export function fleetConfig(ids: string[], extra: { rollout?: string[]; sync?: string[]; repository?: string[] } = {}): Config {
  const text = [
    'vms:',
    ...ids.map((id, i) => `  ${id}: { ip: 192.0.2.${i + 10}, ssh_user: deploy }`),
    'repository:',
    '  main_repo_path: /srv/app',
    ...(extra.repository ?? []).map((l) => `  ${l}`),
    'sync:',
    ...(extra.sync?.some((l) => l.startsWith('retries:')) ? [] : ['  retries: 0']),
    ...(extra.sync ?? []).map((l) => `  ${l}`),
    ...(extra.rollout ? ['rollout:', ...extra.rollout.map((l) => `  ${l}`)] : []),
    '',
  ].join('\n');
  return parseConfig(text, 'fake.yml', '/home/runner');
}

/** Events that keep every line, and every finished row. */
export function recordingEvents(): EngineEvents & { lines: string[]; finished: VmReport[] } {
  const lines: string[] = [];
  const finished: VmReport[] = [];
  return {
    lines,
    finished,
    info: (vmId, message) => void lines.push(`${vmId ?? '-'}: ${message}`),
    progress: () => undefined,
    vmFinished: (report) => void finished.push(report),
  };
}

/** A promise and the function that resolves it: a slow step a test lets go of. */
export function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}
