import os from 'node:os';
import path from 'node:path';

// Control characters (newlines above all) would let a path escape a quoted
// argument in a log line or break the line-oriented remote protocol.
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/;

/**
 * Why a path from the config is unusable, or null when it is fine.
 * Accepted: absolute, or `~/...`. Refused: empty, `/`, `~`, relative, any `..`
 * segment, control characters.
 */
export function pathProblem(value: string): string | null {
  if (value.trim() === '') return 'is empty';
  if (CONTROL.test(value)) return 'contains a control character';
  if (!value.startsWith('/') && !value.startsWith('~/')) {
    return 'must be absolute (start with / or ~/)';
  }
  const segments = value.split('/').filter((s) => s !== '' && s !== '.');
  if (segments.includes('..')) return "must not contain '..'";
  const meaningful = value.startsWith('~/') ? segments.slice(1) : segments;
  if (meaningful.length === 0) return `must name a directory, not ${value.startsWith('~') ? 'the home directory' : '/'}`;
  return null;
}

/** Normalises a validated path: collapses `//` and `/./`, drops a trailing `/`. */
export function normalizePath(value: string): string {
  const home = value.startsWith('~/');
  const rest = path.posix.normalize(home ? value.slice(1) : value).replace(/\/+$/, '');
  return home ? `~${rest}` : rest;
}

/** Expands a leading `~/` against this machine's home directory (runner-host paths only). */
export function expandLocalHome(value: string, home: string = os.homedir()): string {
  return value.startsWith('~/') ? path.join(home, value.slice(2)) : value;
}
