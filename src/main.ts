import { count, noun } from './words.js';
import fs from 'node:fs';
import path from 'node:path';
import * as core from '@actions/core';
import { gitAuthEnv, githubRepositoryProblem, readWorkflowContext, type WorkflowContext } from './action/context.js';
import { parseInputs, type Inputs } from './action/inputs.js';
import { octokitApi, octokitBranchReader } from './action/octokit-api.js';
import { loadConfig } from './config/load.js';
import type { Config } from './config/types.js';
import { invocation, setEntryPoint } from './advice.js';
import { getErrorMessage, VmSyncError, type FailureCode } from './errors.js';
import { annotationText, ANNOTATION_TITLE_MAX, boundedResults, terminalLine, type ResultsDocument } from './report/escape.js';
import { GitHubReporter } from './report/github.js';
import { judgeProtection, protectionSummary, type ProtectionVerdict } from './report/protection.js';
import { renderSummary } from './report/summary.js';
import { renderSarif } from './scan/findings.js';
import { locateGitleaks } from './scan/gitleaks.js';
import { registerSecret } from './remote/mask.js';
import { installGitleaks } from './scan/install.js';
import type { ScanRequest } from './scan/plan.js';
import { execute, mergeShards } from './execute.js';
import { exitCodeFor, selectVms } from './sync/fleet.js';
import { failedRow, type EngineEvents, type RunReport, type VmReport } from './sync/types.js';

/**
 * Registers a secret with the runner's log masking and with vm-sync's own
 * (src/remote/mask.ts), which also covers what the runner does not mask:
 * the job summary and the `results` output (post_sync_command output).
 */
function maskSecret(value: string): void {
  core.setSecret(value);
  registerSecret(value);
}

/** Registers the VMs' private keys with the runner's log masking, line by line (masks are per line). */
function maskKeys(config: Config): void {
  for (const vm of config.vms) {
    try {
      // Mask each line of every private key body (multi-line values are masked line by line).
      for (const line of fs.readFileSync(vm.keyPath, 'utf8').split('\n')) if (line.length >= 16 && !line.startsWith('-----')) maskSecret(line);
    } catch {
      // a missing key is reported by the engine
    }
  }
}

/** gitleaks: the gitleaks-path input, the config's path, PATH, or a checksum-verified download. */
async function resolveGitleaks(inputs: Inputs, config: Config): Promise<string> {
  if (inputs.gitleaksPath) return locateGitleaks(inputs.gitleaksPath);
  try {
    return locateGitleaks(config.repository.secretScanning.gitleaksPath);
  } catch (error) {
    if (config.repository.secretScanning.gitleaksPath) throw error;
    core.info(`gitleaks not on PATH: installing the checksum-pinned release ${inputs.gitleaksVersion}`);
    return installGitleaks({ version: inputs.gitleaksVersion });
  }
}

/**
 * sync: whether the deployed branch (repository.default_branch of this
 * repository) is protected. Not protected: a warning in the log and the job
 * summary; not known (no token, 403, 404, no answer): a notice. Never a failure.
 */
async function checkBranchProtection(inputs: Inputs, ctx: WorkflowContext, config: Config): Promise<ProtectionVerdict> {
  const where = { owner: ctx.owner, repo: ctx.repo, branch: config.repository.defaultBranch };
  const verdict: ProtectionVerdict = inputs.githubToken
    ? judgeProtection(where, await octokitBranchReader(inputs.githubToken, ctx)(where.owner, where.repo, where.branch))
    : { level: 'notice', message: `could not check whether branch ${where.branch} of ${where.owner}/${where.repo} is protected (no github-token)`, fix: 'pass github-token (its default, github.token, can read it)', checked: false };
  const line = annotationText(`${verdict.message}${verdict.fix ? `. To fix: ${verdict.fix}` : ''}`);
  if (verdict.level === 'warning') core.warning(line, { title: 'vm-sync: branch protection' });
  else if (verdict.level === 'notice') core.notice(line, { title: 'vm-sync: branch protection' });
  else core.info(terminalLine(line));
  return verdict;
}

/** What the pushed change is, for the scan, when this run is a push of the commit being deployed. */
function pushRequest(ctx: WorkflowContext, commit: string): ScanRequest | undefined {
  if (!ctx.push || ctx.push.after !== commit) return undefined;
  return { kind: 'push', before: ctx.push.before, after: ctx.push.after, branch: ctx.push.ref };
}

/** A results file may hold a fleet of thousands of VMs with their notes. */
const RESULTS_FILE_MAX_BYTES = 32 * 1024 * 1024;

/** What the fan-out got to, as the engine reported it: the rows for a run that stops half-way. */
interface FanOut {
  started: Set<string>;
  finished: Map<string, VmReport>;
}

