/*
 * Masking of secrets in text vm-sync shows that it did not write itself (a
 * post_sync_command's output): it reaches the terminal, the job log, the job
 * summary, `--json` and the `results` output, and the runner's own log masking
 * covers only the job log. Two layers:
 *
 * - values registered here (the Action registers what it registers with the
 *   runner: the job's token, the VMs' key lines), replaced by `***`;
 * - what looks like a credential, replaced by `[masked]`: private key blocks,
 *   the value of an assignment whose name says secret (`password=...`,
 *   `API_TOKEN: ...`), and token-shaped words: 20 or more characters of
 *   `[A-Za-z0-9+/=_-]` mixing letters and digits (GitHub, Slack, AWS, JWT and
 *   most API keys), the same shape the scan's own log scrubbing removes.
 *   Commit hashes (40 lowercase hex) and vm-sync's release names stay: they
 *   are in the report anyway. A path is judged one component at a time.
 *
 * It errs on the side of masking; it cannot know every secret format, so a
 * command should still not print secrets.
 */

const registered = new Set<string>();

/** Shorter values are not masked: they would blank out ordinary words. */
const MIN_REGISTERED = 6;

/** Registers a secret value: it is masked wherever {@link maskSecrets} runs. Multi-line values are registered line by line. */
export function registerSecret(value: string): void {
  for (const line of value.split(/\r?\n/)) {
    const trimmed = line.trim();
    if (trimmed.length >= MIN_REGISTERED) registered.add(trimmed);
  }
}

/** Forgets every registered value (tests). */
export function clearRegisteredSecrets(): void {
  registered.clear();
}

const PEM_BLOCK = /-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?(?:-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|$)/g;
// NAME=value, NAME: value, "name": "value" where NAME says it holds a secret.
const ASSIGNMENT = /([A-Za-z0-9_.-]*(?:passw(?:or)?d|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credential)[A-Za-z0-9_.-]*["']?[ \t]*[:=][ \t]*["']?)([^\s"',;]+)/gi;
const TOKEN_RUN = /[A-Za-z0-9+/=_-]{20,}/g;
const COMMIT = /^[0-9a-f]{40}$/;
const RELEASE = /^[0-9]{8}T[0-9]{6,9}Z-[0-9a-f]{12}(-[0-9]+)?$/;
const MASK = '[masked]';

/** Whether one word is shaped like a token: long, letters and digits mixed, and not a commit or a release name. */
function tokenShaped(word: string): boolean {
  return word.length >= 20 && /[0-9]/.test(word) && /[A-Za-z]/.test(word) && !COMMIT.test(word) && !RELEASE.test(word);
}

/**
 * A run of token characters. Without `/` it is one word. With `/` it is a
 * path (judged component by component) unless it reads as base64 (not
 * starting with `/`, upper and lower case and digits), which is masked whole.
 */
function maskRun(run: string): string {
  if (!run.includes('/')) return tokenShaped(run) ? MASK : run;
  const parts = run.split('/');
  if (!run.startsWith('/') && tokenShaped(run) && /[A-Z]/.test(run) && /[a-z]/.test(run) && !parts.some((part) => COMMIT.test(part) || RELEASE.test(part))) return MASK;
  return parts.map((part) => (tokenShaped(part) ? MASK : part)).join('/');
}

/** `text` with registered secrets and credential-shaped values masked. */
export function maskSecrets(text: string): string {
  let out = text;
  // Longest first, so a value that contains another is masked whole.
  for (const value of [...registered].sort((a, b) => b.length - a.length)) out = out.split(value).join('***');
  out = out.replace(PEM_BLOCK, '[private key masked]');
  out = out.replace(ASSIGNMENT, (_all, name: string, value: string) => (value === '***' || value === MASK ? `${name}${value}` : `${name}${MASK}`));
  return out.replace(TOKEN_RUN, maskRun);
}
