import { count } from '../words.js';
import fs from 'node:fs';
import path from 'node:path';
import type { Config, VmConfig } from '../config/types.js';
import { inShard, type Shard } from '../config/shard.js';
import { getErrorMessage, VmSyncError } from '../errors.js';
import { RunnerRepo } from '../git/repo.js';
import { ExportStore, stateDirOf, type ExportSnapshot } from '../git/exports.js';
import { makeScratchDir, removeScratchDirLater, sweepScratchDirs } from '../local/scratch.js';
import { KnownHosts } from '../remote/known-hosts.js';
import { ownLockOwner } from '../remote/lock.js';
import { runSecretScan, type ScanReport } from '../scan/gate.js';
import { planScan, type ScanRequest } from '../scan/plan.js';
import { sshPorts } from '../remote/port.js';
import { VmSession } from '../remote/session.js';
import { WarmConnections } from '../remote/warm.js';
import { mapPool } from './pool.js';
import { releaseFleet, rollbackFleet } from './release.js';
import { ReleaseStreams } from './stream.js';
import { ExpectedTrees } from './drift.js';
import { askedOnce } from './state.js';
import { dryRunVm, inspectVm, rsyncExcludes, toFailure, type DeepCheck, type RunContext } from './vm-pipeline.js';
import { excludedPaths, excludedSentence, type ExcludedReport } from './excluded.js';
import { announceRow, failedRow, silentEvents, type Baseline, type EngineEvents, type RunReport, type VmReport } from './types.js';
import { invocation, noFetchAdvice, option } from '../advice.js';

/** Options shared by every engine command. */
export interface FleetOptions {
  /**
   * Revision to deploy or check; default: the tip of `remote/default_branch`
   * (fetched first unless `fetch` is false). One the clone does not have is
   * fetched from the remote (see RunnerRepo.locate).
   */
  commit?: string;
  /** Only these VM ids (default: all). */
  vms?: string[];
  /** Only the VMs of this shard (`--shard K/N`), intersected with `vms`. */
  shard?: Shard;
  events?: EngineEvents;
  signal?: AbortSignal;
  /** First retry delay in ms (tests shorten it). */
  retryBaseMs?: number;
  /**
   * Fetch the runner-host clone first (default true). verify and status go on
   * with the clone as last fetched when the fetch fails, and say so in the
   * report's `baseline`; sync and scan fail.
   */
  fetch?: boolean;
  /** Extra environment for git (credentials for the fetch, never on a command line). */
  gitEnv?: NodeJS.ProcessEnv;
  /** This run's id (execute() makes one): recorded in each VM's revisions.log. */
  runId?: string;
}

/** Options of `vm-sync verify` and `vm-sync status`. */
export interface InspectOptions extends FleetOptions {
  /**
   * verify only: also compare, file by file, what each VM serves with the
   * tree of the commit it serves (`verify --deep`); a VM that differs fails
   * with `release_drifted`.
   */
  deep?: boolean;
}

export interface SyncOptions extends FleetOptions {
  force?: boolean;
  /** Seconds to wait for a VM locked by another run (default 0: fail at once with `locked`). */
  lockWaitS?: number;
  dryRun?: boolean;
  /** What is being deployed, for the secret scan (default: a manual resync of the commit). */
  scanRequest?: ScanRequest;
  /**
   * Scan `scanBase..commit` with the settings of `scanBase` (a commit the
   * operator vouches for), instead of what the VMs are recorded to hold: the
   * way in on a runner host with no deploy recorded.
   */
  scanBase?: string;
}

export interface ScanOptions extends FleetOptions {
  /** Scan this checkout instead of repository.main_repo_path (a CI checkout; never fetched). */
  repoDir?: string;
  /** Fetch the runner-host clone first (default true; ignored with repoDir). */
  fetch?: boolean;
  /** `BASE..HEAD`; default: what the VMs do not have yet, as recorded on this runner. */
  range?: string;
  /** A full scan request (a push event); takes precedence over `range`. */
  request?: ScanRequest;
}

/**
 * The configured VMs, narrowed to `ids` and to `shard`; an unknown id is a
 * usage error naming the known ones. A known id that belongs to another shard
 * is not an error: that shard's job selects it.
 */
