import { run } from '../local/run.js';
import { classifyRsyncFailure, remedyFor, stderrSummary } from './classify.js';
import { VmSyncError } from '../errors.js';

/** What to transfer where; everything rsync is told comes from here. */
export interface RsyncPlan {
  /** Local export directory (its contents are sent). */
  source: string;
  /** Absolute destination directory on the VM. */
  dest: string;
  /** `-e` value: the remote shell (the vm-sync bridge). */
  rsh: string;
  /** A complete earlier release on the VM whose unchanged files are hard-linked instead of sent. */
  linkDest: string | null;
  excludes: string[];
  dryRun: boolean;
  /** rsync's I/O timeout in seconds: no data for this long aborts the transfer. */
  ioTimeoutS: number;
}

/** What rsync reports when it finishes. */
export interface RsyncStats {
  filesChanged: number;
  bytesSent: number;
  /** With a dry run: the itemised paths that would change (capped). */
  changes: string[];
}

/** A progress sample parsed from `--info=progress2`. */
export interface RsyncProgress {
  percent: number;
  bytes: number;
  rate: string;
}

/**
 * The rsync argument array for a plan. Deliberate choices:
 * - `-rlp` without `-t`: exports carry the commit time as every file's mtime,
 *   which would defeat `--link-dest`; with `--checksum` and no `-t`, files
 *   whose content did not change are hard-linked from the current release.
 * - `-l` copies symlinks as symlinks and nothing here follows one
 *   (no -L/--copy-links/--copy-unsafe-links), so a link pointing outside the
 *   tree stays a link.
 * - `.sync_rev` is vm-sync's own file: never taken from the repository.
 */
export function rsyncArgs(plan: RsyncPlan): string[] {
  const args = [
    '-rlp',
    '--checksum',
    '--delete',
    '--numeric-ids',
    `--timeout=${plan.ioTimeoutS}`,
    '-e',
    plan.rsh,
  ];
  if (plan.linkDest) args.push(`--link-dest=${plan.linkDest}`);
  for (const pattern of [...plan.excludes, '/.sync_rev']) args.push(`--exclude=${pattern}`);
  if (plan.dryRun) args.push('--dry-run', '--itemize-changes', '--out-format=%i %n%L');
  else args.push('--stats', '--info=progress2', '--no-human-readable');
  // `vm:` is a placeholder host name; the bridge ignores it and uses the VM's connection.
  args.push(`${plan.source.replace(/\/?$/, '/')}`, `vm:${plan.dest.replace(/\/?$/, '/')}`);
  return args;
}

/** Parses `--stats` output (and the itemised lines of a dry run). */
export function parseRsyncOutput(stdout: string, dryRun: boolean): RsyncStats {
  const number = (label: string): number => {
    const match = new RegExp(`^${label}:\\s*([\\d,.]+)`, 'm').exec(stdout);
    return match ? Number(match[1].replace(/[,.]/g, '')) : 0;
  };
  if (dryRun) {
    const changes = stdout
      .split('\n')
      .filter((line) => /^[<>ch.*][fdLDS*]/.test(line) || line.startsWith('*deleting'))
      .filter((line) => !/^\.[fdLDS] /.test(line) && !/^\.d\.\.\.\.\.\.\.\.\. /.test(line));
    return { filesChanged: changes.length, bytesSent: 0, changes: changes.slice(0, 200) };
  }
  return { filesChanged: number('Number of regular files transferred'), bytesSent: number('Total bytes sent'), changes: [] };
}

/** Parses the last progress2 sample in a chunk of rsync output, if any. */
export function parseProgress(chunk: string): RsyncProgress | null {
  const samples = chunk.split(/[\r\n]/).map((s) => /^\s*([\d,]+)\s+(\d+)%\s+(\S+\/s)/.exec(s)).filter(Boolean);
  const last = samples.at(-1);
  return last ? { bytes: Number(last[1].replace(/,/g, '')), percent: Number(last[2]), rate: last[3] } : null;
}

/**
 * Runs rsync for a plan. Resolves with stats on exit 0; otherwise throws a
 * {@link VmSyncError} classified from the exit code and stderr. Exit 23/24
 * (partial transfer) are failures too: a partial release is never published.
 */
export async function runRsync(
  plan: RsyncPlan,
  env: Record<string, string>,
  options: { signal?: AbortSignal; onProgress?: (p: RsyncProgress) => void } = {},
): Promise<RsyncStats> {
  const result = await run('rsync', rsyncArgs(plan), {
    env: { ...process.env, ...env, LC_ALL: 'C' },
    signal: options.signal,
    onStdout: (chunk) => {
      const progress = options.onProgress && parseProgress(chunk);
      if (progress) options.onProgress?.(progress);
    },
    maxOutput: 256 * 1024,
  });
  if (result.code === 0) return parseRsyncOutput(result.stdout, plan.dryRun);
  if (options.signal?.aborted) throw new VmSyncError('timeout', 'rsync was stopped: the per-VM timeout (sync.timeout_s) ran out');
  const code = classifyRsyncFailure(result.code, result.stderr);
  const detail = stderrSummary(result.stderr) || 'no error output';
  const remedy = remedyFor(code);
  throw new VmSyncError(code, `rsync to ${plan.dest} failed (exit ${result.code ?? result.signal}): ${detail}${remedy}`);
}
