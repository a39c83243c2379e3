/*
 * A VM's revisions.log (written by agent.sh `revlog`): one line per flip,
 * revert or rollback,
 *
 *   vm-sync-rev-1 TIME ACTION FROM TO RUN RELEASE
 *
 * The file is on the VM, so anyone with the SSH user's rights can write
 * into it: every field is required and checked, and a line that is not
 * exactly a record is skipped and counted, never shown.
 */

/** One change of what a VM serves. */
export interface Revision {
  /** UTC, ISO 8601 to the second. */
  time: string;
  action: 'deploy' | 'revert' | 'rollback';
  /** The commit served before; null when unknown (the first deploy, a tree vm-sync did not make). */
  from: string | null;
  /** The commit served after; null when its release held none. */
  to: string | null;
  /** The run that made the change (the runner-host journal's run id); null when none was recorded. */
  run: string | null;
  /** The release made live (atomic layout); null in place. */
  release: string | null;
}

const MAGIC = 'vm-sync-rev-1';
const TIME = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/;
const ACTIONS = ['deploy', 'revert', 'rollback'] as const;
const COMMIT = /^[0-9a-f]{40}$/;
const RUN = /^[A-Za-z0-9._:-]{1,64}$/;
const RELEASE = /^[0-9]{8}T[0-9]{6,9}Z-[0-9a-f]{12}(-[0-9]+)?$/;

/** `-` or a value matching `pattern`; undefined when it is neither. */
function optional(value: string, pattern: RegExp): string | null | undefined {
  if (value === '-') return null;
  return pattern.test(value) ? value : undefined;
}

/** One line as a revision, or null when it is not exactly one. */
export function parseRevision(line: string): Revision | null {
  const fields = line.split(' ');
  if (fields.length !== 7 || fields[0] !== MAGIC) return null;
  const [, time, action, fromField, toField, runField, releaseField] = fields;
  if (!TIME.test(time) || Number.isNaN(Date.parse(time))) return null;
  if (!(ACTIONS as readonly string[]).includes(action)) return null;
  const from = optional(fromField, COMMIT);
  const to = optional(toField, COMMIT);
  const run = optional(runField, RUN);
  const release = optional(releaseField, RELEASE);
  if (from === undefined || to === undefined || run === undefined || release === undefined) return null;
  return { time, action: action as Revision['action'], from, to, run, release };
}

/** The lines of a revisions.log as revisions, oldest first; `skipped` counts the lines that were not. */
export function parseRevisions(lines: readonly string[]): { revisions: Revision[]; skipped: number } {
  const revisions: Revision[] = [];
  let skipped = 0;
  for (const line of lines) {
    if (line === '') continue;
    const revision = parseRevision(line);
    if (revision) revisions.push(revision);
    else skipped++;
  }
  return { revisions, skipped };
}