export function selectVms(config: Config, ids: string[] | undefined, shard?: Shard): VmConfig[] {
  const inSelectedShard = (vm: VmConfig): boolean => !shard || inShard(vm.id, shard);
  if (!ids || ids.length === 0) return config.vms.filter(inSelectedShard);
  const known = new Set(config.vms.map((vm) => vm.id));
  const unknown = ids.filter((id) => !known.has(id));
  if (unknown.length > 0) {
    throw new VmSyncError('config_invalid', `unknown VM id${unknown.length > 1 ? 's' : ''} ${unknown.join(', ')} (configured: ${[...known].join(', ')})`);
  }
  return config.vms.filter((vm) => ids.includes(vm.id) && inSelectedShard(vm));
}

/**
 * The runner-host clone the config names: managed (locked while vm-sync
 * changes it, re-cloned when corrupt). `$VM_SYNC_CLONE_WAIT_S` sets how long a
 * run waits for another run's lock (default 300).
 */
export function runnerRepo(config: Config, env?: NodeJS.ProcessEnv, options: { events?: EngineEvents; signal?: AbortSignal } = {}): RunnerRepo {
  const { mainRepoPath, remote, defaultBranch, url } = config.repository;
  const wait = process.env.VM_SYNC_CLONE_WAIT_S;
  const seconds = wait === undefined || wait === '' ? undefined : Number(wait);
  if (seconds !== undefined && !(Number.isFinite(seconds) && seconds >= 0)) {
    throw new VmSyncError('config_invalid', `VM_SYNC_CLONE_WAIT_S must be a number of seconds, not '${wait}'`);
  }
  return new RunnerRepo(mainRepoPath, remote, defaultBranch, url, env, {
    managed: true,
    events: options.events,
    signal: options.signal,
    lockWaitMs: seconds === undefined ? undefined : seconds * 1000,
  });
}

/** Removes what runs killed on this host left in the temporary directory (say so when there was any). */
function sweepDeadRuns(events: EngineEvents): void {
  const removed = sweepScratchDirs();
  if (removed.length > 0) events.info(null, `removed ${count(removed.length, 'temporary directory', 'temporary directories')} left by vm-sync runs that died: ${removed.join(', ')}`);
}

function loadKnownHosts(config: Config): KnownHosts {
  return new KnownHosts(fs.readFileSync(config.knownHostsPath, 'utf8'));
}

/**
 * `vm-sync sync`: brings the runner-host repo to the commit, exports it once,
 * and deploys it to every selected VM in parallel (capped by
 * `sync.concurrency`). One VM failing never stops the others.
 */
