import { count as countOf, noun } from '../words.js';
import { gitBytes } from '../git/bytes.js';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { SecretScanningConfig } from '../config/types.js';
import { VmSyncError } from '../errors.js';
import { run } from '../local/run.js';
import { makeScratchDir, removeScratchDirLater } from '../local/scratch.js';
import type { EngineEvents } from '../sync/types.js';
import { scanTree, type UnscannedFile } from './coverage.js';
import { ProbeRecord, ScanCache, type UnscannedPart } from './cache.js';
import { describeFinding, findingFromFingerprint, printable, type Finding } from './findings.js';
import { checkGitleaksLogs, HEARTBEAT_S, locateGitleaks, runGitleaks, type GitleaksSettings, type ScanLimits } from './gitleaks.js';
import { identifyGitleaks, requireSameGitleaksIn, unchangedSince, type GitleaksIdentity } from './identity.js';
import type { ScanPlan } from './plan.js';
import { IGNORE_FILE, isIgnored, parseIgnore, settingsAt, settingsChanges, writeSettings, type CommitSettings, type SettingsChange } from './settings.js';
import { together } from '../local/together.js';

export type { UnscannedFile } from './coverage.js';

/** Where the scan's own settings came from, and what the scanned change does to them. */
export interface ScanConfiguration {
  /** The commit the gitleaks config and `.gitleaksignore` were read from; null: gitleaks' defaults. */
  commit: string | null;
  /** Why that commit is trusted. */
  reason: string;
  /** The settings files that commit holds. */
  files: string[];
  /** Settings files the scanned change adds, modifies or deletes: they take effect from the next deploy, not this one. */
  changed: SettingsChange[];
  /** How those changes would weaken the scan (empty: no weakening found). */
  weakening: string[];
}

/** The outcome of the secret-scan gate: the `scan` part of reports and `--json`. */
export interface ScanReport {
  /** What was scanned and why. */
  description: string;
  commits_scanned: number;
  tree_scanned: boolean;
  findings: Finding[];
  /** True when findings stop the deploy (`block_on_secrets: true`). */
  blocked: boolean;
  /**
   * What of the deployed tree could not be scanned, and why (the first
   * {@link MAX_UNSCANNED_LISTED}, by path). Always set by {@link runSecretScan};
   * optional so that hand-built reports stay valid.
   */
  unscanned?: UnscannedFile[];
  /** How many things could not be scanned in all. */
  unscanned_count?: number;
  /** Where the scan settings came from and whether this change modifies them. Always set by {@link runSecretScan}. */
  configuration?: ScanConfiguration;
  /** What the runner host's scan cache saved (null: no cache, e.g. a scan of a CI checkout). */
  cache?: CacheSavings | null;
}

/** The most unscanned entries a report lists (the count is always complete). */
export const MAX_UNSCANNED_LISTED = 1000;

export interface GateInputs {
  settings: SecretScanningConfig;
  plan: ScanPlan;
  /** The runner-host repository (commits and scan settings are read there). */
  repoDir: string;
  /** Counts the commits of a selection that add text (RunnerRepo.countCommitsAddingText). */
  countCommitsAddingText: (selection: string[]) => Promise<number | null>;
  /** The clean export of `plan.head` (its tree is scanned there); null when there is none (see exportPaths). */
  exportDir: string | null;
  /**
   * The export of `plan.head` while it is still being made (it resolves to
   * its directory, and supersedes exportDir): only the tree part waits for
   * it, so the settings, the probe and the commits are scanned meanwhile.
   */
  exportReady?: Promise<string>;
  /**
   * Without an export: unpacks `paths` of `plan.head` (all of it when
   * absent) into `dest`, as git archive makes them. `vm-sync scan` on the
   * runner host then reads only the files the cache does not vouch for,
   * whatever the size of the tree. Neither this nor exportDir: no tree scan.
   */
  exportPaths?: (dest: string, paths?: string[]) => Promise<void>;
  /** All inflated streams of one tree scan together, in bytes (default 1 GB; smaller in tests). */
  inflatedMax?: number;
  /** The runner host's scan cache directory (src/scan/cache.ts); absent: scan everything. */
  cacheDir?: string | null;
  events: EngineEvents;
  signal?: AbortSignal;
}

/** The inputs, with what this run learnt of the gitleaks it runs. */
interface ScanContext extends GateInputs {
  /** The gitleaks at the configured path, identified (null: it could not be). */
  identity: GitleaksIdentity | null;
}

