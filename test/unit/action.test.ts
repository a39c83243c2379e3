import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { gitAuthEnv, githubRepositoryProblem, readWorkflowContext } from '../../src/action/context.js';
import { parseInputs } from '../../src/action/inputs.js';
import { GitHubReporter, vmStatus, type GitHubApi } from '../../src/report/github.js';
import { renderSummary } from '../../src/report/summary.js';
import type { RunReport, VmReport } from '../../src/sync/types.js';

const reader = (values: Record<string, string>) => (name: string) => values[name] ?? '';

describe('parseInputs', () => {
  test('defaults', () => {
    expect(parseInputs(reader({ 'github-token': 'x' }))).toEqual({
      command: 'sync',
      config: 'vm-sync.yml',
      commit: '',
      to: '',
      lockWaitS: 0,
      vms: [],
      shard: null,
      resultsPath: '',
      results: '',
      shards: null,
      skipScan: false,
      force: false,
      dryRun: false,
      deep: false,
      githubToken: 'x',
      commitStatuses: true,
      environment: '',
      gitleaksVersion: '8.30.1',
      gitleaksPath: '',
      sarifPath: '',
    });
  });

  test('the shard inputs', () => {
    expect(parseInputs(reader({ shard: ' 2/3 ', 'skip-scan': 'true', 'results-path': 'r.json' }))).toMatchObject({ shard: { index: 2, count: 3 }, skipScan: true, resultsPath: 'r.json' });
    expect(parseInputs(reader({ command: 'report', results: 'dir', shards: '4' }))).toMatchObject({ command: 'report', results: 'dir', shards: 4 });
  });

  test('every input, parsed once', () => {
    const inputs = parseInputs(reader({ command: 'sync', vms: ' vm01, vm02 ,', force: 'true', 'dry-run': 'True', 'commit-statuses': 'false', environment: 'production', commit: 'abc1234' }));
    expect(inputs).toMatchObject({ vms: ['vm01', 'vm02'], force: true, dryRun: true, commitStatuses: false, environment: 'production', commit: 'abc1234' });
  });

  test.each([
    [{ command: 'deploy' }, "input command must be sync, rollback, verify, status, scan or report, not 'deploy'"],
    [{ shard: '3/2' }, "input shard must be K/N with 1 <= K <= N <= 256 (for example 2/4), not '3/2'"],
    [{ shard: '1of2' }, "input shard must be K/N with 1 <= K <= N <= 256 (for example 2/4), not '1of2'"],
    [{ command: 'scan', shard: '1/2' }, 'input shard only applies to command: sync, rollback, verify or status'],
    [{ command: 'report' }, "command: report needs input results: the directory the shards' results artifacts were downloaded to"],
    [{ command: 'report', results: 'r', shards: '0' }, "input shards must be a whole number from 1 to 256, not '0'"],
    [{ command: 'report', results: 'r', shards: '2.5' }, "input shards must be a whole number from 1 to 256, not '2.5'"],
    [{ results: 'r' }, 'inputs results and shards only apply to command: report'],
    [{ shards: '2' }, 'inputs results and shards only apply to command: report'],
    [{ command: 'rollback', 'skip-scan': 'true' }, 'input skip-scan only applies to command: sync'],
    [{ 'skip-scan': 'maybe' }, "input skip-scan must be true or false, not 'maybe'"],
    [{ force: 'yes' }, "input force must be true or false, not 'yes'"],
    [{ command: 'verify', 'dry-run': 'true' }, 'input dry-run only applies to command: sync'],
    [{ commit: '$(rm -rf /)' }, "input commit is not a commit or ref: '$(rm -rf /)'"],
    [{ command: 'rollback', force: 'true' }, 'input force only applies to command: sync'],
    [{ command: 'rollback', 'dry-run': 'true' }, 'input dry-run only applies to command: sync'],
    [{ command: 'rollback', commit: 'abc1234' }, 'input commit does not apply to command: rollback; name the release to go back to with input to'],
    [{ to: 'abc1234' }, 'input to only applies to command: rollback (command is sync); for sync use input commit'],
    [{ command: 'verify', to: 'v1.2.0' }, 'input to only applies to command: rollback (command is verify)'],
    [{ command: 'rollback', to: '$(rm -rf /)' }, "input to must be a commit (7 to 40 hex digits) or a ref name, not '$(rm -rf /)'"],
    [{ command: 'rollback', to: '-abc1234' }, "input to must be a commit (7 to 40 hex digits) or a ref name, not '-abc1234'"],
    [{ command: 'rollback', to: 'main..evil' }, "input to must be a commit (7 to 40 hex digits) or a ref name, not 'main..evil'"],
    [{ command: 'rollback', to: 'release/' }, "input to must be a commit (7 to 40 hex digits) or a ref name, not 'release/'"],
    [{ command: 'rollback', to: 'a b' }, "input to must be a commit (7 to 40 hex digits) or a ref name, not 'a b'"],
    [{ command: 'rollback', to: 'main.lock' }, "input to must be a commit (7 to 40 hex digits) or a ref name, not 'main.lock'"],
    [{ command: 'rollback', to: 'HEAD~1' }, "input to must be a commit (7 to 40 hex digits) or a ref name, not 'HEAD~1'"],
    [{ 'lock-wait': '-1' }, "input lock-wait must be whole seconds from 0 to 86400, not '-1'"],
    [{ 'lock-wait': '1.5' }, "input lock-wait must be whole seconds from 0 to 86400, not '1.5'"],
    [{ 'lock-wait': '10s' }, "input lock-wait must be whole seconds from 0 to 86400, not '10s'"],
    [{ 'lock-wait': '86401' }, "input lock-wait must be whole seconds from 0 to 86400, not '86401'"],
    [{ 'lock-wait': '1e3' }, "input lock-wait must be whole seconds from 0 to 86400, not '1e3'"],
    [{ 'lock-wait': 'abc' }, "input lock-wait must be whole seconds from 0 to 86400, not 'abc'"],
    [{ command: 'verify', 'lock-wait': '30' }, 'input lock-wait only applies to command: sync or rollback'],
    [{ command: 'scan', 'lock-wait': '1' }, 'input lock-wait only applies to command: sync or rollback'],
  ])('%j is rejected with a message naming the input', (values, message) => {
    expect(() => parseInputs(reader(values))).toThrow(message);
  });

  test.each([
    [{ command: 'rollback' }, { command: 'rollback', to: '', lockWaitS: 0 }],
    [{ command: 'rollback', to: ' 0123abc ' }, { command: 'rollback', to: '0123abc' }],
    [{ command: 'rollback', to: 'A'.repeat(7) }, { to: 'AAAAAAA' }],
    [{ command: 'rollback', to: '0123456789abcdef0123456789abcdef01234567' }, { to: '0123456789abcdef0123456789abcdef01234567' }],
    [{ command: 'rollback', to: 'v1.4.2' }, { to: 'v1.4.2' }],
    [{ command: 'rollback', to: 'refs/tags/release-2026_11' }, { to: 'refs/tags/release-2026_11' }],
    [{ command: 'rollback', vms: 'vm01,vm02', 'lock-wait': '300' }, { command: 'rollback', vms: ['vm01', 'vm02'], lockWaitS: 300 }],
    [{ command: 'sync', 'lock-wait': ' 60 ' }, { command: 'sync', lockWaitS: 60 }],
    [{ 'lock-wait': '0' }, { lockWaitS: 0 }],
    [{ 'lock-wait': '86400' }, { lockWaitS: 86400 }],
    [{ command: 'verify', 'lock-wait': '0' }, { command: 'verify', lockWaitS: 0 }], // 0 is the default: no effect, no error
    [{ command: 'status', to: '' }, { command: 'status', to: '' }],
  ])('%j is accepted', (values, expected) => {
    expect(parseInputs(reader(values))).toMatchObject(expected);
  });
});