export async function runSync(config: Config, options: SyncOptions = {}): Promise<RunReport> {
  const events = options.events ?? silentEvents;
  const vms = selectVms(config, options.vms, options.shard);
  const knownHosts = loadKnownHosts(config);
  sweepDeadRuns(events);
  const repo = runnerRepo(config, options.gitEnv, { events, signal: options.signal });
  // The export lives on between runs (src/git/exports.ts): a deploy rewrites only what changed since the last one.
  const exports = new ExportStore({ stateDir: stateDirOf(config.repository.mainRepoPath), repoDir: config.repository.mainRepoPath, env: options.gitEnv ? { ...process.env, ...options.gitEnv } : undefined });
  exports.sweep();
  let snapshot: ExportSnapshot | null = null;
  let exportDir = '';
  // A scan started before the export it reads is done (see exportWhen below): the export it waits for, and its stop.
  let early: EarlyScan | null = null;
  // (Read through a function: TypeScript does not see the assignment made in a callback.)
  const earlyScan = (): EarlyScan | null => early;
  const exportNow = async (sha: string): Promise<void> => {
    const started = Date.now();
    const waiting = early;
    try {
      snapshot = await exports.checkout(sha);
    } catch (error) {
      waiting?.failed(error);
      throw error;
    }
    exportDir = snapshot.dir;
    waiting?.made(exportDir);
    events.info(null, exportSentence(snapshot, Date.now() - started), 'export');
  };
  const force = options.force ?? false;
  const dryRun = options.dryRun ?? false;
  // What this runner recorded on each VM, read once (one for-each-ref) after the fetch: the no-op check, the
  // scan's range and the prefetch all ask, and nothing records a deploy before this run ends.
  let records: Promise<Array<string | null>> | null = null;
  const recorded = (): Promise<Array<string | null>> => (records ??= repo.deployedOf(vms.map((vm) => vm.id)));
  let streamDir: string | null = null;
  let streams: ReleaseStreams | null = null;
  // A dry run changes nothing on the runner host either: its export is a private scratch copy, not the kept
  // exports (whose newest is the base of the next real deploy), and the clone is not reset.
  const dryExportRoot = dryRun ? makeScratchDir('export') : null;
  const warm = dryRun ? null : connectAhead(vms, config.sync.concurrency, knownHosts, events, options.signal);
  try {
    // What rsync_excludes leaves out of the tree: listed once per export, said in the report (never silently dropped).
    let excluded: ExcludedReport | null = null;
    const runNotes: string[] = [];
    // Listed while the scan runs (it only reads the export); said once the scan has passed.
    const listExcluded = (): (() => Promise<void>) => {
      const listing = excludedPaths(exportDir, rsyncExcludes(config, []), { signal: options.signal }).then(
        (found) => ({ found, error: null }),
        (error: unknown) => ({ found: null, error }),
      );
      return async () => {
        const { found, error } = await listing;
        if (!found) return void runNotes.push(`could not list the committed paths rsync_excludes leaves out (the deploy is not affected): ${getErrorMessage(error)}`);
        excluded = found;
        const sentence = excludedSentence(found);
        if (sentence) {
          events.info(null, sentence);
          runNotes.push(sentence);
        }
      };
    };
    const done = (report: RunReport): RunReport => ({ ...report, excluded, ...(runNotes.length > 0 ? { notes: runNotes } : {}) });

    // The secret-scan gate: before any byte of the tree leaves this host.
    let scan: ScanReport | null = null;
    const gate = async (sha: string, ready: Promise<string> | null, signal: AbortSignal | undefined): Promise<ScanReport | null> => {
      if (!config.repository.secretScanning.enabled) {
        events.info(null, 'secret scanning is disabled (repository.secret_scanning.enabled: false)', 'scan');
        return null;
      }
      const request: ScanRequest =
        options.scanRequest ??
        (options.scanBase ? { kind: 'range', range: `${options.scanBase}..${sha}` } : { kind: 'resync', head: sha, deployed: await recorded() });
      const plan = await planScan(repo, request);
      return runSecretScan({
        settings: config.repository.secretScanning,
        plan,
        repoDir: repo.dir,
        countCommitsAddingText: (s) => repo.countCommitsAddingText(s),
        exportDir: ready ? null : exportDir,
        ...(ready ? { exportReady: ready } : {}),
        cacheDir: scanCacheDir(config),
        events,
        signal,
      });
    };
    // The scan, then the list of what rsync_excludes leaves out; rejects when the scan blocks or fails.
    // With `ready`, it starts while the export is made (the list waits for the export).
    const scanned = async (sha: string, ready: Promise<string> | null = null, stop?: AbortSignal): Promise<{ dir: string; notes: string[] }> => {
      const signal = stop && options.signal ? AbortSignal.any([options.signal, stop]) : (stop ?? options.signal);
      const scanning = gate(sha, ready, signal);
      scanning.catch(() => undefined);
      if (ready) await ready;
      const sayExcluded = listExcluded();
      scan = await scanning;
      if (scan?.blocked) throw new VmSyncError('secrets_found', `${count(scan.findings.length, 'possible secret')} in ${sha.slice(0, 12)}: nothing was sent to this VM`);
      await sayExcluded();
      return { dir: exportDir, notes: committedSentinelNote(exportDir) };
    };
    // Fetch, branch check, reset and export under one hold of the runner-host lock. When this runner
    // recorded every VM on the commit, nothing is exported or scanned up front (it was scanned when it
    // was deployed); each VM confirms under its lock, and one that needs the tree after all gets it then,
    // exported and scanned first.
    let exported = false;
    if (dryExportRoot) exportDir = path.join(dryExportRoot, 'tree');
    // A real deploy's scan starts as soon as the commit is known: its settings, the probe and the commits
    // are read while the tree is exported, and only its tree part waits for the export. (A clone found
    // corrupt is cloned again and the step repeated: a scan started before that is stopped, and another starts.)
    const stopEarly = async (error: unknown): Promise<void> => {
      const was = earlyScan();
      early = null;
      if (!was) return;
      was.stop.abort();
      was.failed(error);
      await was.scan.catch(() => undefined);
    };
    let commit: string;
    try {
      commit = await repo.prepareDeploy({
        rev: options.commit,
        fetch: options.fetch !== false,
        force,
        dryRun,
        exportDir,
        exportWhen: async (sha) => {
          exported = force || dryRun || !(await allRecordedOn(recorded(), vms, sha));
          if (exported && !dryRun) {
            await stopEarly(new VmSyncError('interrupted', 'the export was started again'));
            let made: (dir: string) => void = () => undefined;
            let failed: (error: unknown) => void = () => undefined;
            const ready = new Promise<string>((resolve, reject) => {
              made = resolve;
              failed = reject;
            });
            ready.catch(() => undefined);
            const stop = new AbortController();
            const scan = scanned(sha, ready, stop.signal);
            scan.catch(() => undefined);
            early = { scan, stop, made, failed };
          }
          return exported;
        },
        exporter: dryRun ? undefined : exportNow,
      });
    } catch (error) {
      // The scan started for it stops with it (its own rejection is this one's consequence).
      await stopEarly(error);
      throw error;
    }

    // The tree, for the VMs that need it: ready once the scan passed. A real deploy scans while the VMs
    // connect and lock (they stage nothing before it passes); a dry run scans first, as it always did.
    let ready: Promise<{ dir: string; notes: string[] }> | null = null;
    if (exported && dryRun) {
      const passed = await scanned(commit).catch((error: unknown) => {
        if (scan?.blocked) return null;
        throw error;
      });
      if (!passed) return { command: 'sync', commit, dry_run: dryRun, scan, vms: [] };
      ready = Promise.resolve(passed);
    } else if (exported) {
      ready = earlyScan()?.scan ?? scanned(commit);
      // Observed by every VM that needs the tree and after the release; never an unhandled rejection.
      ready.catch(() => undefined);
    } else {
      events.info(null, `this runner deployed ${commit.slice(0, 12)} to every selected VM: nothing exported or scanned unless a VM turns out to need it`, 'export');
    }
    // Scanned up front (a failure of that scan fails the run), or on demand (a VM's row carries it).
    const upFront = ready;
    // Not exported up front: exported and scanned once, on first demand.
    const tree = (): Promise<{ dir: string; notes: string[] }> =>
      (ready ??= (async () => {
        events.info(null, `a VM is not on ${commit.slice(0, 12)} after all: exporting and scanning it now`, 'export');
        await repo.locked(`export of ${commit.slice(0, 12)}`, () => exportNow(commit));
        return scanned(commit);
      })());

    const { rollout } = config;
    events.info(null, `deploying ${commit} to ${count(vms.length, 'VM')}, ${config.sync.concurrency} at a time, ${rollout.strategy}${dryRun ? ' (dry run)' : ''}`, 'prepare');
    if (dryRun) {
      const ctx: RunContext = { config, knownHosts, history: askedOnce(repo), commit, exportDir, force, events, signal: options.signal, retryBaseMs: options.retryBaseMs ?? 1000 };
      const reports = await mapPool(vms, config.sync.concurrency, (vm) => rowOf(vm, events, () => dryRunVm(vm, ctx)));
      return done({ command: 'sync', commit, dry_run: true, scan, vms: reports });
    }
    // The stream transfer: made once per starting commit, for every VM on it.
    const runStreams = (streams =
      config.sync.transfer === 'auto' && config.repository.layout === 'atomic'
        ? new ReleaseStreams({
            repoDir: repo.dir,
            commit,
            // Built from the export while the scan runs (nothing leaves this host: a VM gets a stream only after tree()).
            tree: exported ? () => Promise.resolve({ dir: exportDir }) : tree,
            excludes: rsyncExcludes(config, []),
            sharedPaths: config.repository.sharedPaths.map((s) => s.path),
            scratchDir: (streamDir = makeScratchDir('stream')),
            env: options.gitEnv ? { ...process.env, ...options.gitEnv } : undefined,
          })
        : null);
    // The streams the VMs will most likely ask for, made while they are connected and locked.
    if (runStreams && exported) runStreams.prefetch(await recorded());
    const outcome = await releaseFleet(
      {
        config,
        openPort: sshPorts(knownHosts, warm ?? undefined),
        history: askedOnce(repo),
        commit,
        tree,
        // The longest a VM may wait for the tree: the scan's time limit, and for a tree made on demand also
        // the wait for the runner-host lock and the export itself (see ReleaseContext.treeWaitS).
        treeWaitS: (config.repository.secretScanning.enabled ? config.repository.secretScanning.timeoutS : 0) + (exported ? 0 : repo.lockWaitS + ON_DEMAND_EXPORT_S),
        force,
        owner: ownLockOwner(commit, runUrlFromEnv()),
        runId: options.runId,
        events,
        signal: options.signal,
        retryBaseMs: options.retryBaseMs ?? 1000,
        lockWaitS: options.lockWaitS ?? 0,
        stream: runStreams ? (base, vmHasZstd) => runStreams.for(base, vmHasZstd) : undefined,
      },
      vms,
    );
    await recordDeployed(repo, outcome.vms, events);
    // A scan that failed (not a block: a broken or timed-out scan) fails the run with its error: no VM
    // staged or got anything (each waited for the tree), and each one's lock was released.
    // A run cancelled meanwhile reports its rows (each VM interrupted, on the release it served), as before.
    if (upFront) await upFront.catch((error: unknown) => {
      if (!scan?.blocked && !options.signal?.aborted) throw error;
    });
    return done({ command: 'sync', commit, dry_run: false, scan, rollout: outcome.rollout, flip_skew_ms: outcome.flip_skew_ms, vms: outcome.vms });
  } finally {
    await warm?.close();
    await streams?.settled();
    if (streamDir) removeScratchDirLater(streamDir);
    if (dryExportRoot) removeScratchDirLater(dryExportRoot);
    // The export becomes the base of the next run's (under the runner-host lock: no run copies it meanwhile).
    const made: ExportSnapshot | null = snapshot;
    if (made) await repo.locked('keeping the export', async () => exports.retire(made)).catch((error: unknown) => events.info(null, `could not keep the export for the next run: ${getErrorMessage(error)}`));
  }
}

