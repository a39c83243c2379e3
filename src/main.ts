import fs from 'node:fs';
import path from 'node:path';
import * as core from '@actions/core';
import { gitAuthEnv, readWorkflowContext, type WorkflowContext } from './action/context.js';
import { parseInputs, type Inputs } from './action/inputs.js';
import { octokitApi } from './action/octokit-api.js';
import { loadConfig } from './config/load.js';
import type { Config } from './config/types.js';
import { getErrorMessage, VmSyncError } from './errors.js';
import { GitHubReporter } from './report/github.js';
import { renderSummary } from './report/summary.js';
import { renderSarif } from './scan/findings.js';
import { locateGitleaks } from './scan/gitleaks.js';
import { installGitleaks } from './scan/install.js';
import type { ScanRequest } from './scan/plan.js';
import { exitCodeFor, runInspect, runScan, runSync } from './sync/fleet.js';
import type { EngineEvents, RunReport } from './sync/types.js';

/** Registers the VMs' private keys with the runner's log masking, line by line (masks are per line). */
function maskKeys(config: Config): void {
  for (const vm of config.vms) {
    try {
      // Mask each line of every private key body (multi-line values are masked line by line).
      for (const line of fs.readFileSync(vm.keyPath, 'utf8').split('\n')) if (line.length >= 16 && !line.startsWith('-----')) core.setSecret(line);
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

/** What the pushed change is, for the scan, when this run is a push of the commit being deployed. */
function pushRequest(ctx: WorkflowContext, commit: string): ScanRequest | undefined {
  if (!ctx.push || ctx.push.after !== commit) return undefined;
  return { kind: 'push', before: ctx.push.before, after: ctx.push.after, branch: ctx.push.ref };
}

/**
 * Engine events as Actions logs: each VM's lines are collected and printed as
 * one group when the VM finishes (VMs run in parallel, so live groups would
 * interleave); progress lines of long transfers are printed as they come.
 */
function actionEvents(reporter: GitHubReporter): EngineEvents {
  const buffers = new Map<string, string[]>();
  const lastProgress = new Map<string, number>();
  return {
    info: (vm, message) => {
      const buffer = vm ? buffers.get(vm) : undefined;
      if (buffer) buffer.push(message);
      else core.info(vm ? `[${vm}] ${message}` : message);
    },
    progress: (vm, percent, rate) => {
      const now = Date.now();
      if (now - (lastProgress.get(vm) ?? 0) < 5000 && percent < 100) return;
      lastProgress.set(vm, now);
      core.info(`[${vm}] transfer ${percent}% at ${rate}`);
    },
    vmStarted: (vm) => {
      buffers.set(vm, []);
      reporter.vmStarted(vm);
    },
    vmFinished: (report) => {
      const lines = buffers.get(report.id) ?? [];
      buffers.delete(report.id);
      core.startGroup(`${report.id}: ${report.result}${report.error ? ` (${report.error.code})` : ''}`);
      for (const line of lines) core.info(line);
      core.endGroup();
      if (report.error) core.error(`${report.id}: ${report.error.code}: ${report.error.message}`, { title: `vm-sync: ${report.id} ${report.result}` });
      reporter.vmFinished(report);
    },
  };
}

function setOutputs(report: RunReport): void {
  const ids = (pick: (vm: RunReport['vms'][number]) => boolean): string => report.vms.filter(pick).map((vm) => vm.id).join(',');
  core.setOutput('results', JSON.stringify(report));
  core.setOutput('commit', report.commit);
  core.setOutput('synced', ids((vm) => vm.result === 'success' && vm.action === 'deploy'));
  core.setOutput('skipped', ids((vm) => vm.result === 'success' && vm.action !== 'deploy'));
  core.setOutput('failed', ids((vm) => vm.result !== 'success'));
  core.setOutput('findings', String(report.scan?.findings.length ?? 0));
}

/** The action: parse inputs once, run the engine, report on GitHub. Never throws. */
export async function run(): Promise<void> {
  let report: RunReport | null = null;
  let failure: { code: string; message: string } | null = null;
  let runUrl = '';
  let reporter: GitHubReporter | null = null;
  const controller = new AbortController();
  const onSignal = (): void => controller.abort();
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
  try {
    const inputs = parseInputs();
    if (inputs.githubToken) core.setSecret(inputs.githubToken);
    const ctx = readWorkflowContext();
    runUrl = ctx.runUrl;
    const config = loadConfig(path.resolve(ctx.workspace, inputs.config), { checkFiles: inputs.command !== 'scan' });
    maskKeys(config);
    const commit = inputs.commit || ctx.sha;
    const scans = inputs.command === 'scan' || (inputs.command === 'sync' && config.repository.secretScanning.enabled);
    if (scans) config.repository.secretScanning.gitleaksPath = await resolveGitleaks(inputs, config);

    reporter = new GitHubReporter(inputs.githubToken ? octokitApi(inputs.githubToken, ctx) : null, {
      sha: commit,
      runUrl,
      statuses: inputs.commitStatuses && (inputs.command === 'sync' || inputs.command === 'verify' || inputs.command === 'scan'),
      environment: inputs.environment,
      verb: inputs.command === 'verify' ? 'verify' : 'sync',
      dryRun: inputs.dryRun,
      warn: (message) => core.warning(message),
    });
    const events = actionEvents(reporter);
    if (scans) reporter.scanStarted();
    try {
      if (inputs.command === 'scan') {
        report = await runScan(config, { repoDir: ctx.workspace, commit: inputs.commit || undefined, request: pushRequest(ctx, commit), events, signal: controller.signal });
      } else if (inputs.command === 'sync') {
        const auth = inputs.githubToken ? gitAuthEnv(inputs.githubToken, ctx.serverUrl) : null;
        if (auth) core.setSecret(auth.secret);
        report = await runSync(config, {
          commit,
          vms: inputs.vms,
          force: inputs.force,
          dryRun: inputs.dryRun,
          gitEnv: auth?.env,
          scanRequest: pushRequest(ctx, commit),
          events,
          signal: controller.signal,
        });
      } else {
        // Check the event's commit (on a schedule: the default branch's head), fetched with the job's token.
        const auth = inputs.githubToken ? gitAuthEnv(inputs.githubToken, ctx.serverUrl) : null;
        if (auth) core.setSecret(auth.secret);
        report = await runInspect(config, inputs.command, { commit, vms: inputs.vms, fetch: true, gitEnv: auth?.env, events, signal: controller.signal });
      }
    } finally {
      if (scans) reporter.scanFinished(report?.scan ?? null, report ? null : { code: 'scan_failed', message: 'the run failed before the scan finished' });
    }

    for (const finding of report.scan?.findings ?? []) {
      core.error(`Possible secret (${finding.rule})${finding.commit ? ` added in commit ${finding.commit}` : ' in the deployed tree'}. Fingerprint: ${finding.fingerprint}`, {
        title: `vm-sync secret scan: ${finding.rule}`,
        file: finding.file,
        startLine: Math.max(1, finding.line),
      });
    }
    if (inputs.sarifPath) fs.writeFileSync(path.resolve(ctx.workspace, inputs.sarifPath), renderSarif(report.scan?.findings ?? []));
    setOutputs(report);

    const code = exitCodeFor(report);
    if (code === 3) failure = { code: 'secrets_found', message: `${report.scan?.findings.length} possible secret(s): the deploy was blocked and no VM was contacted` };
    else if (code !== 0) {
      const bad = report.vms.filter((vm) => vm.result !== 'success');
      failure = { code: bad[0]?.error?.code ?? 'failed', message: `${bad.length} of ${report.vms.length} VM(s) did not succeed: ${bad.map((vm) => `${vm.id} (${vm.error?.code ?? vm.result})`).join(', ')}` };
    }
    if (failure) core.setFailed(`${failure.code}: ${failure.message}`);
  } catch (error) {
    failure = { code: error instanceof VmSyncError ? error.code : 'internal', message: getErrorMessage(error) };
    core.setFailed(`${failure.code}: ${failure.message}`);
  } finally {
    process.removeListener('SIGTERM', onSignal);
    process.removeListener('SIGINT', onSignal);
    await reporter?.flush();
    try {
      await core.summary.addRaw(renderSummary(report, { runUrl, failure }), true).write();
    } catch (error) {
      core.warning(`could not write the job summary: ${getErrorMessage(error)}`);
    }
  }
}