/** What one full scan (commits and tree) with one set of settings found. */
interface ScanOutcome {
  findings: Finding[];
  commitsScanned: number;
  unscanned: UnscannedFile[];
}

async function absoluteGitDir(repoDir: string): Promise<string> {
  const result = await run('git', ['rev-parse', '--absolute-git-dir'], { cwd: repoDir, env: { ...process.env, LC_ALL: 'C' } });
  if (result.code !== 0) throw new VmSyncError('git_failed', `${repoDir} is not a git repository: ${result.stderr.trim()}`);
  return result.stdout.trim();
}

const plural = (n: number, one: string, many = `${one}s`): string => `${n} ${n === 1 ? one : many}`;

/**
 * Scans the commits being deployed and the exact tree being deployed with
 * gitleaks, failing closed: our own count of the commits must be matched by
 * what gitleaks says it scanned, any gitleaks failure is an error, and a scan
 * that runs out of `timeout_s` is an error.
 *
 * The scan settings (gitleaks config, `.gitleaksignore`) come from
 * `plan.trusted`, a commit the scanned change cannot have written, never
 * from the commit under scan: a change to them takes effect from the next
 * deploy. Such a change is reported, and when it would hide findings that
 * the trusted settings report, reported as a weakening.
 *
 * Every deployed file is scanned: what gitleaks' path allowlists skip is
 * scanned again under neutral names (see {@link scanTree}), and what still
 * cannot be scanned (binaries, archives gitleaks cannot open) is reported.
 */