/**
 * Connects to the first VMs a real deploy prepares (as many as it prepares at
 * once, in `vms:` order) while the commit is fetched and exported: their
 * pipelines then start connected. Nothing runs on a VM before its pipeline
 * does. VMs behind a jump host are left out: the jump connection made for
 * them could drop before their pipelines start, and the pipeline's connect
 * would then find it gone (one failed attempt) instead of opening its own.
 */
function connectAhead(vms: readonly VmConfig[], concurrency: number, knownHosts: KnownHosts, events: EngineEvents, runSignal: AbortSignal | undefined): WarmConnections<VmSession> {
  const warm = new WarmConnections(
    async (vm, stop, expire) => {
      const started = Date.now();
      const signal = runSignal ? AbortSignal.any([runSignal, stop]) : stop;
      // No timeout until the pipeline takes it (then the pipeline's own, from then: see WarmConnections).
      const session = await VmSession.open(vm, knownHosts, { connectTimeoutMs: UNTIL_TAKEN_MS, signal, expire });
      events.debug?.(vm.id, `connected ahead in ${Date.now() - started} ms (while the commit is prepared)`, 'prepare');
      return session;
    },
    (error) => LASTING_CONNECT_FAILURES.has(toFailure(error).code),
  );
  warm.start(vms.slice(0, concurrency).filter((vm) => !vm.jump));
  return warm;
}

