import { getOctokit } from '@actions/github';
import { getErrorMessage } from '../errors.js';
import { vmText } from '../remote/untrusted.js';
import type { GitHubApi } from '../report/github.js';
import { answerOf, DOT_SEGMENT, tokenProblem, withoutToken, type BranchReader } from '../report/protection.js';
import type { WorkflowContext } from './context.js';

/** {@link GitHubApi} over Octokit, against GITHUB_API_URL (github.com or GitHub Enterprise Server). */
export function octokitApi(token: string, ctx: WorkflowContext): GitHubApi {
  const octokit = getOctokit(token, { baseUrl: ctx.apiUrl });
  const repo = { owner: ctx.owner, repo: ctx.repo };
  return {
    async createStatus(sha, body) {
      await octokit.rest.repos.createCommitStatus({ ...repo, sha, ...body });
    },
    async createDeployment(body) {
      const response = await octokit.rest.repos.createDeployment({
        ...repo,
        ...body,
        auto_merge: false,
        // vm-sync posts its own statuses on this commit; requiring contexts would block the deployment on them.
        required_contexts: [],
        transient_environment: false,
      });
      if (!('id' in response.data)) throw new Error(`deployment not created: ${JSON.stringify(response.data).slice(0, 200)}`);
      return response.data.id;
    },
    async createDeploymentStatus(id, body) {
      await octokit.rest.repos.createDeploymentStatus({ ...repo, deployment_id: id, ...body, auto_inactive: true });
    },
  };
}

/**
 * {@link BranchReader} over Octokit (the token, proxy settings and API URL of
 * the other calls). A refused or failed request is an answer with its status,
 * never an exception: the branch-protection check only ever warns.
 */
export function octokitBranchReader(token: string, ctx: WorkflowContext): BranchReader {
  const octokit = getOctokit(token, { baseUrl: ctx.apiUrl });
  return async (owner, repo, branch) => {
    const problem = tokenProblem(token) ?? (DOT_SEGMENT.test(branch) ? `branch ${vmText(branch, 100)}: not a branch name` : null);
    if (problem) return { status: 0, reason: problem };
    try {
      // A silent API must not hold the deploy: the check gives up after 15 s (a notice).
      const response = await octokit.rest.repos.getBranch({ owner, repo, branch, request: { signal: AbortSignal.timeout(15_000) } });
      return answerOf(response.status, response.data);
    } catch (error) {
      const status = (error as { status?: unknown }).status;
      if (typeof status === 'number') return answerOf(status, (error as { response?: { data?: unknown } }).response?.data ?? null);
      return { status: 0, reason: vmText(withoutToken(getErrorMessage(error), token), 200) };
    }
  };
}