export async function runSecretScan(inputs: GateInputs): Promise<ScanReport> {
  const { settings, plan, events } = inputs;
  const limits: ScanLimits = {
    deadline: Date.now() + settings.timeoutS * 1000,
    timeoutS: settings.timeoutS,
    signal: inputs.signal,
    onLongRun: (seconds) => inputs.events.info(null, `secret scan: still scanning (${seconds} s)`),
  };
  const binary = locateGitleaks(settings.gitleaksPath);
  events.info(null, `secret scan: ${plan.description}`);
  if (!plan.head) {
    return {
      description: plan.description,
      commits_scanned: 0,
      tree_scanned: false,
      findings: [],
      blocked: false,
      unscanned: [],
      unscanned_count: 0,
      configuration: { commit: null, reason: plan.trusted.reason, files: [], changed: [], weakening: [] },
    };
  }
  // gitleaks' own check (does it log what vm-sync reads?) runs while the settings are read; its failure
  // comes first, and nothing of the scan starts (or is touched in the cache) before it passed. A build
  // this runner host already proved (by its digest) is not probed again.
  // Identified with or without a cache: the tree part needs to know whether it runs gitleaks itself.
  const identity = await identifyGitleaks(binary).catch((error: unknown) => (error instanceof Error ? error : new Error(String(error))));
  const known = identity instanceof Error ? null : identity;
  const context: ScanContext = { ...inputs, identity: known };
  const proven = known ? ProbeRecord.open(inputs.cacheDir, (m) => events.info(null, m)) : null;
  const [checked, read] = await Promise.allSettled([
    checkGitleaksLogs(binary, limits, known, proven),
    Promise.all([settingsAt(inputs.repoDir, plan.trusted.commit, settings.configPath), settingsAt(inputs.repoDir, plan.head, settings.configPath)]),
  ]);
  if (checked.status === 'rejected') throw checked.reason;
  if (read.status === 'rejected') throw read.reason;
  const [trusted, head] = read.value;
  if (!trusted.config && !head.config && settings.configPath !== '.gitleaks.toml') {
    throw new VmSyncError('config_invalid', `repository.secret_scanning.config_path '${settings.configPath}' does not exist in the commit being deployed.`);
  }
  const changed = settingsChanges(trusted, head);
  const files = [trusted.config?.path, trusted.ignore?.path].filter((f): f is string => !!f);
  const from = trusted.commit ? trusted.commit.slice(0, 12) : null;
  events.info(null, `secret scan: settings from ${from ? `commit ${from} (${plan.trusted.reason})` : plan.trusted.reason}: ${files.length ? files.join(', ') : "gitleaks' defaults"}`);
  for (const c of changed) {
    events.info(null, `secret scan: this change ${c.change === 'added' ? 'adds' : c.change === 'deleted' ? 'deletes' : 'modifies'} ${c.path}: it takes effect from the next deploy; this one is scanned with the settings of ${from ?? "gitleaks' defaults"}`);
  }

  const privateDir = makeScratchDir('scansettings');
  try {
    if (head.config && changed.some((c) => c.path === head.config?.path)) await vetNewConfig(binary, head, path.join(privateDir, 'vet'), limits);
    const ignore = parseIgnore(trusted.ignore?.text);
    const trustedFiles = writeSettings(path.join(privateDir, 'trusted'), trusted);
    const cache = ScanCache.open(inputs.cacheDir, identity, trustedFiles, (m) => events.info(null, m));
    const saved: CacheSavings = { files_scanned: 0, files_cached: 0, commits_scanned: 0, commits_cached: 0 };
    const outcome = await scanWith(context, binary, trustedFiles, ignore, limits, true, cache, saved);
    // Only a scan that completed is remembered (a throw above records nothing), and only for the gitleaks
    // that was identified: one replaced meanwhile (an upgrade during the run) may have done part of the scan.
    if (cache && known && !unchangedSince(binary, known)) {
      events.info(null, `secret scan: ${binary} changed during the scan: nothing of it is remembered (the next run scans again)`);
    } else if (cache) {
      try {
        cache.save();
      } catch (error) {
        events.info(null, `secret scan: could not write the scan cache (the next run scans everything again): ${error instanceof Error ? error.message : String(error)}`);
      }
    }
    const weakening = changed.length ? await weakeningOf(context, binary, { trusted, head, changed, findings: outcome.findings }, path.join(privateDir, 'candidate'), limits) : [];
    for (const sentence of weakening) events.info(null, `secret scan: WARNING: this change weakens the scan settings: ${sentence}`);

    const { findings, commitsScanned, unscanned } = outcome;
    const blocked = findings.length > 0 && settings.blockOnSecrets;
    for (const finding of findings) events.info(null, `secret scan: ${blocked ? 'BLOCKING' : 'found'}: ${describeFinding(finding)}`);
    if (unscanned.length > 0) {
      const shown = unscanned.slice(0, 5).map((u) => `${u.path} (${u.detail})`);
      events.info(null, `secret scan: ${plural(unscanned.length, 'deployed file or archive entry', 'deployed files or archive entries')} could not be scanned: ${shown.join('; ')}${unscanned.length > shown.length ? '; ...' : ''}`);
    }
    if (findings.length > 0 && !settings.blockOnSecrets) {
      events.info(null, `WARNING: ${countOf(findings.length, 'possible secret')} found and repository.secret_scanning.block_on_secrets is false: the deploy goes on. Rotate them.`);
    } else if (findings.length === 0) {
      events.info(null, `secret scan: clean (${countOf(commitsScanned, 'commit')}${treeWanted(inputs) ? ' and the deployed tree' : ''})`);
    }
    return {
      description: plan.description,
      commits_scanned: commitsScanned,
      tree_scanned: treeWanted(inputs),
      findings,
      blocked,
      unscanned: unscanned.slice(0, MAX_UNSCANNED_LISTED).map(({ path: at, reason, detail }) => ({ path: at, reason, detail })),
      unscanned_count: unscanned.length,
      configuration: { commit: trusted.commit, reason: plan.trusted.reason, files, changed, weakening },
      cache: cache ? saved : null,
    };
  } finally {
    fs.rmSync(privateDir, { recursive: true, force: true });
  }
}

/**
 * The commits and the tree scanned with one set of settings. `strict`: the
 * trusted run, whose coverage is enforced (and whose clean results the cache
 * keeps). The two parts run at once: each is one gitleaks process that leaves
 * a core idle for much of its run, and on a push both are small.
 */