/**
 * Failures of a connection made ahead that its pipeline's connect could only repeat: host keys and the
 * runner's own key file. (A refused key is not one: a VM being provisioned may add it during the fetch.)
 */
const LASTING_CONNECT_FAILURES: ReadonlySet<string> = new Set(['host_key_mismatch', 'host_key_revoked', 'host_key_unknown', 'key_invalid']);

/** A connection made ahead has no timeout of its own until its pipeline takes it (a day stands for none). */
const UNTIL_TAKEN_MS = 24 * 60 * 60 * 1000;

/** What a tree exported on demand may take beyond the runner-host lock's wait (a VM's lock must outlast it). */
const ON_DEMAND_EXPORT_S = 600;

/** A secret scan started while the export it reads is made: the export it waits for (made or failed), and its stop. */
interface EarlyScan {
  scan: Promise<{ dir: string; notes: string[] }>;
  stop: AbortController;
  made(dir: string): void;
  failed(error: unknown): void;
}

/** The runner host's scan cache, in vm-sync's state directory beside the clone. */
function scanCacheDir(config: Config): string {
  return path.join(stateDirOf(config.repository.mainRepoPath), 'scan-cache');
}

/** How a run's export was made, for the log: rewritten from the last one, or the whole tree and why. */
function exportSentence(snapshot: ExportSnapshot, ms: number): string {
  const sha = snapshot.commit.slice(0, 12);
  return snapshot.how === 'incremental'
    ? `export of ${sha}: ${count(snapshot.changedPaths, 'path')} rewritten from the export of ${snapshot.base?.slice(0, 12)} (${ms} ms)`
    : `export of ${sha}: the whole tree (${snapshot.reason}; ${ms} ms)`;
}

