/**
 * Stable failure codes. They appear in `--json` output, in reports and in the
 * action's outputs, so they are part of the public interface: add, never rename.
 */
export const FAILURE_CODES = [
  'config_invalid',
  'auth_failed',
  'host_key_mismatch',
  'host_key_unknown',
  'unreachable',
  'timeout',
  'storage_full',
  'permission_denied',
  'remote_rsync_missing',
  'locked',
  'refused_ahead',
  'verify_mismatch',
  'sentinel_unreadable',
  'rsync_failed',
  'remote_command_failed',
  'post_sync_failed',
  'git_failed',
  'commit_not_on_branch',
  'interrupted',
  'secrets_found',
  'scan_range_unresolved',
  'scan_failed',
  'gitleaks_missing',
  'remote_shell_unclean',
  'host_key_revoked',
  'unsafe_state_dir',
  'lock_lost',
  'internal_error',
  'runner_busy',
  'scan_timeout',
  'health_failed',
  'rollout_halted',
  'no_release',
  'release_drifted',
  'stream_failed',
  'shard_missing',
  'results_invalid',
  'jump_unreachable',
  'key_invalid',
  'demo_dir_refused',
] as const;

export type FailureCode = (typeof FAILURE_CODES)[number];

/** Failures worth another attempt: the network, not the VM's answer. */
const RETRYABLE: ReadonlySet<FailureCode> = new Set(['unreachable', 'timeout', 'jump_unreachable']);

/** An error that carries a stable code and a message telling the user what to do. */
export class VmSyncError extends Error {
  readonly code: FailureCode;

  constructor(code: FailureCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'VmSyncError';
    this.code = code;
  }

  get retryable(): boolean {
    return RETRYABLE.has(this.code);
  }
}

/** The message of anything thrown, without assuming it is an `Error`. */
export function getErrorMessage(error: unknown): string {
  if (error instanceof Error) return error.message;
  if (typeof error === 'string') return error;
  // An Error of another realm (a vm context, as under jest) fails instanceof but still has its message.
  if (typeof error === 'object' && error !== null && typeof (error as { message?: unknown }).message === 'string') return (error as { message: string }).message;
  try {
    return JSON.stringify(error);
  } catch {
    return String(error);
  }
}