async function scanWith(inputs: ScanContext, binary: string, files: GitleaksSettings, ignore: ReadonlySet<string>, limits: ScanLimits, strict: boolean, cache: ScanCache | null = null, saved?: CacheSavings): Promise<ScanOutcome> {
  // A part that fails stops the other (its own error is the one reported, not the other's "cancelled").
  const stop = new AbortController();
  const onOuterAbort = (): void => stop.abort();
  limits.signal?.addEventListener('abort', onOuterAbort, { once: true });
  if (limits.signal?.aborted) stop.abort();
  // One heartbeat for the two parts, counted from the start of the scan.
  const began = Date.now();
  let said = 0;
  const onLongRun = limits.onLongRun;
  const heartbeat = onLongRun
    ? (): void => {
        const seconds = Math.round((Date.now() - began) / 1000);
        if (seconds - said < HEARTBEAT_S / 2) return;
        said = seconds;
        onLongRun(seconds);
      }
    : undefined;
  const partLimits: ScanLimits = { ...limits, signal: stop.signal, onLongRun: heartbeat };
  let commits: CommitsPart;
  let tree: TreePart;
  try {
    [commits, tree] = await together<[CommitsPart, TreePart]>(stop, [scanCommits(inputs, binary, files, ignore, partLimits, strict, cache, saved), scanTreePart(inputs, binary, files, ignore, partLimits, cache, saved)]);
  } finally {
    limits.signal?.removeEventListener('abort', onOuterAbort);
  }
  const findings = [...commits.findings, ...tree.findings];
  const extended = [...commits.extended, ...tree.extended];
  // Commits covered: scanned now, or clean under these settings before (the report reads the same either way).
  const commitsScanned = commits.scanned + (strict ? (saved?.commits_cached ?? 0) : 0);
  const { unscanned, fresh } = tree;
  const cleanEntries: TreeFile[] = [];
  const unscannedEntries: Array<{ blob: string; path: string; parts: UnscannedPart[] }> = [];
  if (fresh) {
    // Clean means: no finding in it (or in an archive entry of it) and nothing of it left unscanned.
    const found = new Set(findings.map((f) => f.file.split('!')[0]));
    const touched = new Set([...found, ...unscanned.map((u) => u.path.split('!')[0])]);
    const partsOf = new Map<string, UnscannedPart[]>();
    // A file left unscanned because this scan's budget was spent is scanned again next time: never remembered.
    const transient = new Set(unscanned.filter((u) => u.transient).map((u) => u.path.split('!')[0]));
    for (const u of unscanned) {
      const at = u.path.indexOf('!');
      const file = at < 0 ? u.path : u.path.slice(0, at);
      partsOf.set(file, [...(partsOf.get(file) ?? []), { suffix: u.path.slice(file.length), reason: u.reason, detail: u.detail }]);
    }
    for (const f of fresh) {
      const name = Buffer.from(f.path, 'latin1').toString('utf8');
      // A name that is not plain printable UTF-8 is shown escaped, so a finding in it could not be matched; one
      // holding `!` reads as an archive entry (`a!b` as entry b of a): neither is ever cached.
      if (Buffer.from(name, 'utf8').toString('latin1') !== f.path || printable(name) !== name || name.includes('!')) continue;
      if (!touched.has(name)) cleanEntries.push(f);
      // No finding, only parts it could not scan: remembered with them.
      else if (!found.has(name) && partsOf.has(name) && !transient.has(name)) unscannedEntries.push({ blob: f.blob, path: f.path, parts: partsOf.get(name) as UnscannedPart[] });
    }
  }
  // An `[extend] path` names a file outside git: a relative one is read from
  // the tree under scan, an absolute one may be in the runner-host clone (which
  // is reset to the commit under scan). Either way the commit could change its
  // own scan, so repository configs may only extend gitleaks' defaults.
  if (strict && extended.length > 0) {
    throw new VmSyncError(
      'config_invalid',
      `the trusted gitleaks config extends '${extended[0]}': vm-sync does not follow [extend] path, because the file it names is not pinned to a trusted commit (the commit being scanned could rewrite it). Copy that file's rules into ${inputs.settings.configPath} and extend only gitleaks' defaults ([extend] useDefault = true).`,
    );
  }
  if (cache && strict) {
    cache.addCommits(commits.clean);
    cache.addEntries(cleanEntries, tree.digest);
    cache.addUnscanned(unscannedEntries, tree.digest);
  }
  return { findings, commitsScanned, unscanned };
}

/** What the scan of the plan's commits found. */
interface CommitsPart {
  findings: Finding[];
  extended: string[];
  /** Commits gitleaks scanned now (strict: as it counted them). */
  scanned: number;
  /** The scanned commits with no finding: what the cache may keep. */
  clean: string[];
}

