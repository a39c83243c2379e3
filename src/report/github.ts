import { count } from '../words.js';
import { getErrorMessage } from '../errors.js';
import type { ScanReport } from '../scan/gate.js';
import type { RunReport, VmReport } from '../sync/types.js';
import { annotationText, githubDescription } from './escape.js';

/** The few GitHub REST calls vm-sync makes; an interface so tests can record them. */
export interface GitHubApi {
  createStatus(sha: string, body: { state: StatusState; context: string; description: string; target_url: string }): Promise<void>;
  createDeployment(body: { ref: string; environment: string; description: string; payload: Record<string, string> }): Promise<number>;
  createDeploymentStatus(id: number, body: { state: DeploymentState; description: string; log_url: string }): Promise<void>;
}

export type StatusState = 'pending' | 'success' | 'failure' | 'error';
export type DeploymentState = 'in_progress' | 'success' | 'failure' | 'error';

export interface ReporterOptions {
  sha: string;
  runUrl: string;
  /** Post commit statuses (input commit-statuses). */
  statuses: boolean;
  /** Create a Deployment per VM in `<environment>/<vm>` (input environment); empty: none. */
  environment: string;
  /** What the run is doing, for descriptions: `sync` or `verify`. */
  verb: 'sync' | 'verify';
  dryRun: boolean;
  warn: (message: string) => void;
}

// Failures of the VM's own answer (wrong commit, refused, hook failed) are
// "failure"; failures to get an answer at all (network, keys) are "error".
const FAILURE_CODES = new Set(['refused_ahead', 'verify_mismatch', 'post_sync_failed', 'locked', 'health_failed', 'rollout_halted']);

/** The commit-status state and one-line description for a VM's outcome. */
export function vmStatus(report: VmReport, verb: 'sync' | 'verify', dryRun: boolean): { state: Exclude<StatusState, 'pending'>; description: string } {
  if (report.result === 'success') {
    const rev = report.rev_after?.slice(0, 7) ?? '?';
    let description: string;
    if (verb === 'verify') description = `verified: on ${rev}`;
    else if (dryRun) description = `dry run: ${count(report.files_changed, 'file')} would change`;
    else if (report.action === 'none') description = `already on ${rev}`;
    else description = `deployed ${rev}: ${count(report.files_changed, 'file')}, ${count(report.bytes_sent, 'byte')} in ${(report.duration_ms / 1000).toFixed(1)}s`;
    return { state: 'success', description };
  }
  const code = report.error?.code ?? report.result;
  return { state: FAILURE_CODES.has(code) ? 'failure' : 'error', description: githubDescription(`${code}: ${report.error?.message ?? report.result}`) };
}

/**
 * The one aggregate status `vm-sync` of a merged, sharded run: `success` only
 * when every shard reported and every VM of every shard succeeded; a missing
 * shard, a failed VM or a merge that could not be done is never success.
 */
export function fleetStatus(report: RunReport | null, failure: { code: string; message: string } | null): { state: Exclude<StatusState, 'pending'>; description: string } {
  if (!report || failure) return { state: 'error', description: githubDescription(`${failure?.code ?? 'internal_error'}: ${failure?.message ?? 'the report could not be made'}`) };
  const ok = report.vms.filter((vm) => vm.result === 'success').length;
  const shards = report.shards;
  const missing = shards?.missing.length ?? 0;
  const broken = shards?.failed.length ?? 0;
  const of = shards ? ` in ${count(shards.expected, 'shard')}` : '';
  if (report.scan?.blocked) return { state: 'failure', description: `secrets_found: ${count(report.scan.findings.length, 'possible secret')}: deploy blocked` };
  const okOf = `${ok} of ${count(report.vms.length, 'VM')} ok${of}`;
  if (ok === report.vms.length && missing === 0 && broken === 0) {
    // A dry run changed nothing: its success must not read as a deploy.
    return { state: 'success', description: report.dry_run ? `dry run: ${okOf}, nothing changed` : okOf };
  }
  const parts = [okOf];
  if (missing) parts.push(`${count(missing, 'shard')} missing`);
  if (broken) parts.push(`${count(broken, 'shard')} failed`);
  return { state: 'failure', description: githubDescription(parts.join(', ')) };
}

/**
 * Posts commit statuses (`vm-sync/secret-scan`, `vm-sync/<vm>`) and, with an
 * environment, a Deployment per VM with its statuses. Every call is
 * best-effort: a failure is a warning and never fails or hides the sync.
 * Calls for one VM are sent in order (pending before the outcome).
 */