/**
 * Engine events as Actions logs: each VM's lines are collected and printed as
 * one group when the VM finishes (VMs run in parallel, so live groups would
 * interleave); progress lines of long transfers are printed as they come.
 * Every line is made safe for the log (messages embed text a VM wrote).
 */
function actionEvents(reporter: GitHubReporter, fanOut: FanOut): EngineEvents {
  const buffers = new Map<string, Array<{ debug: boolean; text: string }>>();
  const lastProgress = new Map<string, number>();
  // Debug lines (each phase starting, connection attempts) go to core.debug: the log shows them
  // only when the run is re-run with debug logging (ACTIONS_STEP_DEBUG), as -v does for the CLI.
  const line = (debug: boolean) => (vm: string | null, message: string) => {
    const buffer = vm ? buffers.get(vm) : undefined;
    if (buffer) buffer.push({ debug, text: message });
    else (debug ? core.debug : core.info)(terminalLine(vm ? `[${vm}] ${message}` : message));
  };
  return {
    info: line(false),
    debug: line(true),
    progress: (vm, percent, rate) => {
      const now = Date.now();
      if (now - (lastProgress.get(vm) ?? 0) < 5000 && percent < 100) return;
      lastProgress.set(vm, now);
      core.info(terminalLine(`[${vm}] transfer ${percent}% at ${rate}`));
    },
    vmStarted: (vm) => {
      fanOut.started.add(vm);
      buffers.set(vm, []);
      reporter.vmStarted(vm);
    },
    vmFinished: (report) => {
      fanOut.finished.set(report.id, report);
      const lines = buffers.get(report.id) ?? [];
      buffers.delete(report.id);
      core.startGroup(terminalLine(`${report.id}: ${report.result}${report.error ? ` (${report.error.code})` : ''}`));
      for (const { debug, text } of lines) (debug ? core.debug : core.info)(terminalLine(text));
      core.endGroup();
      if (report.error) {
        core.error(annotationText(`${report.id}: ${report.error.code}: ${report.error.message}`), { title: annotationText(`vm-sync: ${report.id} ${report.result}`, ANNOTATION_TITLE_MAX) });
      }
      reporter.vmFinished(report);
    },
  };
}

/**
 * The report of a run that threw after its fan-out began: the rows of the VMs
 * that finished, and a failed row for every other selected VM, so each VM the
 * run was meant to reach ends with a row.
 */
function partialReport(command: RunReport['command'], commit: string, dryRun: boolean, vms: Array<{ id: string; host: string }>, fanOut: FanOut, failure: { code: FailureCode; message: string }): RunReport {
  const rows = vms.map((vm): VmReport => {
    const done = fanOut.finished.get(vm.id);
    if (done) return done;
    const started = fanOut.started.has(vm.id);
    return failedRow(vm, {
      code: failure.code,
      message: started
        ? `the run stopped before ${vm.id} finished (${failure.message}): what it serves now is unknown; check it with ${invocation('status', [['vm', vm.id]])}, then run the deploy again.`
        : `the run stopped before ${vm.id} was started (${failure.message}); nothing was changed on it. Run the deploy again.`,
    });
  });
  return { command, commit, dry_run: dryRun, scan: null, vms: rows };
}

/**
 * Writes every output, for any run: `results` is the report (or, when the run
 * failed before it had one, `{commit: null, vms: [], error}`), bounded by
 * {@link boundedResults} so a VM's text can never make it megabytes.
 */
function setOutputs(report: RunReport | null, failure: { code: string; message: string } | null, fallback: { command: RunReport['command']; dryRun: boolean; shard: RunReport['shard']; resultsPath: string }): void {
  const vms = report?.vms ?? [];
  const ids = (pick: (vm: VmReport) => boolean): string => vms.filter(pick).map((vm) => vm.id).join(',');
  // A shard that failed before it had a report still says which shard it was, so the merge reports its VMs failed with its error.
  const doc: ResultsDocument = report ?? { command: fallback.command, commit: null, dry_run: fallback.dryRun, scan: null, vms: [], ...(fallback.shard ? { shard: fallback.shard } : {}) };
  const full = failure && !report ? { ...doc, error: failure } : doc;
  // The file is for the merge: the whole report (strings still cleaned and bounded), not cut to an output's size.
  if (fallback.resultsPath) fs.writeFileSync(fallback.resultsPath, boundedResults(full, RESULTS_FILE_MAX_BYTES));
  core.setOutput('results', boundedResults(full));
  core.setOutput('commit', report && /^[0-9a-f]{40}$/.test(report.commit) ? report.commit : '');
  core.setOutput('synced', ids((vm) => vm.result === 'success' && vm.action === 'deploy'));
  core.setOutput('skipped', ids((vm) => vm.result === 'success' && vm.action !== 'deploy'));
  core.setOutput('failed', ids((vm) => vm.result !== 'success'));
  core.setOutput('findings', String(report?.scan?.findings.length ?? 0));
}