/** Whether this runner recorded every VM on `commit` (its last successful deploy to each). */
async function allRecordedOn(records: Promise<Array<string | null>>, vms: readonly VmConfig[], commit: string): Promise<boolean> {
  const recorded = await records;
  return vms.length > 0 && recorded.every((sha) => sha === commit);
}

/**
 * The commit that status, verify and scan compare with when none is named:
 * the tip of `remote/default_branch`, fetched first unless `fetch` is false.
 * With `keepOnFetchFailure`, a failed fetch falls back to the tip as last
 * fetched, and the baseline says so. A named commit the clone lacks is
 * fetched from the remote (by hash, else with every branch).
 */
async function baselineOf(repo: RunnerRepo, config: Config, rev: string | undefined, fetch: boolean, events: EngineEvents, keepOnFetchFailure: boolean): Promise<{ commit: string; baseline: Baseline }> {
  const { remote, defaultBranch, mainRepoPath } = config.repository;
  if (!fetch && !fs.existsSync(mainRepoPath)) {
    throw new VmSyncError('git_failed', `the runner-host clone ${mainRepoPath} does not exist, and this run may not fetch: ${noFetchAdvice()} (the run clones it), or run ${invocation('sync')} first.`);
  }
  const prepared = await repo.prepare(fetch, { keepOnFetchFailure });
  const fetched = prepared.action !== 'reused' && prepared.action !== 'unfetched';
  const ref = rev ?? `${remote}/${defaultBranch}`;
  let note: string;
  if (prepared.fetchError !== null) {
    note = `as last fetched: the fetch failed, so this may be out of date (${prepared.fetchError.split('\n').at(-1)})`;
    events.info(null, `WARNING: could not fetch ${remote}/${defaultBranch}; comparing with the runner-host clone as last fetched. git said:\n${prepared.fetchError}`);
  } else note = fetched ? 'fetched just now' : 'as last fetched: this run did not fetch';
  const commit = rev === undefined ? await repo.tip() : (await repo.locate(rev, fetch && prepared.fetchError === null)).sha;
  return { commit, baseline: { ref, fetched: fetched && prepared.fetchError === null, note } };
}

/**
 * `vm-sync verify` / `vm-sync status`: reads every selected VM's `.sync_rev`
 * and classifies it against the commit (default: the fetched tip of
 * `remote/default_branch`, what a sync would deploy). With `deep` (verify
 * only), each commit the VMs serve is exported once and every VM's files are
 * compared with it. Read-only on the VMs; on the runner host it only fetches.
 */
export async function runInspect(config: Config, mode: 'verify' | 'status', options: InspectOptions = {}): Promise<RunReport> {
  if (options.deep && mode !== 'verify') throw new VmSyncError('config_invalid', 'deep only applies to verify');
  const events = options.events ?? silentEvents;
  const vms = selectVms(config, options.vms, options.shard);
  sweepDeadRuns(events);
  const repo = runnerRepo(config, options.gitEnv, { events, signal: options.signal });
  const { commit, baseline } = await baselineOf(repo, config, options.commit, options.fetch !== false, events, true);
  const ctx: RunContext = {
    config,
    knownHosts: loadKnownHosts(config),
    history: askedOnce(repo),
    commit,
    exportDir: '',
    force: false,
    events,
    signal: options.signal,
    retryBaseMs: options.retryBaseMs ?? 1000,
  };
  // What a release holds: the tree less the excludes (`.git` among them unless deployed) and the shared paths.
  const trees = options.deep ? new ExpectedTrees(repo, { excludes: rsyncExcludes(config, []), sharedPaths: config.repository.sharedPaths.map((s) => s.path) }) : null;
  const deep: DeepCheck | undefined = trees ? { expected: (sha) => trees.for(sha) } : undefined;
  try {
    const reports = await mapPool(vms, config.sync.concurrency, (vm) => rowOf(vm, events, () => inspectVm(vm, ctx, mode, deep)));
    return { command: mode, commit, baseline, dry_run: false, scan: null, vms: reports };
  } finally {
    trees?.close();
  }
}