describe('workflow context', () => {
  test('reads GHES URLs from the environment, never a hard-coded host', () => {
    const ctx = readWorkflowContext({ GITHUB_REPOSITORY: 'acme/app', GITHUB_SERVER_URL: 'https://ghe.example.com/', GITHUB_API_URL: 'https://ghe.example.com/api/v3', GITHUB_RUN_ID: '7', GITHUB_SHA: 'a'.repeat(40) });
    expect(ctx).toMatchObject({ owner: 'acme', repo: 'app', serverUrl: 'https://ghe.example.com', apiUrl: 'https://ghe.example.com/api/v3', runUrl: 'https://ghe.example.com/acme/app/actions/runs/7', push: null });
  });

  test.each([
    ['/home/dev/vm-sync', true, /not owner\/name \(act takes it from the origin remote, which is not a GitHub URL here\): no commit statuses/],
    ['../vm-sync', false, /^GITHUB_REPOSITORY is not owner\/name: no commit statuses/],
    ['', false, /^GITHUB_REPOSITORY is not set: no commit statuses/],
  ])('GITHUB_REPOSITORY %j (act with a local-path origin): no error, no GitHub reporting, a reason', (value, act, reason) => {
    const env = { GITHUB_REPOSITORY: value, GITHUB_RUN_ID: '7', GITHUB_SHA: 'a'.repeat(40), ...(act ? { ACT: 'true' } : {}) };
    const ctx = readWorkflowContext(env);
    expect(ctx).toMatchObject({ owner: '', repo: '', runUrl: '', sha: 'a'.repeat(40) });
    expect(githubRepositoryProblem(ctx, env)).toMatch(reason);
    expect(githubRepositoryProblem(readWorkflowContext({ GITHUB_REPOSITORY: 'acme/app.js' }), {})).toBeNull();
  });

  test.each([
    ['an after other than GITHUB_SHA (act without "deleted": false)', 'b'.repeat(40), 'b'.repeat(40)],
    ['a branch deletion (all-zero after)', '0'.repeat(40), 'a'.repeat(40)],
    ['an after that is not a commit hash', 'HEAD', 'a'.repeat(40)],
  ])('a push deploys the event\'s after: %s', (_name, after, expected) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-event-'));
    const event = path.join(dir, 'event.json');
    try {
      fs.writeFileSync(event, JSON.stringify({ ref: 'refs/heads/main', before: 'c'.repeat(40), after }));
      const ctx = readWorkflowContext({ GITHUB_REPOSITORY: 'acme/app', GITHUB_EVENT_NAME: 'push', GITHUB_EVENT_PATH: event, GITHUB_SHA: 'a'.repeat(40) });
      expect(ctx.sha).toBe(expected);
      expect(ctx.push).toEqual({ before: 'c'.repeat(40), after, ref: 'refs/heads/main' });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('the fetch credential is a per-command header in the environment', () => {
    const { env, secret } = gitAuthEnv('tok', 'https://ghe.example.com');
    expect(env).toEqual({ GIT_CONFIG_COUNT: '1', GIT_CONFIG_KEY_0: 'http.https://ghe.example.com/.extraheader', GIT_CONFIG_VALUE_0: `AUTHORIZATION: basic ${secret}` });
    expect(Buffer.from(secret, 'base64').toString()).toBe('x-access-token:tok');
  });
});

function vm(overrides: Partial<VmReport>): VmReport {
  return { id: 'vm01', host: '10.0.0.1', state: 'behind', action: 'deploy', result: 'success', rev_before: 'a'.repeat(40), rev_after: 'b'.repeat(40), files_changed: 3, bytes_sent: 2048, duration_ms: 1500, verified: true, notes: [], error: null, staged_at: null, flipped_at: null, health: 'skipped', health_output: null, release: null, ...overrides };
}

describe('commit status of a VM', () => {
  test.each([
    [vm({}), 'sync', false, { state: 'success', description: 'deployed bbbbbbb: 3 files, 2048 bytes in 1.5s' }],
    [vm({ action: 'none' }), 'sync', false, { state: 'success', description: 'already on bbbbbbb' }],
    [vm({}), 'sync', true, { state: 'success', description: 'dry run: 3 files would change' }],
    [vm({ action: 'verify' }), 'verify', false, { state: 'success', description: 'verified: on bbbbbbb' }],
    [vm({ result: 'refused', error: { code: 'refused_ahead', message: 'older' } }), 'sync', false, { state: 'failure', description: 'refused_ahead: older' }],
    [vm({ result: 'failed', error: { code: 'unreachable', message: 'x'.repeat(300) } }), 'sync', false, { state: 'error', description: `unreachable: ${'x'.repeat(126)}…` }],
  ] as const)('%#', (report, verb, dryRun, expected) => {
    const status = vmStatus(report, verb, dryRun);
    expect(status).toEqual(expected);
    expect(status.description.length).toBeLessThanOrEqual(140);
  });
});

test('the reporter sends one VM\'s calls in order and turns failures into warnings', async () => {
  const calls: string[] = [];
  const warnings: string[] = [];
  const api: GitHubApi = {
    createStatus: async (_sha, body) => {
      await new Promise((r) => setTimeout(r, body.state === 'pending' ? 20 : 0));
      calls.push(`status ${body.context} ${body.state}`);
      if (body.context === 'vm-sync/vm02') throw new Error('HTTP 500');
    },
    createDeployment: async (body) => {
      calls.push(`deployment ${body.environment}`);
      return body.environment === 'prod/vm01' ? 7 : 8;
    },
    createDeploymentStatus: async (id, body) => {
      calls.push(`deployment-status ${id} ${body.state}`);
    },
  };
  const reporter = new GitHubReporter(api, { sha: 'c'.repeat(40), runUrl: 'u', statuses: true, environment: 'prod', verb: 'sync', dryRun: false, warn: (w) => warnings.push(w) });
  reporter.vmStarted('vm01');
  reporter.vmFinished(vm({}));
  reporter.vmStarted('vm02');
  reporter.vmFinished(vm({ id: 'vm02' }));
  await reporter.flush();
  expect(calls.filter((c) => c.includes('vm01') || c.startsWith('deployment-status 7'))).toEqual([
    'status vm-sync/vm01 pending',
    'deployment prod/vm01',
    'deployment-status 7 in_progress',
    'status vm-sync/vm01 success',
    'deployment-status 7 success',
  ]);
  // Both of vm02's status calls failed: one warning each, and its deployment calls still went out.
  const warning = 'could not post commit status vm-sync/vm02: HTTP 500 (the deploy itself is unaffected)';
  expect(warnings).toEqual([warning, warning]);
  expect(calls).toEqual(expect.arrayContaining(['deployment prod/vm02', 'deployment-status 8 in_progress', 'deployment-status 8 success']));
});

/** A fake GitHub API that records each call as one line. */
function recordingApi(calls: string[]): GitHubApi {
  let next = 7;
  return {
    createStatus: async (_sha, body) => void calls.push(`status ${body.context} ${body.state}: ${body.description}`),
    createDeployment: async (body) => {
      calls.push(`deployment ${body.environment}`);
      return next++;
    },
    createDeploymentStatus: async (id, body) => void calls.push(`deployment-status ${id} ${body.state}: ${body.description}`),
  };
}

describe('finalize: nothing is left pending when a run stops', () => {
  test('every VM that started and never finished gets error statuses; finished ones are left alone', async () => {
    const calls: string[] = [];
    const reporter = new GitHubReporter(recordingApi(calls), { sha: 'c'.repeat(40), runUrl: 'u', statuses: true, environment: 'prod', verb: 'sync', dryRun: false, warn: () => undefined });
    reporter.scanStarted();
    reporter.scanFinished({ description: 'd', commits_scanned: 1, tree_scanned: true, findings: [], blocked: false }, null);
    reporter.vmStarted('vm01');
    reporter.vmStarted('vm02');
    reporter.vmStarted('vm03');
    reporter.vmFinished(vm({}));
    reporter.finalize({ code: 'internal_error', message: 'vm-sync failed (a defect, please report it): boom' });
    reporter.finalize({ code: 'internal_error', message: 'again' }); // idempotent
    await reporter.flush();
    const stopped = 'internal_error: the run stopped before this VM finished: vm-sync failed (a defect, please report it): boom';
    expect(calls.filter((c) => c.includes('vm02') || c.startsWith('deployment-status 8'))).toEqual([
      'status vm-sync/vm02 pending: deploying',
      'deployment prod/vm02',
      'deployment-status 8 in_progress: deploying',
      `status vm-sync/vm02 error: ${stopped}`,
      `deployment-status 8 error: ${stopped}`,
    ]);
    expect(calls).toContain(`deployment-status 9 error: ${stopped}`);
    expect(calls.filter((c) => c.startsWith('status vm-sync/vm01 ') || c.startsWith('deployment-status 7 ')).map((c) => c.split(':')[0])).toEqual([
      'status vm-sync/vm01 pending',
      'deployment-status 7 in_progress',
      'status vm-sync/vm01 success',
      'deployment-status 7 success',
    ]);
    expect(calls.filter((c) => c.includes('again'))).toEqual([]);
  });

  test('a scan that never reported is closed with the failure', async () => {
    const calls: string[] = [];
    const reporter = new GitHubReporter(recordingApi(calls), { sha: 'c'.repeat(40), runUrl: 'u', statuses: true, environment: '', verb: 'sync', dryRun: false, warn: () => undefined });
    reporter.scanStarted();
    reporter.finalize({ code: 'git_failed', message: 'cannot fetch origin' });
    await reporter.flush();
    expect(calls).toEqual([
      'status vm-sync/secret-scan pending: scanning the commits and the tree being deployed',
      'status vm-sync/secret-scan error: git_failed: the run stopped before the scan was reported: cannot fetch origin',
    ]);
  });

  test('after a complete run it sends nothing', async () => {
    const calls: string[] = [];
    const reporter = new GitHubReporter(recordingApi(calls), { sha: 'c'.repeat(40), runUrl: 'u', statuses: true, environment: 'prod', verb: 'sync', dryRun: false, warn: () => undefined });
    reporter.vmStarted('vm01');
    reporter.vmFinished(vm({}));
    await reporter.flush();
    const before = calls.length;
    reporter.finalize({ code: 'internal_error', message: 'x' });
    await reporter.flush();
    expect(calls.length).toBe(before);
  });
});

const report: RunReport = {
  command: 'sync',
  commit: 'b'.repeat(40),
  dry_run: false,
  scan: {
    description: 'the 2 commit(s) of aaaaaaaaaaaa..bbbbbbbbbbbb and the tree of bbbbbbbbbbbb',
    commits_scanned: 2,
    tree_scanned: true,
    findings: [{ rule: 'github-pat', file: 'config/a|b.env', line: 3, commit: 'bbbbbbbbbbbb', author: 'Dev', fingerprint: `${'b'.repeat(40)}:config/a|b.env:github-pat:3`, source: 'commits' }],
    blocked: false,
  },
  vms: [
    vm({}),
    vm({ id: 'vm02', host: '10.0.0.2', state: 'unknown', action: 'none', result: 'failed', rev_before: null, rev_after: null, files_changed: 0, bytes_sent: 0, verified: false, error: { code: 'host_key_mismatch', message: 'host key of vm02 does not match the pinned key' } }),
    vm({ id: 'vm03', host: '10.0.0.3', state: 'up-to-date', action: 'none', rev_before: 'b'.repeat(40), files_changed: 0, bytes_sent: 0, notes: ['took over a stale lock'] }),
  ],
};

test('the job summary is a pure function of the report', () => {
  const text = renderSummary(report, { runUrl: 'https://github.com/acme/app/actions/runs/1', failure: null });
  expect(text).toMatchSnapshot();
  expect(text).toBe(renderSummary(structuredClone(report), { runUrl: 'https://github.com/acme/app/actions/runs/1', failure: null }));
  expect(text).toContain('config/a\\|b.env'); // table cells escaped
});

test('the job summary stays far below GitHub\'s 1 MiB limit, even for a huge fleet', () => {
  const many = { ...report, vms: Array.from({ length: 5000 }, (_, i) => vm({ id: `vm${i}`, notes: ['n'.repeat(200)] })) };
  const text = renderSummary(many, { runUrl: 'u', failure: null });
  expect(Buffer.byteLength(text)).toBeLessThan(600 * 1024);
  expect(text).toContain('summary truncated');
});

test('a run that failed before any VM still gets a summary', () => {
  expect(renderSummary(null, { runUrl: 'u', failure: { code: 'config_invalid', message: 'bad | config' } })).toMatchSnapshot();
});

test('the README action tables are the ones action.yml generates', async () => {
  const { execFileSync } = await import('node:child_process');
  expect(execFileSync(process.execPath, ['scripts/action-docs.mjs', '--check'], { encoding: 'utf8' })).toContain('match action.yml');
});
