import { getErrorMessage } from '../errors.js';
import { vmText } from '../remote/untrusted.js';
import { markdownText } from './escape.js';

/*
 * Branch protection of the deployed branch. vm-sync deploys whatever reaches
 * `remote/default_branch`, and its secret scan only blocks a deploy, not a
 * push: the branch itself must only change through reviewed, scanned pull
 * requests. `GET /repos/{owner}/{repo}/branches/{branch}` answers `protected`
 * with read access only (the protection settings themselves need admin), so
 * this is what vm-sync checks: a warning when the branch is not protected,
 * a notice when it cannot tell. Never a failure: the deploy is not its to stop.
 */

/** The status check vm-sync posts for the secret scan; the README asks to require it. */
export const SCAN_STATUS_CONTEXT = 'vm-sync/secret-scan';

/** What the API answered about the branch, as far as this check needs it. */
export interface BranchAnswer {
  /** HTTP status; 0 when no answer came (network, timeout). */
  status: number;
  /** `protected` from a 200 answer (undefined when absent or not a boolean). */
  protected?: boolean;
  /** `protection.required_status_checks.contexts` when the answer shows them (null: not shown). */
  requiredContexts?: string[] | null;
  /** Why there was no usable answer (the API's message or the network error), for the notice. */
  reason?: string;
}

/** Reads one branch of one repository. */
export type BranchReader = (owner: string, repo: string, branch: string) => Promise<BranchAnswer>;

/** The outcome: `warning` (not protected), `notice` (could not tell, or protected without the scan required), `ok`. */
export interface ProtectionVerdict {
  level: 'ok' | 'warning' | 'notice';
  /** One line: what was found. */
  message: string;
  /** What to do; null when nothing. */
  fix: string | null;
  /** False when the API gave no usable answer (the branch may or may not be protected). */
  checked: boolean;
}

const SETTINGS = `require a pull request before merging with at least one approving review, require the status check ${SCAN_STATUS_CONTEXT}, and block direct pushes, force pushes and deletions`;

/** The verdict on one answer. Pure. */
export function judgeProtection(where: { owner: string; repo: string; branch: string }, answer: BranchAnswer): ProtectionVerdict {
  const name = `branch ${where.branch} of ${where.owner}/${where.repo}`;
  if (answer.status === 200 && answer.protected === false) {
    return {
      level: 'warning',
      message: `${name} is not protected: anyone who can push to it deploys what they push, unreviewed, and can force-push or delete it`,
      fix: `protect it (Settings → Branches, or a ruleset): ${SETTINGS} (README: Branch protection)`,
      checked: true,
    };
  }
  if (answer.status === 200 && answer.protected === true) {
    const contexts = answer.requiredContexts;
    if (contexts && !contexts.includes(SCAN_STATUS_CONTEXT)) {
      return {
        level: 'notice',
        message: `${name} is protected, but its required status checks (${contexts.length ? contexts.map((c) => vmText(c, 100)).join(', ') : 'none'}) do not include ${SCAN_STATUS_CONTEXT}`,
        fix: `add ${SCAN_STATUS_CONTEXT} to the branch's required status checks, so a commit with a possible secret cannot be merged`,
        checked: true,
      };
    }
    return { level: 'ok', message: `${name} is protected`, fix: null, checked: true };
  }
  const why =
    answer.status === 0
      ? `no answer: ${answer.reason ?? 'unknown error'}`
      : answer.status === 200
        ? 'the answer has no protected field'
        : `HTTP ${answer.status}${answer.reason ? `: ${vmText(answer.reason, 200)}` : ''}`;
  const fix =
    answer.status === 401
      ? 'the token was refused: give a valid token'
      : answer.status === 403 || answer.status === 404
        ? 'give the token read access to the repository (permissions: contents: read), and check that the branch exists'
        : 'check the API URL and the network';
  return { level: 'notice', message: `could not check whether ${name} is protected (${why})`, fix, checked: false };
}

