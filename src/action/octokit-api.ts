import { getOctokit } from '@actions/github';
import type { GitHubApi } from '../report/github.js';
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
