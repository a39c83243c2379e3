import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { jest } from '@jest/globals';
import type { SyncOptions } from '../../src/sync/fleet.js';
import type { VmReport } from '../../src/sync/types.js';
import { FakeGitHub } from '../helpers/github-server.js';

/*
 * The action's run() when the engine throws half-way through its fan-out:
 * vm01 finished, vm02 started and never finished, vm03 never started. The
 * engine is replaced by a stand-in that does exactly that (no real trigger
 * exists once the fan-out catches its own errors); GitHub is the loopback
 * fake, reached through the real Octokit client.
 */
const vm01: VmReport = {
  id: 'vm01', host: '192.0.2.1', state: 'behind', action: 'deploy', result: 'success', rev_before: 'a'.repeat(40), rev_after: 'c'.repeat(40),
  files_changed: 1, bytes_sent: 10, duration_ms: 100, verified: true, notes: [], error: null, staged_at: null, flipped_at: null, health: 'skipped', health_output: null, release: null,
};

jest.unstable_mockModule('../../src/sync/fleet.js', () => ({
  runSync: async (_config: unknown, options: SyncOptions) => {
    options.events?.vmStarted?.('vm01');
    options.events?.vmStarted?.('vm02');
    options.events?.vmFinished?.(vm01);
    throw new Error('boom <b>\u001b[31m');
  },
  runScan: async () => {
    throw new Error('not used');
  },
  runInspect: async () => {
    throw new Error('not used');
  },
  runRollback: async () => {
    throw new Error('not used');
  },
  exitCodeFor: () => 1,
  selectVms: (config: { vms: Array<{ id: string }> }, ids?: string[]) => config.vms.filter((vm) => !ids?.length || ids.includes(vm.id)),
}));
const { run } = await import('../../src/main.js');

let dir: string;
let github: FakeGitHub;
const saved = { ...process.env };

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-action-run-'));
  github = await FakeGitHub.start(dir);
  fs.mkdirSync(path.join(dir, 'keys'), { mode: 0o700 });
  for (const id of ['vm01', 'vm02', 'vm03']) fs.writeFileSync(path.join(dir, 'keys', `id_ed25519_${id}`), 'not a key\n', { mode: 0o600 });
  fs.writeFileSync(path.join(dir, 'keys', 'known_hosts'), '');
  fs.writeFileSync(
    path.join(dir, 'vm-sync.yml'),
    [
      'vms:',
      '  vm01: { ip: 192.0.2.1, ssh_user: deploy }',
      '  vm02: { ip: 192.0.2.2, ssh_user: deploy }',
      '  vm03: { ip: 192.0.2.3, ssh_user: deploy }',
      'repository:',
      `  main_repo_path: ${dir}/runner`,
      '  secret_scanning: { enabled: false }',
      'remote_execution:',
      `  key_storage_path: ${dir}/keys`,
      '',
    ].join('\n'),
  );
});
afterAll(async () => {
  process.env = saved;
  process.exitCode = undefined;
  await github?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('an error after the fan-out began: every VM gets a row, final statuses, outputs and a summary', async () => {
  const output = path.join(dir, 'output');
  const summary = path.join(dir, 'summary.md');
  fs.writeFileSync(output, '');
  fs.writeFileSync(summary, '');
  const sha = 'c'.repeat(40);
  Object.assign(process.env, {
    GITHUB_REPOSITORY: 'acme/app',
    GITHUB_SHA: sha,
    GITHUB_RUN_ID: '9',
    GITHUB_EVENT_NAME: 'workflow_dispatch',
    GITHUB_SERVER_URL: github.url,
    GITHUB_API_URL: `${github.url}/api/v3`,
    GITHUB_WORKSPACE: dir,
    GITHUB_OUTPUT: output,
    GITHUB_STEP_SUMMARY: summary,
    INPUT_COMMAND: 'sync',
    INPUT_CONFIG: 'vm-sync.yml',
    'INPUT_GITHUB-TOKEN': 'ghs_test',
    INPUT_ENVIRONMENT: 'prod',
  });
  const stdout = jest.spyOn(process.stdout, 'write').mockImplementation(() => true);
  try {
    await run();
  } finally {
    stdout.mockRestore();
  }
  expect(process.exitCode).toBe(1);

  // Statuses and deployments: vm01 success, vm02 closed with the error, vm03 never touched.
  const calls = github.calls();
  const states = (context: string): unknown[] => calls.filter((c) => c.body.context === context).map((c) => c.body.state);
  expect(states('vm-sync/vm01')).toEqual(['pending', 'success']);
  expect(states('vm-sync/vm02')).toEqual(['pending', 'error']);
  expect(states('vm-sync/vm03')).toEqual([]);
  const vm02Final = calls.filter((c) => c.body.context === 'vm-sync/vm02').at(-1);
  expect(vm02Final?.body.description).toBe('internal_error: the run stopped before this VM finished: boom <b>?[31m');
  // The fake numbers deployments from 1000 in the order they were created.
  const environments = calls.filter((c) => c.call.endsWith('/deployments')).map((c) => c.body.environment);
  const deploymentStates = (environment: string): unknown[] =>
    calls.filter((c) => c.call.endsWith(`/deployments/${1000 + environments.indexOf(environment)}/statuses`)).map((c) => c.body.state);
  expect([...environments].sort()).toEqual(['prod/vm01', 'prod/vm02']);
  expect(deploymentStates('prod/vm01')).toEqual(['in_progress', 'success']);
  expect(deploymentStates('prod/vm02')).toEqual(['in_progress', 'error']);

  // Outputs: one row per selected VM, in config order.
  const text = fs.readFileSync(output, 'utf8');
  const outputs = Object.fromEntries([...text.matchAll(/^(.+?)<<(.+)\n([\s\S]*?)\n\2$/gm)].map((m) => [m[1], m[3]]));
  expect(outputs.failed).toBe('vm02,vm03');
  expect(outputs.synced).toBe('vm01');
  expect(outputs.commit).toBe(sha);
  const results = JSON.parse(outputs.results) as { vms: VmReport[] };
  expect(results.vms.map((vm) => [vm.id, vm.result, vm.error?.code ?? null])).toEqual([
    ['vm01', 'success', null],
    ['vm02', 'failed', 'internal_error'],
    ['vm03', 'failed', 'internal_error'],
  ]);
  expect(results.vms[1].error?.message).toBe('the run stopped before vm02 finished (boom <b>?[31m): what it serves now is unknown; check it with the Action with command: status and vms: vm02, then run the deploy again.');
  expect(results.vms[2].error?.message).toBe('the run stopped before vm03 was started (boom <b>?[31m); nothing was changed on it. Run the deploy again.');

  // The summary has the three rows and the failure, escaped.
  const md = fs.readFileSync(summary, 'utf8');
  expect(md).toContain('## vm-sync sync: 1 deployed, 2 failed');
  expect(md).toContain('❌ `internal_error`: boom &lt;b&gt;?\\[31m');
  expect(md).toMatch(/^\| vm03 \| 192\.0\.2\.3 \| unknown \| none \| ❌ failed \(`internal_error`\) \|/m);
});