/** Options of `vm-sync rollback`. */
export interface RollbackOptions extends FleetOptions {
  /** The commit to go back to (any revision the runner-host clone resolves); default: each VM's previous release. */
  to?: string;
  lockWaitS?: number;
}

/**
 * `vm-sync rollback`: flips each selected VM to its previous kept release, or
 * to its kept release of `to`. Transfers nothing and scans nothing (the
 * release was scanned when it was deployed).
 */
export async function runRollback(config: Config, options: RollbackOptions = {}): Promise<RunReport> {
  const events = options.events ?? silentEvents;
  const vms = selectVms(config, options.vms, options.shard);
  const knownHosts = loadKnownHosts(config);
  let to: string | null = null;
  if (options.to) {
    if (/^[0-9a-f]{40}$/.test(options.to)) to = options.to;
    else {
      const repo = runnerRepo(config, options.gitEnv, { events, signal: options.signal });
      if (!fs.existsSync(config.repository.mainRepoPath)) throw new VmSyncError('git_failed', `cannot resolve ${option('to', options.to)}: the runner-host repo ${config.repository.mainRepoPath} does not exist; give the full 40-character commit hash.`);
      try {
        to = await repo.resolve(options.to);
      } catch (error) {
        if (!(error instanceof VmSyncError) || !error.message.startsWith('commit ')) throw error;
        throw new VmSyncError('no_release', `${option('to', options.to)} is not a commit the runner-host clone ${config.repository.mainRepoPath} knows: give the full 40-character hash of a release the VMs keep (${invocation('status')} shows what they serve; ${invocation('rollback')} goes to each VM's previous release).`);
      }
    }
  }
  events.info(null, `rolling back ${count(vms.length, 'VM')} to ${to ? to.slice(0, 12) : 'their previous release'}`, 'rollback');
  const rows = await rollbackFleet({ config, openPort: sshPorts(knownHosts), to, owner: ownLockOwner(to ?? '', runUrlFromEnv()), runId: options.runId, events, signal: options.signal, lockWaitS: options.lockWaitS ?? 0 }, vms);
  const repo = runnerRepo(config, options.gitEnv, { events, signal: options.signal });
  if (fs.existsSync(config.repository.mainRepoPath)) await recordDeployed(repo, rows, events);
  return { command: 'rollback', commit: to ?? '', dry_run: false, scan: null, vms: rows };
}

/**
 * `vm-sync scan`: the secret-scan gate on its own, on the runner-host clone or
 * on any checkout (`repoDir`). Contacts no VM; needs no SSH keys.
 */
export async function runScan(config: Config, options: ScanOptions = {}): Promise<RunReport> {
  const events = options.events ?? silentEvents;
  const { remote, defaultBranch } = config.repository;
  const dir = options.repoDir ?? config.repository.mainRepoPath;
  let repo: RunnerRepo;
  let head: string;
  let baseline: Baseline | null = null;
  if (options.repoDir) {
    // A CI checkout is scanned as it was checked out: its HEAD is the commit of the event.
    if (!fs.existsSync(path.join(dir, '.git'))) throw new VmSyncError('git_failed', `${dir} is not a git checkout.`);
    repo = new RunnerRepo(dir, remote, defaultBranch, null);
    head = options.commit ?? 'HEAD';
  } else {
    // What a sync would deploy: the fetched tip of the default branch (or the named commit), never
    // wherever the clone's HEAD was left. A fetch that fails fails the scan, as it fails a sync.
    repo = runnerRepo(config, options.gitEnv, { events, signal: options.signal });
    if (options.range || options.request) {
      await repo.prepare(options.fetch !== false);
      head = '';
    } else ({ commit: head, baseline } = await baselineOf(repo, config, options.commit, options.fetch !== false, events, false));
  }
  // The same range as a sync of the same VMs: what this runner recorded for each selected VM.
  const vms = selectVms(config, options.vms, options.shard);
  const request: ScanRequest = options.request
    ? options.request
    : options.range
    ? { kind: 'range', range: options.range }
    : { kind: 'resync', head, deployed: await repo.deployedOf(vms.map((vm) => vm.id)), withoutRecord: options.repoDir ? 'first-parent' : 'defaults' };
  const plan = await planScan(repo, request);
  sweepDeadRuns(events);
  // On the runner host only the files the scan cache does not vouch for are exported, straight from the
  // clone (git archive of those paths): the cost follows the change, not the size of the tree. A CI
  // checkout (--repo) keeps no cache: its whole tree is exported to a scratch directory, gone after.
  const exportRoot = options.repoDir && plan.head ? makeScratchDir('export') : null;
  try {
    let exportDir: string | null = null;
    if (plan.head && exportRoot) {
      exportDir = path.join(exportRoot, 'tree');
      await repo.exportTree(plan.head, exportDir);
    }
    const head = plan.head;
    const exportPaths = head && !options.repoDir ? (dest: string, paths?: string[]) => repo.exportTree(head, dest, paths) : undefined;
    // A CI checkout (--repo) keeps no cache: it is gone after the job, and it is not the runner host's.
    const cacheDir = options.repoDir ? null : scanCacheDir(config);
    const scan = await runSecretScan({ settings: config.repository.secretScanning, plan, repoDir: dir, countCommitsAddingText: (s) => repo.countCommitsAddingText(s), exportDir, exportPaths, cacheDir, events, signal: options.signal });
    return { command: 'scan', commit: plan.head ?? '', ...(baseline ? { baseline } : {}), dry_run: false, scan, vms: [] };
  } finally {
    if (exportRoot) removeScratchDirLater(exportRoot);
  }
}

