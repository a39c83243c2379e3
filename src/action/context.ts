import fs from 'node:fs';

/** What the action needs to know about the workflow run, read from the runner's environment. */
export interface WorkflowContext {
  /** `owner/name` from GITHUB_REPOSITORY; empty when it is not set (act with an origin remote that is not a GitHub URL). */
  owner: string;
  repo: string;
  /** The event's commit (GITHUB_SHA). */
  sha: string;
  eventName: string;
  /** For push events: the range pushed and the branch. */
  push: { before: string; after: string; ref: string } | null;
  /** https://github.com, or the GitHub Enterprise Server URL. */
  serverUrl: string;
  apiUrl: string;
  runUrl: string;
  workspace: string;
}

/** `owner/name` as GitHub spells a repository; anything else in GITHUB_REPOSITORY is ignored. */
const REPOSITORY = /^([A-Za-z0-9_][A-Za-z0-9_.-]{0,99})\/([A-Za-z0-9_.-]{1,100})$/;

/** A full commit hash other than the all-zero one GitHub sends for a created or deleted branch. */
const COMMIT = /^(?!0{40}$)[0-9a-f]{40}$/;

/**
 * Reads the run's context from GITHUB_* variables and the event payload.
 * Never a hard-coded host: GitHub Enterprise Server sets these too.
 *
 * The repository's name is only needed to post statuses and deployments. act
 * takes it from the `origin` remote and leaves it empty when that remote is a
 * local path (a fresh `git clone` of a directory): the deploy itself does not
 * depend on it, so an empty one is not an error here ({@link githubRepositoryProblem}).
 *
 * On a push the commit is the event's `after`. GitHub sets GITHUB_SHA to the
 * same commit; act sets it to the workspace's HEAD unless the event file says
 * `"deleted": false`, and the pushed commit is what a deploy must ship.
 */
export function readWorkflowContext(env: NodeJS.ProcessEnv = process.env): WorkflowContext {
  const match = REPOSITORY.exec(env.GITHUB_REPOSITORY ?? '');
  const [owner, repo] = match ? [match[1], match[2]] : ['', ''];
  const serverUrl = (env.GITHUB_SERVER_URL ?? 'https://github.com').replace(/\/$/, '');
  const apiUrl = (env.GITHUB_API_URL ?? 'https://api.github.com').replace(/\/$/, '');
  const eventName = env.GITHUB_EVENT_NAME ?? '';
  let push: WorkflowContext['push'] = null;
  if (eventName === 'push' && env.GITHUB_EVENT_PATH && fs.existsSync(env.GITHUB_EVENT_PATH)) {
    const payload = JSON.parse(fs.readFileSync(env.GITHUB_EVENT_PATH, 'utf8')) as { before?: string; after?: string; ref?: string };
    if (payload.before && payload.after) push = { before: payload.before, after: payload.after, ref: payload.ref ?? '' };
  }
  const sha = push && COMMIT.test(push.after) ? push.after : (env.GITHUB_SHA ?? '');
  return {
    owner,
    repo,
    sha,
    eventName,
    push,
    serverUrl,
    apiUrl,
    runUrl: owner ? `${serverUrl}/${owner}/${repo}/actions/runs/${env.GITHUB_RUN_ID ?? '0'}` : '',
    workspace: env.GITHUB_WORKSPACE ?? process.cwd(),
  };
}

/**
 * Why GitHub reporting is off for this run, or null when the repository is
 * known. Said once as a warning: the deploy goes on, only statuses and
 * deployments are not posted.
 */
export function githubRepositoryProblem(ctx: WorkflowContext, env: NodeJS.ProcessEnv = process.env): string | null {
  if (ctx.owner) return null;
  const value = env.GITHUB_REPOSITORY ?? '';
  return value
    ? `GITHUB_REPOSITORY is not owner/name${env.ACT ? ' (act takes it from the origin remote, which is not a GitHub URL here)' : ''}: no commit statuses or deployments are posted for this run.`
    : 'GITHUB_REPOSITORY is not set: no commit statuses or deployments are posted for this run.';
}

/**
 * Git configuration, as environment variables, that sends the job's token as
 * an HTTP header to the server for one git command: never written into
 * `.git/config`, never on a command line (GIT_CONFIG_* need git 2.31+).
 */
export function gitAuthEnv(token: string, serverUrl: string): { env: NodeJS.ProcessEnv; secret: string } {
  const secret = Buffer.from(`x-access-token:${token}`).toString('base64');
  return {
    secret,
    env: {
      GIT_CONFIG_COUNT: '1',
      GIT_CONFIG_KEY_0: `http.${serverUrl}/.extraheader`,
      GIT_CONFIG_VALUE_0: `AUTHORIZATION: basic ${secret}`,
    },
  };
}