export class GitHubReporter {
  private readonly chains = new Map<string, Promise<unknown>>();
  private readonly deployments = new Map<string, number>();
  /** VMs whose pending status went out and whose outcome has not: {@link finalize} closes them. */
  private readonly open = new Set<string>();
  private scanOpen = false;

  constructor(
    private readonly api: GitHubApi | null,
    private readonly options: ReporterOptions,
  ) {}

  private enqueue(key: string, what: string, call: (api: GitHubApi) => Promise<unknown>): void {
    const api = this.api;
    if (!api) return;
    const previous = this.chains.get(key) ?? Promise.resolve();
    this.chains.set(
      key,
      previous.then(() => call(api)).catch((error: unknown) => this.options.warn(annotationText(`could not ${what}: ${getErrorMessage(error)} (the deploy itself is unaffected)`))),
    );
  }

  private status(key: string, context: string, state: StatusState, description: string): void {
    if (!this.options.statuses) return;
    this.enqueue(key, `post commit status ${context}`, (api) =>
      api.createStatus(this.options.sha, { state, context, description: githubDescription(description), target_url: this.options.runUrl }),
    );
  }

  scanStarted(): void {
    this.scanOpen = true;
    this.status('scan', 'vm-sync/secret-scan', 'pending', 'scanning the commits and the tree being deployed');
  }

  scanFinished(scan: ScanReport | null, failure: { code: string; message: string } | null): void {
    // With neither a result nor a failure there is nothing to say yet: finalize() closes it.
    if (failure || scan) this.scanOpen = false;
    if (failure) this.status('scan', 'vm-sync/secret-scan', 'error', `${failure.code}: ${failure.message}`);
    else if (scan && scan.findings.length === 0) this.status('scan', 'vm-sync/secret-scan', 'success', `clean: ${count(scan.commits_scanned, 'commit')} and the tree`);
    else if (scan) this.status('scan', 'vm-sync/secret-scan', scan.blocked ? 'failure' : 'success', `${count(scan.findings.length, 'possible secret')}${scan.blocked ? ': deploy blocked' : ' (not blocking)'}`);
  }

  vmStarted(vmId: string): void {
    this.open.add(vmId);
    this.status(vmId, `vm-sync/${vmId}`, 'pending', this.options.verb === 'verify' ? 'checking .sync_rev' : 'deploying');
    if (!this.options.environment || this.options.verb !== 'sync' || this.options.dryRun) return;
    this.enqueue(vmId, `create a deployment for ${vmId}`, async (api) => {
      const id = await api.createDeployment({
        ref: this.options.sha,
        environment: `${this.options.environment}/${vmId}`,
        description: `vm-sync to ${vmId}`,
        payload: { vm: vmId },
      });
      this.deployments.set(vmId, id);
      await api.createDeploymentStatus(id, { state: 'in_progress', description: 'deploying', log_url: this.options.runUrl });
    });
  }

  vmFinished(report: VmReport): void {
    this.open.delete(report.id);
    const { state, description } = vmStatus(report, this.options.verb, this.options.dryRun);
    this.outcome(report.id, state, description);
  }

  /** The final commit status and deployment status of one VM. */
  private outcome(vmId: string, state: Exclude<StatusState, 'pending'>, description: string): void {
    this.status(vmId, `vm-sync/${vmId}`, state, description);
    this.enqueue(vmId, `update the deployment of ${vmId}`, async (api) => {
      const id = this.deployments.get(vmId);
      if (id !== undefined) await api.createDeploymentStatus(id, { state, description: githubDescription(description), log_url: this.options.runUrl });
    });
  }

  /**
   * Closes everything still pending when the run ends: the scan status and
   * every VM that started but never finished get a final `error` status (and
   * deployment status) carrying the failure, so nothing on GitHub is left
   * `pending` or `in_progress` by a run that stopped. A no-op after a normal run.
   */
  finalize(failure: { code: string; message: string }): void {
    if (this.scanOpen) {
      this.scanOpen = false;
      this.status('scan', 'vm-sync/secret-scan', 'error', `${failure.code}: the run stopped before the scan was reported: ${failure.message}`);
    }
    for (const vmId of this.open) this.outcome(vmId, 'error', `${failure.code}: the run stopped before this VM finished: ${failure.message}`);
    this.open.clear();
  }

  /** The aggregate status `vm-sync` of a merged run ({@link fleetStatus}). */
  fleetFinished(report: RunReport | null, failure: { code: string; message: string } | null): void {
    const { state, description } = fleetStatus(report, failure);
    this.status('fleet', 'vm-sync', state, description);
  }

  /** Waits for every queued call (each already turns its failure into a warning). */
  async flush(): Promise<void> {
    await Promise.all(this.chains.values());
  }
}
