import type { FailureCode } from '../errors.js';
import { vmText } from './untrusted.js';

/**
 * Failure codes from what the VM's shell or rsync wrote to stderr. Ordered:
 * the first match wins, and the specific ones (disk full) come before the
 * generic ones (permission) because rsync often prints both.
 */
const STDERR_RULES: ReadonlyArray<[RegExp, FailureCode]> = [
  // rsync's own diagnosis of a login shell that prints to stdout; first, since
  // whatever else rsync says afterwards (SIGUSR1, exit 2) is only a consequence.
  [/protocol version mismatch|is your shell clean\?/i, 'remote_shell_unclean'],
  // EIO from the VM's disk (a failing or full volume, a broken mount) while writing.
  [/No space left on device|Disk quota exceeded|ENOSPC|Input\/output error|\bI\/O error/i, 'storage_full'],
  // "no matching host key": the VM offers no key of a pinned type (ssh2 says format, OpenSSH type). Retrying cannot help.
  [/Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED|Host denied \(verification failed\)|no matching host key (type|format)/i, 'host_key_mismatch'],
  [/Permission denied \(publickey|All configured authentication methods failed|Too many authentication failures/i, 'auth_failed'],
  [/rsync: (command )?not found|rsync: No such file or directory|sh: \d*:? ?rsync: not found|bash: (line \d+: )?rsync: command not found/i, 'remote_rsync_missing'],
  [/Permission denied|Read-only file system|Operation not permitted/i, 'permission_denied'],
  [/timed out|timeout/i, 'timeout'],
  [/Connection refused|Connection reset|Connection closed|connection unexpectedly closed|Broken pipe|No route to host|Network is unreachable|SSH connection to .* lost/i, 'unreachable'],
];

/** The failure code that stderr text points to, or null when nothing matches. */
export function codeFromStderr(stderr: string): FailureCode | null {
  for (const [pattern, code] of STDERR_RULES) if (pattern.test(stderr)) return code;
  return null;
}

/**
 * The few lines of a failed command's stderr worth showing: the first line
 * that explains the classification (rsync often prints it long before its
 * closing "rsync error: ..." line), then the last line.
 */
export function stderrSummary(stderr: string): string {
  const lines = stderr.split('\n').map((l) => l.trim()).filter(Boolean);
  const rule = STDERR_RULES.find(([pattern]) => pattern.test(stderr));
  const cause = rule ? lines.find((l) => rule[0].test(l)) : undefined;
  const last = lines.at(-1);
  // The VM writes this text: each line is cleaned and bounded before it joins a message.
  return [...new Set([cause, last].filter((l): l is string => Boolean(l)))].map((l) => vmText(l, SUMMARY_LINE_MAX)).join(' | ');
}

const SUMMARY_LINE_MAX = 300;

/**
 * What to do about a failure whose code came from stderr, when the stderr
 * line itself does not say it: a sentence to append to the message, or ''.
 */
export function remedyFor(code: FailureCode): string {
  switch (code) {
    case 'remote_shell_unclean':
      return " The SSH user's shell start-up files print text in non-interactive sessions, which corrupts rsync's protocol: make them silent unless the shell is interactive (e.g. begin ~/.bashrc with: case $- in *i*) ;; *) return ;; esac), so that ssh USER@VM true prints nothing.";
    case 'storage_full':
      return ' The disk of the target on the VM is full or failing (no space, quota, or an I/O error): free space or repair the volume, then run vm-sync again.';
    default:
      return '';
  }
}

/**
 * Classifies a failed rsync run. The exit code alone is ambiguous (255 is a
 * dropped connection and also a rejected host key; 12 is a lost connection and
 * also a missing remote rsync), so stderr decides first and the code only
 * breaks ties.
 */
export function classifyRsyncFailure(exitCode: number | null, stderr: string): FailureCode {
  const fromText = codeFromStderr(stderr);
  if (fromText) return fromText;
  switch (exitCode) {
    case 10: // socket I/O
    case 12: // protocol data stream (connection dropped)
    case 255:
      return 'unreachable';
    case 30: // timeout in data send/receive
    case 35: // timeout waiting for daemon connection
      return 'timeout';
    case 127:
      return 'remote_rsync_missing';
    default:
      return 'rsync_failed';
  }
}

const NETWORK_ERRNO: ReadonlySet<string> = new Set([
  'ECONNREFUSED', 'ECONNRESET', 'EHOSTUNREACH', 'ENETUNREACH', 'EPIPE', 'ENOTFOUND', 'EAI_AGAIN', 'ECONNABORTED',
]);

/** Classifies an error from ssh2/node-ssh while connecting. */
export function classifyConnectError(error: unknown, hostKeyRejected: boolean): FailureCode {
  if (hostKeyRejected) return 'host_key_mismatch';
  const err = error as { code?: string; level?: string; message?: string };
  if (err.level === 'client-authentication') return 'auth_failed';
  if (err.level === 'client-timeout' || err.code === 'ETIMEDOUT') return 'timeout';
  if (err.code && NETWORK_ERRNO.has(err.code)) return 'unreachable';
  const message = err.message ?? '';
  if (/Timed out while waiting for handshake/i.test(message)) return 'timeout';
  if (/passphrase|Cannot parse privateKey|Unsupported key format/i.test(message)) return 'auth_failed';
  return codeFromStderr(message) ?? 'unreachable';
}
