import type { VmConfig } from '../config/types.js';
import type { KnownHosts } from './known-hosts.js';
import type { LockOwner } from './lock.js';
import { RshBridge } from './rsh-bridge.js';
import { runRsync, type RsyncStats } from './rsync.js';
import { VmSession } from './session.js';
import type { WarmConnections } from './warm.js';
import type { TreeListing } from './listing.js';
import { RemoteTarget, type BeginOptions, type BeginOutcome, type FlipRecord, type HealthOutcome, type PostSyncOutcome, type Probe, type ReleaseList, type StageResult, type StreamCodec } from './target.js';

/** One transfer into a directory on the VM. */
export interface TransferPlan {
  source: string;
  dest: string;
  linkDest: string | null;
  excludes: string[];
  ioTimeoutS: number;
  dryRun?: boolean;
}

/**
 * Everything the release executor does on one VM: each method is one typed
 * remote operation (its answer parsed with every field required), plus the
 * rsync transfer. The entry points hand the executor a way to open one
 * ({@link OpenPort}); tests hand it a fake.
 */
export interface VmPort {
  probe(cleanup?: boolean): Promise<Probe>;
  begin(owner: Omit<LockOwner, 'deadline'>, options: BeginOptions): Promise<BeginOutcome>;
  stage(token: string, sha: string, probed: Probe, sharedPaths: readonly string[]): Promise<StageResult>;
  transfer(plan: TransferPlan, onProgress?: (p: { percent: number; rate: string }) => void): Promise<RsyncStats>;
  /** Makes the commit's partial release a hard-link copy of `base` (the live release) ahead of {@link apply}; nothing of the commit is sent. */
  link(token: string, sha: string, base: string, probed: Probe): Promise<boolean>;
  /** Builds the staged release from a stream file: a hard-link copy of `base` (or nothing; with `linked`, the one {@link link} made) changed as the stream says. */
  apply(token: string, sha: string, base: string | null, file: string, codec: StreamCodec, onSent?: (bytes: number) => void, linked?: boolean): Promise<{ removed: number; removedPartials: string[] }>;
  seal(token: string, sha: string, shared: ReadonlyArray<{ path: string; dir: boolean }>, key: string): Promise<{ release: string; seeded: string[]; created: string[] }>;
  /** Switches the live path to a kept release; `record` (why, which run) goes into the VM's revisions.log. */
  flip(token: string, release: string, reject?: boolean, record?: FlipRecord): Promise<{ previous: string | null; movedAside: string | null }>;
  inPlaceBegin(token: string, probed: Probe): Promise<string>;
  inPlaceFinish(token: string, sha: string, record?: { from: string | null; run: string }): Promise<void>;
  releases(): Promise<ReleaseList>;
  /** Every entry of the live release (`release`) or target directory (`dir`), with file hashes; read-only. */
  listing(kind: 'release' | 'dir'): Promise<TreeListing>;
  renew(token: string): Promise<void>;
  health(token: string, sha: string, command: string, timeoutS: number): Promise<HealthOutcome>;
  prune(token: string, keep: number): Promise<string[]>;
  /** Runs post_sync_command: its exit status and output tail (raw); throws only for the VM's or the lock's failures. */
  postSync(token: string, sha: string, command: string): Promise<PostSyncOutcome>;
  unlock(token: string): Promise<boolean>;
  breakLock(hex: string): Promise<boolean>;
  /** Kills this run's steps that a cancellation or a spent budget left running; false when not confirmed. */
  stopInterrupted(): Promise<boolean>;
  /** A new budget (and the signal that ends it) for the steps that follow. */
  extendTo(deadlineAt: number, signal: AbortSignal): void;
  /** Ends the agent session and the connection. */
  close(): void;
}

/** How the executor reaches a VM: connect (host key pinned) and start its agent session. */
export type OpenPort = (vm: VmConfig, options: { signal: AbortSignal; deadlineAt: number; sessionBudgetS: number; connectTimeoutMs: number }) => Promise<VmPort>;

/**
 * The real port: one SSH connection, one agent session, rsync through the connection's bridge.
 * With `warm`, a VM's first port takes the connection opened for it ahead of the pipeline (see
 * {@link WarmConnections}); its later ones (retries) connect afresh.
 */
export function sshPorts(knownHosts: KnownHosts, warm?: WarmConnections<VmSession>): OpenPort {
  return async (vm, options) => {
    const session = (await warm?.take(vm, options.connectTimeoutMs, options.signal)) ?? (await VmSession.open(vm, knownHosts, { connectTimeoutMs: options.connectTimeoutMs, signal: options.signal }));
    const target = new RemoteTarget(session, vm.repoPath, options.deadlineAt, options.signal, options.sessionBudgetS);
    let signal = options.signal;
    const port: VmPort = {
      probe: (cleanup) => target.probe(cleanup),
      begin: (owner, o) => target.begin(owner, o),
      stage: (token, sha, probed, shared) => target.stage(token, sha, probed, shared),
      async transfer(plan, onProgress) {
        const guard = plan.dryRun ? null : target.transferGuard();
        const bridge = await RshBridge.start(session, guard);
        try {
          return await runRsync({ source: plan.source, dest: plan.dest, linkDest: plan.linkDest, excludes: plan.excludes, ioTimeoutS: plan.ioTimeoutS, dryRun: plan.dryRun ?? false, rsh: bridge.rshCommand }, bridge.env, {
            signal,
            onProgress: onProgress && ((p) => onProgress({ percent: p.percent, rate: p.rate })),
          });
        } catch (error) {
          // A failed or cancelled transfer may leave its rsync server running on the VM.
          guard?.failed();
          throw error;
        } finally {
          await bridge.close();
        }
      },
      link: (token, sha, base, probed) => target.link(token, sha, base, probed),
      apply: (token, sha, base, file, codec, onSent, linked) => target.apply(token, sha, base, file, codec, onSent, linked),
      seal: (token, sha, shared, key) => target.seal(token, sha, shared, key),
      flip: (token, release, reject, record) => target.flip(token, release, reject, record),
      inPlaceBegin: (token, probed) => target.inPlaceBegin(token, probed),
      inPlaceFinish: (token, sha, record) => target.inPlaceFinish(token, sha, record),
      releases: () => target.releases(),
      listing: (kind) => target.listing(kind),
      renew: (token) => target.renew(token),
      health: (token, sha, command, timeoutS) => target.health(token, sha, command, timeoutS),
      prune: (token, keep) => target.prune(token, keep),
      postSync: (token, sha, command) => target.postSync(token, sha, command),
      unlock: (token) => target.unlock(token),
      breakLock: (hex) => target.breakLock(hex),
      stopInterrupted: () => target.stopInterrupted(),
      extendTo(deadlineAt, next) {
        signal = next;
        target.extendTo(deadlineAt, next);
      },
      close() {
        target.close();
        session.dispose();
      },
    };
    return port;
  };
}
