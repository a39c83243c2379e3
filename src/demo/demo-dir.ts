import fs from 'node:fs';
import path from 'node:path';
import { VmSyncError } from '../errors.js';
import { terminalLine } from '../report/escape.js';

/**
 * The demo's directory (`--dir`) and the marker that proves the demo made it.
 *
 * `demo up` starts afresh in its directory, which means deleting what an
 * earlier run left there. It must never delete anything else: so it only
 * ever works in a directory it created (or found empty) and marked, and even
 * there it deletes only the entries it writes itself ({@link DEMO_ENTRIES}).
 * The marker names the directory it was written in (device and inode): a
 * marker copied into another directory does not make that one the demo's.
 */

/** The marker file's name inside a demo directory. */
export const DEMO_MARKER = '.vm-sync-demo-dir';

/** The marker's first line. */
const MARKER_HEAD = 'vm-sync demo directory (format 1)';

/** What the demo writes in its directory; a fresh `demo up` replaces these and nothing else. */
export const DEMO_ENTRIES = ['keys', 'vms', 'origin.git', 'work', 'runner', 'vm-sync.yml', 'fleet.json'] as const;

/** What is at a `--dir` path, as far as the demo is concerned. */
export type DemoDirState =
  | { kind: 'absent' }
  /** An existing empty directory: the demo may adopt it. */
  | { kind: 'empty' }
  /** A directory the demo marked; `others` are entries in it the demo did not write. */
  | { kind: 'demo'; others: string[] };

function refused(dir: string, why: string, fix: string): VmSyncError {
  return new VmSyncError('demo_dir_refused', `${terminalLine(dir, 300)} ${why}: the demo never deletes or reuses a directory it did not create. ${fix}`);
}

const CHOOSE = 'Give --dir a new path (or an empty directory), or move the files away yourself.';

function markerText(id: string): string {
  return [
    MARKER_HEAD,
    `directory: ${id}`,
    'Written by `vm-sync demo` in the directory it created for a loopback test fleet (private keys included).',
    `Another \`vm-sync demo up\` here stops that fleet and replaces only: ${DEMO_ENTRIES.join(', ')}.`,
    '',
  ].join('\n');
}

/** The directory's identity as the marker records it: device and inode (they follow a `mv`, not a `cp`). */
function dirId(stat: fs.Stats): string {
  return `${stat.dev}:${stat.ino}`;
}

/** Why the marker in `dir` does not prove the demo made `dir`, or null when it does. */
function markerProblem(dir: string, stat: fs.Stats): string | null {
  const marker = path.join(dir, DEMO_MARKER);
  let mstat: fs.Stats;
  try {
    mstat = fs.lstatSync(marker);
  } catch {
    return `is not empty and has no ${DEMO_MARKER} marker`;
  }
  if (!mstat.isFile() || mstat.size > 4096) return `has a ${DEMO_MARKER} that is not the demo's marker file`;
  const lines = fs.readFileSync(marker, 'utf8').split('\n');
  if (lines[0] !== MARKER_HEAD) return `has a ${DEMO_MARKER} that is not the demo's marker`;
  if (lines[1] !== `directory: ${dirId(stat)}`) return `has a ${DEMO_MARKER} marker written for another directory (copied here?)`;
  return null;
}

/**
 * Looks at `dir` and says whether the demo may use it; throws
 * `demo_dir_refused` (exit 2) for a symbolic link, a file, or a non-empty
 * directory without a valid marker. Changes nothing.
 */
export function inspectDemoDir(dir: string): DemoDirState {
  let stat: fs.Stats;
  try {
    stat = fs.lstatSync(dir);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return { kind: 'absent' };
    throw refused(dir, `cannot be read (${(error as NodeJS.ErrnoException).code ?? 'error'})`, CHOOSE);
  }
  // A link could point anywhere: the demo works only in the directory itself.
  if (stat.isSymbolicLink()) throw refused(dir, 'is a symbolic link', 'Give --dir the real directory, or a new path.');
  if (!stat.isDirectory()) throw refused(dir, 'is not a directory', CHOOSE);
  const entries = fs.readdirSync(dir);
  if (entries.length === 0) return { kind: 'empty' };
  const problem = markerProblem(dir, stat);
  if (problem) {
    // A fleet made before the demo marked its directories: say how to retire it (stop works without the marker).
    const legacy = !entries.includes(DEMO_MARKER) && entries.includes('fleet.json') && entries.every((name) => (DEMO_ENTRIES as readonly string[]).includes(name));
    throw refused(dir, problem, legacy ? `If it is a demo directory from an older vm-sync: vm-sync demo stop --dir ${terminalLine(dir, 300)}, then delete it yourself. Or ${CHOOSE.charAt(0).toLowerCase()}${CHOOSE.slice(1)}` : CHOOSE);
  }
  const ours = new Set<string>([DEMO_MARKER, ...DEMO_ENTRIES]);
  return { kind: 'demo', others: entries.filter((name) => !ours.has(name)).sort() };
}

/** True when `dir` is a directory the demo created and marked (no exception, for read-only commands). */
export function isDemoDir(dir: string): boolean {
  try {
    return inspectDemoDir(dir).kind === 'demo';
  } catch {
    return false;
  }
}

/**
 * Makes `dir` an empty demo directory: creates and marks it, marks an empty
 * one, or in a marked one deletes the demo's own entries. Entries the demo did
 * not write are left where they are and returned. The caller stops a running
 * fleet first (its sshd still use the files).
 */
export function claimDemoDir(dir: string): { dir: string; kept: string[] } {
  const state = inspectDemoDir(dir);
  const absolute = path.resolve(dir);
  if (state.kind === 'demo') {
    for (const name of DEMO_ENTRIES) fs.rmSync(path.join(absolute, name), { recursive: true, force: true });
    return { dir: absolute, kept: state.others };
  }
  if (state.kind === 'absent') {
    fs.mkdirSync(path.dirname(absolute), { recursive: true });
    // Not recursive: if the directory appeared since it was inspected, fail instead of adopting it.
    fs.mkdirSync(absolute);
  }
  // 'wx': if anything appeared in the meantime, fail rather than overwrite.
  fs.writeFileSync(path.join(absolute, DEMO_MARKER), markerText(dirId(fs.statSync(absolute))), { flag: 'wx' });
  return { dir: absolute, kept: [] };
}