/**
 * Why a token cannot go into an Authorization header, or null. fetch refuses
 * such a header with an error that quotes its value, token included: a token
 * with a line break in it (two lines of a file) is never sent.
 */
export function tokenProblem(token: string): string | null {
  return /^[\x21-\x7e]+$/.test(token) ? null : 'the token holds a character no HTTP header can carry (a line break, a space or a non-ASCII character): give the token alone';
}

/** `message` with the token, and each line of it, replaced by `***`: no error text carries it out. */
export function withoutToken(message: string, token: string): string {
  let out = message.split(token).join('***');
  for (const part of token.split(/\s+/)) if (part.length >= 6) out = out.split(part).join('***');
  return out;
}

/** A path segment URL parsing resolves (`.`, `..`): never sent, whatever its encoding would be. */
export const DOT_SEGMENT = /^\.{1,2}$/;

/**
 * A {@link BranchReader} over `fetch` against `apiUrl` (https://api.github.com,
 * or a GitHub Enterprise Server's `/api/v3`). The token goes in a header only;
 * nothing it answers is trusted beyond the fields read.
 */
export function fetchBranchReader(apiUrl: string, token: string, options: { timeoutMs?: number; fetchImpl?: typeof fetch } = {}): BranchReader {
  const doFetch = options.fetchImpl ?? fetch;
  return async (owner, repo, branch) => {
    // The token goes to {api}/repos/... only: a dot segment would move the request elsewhere on the host.
    if ([owner, repo, branch].some((part) => DOT_SEGMENT.test(part))) return { status: 0, reason: `${vmText(`${owner}/${repo}`, 100)} branch ${vmText(branch, 100)}: not a repository or branch name` };
    const problem = tokenProblem(token);
    if (problem) return { status: 0, reason: problem };
    const url = `${apiUrl.replace(/\/$/, '')}/repos/${encodeURIComponent(owner)}/${encodeURIComponent(repo)}/branches/${encodeURIComponent(branch)}`;
    let response: Response;
    try {
      response = await doFetch(url, {
        headers: { accept: 'application/vnd.github+json', authorization: `Bearer ${token}`, 'user-agent': 'vm-sync', 'x-github-api-version': '2022-11-28' },
        signal: AbortSignal.timeout(options.timeoutMs ?? 15_000),
        redirect: 'error',
      });
    } catch (error) {
      // No error of fetch's may carry the token out.
      return { status: 0, reason: vmText(withoutToken(getErrorMessage(error), token), 200) };
    }
    const body: unknown = await response.json().catch(() => null);
    return answerOf(response.status, body);
  };
}

/** The fields of a branch answer this check reads; anything else in it is ignored. */
export function answerOf(status: number, body: unknown): BranchAnswer {
  const record = (value: unknown): Record<string, unknown> | null => (value && typeof value === 'object' && !Array.isArray(value) ? (value as Record<string, unknown>) : null);
  const doc = record(body);
  if (status !== 200) return { status, reason: typeof doc?.message === 'string' ? doc.message : undefined };
  const checks = record(record(doc?.protection)?.required_status_checks);
  const contexts = Array.isArray(checks?.contexts) && checks.contexts.every((c) => typeof c === 'string') ? (checks.contexts as string[]) : null;
  // enforcement_level "off" means no check is required, whatever the list says.
  const enforced = checks?.enforcement_level !== 'off';
  return {
    status,
    protected: typeof doc?.protected === 'boolean' ? doc.protected : undefined,
    requiredContexts: checks && contexts ? (enforced ? contexts : []) : null,
  };
}

/** The job summary's section for a verdict (empty for `ok`: a protected branch needs no words). */
export function protectionSummary(verdict: ProtectionVerdict): string {
  if (verdict.level === 'ok') return '';
  const mark = verdict.level === 'warning' ? '⚠️ **Branch protection:**' : 'ℹ️ **Branch protection:**';
  return `\n${mark} ${markdownText(`${verdict.message}.${verdict.fix ? ` To fix: ${verdict.fix}.` : ''}`, 2000)}\n`;
}