/** The plan's commits, only those not scanned before under these settings (listed explicitly when some were). */
async function scanCommits(inputs: GateInputs, binary: string, files: GitleaksSettings, ignore: ReadonlySet<string>, limits: ScanLimits, strict: boolean, cache: ScanCache | null, saved?: CacheSavings): Promise<CommitsPart> {
  const { plan } = inputs;
  const none: CommitsPart = { findings: [], extended: [], scanned: 0, clean: [] };
  if (!plan.commits || plan.commits.count === 0) return none;
  let selection = plan.commits.selection;
  let count = plan.commits.count;
  let fresh: string[] | null = null;
  if (cache) {
    const all = await revList(inputs.repoDir, selection);
    if (all !== null) {
      fresh = all.filter((sha) => !cache.hasCommit(sha));
      if (saved) saved.commits_cached = all.length - fresh.length;
      if (fresh.length < all.length && fresh.length <= MAX_LISTED_COMMITS) {
        selection = fresh.length > 0 ? ['--no-walk', ...fresh] : [];
        count = fresh.length;
      } else if (fresh.length > MAX_LISTED_COMMITS) {
        if (saved) saved.commits_cached = 0;
      }
    }
  }
  if (count === 0) return none;
  inputs.events.info(null, `secret scan: ${plural(count, 'commit')} to scan${saved?.commits_cached ? `, ${saved.commits_cached} scanned before with these settings` : ''}`);
  const gitDir = await absoluteGitDir(inputs.repoDir);
  const result = await runGitleaks(binary, { mode: 'git', gitDir, selection }, files, limits);
  let scanned = 0;
  if (strict) {
    // gitleaks 8.27+ exits 0 with "no leaks found" when its git log fails: a
    // scan that saw no commits where some add text is not a pass. (Commits
    // that add no text, e.g. binary-only changes, are not counted by gitleaks.)
    // git's own count is needed only when gitleaks counted none: it diffs
    // every commit again (0.4 CPU-s for 130 commits of git/git).
    const counted = result.commitsScanned;
    const withText = counted === 0 ? await inputs.countCommitsAddingText(selection) : undefined;
    if (counted === null || counted > count || (counted === 0 && (withText === null || (withText ?? 0) > 0))) {
      const adding = withText === undefined ? ` of ${count}` : ` where ${withText ?? 'an unknown number'} of the ${count} add text`;
      throw new VmSyncError('scan_range_unresolved', `gitleaks scanned ${counted === null ? 'an unknown number of commits' : countOf(counted, 'commit')}${adding}: the scan cannot be trusted, so nothing is deployed.`);
    }
    scanned = counted;
  }
  const findings = [...result.findings];
  for (const fingerprint of result.suppressed) if (!isIgnored(ignore, { fingerprint })) findings.push(findingFromFingerprint(fingerprint, 'commits'));
  if (saved) saved.commits_scanned = count;
  const tainted = findings.filter((f) => f.commit).map((f) => f.commit as string);
  const clean = (fresh ?? (await revList(inputs.repoDir, plan.commits.selection)) ?? []).filter((sha) => !tainted.some((short) => sha.startsWith(short)));
  return { findings, extended: [...result.extended], scanned, clean };
}

/** What the scan of the deployed tree found. */
interface TreePart {
  findings: Finding[];
  extended: string[];
  /** What could not be scanned (now, or remembered from before), by path. */
  unscanned: UnscannedFile[];
  /** The files scanned now, when the cache narrowed the scan to them (null: the whole tree, nothing cached). */
  fresh: TreeFile[] | null;
  /** The digest of the git attributes in force (part of every cache entry). */
  digest: string;
}