/**
 * The action: parse inputs once, run the engine, report on GitHub. Never
 * throws, and whatever fails (before, during or after the fan-out) the
 * outputs, the job summary and every status it set to pending are final.
 */
export async function run(): Promise<void> {
  let report: RunReport | null = null;
  let failure: { code: string; message: string } | null = null;
  /** What was thrown, when the run did not complete (a failure code for the rows it leaves). */
  let thrown: { code: FailureCode; message: string } | null = null;
  let runUrl = '';
  let reporter: GitHubReporter | null = null;
  let command: RunReport['command'] = 'sync';
  let dryRun = false;
  let commit = '';
  let selected: Array<{ id: string; host: string }> = [];
  let shard: RunReport['shard'] = null;
  let resultsPath = '';
  let merging = false;
  let protection: ProtectionVerdict | null = null;
  const fanOut: FanOut = { started: new Set(), finished: new Map() };
  const controller = new AbortController();
  const onSignal = (): void => controller.abort();
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
  // Every message of this run names the Action's inputs, never the CLI's flags.
  const previousEntry = setEntryPoint('action');
  try {
    const inputs = parseInputs();
    if (inputs.githubToken) maskSecret(inputs.githubToken);
    merging = inputs.command === 'report';
    if (inputs.command !== 'report') command = inputs.command;
    dryRun = inputs.dryRun;
    shard = inputs.shard;
    const ctx = readWorkflowContext();
    runUrl = ctx.runUrl;
    resultsPath = inputs.resultsPath ? path.resolve(ctx.workspace, inputs.resultsPath) : '';
    const config = loadConfig(path.resolve(ctx.workspace, inputs.config), { checkFiles: inputs.command !== 'scan' && inputs.command !== 'report' });
    maskKeys(config);
    commit = inputs.commit || ctx.sha;
    if (!inputs.commit && ctx.push && process.env.GITHUB_SHA && process.env.GITHUB_SHA !== ctx.sha) {
      // act without "deleted": false in its event file: GITHUB_SHA is the workspace's HEAD, not what was pushed.
      core.info(terminalLine(`GITHUB_SHA ${process.env.GITHUB_SHA} is not the push event's after: using the pushed commit ${ctx.sha}`));
    }
    selected = selectVms(config, inputs.vms, inputs.shard ?? undefined);
    if (inputs.skipScan) {
      // The job this one needs scanned the commit (deploy.yml: one scan for every shard); its result is in the merged report.
      config.repository.secretScanning.enabled = false;
      core.info('secret scan: skipped here (skip-scan): an earlier job of this run scanned this commit');
    }
    const scans = inputs.command === 'scan' || (inputs.command === 'sync' && config.repository.secretScanning.enabled);
    if (scans) config.repository.secretScanning.gitleaksPath = await resolveGitleaks(inputs, config);

    // Statuses and deployments need the repository's name; the deploy does not (act with a local-path origin).
    const repositoryProblem = githubRepositoryProblem(ctx);
    if (repositoryProblem && inputs.githubToken) core.warning(annotationText(repositoryProblem));
    reporter = new GitHubReporter(inputs.githubToken && !repositoryProblem ? octokitApi(inputs.githubToken, ctx) : null, {
      sha: commit,
      runUrl,
      // A rollback changes what the VMs serve, not the commit's verdict: it posts no statuses on it.
      statuses: inputs.commitStatuses && (inputs.command === 'sync' || inputs.command === 'verify' || inputs.command === 'scan' || inputs.command === 'report'),
      environment: inputs.environment,
      verb: inputs.command === 'verify' ? 'verify' : 'sync',
      dryRun: inputs.dryRun,
      warn: (message) => core.warning(annotationText(message)),
    });
    const events = actionEvents(reporter, fanOut);
    if (inputs.command === 'sync') protection = await checkBranchProtection(inputs, ctx, config);
    if (scans) reporter.scanStarted();
    const sharded = inputs.shard ?? undefined;
    if (inputs.command === 'report') {
      // The shards' artifacts; none at all when every shard failed before uploading (each is then missing).
      report = mergeShards(config, [path.resolve(ctx.workspace, inputs.results)], { expected: inputs.shards ?? undefined, allowMissing: true });
      command = report.command;
      commit = report.commit || commit;
    } else if (inputs.command === 'scan') {
      report = await execute(config, { name: 'scan', options: { repoDir: ctx.workspace, commit: inputs.commit || undefined, request: pushRequest(ctx, commit), events, signal: controller.signal } });
    } else if (inputs.command === 'sync') {
      const auth = inputs.githubToken ? gitAuthEnv(inputs.githubToken, ctx.serverUrl) : null;
      if (auth) maskSecret(auth.secret);
      report = await execute(config, {
        name: 'sync',
        options: { commit, vms: inputs.vms, shard: sharded, force: inputs.force, dryRun: inputs.dryRun, gitEnv: auth?.env, scanRequest: pushRequest(ctx, commit), lockWaitS: inputs.lockWaitS, events, signal: controller.signal },
      });
    } else if (inputs.command === 'rollback') {
      const auth = inputs.githubToken ? gitAuthEnv(inputs.githubToken, ctx.serverUrl) : null;
      if (auth) maskSecret(auth.secret);
      report = await execute(config, { name: 'rollback', options: { vms: inputs.vms, shard: sharded, to: inputs.to || undefined, lockWaitS: inputs.lockWaitS, gitEnv: auth?.env, events, signal: controller.signal } });
    } else {
      // Check the event's commit (on a schedule: the default branch's head), fetched with the job's token.
      const auth = inputs.githubToken ? gitAuthEnv(inputs.githubToken, ctx.serverUrl) : null;
      if (auth) maskSecret(auth.secret);
      report = await execute(config, { name: inputs.command, options: { commit, vms: inputs.vms, shard: sharded, fetch: true, deep: inputs.deep, gitEnv: auth?.env, events, signal: controller.signal } });
    }
    if (scans) reporter.scanFinished(report.scan, null);

    for (const finding of report.scan?.findings ?? []) {
      core.error(annotationText(`Possible secret (${finding.rule})${finding.commit ? ` added in commit ${finding.commit}` : ' in the deployed tree'}. Fingerprint: ${finding.fingerprint}`), {
        title: annotationText(`vm-sync secret scan: ${finding.rule}`, ANNOTATION_TITLE_MAX),
        file: finding.file,
        startLine: Math.max(1, finding.line),
      });
    }
    if (inputs.sarifPath) fs.writeFileSync(path.resolve(ctx.workspace, inputs.sarifPath), renderSarif(report.scan?.findings ?? []));

    const code = exitCodeFor(report);
    if (code === 3) failure = { code: 'secrets_found', message: `${count(report.scan?.findings.length ?? 0, 'possible secret')}: the deploy was blocked and ${report.vms.length === 0 ? 'no VM was contacted' : 'no VM was sent it'}` };
    else if (code !== 0) {
      const bad = report.vms.filter((vm) => vm.result !== 'success');
      const missing = report.shards?.missing ?? [];
      const shardsNote = missing.length > 0 ? `; ${noun(missing.length, 'shard')} ${missing.map((i) => `${i}/${report?.shards?.expected}`).join(', ')} wrote no results` : '';
      failure = { code: bad[0]?.error?.code ?? (missing.length > 0 ? 'shard_missing' : 'failed'), message: `${bad.length} of ${count(report.vms.length, 'VM')} did not succeed${bad.length ? `: ${bad.map((vm) => `${vm.id} (${vm.error?.code ?? vm.result})`).join(', ')}` : ''}${shardsNote}` };
    }
    if (failure) core.setFailed(annotationText(`${failure.code}: ${failure.message}`));
  } catch (error) {
    thrown = { code: error instanceof VmSyncError ? error.code : 'internal_error', message: getErrorMessage(error) };
    failure = thrown;
    core.setFailed(annotationText(`${failure.code}: ${failure.message}`));
  } finally {
    process.removeListener('SIGTERM', onSignal);
    process.removeListener('SIGINT', onSignal);
    // A run that threw after its fan-out began still reports a row per VM.
    if (thrown && !report && fanOut.started.size > 0) report = partialReport(command, commit, dryRun, selected, fanOut, thrown);
    reporter?.finalize(failure ?? { code: 'internal_error', message: 'the run ended without reporting it' });
    // A merge posts the one status that says whether the whole fleet got the commit, even when the merge itself failed.
    if (merging) reporter?.fleetFinished(report, thrown);
    try {
      setOutputs(report, failure, { command, dryRun, shard, resultsPath });
    } catch (error) {
      core.warning(annotationText(`could not write the outputs: ${getErrorMessage(error)}`));
    }
    await reporter?.flush();
    try {
      await core.summary.addRaw(renderSummary(report, { runUrl, failure }) + (protection ? protectionSummary(protection) : ''), true).write();
    } catch (error) {
      core.warning(annotationText(`could not write the job summary: ${getErrorMessage(error)}`));
    }
    setEntryPoint(previousEntry);
  }
}
