import fs from 'node:fs';
import { getErrorMessage, VmSyncError } from '../errors.js';
import { run } from '../local/run.js';
import { makeScratchDir, removeScratchDirLater } from '../local/scratch.js';
import { vmText } from '../remote/untrusted.js';

/**
 * The committed paths of a deployed tree that `rsync_excludes` leaves out:
 * how many, and the first {@link EXCLUDED_LISTED} of them (sorted, made
 * printable: names come from the commit). `patterns` are the exclude rules
 * in force, as configured.
 */
export interface ExcludedReport {
  count: number;
  paths: string[];
  patterns: string[];
}

/** How many excluded paths a report names (the count covers them all). */
export const EXCLUDED_LISTED = 20;

/** Every file and symlink of `root` (not directories), relative, as latin1 strings (one char per byte). */
function committedEntries(root: string): Set<string> {
  const found = new Set<string>();
  const slash = Buffer.from('/');
  // Buffer paths throughout: a name that is not UTF-8 is still read byte for byte.
  const walk = (dir: Buffer, rel: string): void => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true, encoding: 'buffer' })) {
      const relPath = rel ? `${rel}/${entry.name.toString('latin1')}` : entry.name.toString('latin1');
      if (entry.isDirectory()) walk(Buffer.concat([dir, slash, entry.name]), relPath);
      else found.add(relPath);
    }
  };
  walk(Buffer.from(root), '');
  return found;
}

/** Undoes rsync's output escaping: with LC_ALL=C every byte that is not printable ASCII (and a `\` before `#ooo`) is `\#ooo`. */
export function unescapeRsyncName(name: string): string {
  return name.replace(/\\#([0-7]{3})/g, (_all, octal: string) => String.fromCharCode(parseInt(octal, 8)));
}

/**
 * Asks rsync itself which paths of `exportDir` it would send with these
 * exclude rules (a dry run into an empty directory, with the transfer's
 * recursion and symlink options), and returns the files and symlinks it
 * would not: rsync's matcher, not a copy of it, so every pattern form it
 * takes (anchored, `**`, `dir/`, `- `/`+ ` rules, `!`) means the same here
 * as in the deploy. Only for display: the deploy does not depend on it.
 */
export async function excludedPaths(exportDir: string, patterns: readonly string[], options: { signal?: AbortSignal } = {}): Promise<ExcludedReport> {
  const report = (missing: string[]): ExcludedReport => ({
    count: missing.length,
    paths: missing.slice(0, EXCLUDED_LISTED).map((p) => vmText(Buffer.from(p, 'latin1').toString('utf8'))),
    patterns: [...patterns],
  });
  if (patterns.length === 0) return report([]);
  const committed = committedEntries(exportDir);
  // A scratch directory like the run's others: a run killed meanwhile leaves it to the next run's sweep.
  const empty = makeScratchDir('excluded');
  try {
    const sent = new Set<string>();
    let partial = '';
    const onLine = (line: string): void => {
      if (line === '' || line.endsWith('/')) return; // directories: the files under them count
      sent.add(unescapeRsyncName(line));
    };
    const result = await run('rsync', ['-rl', '--dry-run', '--out-format=%n', ...patterns.map((p) => `--exclude=${p}`), `${exportDir.replace(/\/?$/, '/')}`, `${empty}/`], {
      env: { ...process.env, LC_ALL: 'C' },
      signal: options.signal,
      // Read as it comes: a large tree's listing is never held whole.
      onStdout: (chunk) => {
        const lines = (partial + chunk).split('\n');
        partial = lines.pop() ?? '';
        for (const line of lines) onLine(line);
      },
      maxOutput: 64 * 1024,
    });
    onLine(partial);
    if (result.code !== 0) {
      throw new VmSyncError('rsync_failed', `rsync could not list what rsync_excludes leaves out (exit ${result.code ?? result.signal}): ${vmText(result.stderr.trim().split('\n').slice(-2).join(' | '), 500)}`);
    }
    const missing = [...committed].filter((p) => !sent.has(p)).sort();
    return report(missing);
  } catch (error) {
    if (error instanceof VmSyncError) throw error;
    throw new VmSyncError('rsync_failed', `could not list what rsync_excludes leaves out: ${getErrorMessage(error)}`);
  } finally {
    // Not on the event loop: this runs beside the VMs' sessions.
    removeScratchDirLater(empty);
  }
}

/** The sentence a report shows for excluded paths (null when there are none). */
export function excludedSentence(excluded: ExcludedReport | null | undefined): string | null {
  if (!excluded || excluded.count === 0) return null;
  const more = excluded.count - excluded.paths.length;
  return `rsync_excludes left out ${excluded.count} committed path${excluded.count === 1 ? '' : 's'}, not deployed: ${excluded.paths.join(', ')}${more > 0 ? ` and ${more} more` : ''}`;
}