/** The deployed tree: only the files not scanned before under these settings and these git attributes, in a view at their real paths. */
async function scanTreePart(inputs: ScanContext, binary: string, files: GitleaksSettings, ignore: ReadonlySet<string>, limits: ScanLimits, cache: ScanCache | null, saved?: CacheSavings): Promise<TreePart> {
  const { plan } = inputs;
  if (!treeWanted(inputs)) return { findings: [], extended: [], unscanned: [], fresh: null, digest: '' };
  const tree = cache && plan.head ? await treeFiles(inputs.repoDir, plan.head) : null;
  const attributes = tree ? await attributesOf(inputs.repoDir, tree) : null;
  if (attributes?.substitutes) inputs.events.info(null, 'secret scan: the git attributes use export-subst, which can write text of each commit (its message, its refs) into files: the whole tree is scanned every time');
  const listed = attributes && !attributes.substitutes ? tree : null;
  const digest = attributes?.digest ?? '';
  // Files whose unscannable parts are remembered: reported as a scan reports them, not read again.
  const recalled: UnscannedFile[] = [];
  const fresh = listed
    ? listed.filter((f) => {
        if ((cache as ScanCache).hasEntry(f.blob, f.path, digest)) return false;
        const parts = (cache as ScanCache).unscannedOf(f.blob, f.path, digest);
        if (!parts) return true;
        const name = Buffer.from(f.path, 'latin1').toString('utf8');
        recalled.push(...parts.map((p) => ({ path: `${name}${p.suffix}`, reason: p.reason, detail: p.detail })));
        return false;
      })
    : null;
  const found: TreePart = { findings: [], extended: [], unscanned: [...recalled].sort(byPath), fresh, digest };
  const { exportPaths } = inputs;
  const exportDir = inputs.exportReady ? await inputs.exportReady : inputs.exportDir;
  // Only the files to scan, or (no cache to narrow it, no export) the whole tree: in a view of their own.
  const view = (listed && fresh) || exportDir === null ? makeScratchDir('scanview') : null;
  const root = view ?? exportDir;
  if (root === null) throw new VmSyncError('internal_error', 'the secret scan has no tree to read');
  try {
    if (listed && fresh && view) {
      const bytes = await viewFailure(view, async () => (exportDir ? copyView(exportDir, view, fresh) : await exportView(exportPaths as NonNullable<typeof exportPaths>, view, fresh)));
      if (saved) {
        saved.files_scanned = fresh.length;
        saved.files_cached = listed.length - fresh.length;
      }
      inputs.events.info(null, `secret scan: ${fresh.length.toLocaleString('en-US')} of ${listed.length.toLocaleString('en-US')} ${noun(listed.length, 'file')} (${(bytes / 1e6).toFixed(1)} MB) not scanned before with these settings`);
    } else if (view) {
      await (exportPaths as NonNullable<typeof exportPaths>)(view);
    }
    if (!fresh || fresh.length > 0) {
      // gitleaks runs inside the tree (its paths are relative to it): what runs must not depend on the tree's files.
      await requireSameGitleaksIn(binary, inputs.identity, root);
      const scanned = await scanTree(binary, root, files, ignore, limits, inputs.inflatedMax);
      found.findings.push(...scanned.findings);
      found.unscanned = [...scanned.unscanned, ...recalled].sort(byPath);
      found.extended.push(...scanned.extended);
    }
  } finally {
    // Removed without waiting (it is the whole tree on a first scan: seconds of
    // the event loop on a large one, which every VM's session shares).
    if (view) removeScratchDirLater(view);
  }
  return found;
}

/** Above this many new commits the selection is scanned as it is (an argv of hashes has limits). */
const MAX_LISTED_COMMITS = 1000;

/** What the cache saved in one scan (the `cache` part of the report). */
export interface CacheSavings {
  files_scanned: number;
  files_cached: number;
  commits_scanned: number;
  commits_cached: number;
}

/** A regular file of a commit's tree: its blob and its path (latin1: one char per byte). */
interface TreeFile {
  blob: string;
  path: string;
  size: number;
}

/** The commits of a rev-list selection, or null when git cannot list them. */
async function revList(repoDir: string, selection: string[]): Promise<string[] | null> {
  const out = await gitBytes(repoDir, ['rev-list', ...selection, '--']);
  return out ? out.toString('latin1').split('\n').filter(Boolean) : null;
}

/**
 * What decides the bytes git archive makes of a blob, besides the blob and its
 * path: the git attributes in force (eol, working-tree-encoding, filters,
 * ident, export-subst). They come from every `.gitattributes` of the tree and
 * from the runner host (the clone's info/attributes, core.attributesFile, the
 * system file). `digest` covers all of them and goes into every cache entry:
 * any change to them scans the tree again. `substitutes`: one of them mentions
 * export-subst (a macro defining it included), which writes text of the
 * commit itself into files, so no file of the tree can be vouched for. null
 * when git cannot tell.
 */
