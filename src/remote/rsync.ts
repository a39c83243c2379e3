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

/** One path a dry run would touch, from rsync's itemised output. */
export interface ItemizedChange {
  /** `add`: not on the VM yet; `change`: its content, mode or link target differs; `delete`: only the VM has it. */
  kind: 'add' | 'change' | 'delete';
  /** As rsync prints it (relative, unprintable bytes as `\#ooo`); a directory's ends with `/`. */
  path: string;
  /** A directory: listed, but never counted as a file. */
  dir: boolean;
}

/** How many files (anything but a directory: regular files, symlinks, devices) a dry run would add, change, delete. */
export interface ChangeCounts {
  add: number;
  change: number;
  delete: number;
}

/** What rsync reports when it finishes. */
export interface RsyncStats {
  /** Regular files transferred; with a dry run, files (not directories) that would be added, changed or deleted. */
  filesChanged: number;
  bytesSent: number;
  /** With a dry run: the paths that would change, files first in rsync's order (capped at {@link ITEMIZED_MAX}). */
  changes: ItemizedChange[];
  /** With a dry run: every file that would change, by kind (not capped). */
  counts?: ChangeCounts;
}

/** How many itemised paths a dry run keeps (the counts cover all of them). */
export const ITEMIZED_MAX = 200;

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
  // %n only: a symlink's target (%L) would be ambiguous with a name that holds " -> ".
  if (plan.dryRun) args.push('--dry-run', '--itemize-changes', '--out-format=%i %n');
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
    const changes = parseItemized(stdout);
    const counts: ChangeCounts = { add: 0, change: 0, delete: 0 };
    for (const c of changes) if (!c.dir) counts[c.kind]++;
    // Files before directories: the list a user reads names what changes, not the folders around it.
    const listed = [...changes.filter((c) => !c.dir), ...changes.filter((c) => c.dir)].slice(0, ITEMIZED_MAX);
    return { filesChanged: counts.add + counts.change + counts.delete, bytesSent: 0, changes: listed, counts };
  }
  return { filesChanged: number('Number of regular files transferred'), bytesSent: number('Total bytes sent'), changes: [] };
}

/**
 * The paths of rsync's `--itemize-changes --out-format='%i %n'` output, each
 * as add, change or delete. `YXcstpoguax`: Y `>`/`c`/`h` with X's attributes
 * all `+` is a new entry, any other is a change; `.` is an attribute change
 * (a file's mode: a change; a directory's: nothing a user deploys);
 * `*deleting` is a delete. Other lines ("created directory ...") are not paths.
 */
export function parseItemized(stdout: string): ItemizedChange[] {
  const changes: ItemizedChange[] = [];
  for (const line of stdout.split('\n')) {
    const deleting = /^\*deleting +(.+)$/.exec(line);
    if (deleting) {
      changes.push({ kind: 'delete', path: deleting[1], dir: deleting[1].endsWith('/') });
      continue;
    }
    const item = /^([<>ch.])([fdLDS])([^ ]{9}) (.+)$/.exec(line);
    if (!item) continue;
    const [, update, type, attrs, path] = item;
    const dir = type === 'd';
    if (path === './') continue; // the root itself
    if (/^\++$/.test(attrs)) changes.push({ kind: 'add', path, dir });
    else if (dir) continue; // a directory's times or mode: not a change of the deployed files
    else if (update !== '.' || /[^. ]/.test(attrs)) changes.push({ kind: 'change', path, dir });
  }
  return changes;
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