/**
 * Runs one VM's pipeline and announces its row. A pipeline never throws by
 * design; if a defect makes it throw anyway, the VM still gets a failed row
 * instead of the error escaping the fan-out and abandoning the other VMs.
 */
async function rowOf(vm: VmConfig, events: EngineEvents, pipeline: () => Promise<VmReport>): Promise<VmReport> {
  events.vmStarted?.(vm.id);
  let report: VmReport;
  try {
    report = await pipeline();
  } catch (error) {
    report = failedRow(vm, { code: 'internal_error', message: `vm-sync failed on ${vm.id} (a defect, please report it): ${getErrorMessage(error)}` }, [
      `what this VM serves is unknown: check it with ${invocation('status', [['vm', vm.id]])}`,
    ]);
    // The trace, for -v: where the defect is.
    events.debug?.(vm.id, `internal error: ${error instanceof Error && error.stack ? error.stack : getErrorMessage(error)}`);
  }
  return announceRow(events, report);
}

/** Remembers what each VM holds, so the next manual resync scans only what is new to it. Never fails the run. */
async function recordDeployed(repo: RunnerRepo, reports: VmReport[], events: EngineEvents): Promise<void> {
  const entries = reports.filter((r) => r.rev_after !== null && r.result === 'success').map((r) => ({ vmId: r.id, sha: r.rev_after as string }));
  if (entries.length === 0) return;
  try {
    await repo.recordDeployed(entries);
  } catch (error) {
    events.info(null, `could not record the deployed commit on the runner host (the next resync scans the whole tree): ${getErrorMessage(error)}`);
  }
}

/** The Actions run that is deploying, for lock records ('' outside Actions). */
function runUrlFromEnv(): string {
  const { GITHUB_SERVER_URL, GITHUB_REPOSITORY, GITHUB_RUN_ID } = process.env;
  return GITHUB_SERVER_URL && GITHUB_REPOSITORY && GITHUB_RUN_ID ? `${GITHUB_SERVER_URL}/${GITHUB_REPOSITORY}/actions/runs/${GITHUB_RUN_ID}` : '';
}

/** `.sync_rev` at a tree's root is vm-sync's own name: a committed one is never deployed, and the row says so. */
function committedSentinelNote(exportDir: string): string[] {
  try {
    const stat = fs.lstatSync(path.join(exportDir, '.sync_rev'));
    const what = stat.isSymbolicLink() ? 'a symlink' : stat.isDirectory() ? 'a directory' : 'a file';
    return [`the commit has ${what} at .sync_rev: not deployed, because vm-sync writes its own sentinel under that name`];
  } catch {
    return [];
  }
}

/**
 * Exit status for a finished run: 3 when secrets blocked it, 0 when every VM
 * succeeded (and, for merged shards, every shard reported and none failed), 1 otherwise.
 */
export function exitCodeFor(report: RunReport): 0 | 1 | 3 {
  if (report.scan?.blocked) return 3;
  if (report.shards && (report.shards.missing.length > 0 || report.shards.failed.length > 0)) return 1;
  return report.vms.every((vm) => vm.result === 'success') ? 0 : 1;
}