async function attributesOf(repoDir: string, files: readonly TreeFile[]): Promise<{ digest: string; substitutes: boolean } | null> {
  const inTree = files.filter((f) => f.path === '.gitattributes' || f.path.endsWith('/.gitattributes'));
  const texts: Buffer[] = [];
  // Three independent questions to git, asked at once (this runs on every scan). git config exits 1 when
  // core.attributesFile is unset: then the XDG default.
  const [out, infoPath, configured] = await Promise.all([
    inTree.length > 0 ? gitBytes(repoDir, ['cat-file', '--batch'], { input: `${inTree.map((f) => f.blob).join('\n')}\n` }) : Promise.resolve(Buffer.alloc(0)),
    gitBytes(repoDir, ['rev-parse', '--git-path', 'info/attributes']),
    gitBytes(repoDir, ['config', '--path', '--get', 'core.attributesFile']),
  ]);
  if (!out || !infoPath) return null;
  texts.push(out);
  const local = [path.resolve(repoDir, infoPath.toString('utf8').trim())];
  const xdg = process.env.XDG_CONFIG_HOME || path.join(os.homedir(), '.config');
  local.push(configured && configured.length > 0 ? configured.toString('utf8').trim() : path.join(xdg, 'git', 'attributes'));
  if (!process.env.GIT_ATTR_NOSYSTEM) local.push('/etc/gitattributes');
  for (const file of local) {
    try {
      texts.push(Buffer.from(`\0${file}\0`), fs.readFileSync(file));
    } catch {
      texts.push(Buffer.from(`\0${file}\0absent`));
    }
  }
  const hash = crypto.createHash('sha256');
  for (const f of inTree) hash.update(`${f.path}\0${f.blob}\0`);
  for (const t of texts) hash.update(t);
  return { digest: hash.digest('hex').slice(0, 32), substitutes: texts.some((t) => t.includes('export-subst')) };
}

/** The regular files of `commit`'s tree (symlinks and submodules carry no content of their own). */
async function treeFiles(repoDir: string, commit: string): Promise<TreeFile[] | null> {
  const out = await gitBytes(repoDir, ['ls-tree', '-r', '-l', '-z', '--full-tree', commit]);
  if (!out) return null;
  const files: TreeFile[] = [];
  for (const record of out.toString('latin1').split('\0')) {
    const tab = record.indexOf('\t');
    if (tab < 0) continue;
    const [mode, type, blob, size] = record.slice(0, tab).split(/ +/);
    if (type === 'blob' && (mode === '100644' || mode === '100755')) files.push({ blob, path: record.slice(tab + 1), size: Number(size) || 0 });
  }
  return files;
}

/** Hard links (copies across filesystems) of `files` from the export into `view`, at their paths; returns their bytes. A file the export lacks (export-ignore) is not deployed: skipped. */
/** The order scanTree reports unscanned files in. */
const byPath = (a: UnscannedFile, b: UnscannedFile): number => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0);

/** Whether the run scans a tree: from an export, or exported on demand. */
function treeWanted(inputs: GateInputs): boolean {
  return inputs.exportDir !== null || inputs.exportReady !== undefined || inputs.exportPaths !== undefined;
}

/**
 * Unpacks `files` into `view` (bytes as git archive makes them), returning
 * their size. A name that is not UTF-8 cannot travel in an argv: then the
 * whole tree is unpacked beside the view, and the files copied from it.
 */
async function exportView(exportPaths: NonNullable<GateInputs['exportPaths']>, view: string, files: readonly TreeFile[]): Promise<number> {
  if (files.length === 0) return 0;
  const names = files.map((f) => Buffer.from(f.path, 'latin1').toString('utf8'));
  if (names.every((name, i) => Buffer.from(name, 'utf8').toString('latin1') === files[i].path)) {
    await exportPaths(view, names);
    return files.reduce((sum, f) => sum + f.size, 0);
  }
  const whole = makeScratchDir('scanexport');
  try {
    await exportPaths(whole);
    return copyView(whole, view, files);
  } finally {
    removeScratchDirLater(whole);
  }
}

/**
 * Runs the making of the scan's view; a failure of this host (a full or
 * unwritable temporary directory) is said as such, with what to do: the
 * scan fails closed either way.
 */
async function viewFailure<T>(view: string, make: () => Promise<T>): Promise<T> {
  try {
    return await make();
  } catch (error) {
    if (error instanceof VmSyncError) throw error;
    const code = (error as { code?: unknown }).code;
    if (code === 'ENOSPC' || code === 'EDQUOT') {
      throw new VmSyncError('storage_full', `no space left for the secret scan's copy of the files to scan in ${path.dirname(view)} (${code}): free space there, or point TMPDIR at a larger directory; a first scan needs about the size of the tree. Nothing was deployed.`);
    }
    throw new VmSyncError('scan_failed', `cannot copy the files to scan into ${path.dirname(view)}: ${error instanceof Error ? error.message : String(error)}. Nothing was deployed.`);
  }
}

