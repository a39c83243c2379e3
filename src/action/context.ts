import fs from 'node:fs';
import { VmSyncError } from '../errors.js';

/** What the action needs to know about the workflow run, read from the runner's environment. */
export interface WorkflowContext {
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

/**
 * Reads the run's context from GITHUB_* variables and the event payload.
 * Never a hard-coded host: GitHub Enterprise Server sets these too.
 */
export function readWorkflowContext(env: NodeJS.ProcessEnv = process.env): WorkflowContext {
  const [owner, repo] = (env.GITHUB_REPOSITORY ?? '').split('/');
  if (!owner || !repo) throw new VmSyncError('config_invalid', 'GITHUB_REPOSITORY is not set: vm-sync must run inside a GitHub Actions job (or act).');
  const serverUrl = (env.GITHUB_SERVER_URL ?? 'https://github.com').replace(/\/$/, '');
  const apiUrl = (env.GITHUB_API_URL ?? 'https://api.github.com').replace(/\/$/, '');
  const eventName = env.GITHUB_EVENT_NAME ?? '';
  let push: WorkflowContext['push'] = null;
  if (eventName === 'push' && env.GITHUB_EVENT_PATH && fs.existsSync(env.GITHUB_EVENT_PATH)) {
    const payload = JSON.parse(fs.readFileSync(env.GITHUB_EVENT_PATH, 'utf8')) as { before?: string; after?: string; ref?: string };
    if (payload.before && payload.after) push = { before: payload.before, after: payload.after, ref: payload.ref ?? '' };
  }
  return {
    owner,
    repo,
    sha: env.GITHUB_SHA ?? '',
    eventName,
    push,
    serverUrl,
    apiUrl,
    runUrl: `${serverUrl}/${owner}/${repo}/actions/runs/${env.GITHUB_RUN_ID ?? '0'}`,
    workspace: env.GITHUB_WORKSPACE ?? process.cwd(),
  };
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
