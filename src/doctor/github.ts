import type { Config } from '../config/types.js';
import { DOT_SEGMENT, fetchBranchReader, judgeProtection, type BranchReader } from '../report/protection.js';
import type { Check } from './doctor.js';

/** How `doctor --github` reaches the GitHub API: the URL and a token, both from the environment. */
export interface GitHubAccess {
  /** `GITHUB_API_URL`, default https://api.github.com. */
  apiUrl: string;
  /** `GITHUB_TOKEN`, else `GH_TOKEN`; null when neither is set. Never printed. */
  token: string | null;
  /** The reader to use instead of fetch (tests). */
  reader?: BranchReader;
}

/** {@link GitHubAccess} from the environment: never from arguments, which other users see in the process list. */
export function githubAccessFromEnv(env: NodeJS.ProcessEnv): GitHubAccess {
  const token = env.GITHUB_TOKEN?.trim() || env.GH_TOKEN?.trim() || null;
  return { apiUrl: (env.GITHUB_API_URL?.trim() || 'https://api.github.com').replace(/\/$/, ''), token };
}

/**
 * The repository a remote URL names on its server: the last two path
 * components, without `.git`. `https://github.com/acme/app.git`,
 * `git@github.com:acme/app.git`, `ssh://git@ghe.example.com/acme/app` all give
 * acme/app. Null for anything else (a local path).
 */
export function repositoryOfUrl(url: string): { owner: string; repo: string } | null {
  let pathPart: string;
  const scp = /^[^/@:\s]+@[^/:\s]+:(.+)$/.exec(url);
  if (scp) pathPart = scp[1];
  else {
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      return null;
    }
    if (!['https:', 'http:', 'ssh:', 'git:'].includes(parsed.protocol)) return null;
    pathPart = decodeURIComponent(parsed.pathname);
  }
  const parts = pathPart.replace(/\/+$/, '').replace(/\.git$/, '').split('/').filter(Boolean);
  if (parts.length < 2) return null;
  const [owner, repo] = parts.slice(-2);
  const NAME = /^[A-Za-z0-9_.-]{1,100}$/;
  // `.` and `..` are no GitHub name: in the API URL they would climb to another path of the API host.
  const ok = (name: string): boolean => NAME.test(name) && !DOT_SEGMENT.test(name);
  return ok(owner) && ok(repo) ? { owner, repo } : null;
}

/**
 * `doctor --github`: whether the deployed branch is protected, like the
 * Action checks it. A warning when it is not; `skipped` when it cannot be
 * told (no token, no GitHub URL, 403/404, no answer). Never a failure.
 * `cloneUrl` is the runner-host clone's remote URL, used when the config has
 * no `repository.url`.
 */
export async function branchProtectionCheck(config: Config, access: GitHubAccess, cloneUrl: string | null): Promise<Check> {
  const branch = config.repository.defaultBranch;
  const url = config.repository.url ?? cloneUrl;
  const where = url ? repositoryOfUrl(url) : null;
  if (!where) {
    return {
      name: 'branch_protection',
      status: 'skipped',
      detail: `cannot tell which GitHub repository to ask: ${url ? 'repository.url is not a GitHub URL' : 'repository.url is not set and there is no clone to read it from'}`,
      hint: 'set repository.url to the repository\'s GitHub URL (https://github.com/OWNER/REPO.git)',
    };
  }
  if (!access.token) {
    return {
      name: 'branch_protection',
      status: 'skipped',
      detail: `cannot check branch ${branch} of ${where.owner}/${where.repo}: no token`,
      hint: 'export GITHUB_TOKEN (or GH_TOKEN) with read access to the repository, then run doctor --github again',
    };
  }
  const reader = access.reader ?? fetchBranchReader(access.apiUrl, access.token);
  const verdict = judgeProtection({ ...where, branch }, await reader(where.owner, where.repo, branch));
  return {
    name: 'branch_protection',
    status: !verdict.checked ? 'skipped' : verdict.level === 'ok' ? 'ok' : 'warn',
    detail: verdict.message,
    hint: verdict.fix,
  };
}