function copyView(exportDir: string, view: string, files: readonly TreeFile[]): number {
  let bytes = 0;
  for (const f of files) {
    const rel = Buffer.from(f.path, 'latin1');
    const from = Buffer.concat([Buffer.from(`${exportDir}/`), rel]);
    const to = Buffer.concat([Buffer.from(`${view}/`), rel]);
    try {
      if (!fs.lstatSync(from).isFile()) continue;
    } catch {
      continue;
    }
    fs.mkdirSync(path.dirname(to.toString('latin1')) === '.' ? view : Buffer.from(path.dirname(to.toString('latin1')), 'latin1'), { recursive: true });
    // A copy (a clone where the filesystem has them), never a hard link: linking changes the file's ctime,
    // and the release stream's tar, reading the same export at the same time, takes that for a file
    // changed under it and fails (the deploy then falls back to rsync).
    fs.copyFileSync(from, to, fs.constants.COPYFILE_FICLONE);
    bytes += f.size;
  }
  return bytes;
}

/**
 * Loads the gitleaks config a change brings, once, on an empty directory. It
 * is not used for this deploy, but it is the trusted one for the next: one
 * that gitleaks cannot load, or that extends a relative path (read from the
 * tree under scan), would fail every later scan, and a resync would have no
 * way past it. So it is refused now, while the settings in force still work.
 */
async function vetNewConfig(binary: string, head: CommitSettings, dir: string, limits: ScanLimits): Promise<void> {
  const files = writeSettings(dir, head);
  const empty = path.join(dir, 'tree');
  fs.mkdirSync(empty);
  const file = head.config?.path ?? 'the gitleaks config';
  try {
    // In an empty directory a relative `[extend] path` cannot be found, so it fails here too.
    const loaded = await runGitleaks(binary, { mode: 'dir', root: empty }, files, limits);
    if (loaded.extended.length > 0) {
      throw new VmSyncError('config_invalid', `the ${file} this change brings extends '${loaded.extended[0]}': vm-sync does not follow [extend] path (the file it names is not pinned to a commit), and from the next deploy on it would be the one in force, failing every scan. Copy that file's rules into it and extend only gitleaks' defaults ([extend] useDefault = true).`);
    }
  } catch (error) {
    if (!(error instanceof VmSyncError) || error.code !== 'scan_failed') throw error;
    const hint = /extended config/.test(error.message) ? ' (vm-sync does not follow [extend] path: extend only gitleaks\' defaults)' : '';
    throw new VmSyncError('config_invalid', `the ${file} this change brings cannot be loaded by gitleaks${hint}, and from the next deploy on it would be the one in force, failing every scan: fix it first. gitleaks: ${error.message}`);
  }
}

/**
 * How the settings the change brings would weaken the scan: new
 * `.gitleaksignore` entries, and findings of this scan that the new settings
 * would no longer report (found by scanning again with them, only when there
 * are findings to lose). Failing to evaluate is reported, never fatal.
 */
async function weakeningOf(
  inputs: ScanContext,
  binary: string,
  change: { trusted: CommitSettings; head: CommitSettings; changed: SettingsChange[]; findings: Finding[] },
  dir: string,
  limits: ScanLimits,
): Promise<string[]> {
  const out: string[] = [];
  const before = parseIgnore(change.trusted.ignore?.text);
  const after = parseIgnore(change.head.ignore?.text);
  const added = [...after].filter((entry) => !before.has(entry));
  if (change.changed.some((c) => c.path === IGNORE_FILE) && added.length > 0) {
    const hidden = change.findings.filter((f) => isIgnored(after, f));
    out.push(`${IGNORE_FILE} gains ${plural(added.length, 'entry', 'entries')}${hidden.length ? `, which would hide ${plural(hidden.length, 'finding')} of this scan` : ''}`);
  }
  if (change.changed.some((c) => c.path !== IGNORE_FILE) && change.findings.length > 0) {
    try {
      const candidate = await scanWith(inputs, binary, writeSettings(dir, change.head), after, limits, false);
      const still = new Set(candidate.findings.map((f) => f.fingerprint));
      const hidden = change.findings.filter((f) => !still.has(f.fingerprint));
      if (hidden.length > 0) {
        const shown = hidden.slice(0, 3).map((f) => `${f.rule} in ${f.file}:${f.line}`);
        out.push(`the new ${inputs.settings.configPath} would hide ${hidden.length} of the ${plural(change.findings.length, 'finding')} this scan reports (${shown.join(', ')}${hidden.length > shown.length ? ', ...' : ''})`);
      }
    } catch (error) {
      const code = error instanceof VmSyncError ? error.code : 'error';
      inputs.events.info(null, `secret scan: the new ${inputs.settings.configPath} could not be evaluated (${code}); from the next deploy on it is the one in force.`);
    }
  }
  return out;
}
