import fs from 'node:fs';
import path from 'node:path';
import { FakeGitHub } from '../helpers/github-server.js';
import { ACTION_TOKEN, runAction as runBundledAction, type ActionRun } from '../helpers/action-run.js';
import { plantedSecrets, secretFiles, secretFragments } from '../helpers/secrets.js';
import { snapshotTree, World } from '../helpers/world.js';

/*
 * The committed bundle dist/index.js, run the way the Actions runner runs it
 * (test/helpers/action-run.ts), against a loopback fake GitHub that records
 * every request and serves the repository over smart HTTP.
 */
const TOKEN = ACTION_TOKEN;
let world: World;
let github: FakeGitHub;
/** Command lines of every process seen while an action run was in progress. */
const processes: string[] = [];

beforeAll(async () => {
  world = await World.create(['vm01', 'vm02']);
  github = await FakeGitHub.start(path.dirname(world.ws.origin));
  // The runner-host clone comes from the fake GitHub over HTTP, so the fetch needs the token.
  fs.writeFileSync(world.configPath, fs.readFileSync(world.configPath, 'utf8').replace(/url: .*/, `url: ${github.url}${FakeGitHub.gitPath(world.ws.origin)}`));
});
afterAll(async () => {
  await github?.stop();
  world?.destroy();
});

async function runAction(inputs: Record<string, string>, event: { name: string; payload: object; sha: string }): Promise<ActionRun> {
  const run = await runBundledAction(world, github, inputs, event);
  processes.push(...run.processes);
  return run;
}

/** stdout/stderr without the runner's mask-registration lines (which carry the value to mask by design). */
function visible(run: ActionRun): string {
  return (run.stdout + run.stderr)
    .split('\n')
    .filter((l) => !l.startsWith('::add-mask::'))
    .join('\n');
}

test('a push deploys, posts the exact statuses and deployments, writes outputs and the summary', async () => {
  const sha = world.ws.commit({ 'index.html': '<h1>v1</h1>\n', 'app/main.py': 'print(1)\n' }, 'first deploy');
  world.ws.push();

  const run = await runAction({ command: 'sync', environment: 'production' }, { name: 'push', sha, payload: { before: '0'.repeat(40), after: sha, ref: 'refs/heads/main' } });

  expect(run.stderr).toBe('');
  expect(run.stdout).not.toMatch(/^::(warning|error)/m);
  expect(run.code).toBe(0);
  for (const id of ['vm01', 'vm02']) expect(world.sentinel(id)).toBe(`${sha}\n`);

  // The exact API requests, in order per context.
  const calls = github.calls();
  const statuses = calls.filter((c) => c.call.startsWith('POST /api/v3/repos/acme/app/statuses/'));
  expect(new Set(statuses.map((c) => c.call))).toEqual(new Set([`POST /api/v3/repos/acme/app/statuses/${sha}`]));
  const byContext = (context: string): Array<[unknown, unknown]> => statuses.filter((c) => c.body.context === context).map((c) => [c.body.state, c.body.description]);
  expect(byContext('vm-sync/secret-scan')).toEqual([
    ['pending', 'scanning the commits and the tree being deployed'],
    ['success', 'clean: 1 commit and the tree'],
  ]);
  for (const id of ['vm01', 'vm02']) {
    const [pending, done] = byContext(`vm-sync/${id}`);
    expect(pending).toEqual(['pending', 'deploying']);
    expect(done[0]).toBe('success');
    expect(done[1]).toMatch(new RegExp(`^deployed ${sha.slice(0, 7)}: 2 files, \\d+ bytes in \\d+\\.\\ds$`));
  }
  for (const status of statuses) expect(status.body.target_url).toBe(`${github.url}/acme/app/actions/runs/4242`);
  const deployments = calls.filter((c) => c.call === 'POST /api/v3/repos/acme/app/deployments');
  expect(deployments.map((c) => c.body).sort((a, b) => String(a.environment).localeCompare(String(b.environment)))).toEqual([
    { ref: sha, environment: 'production/vm01', description: 'vm-sync to vm01', payload: { vm: 'vm01' }, auto_merge: false, required_contexts: [], transient_environment: false },
    { ref: sha, environment: 'production/vm02', description: 'vm-sync to vm02', payload: { vm: 'vm02' }, auto_merge: false, required_contexts: [], transient_environment: false },
  ]);
  const deploymentStatuses = calls.filter((c) => /\/deployments\/\d+\/statuses$/.test(c.call)).map((c) => c.body.state);
  expect(deploymentStatuses.sort()).toEqual(['in_progress', 'in_progress', 'success', 'success']);
  for (const request of github.api) expect(request.authorization).toBe(`token ${TOKEN}`);

  // The runner-host clone was fetched with the token as a header, which never reached .git/config.
  expect(github.git.length).toBeGreaterThan(0);
  const basic = `basic ${Buffer.from(`x-access-token:${TOKEN}`).toString('base64')}`;
  for (const request of github.git) expect(request.authorization?.toLowerCase()).toBe(basic.toLowerCase());
  expect(fs.readFileSync(path.join(world.runnerRepo, '.git', 'config'), 'utf8')).not.toMatch(/extraheader|x-access-token|T0k3n/i);

  // Outputs.
  expect(run.outputs.commit).toBe(sha);
  expect(run.outputs.synced).toBe('vm01,vm02');
  expect(run.outputs.skipped).toBe('');
  expect(run.outputs.failed).toBe('');
  expect(run.outputs.findings).toBe('0');
  expect(JSON.parse(run.outputs.results).vms.map((vm: { id: string; result: string }) => [vm.id, vm.result])).toEqual([['vm01', 'success'], ['vm02', 'success']]);

  // Logs grouped per VM; the summary has a row per VM; the token is never visible.
  expect(run.stdout).toMatch(/^::group::vm01: success$/m);
  // The engine's debug lines are the runner's debug lines (shown with ACTIONS_STEP_DEBUG), inside the VM's group.
  const group = run.stdout.slice(run.stdout.indexOf('::group::vm01: success'));
  expect(group.slice(0, group.indexOf('::endgroup::'))).toMatch(/^::debug::switching the live path to /m);
  expect(run.summary).toContain('## vm-sync sync: 2 deployed\n');
  expect(run.summary).toMatch(/^\| vm01 \| 127\.0\.0\.1 \| fresh \| deploy \| ✅ success \| — → `[0-9a-f]{7}` \| 2 \|/m);
  expect(run.stdout).toContain(`::add-mask::${TOKEN}`);
  expect(visible(run)).not.toContain(TOKEN);
  expect(run.summary).not.toContain(TOKEN);
  // ...nor in any process's command line during the run (the fetch header travels in the environment).
  expect(processes.some((p) => p.includes('dist/index.js'))).toBe(true);
  expect(processes.some((p) => /^git (clone|fetch)/.test(p))).toBe(true);
  expect(processes.filter((p) => p.includes(TOKEN) || p.includes(basic.split(' ')[1]))).toEqual([]);
});

test('a failing status API only warns; the deploy still succeeds and is reported', async () => {
  github.failStatusesWith = 500;
  try {
    const sha = world.ws.commit({ 'index.html': '<h1>v2</h1>\n' }, 'second');
    world.ws.push();
    const run = await runAction({ command: 'sync' }, { name: 'workflow_dispatch', sha, payload: { inputs: {} } });
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(/^::warning::could not post commit status vm-sync\/vm01: .*\(the deploy itself is unaffected\)$/m);
    expect(world.sentinel('vm01')).toBe(`${sha}\n`);
    expect(run.outputs.synced).toBe('vm01,vm02');
  } finally {
    github.failStatusesWith = null;
  }
});

test('secrets block the sync: exit 1 with secrets_found, annotations on file and line, nothing sent to a VM, no secret visible', async () => {
  const secrets = plantedSecrets();
  const before = ['vm01', 'vm02'].map((id) => snapshotTree(world.vm(id).home));
  const base = world.ws.git(world.ws.work, ['rev-parse', 'HEAD']);
  const sha = world.ws.commit(secretFiles(secrets), 'oops');
  world.ws.push();
  const sarif = 'scan.sarif';
  const run = await runAction({ command: 'sync', 'sarif-path': sarif }, { name: 'push', sha, payload: { before: base, after: sha, ref: 'refs/heads/main' } });

  expect(run.code).toBe(1);
  expect(run.stdout).toMatch(/^::error::secrets_found: \d+ possible secrets?: the deploy was blocked and no VM was sent it$/m);
  expect(run.stdout).toMatch(/^::error title=vm-sync secret scan%3A github-pat,file=config\/github.env,line=1::Possible secret \(github-pat\) added in commit [0-9a-f]{12}/m);
  expect(['vm01', 'vm02'].map((id) => snapshotTree(world.vm(id).home))).toEqual(before);
  expect(Number(run.outputs.findings)).toBeGreaterThanOrEqual(4);
  expect(run.summary).toContain('the deploy was blocked, no VM was sent it');
  const statuses = github.calls().filter((c) => c.call === `POST /api/v3/repos/acme/app/statuses/${sha}` && c.body.context === 'vm-sync/secret-scan');
  expect(statuses.map((c) => c.body.state)).toEqual(['pending', 'failure']);
  const texts = [visible(run), run.summary, run.outputs.results, fs.readFileSync(path.join(world.dir, sarif), 'utf8')].join('\n');
  for (const fragment of secretFragments(secrets)) expect(texts.includes(fragment)).toBe(false);

  world.ws.commit(Object.fromEntries(Object.keys(secretFiles(secrets)).map((f) => [f, null])), 'remove secrets');
  world.ws.push();
});

test('bad input fails clearly and still writes a summary', async () => {
  const run = await runAction({ command: 'deploy-everything' }, { name: 'workflow_dispatch', sha: 'a'.repeat(40), payload: {} });
  expect(run.code).toBe(1);
  expect(run.stdout).toMatch(/^::error::config_invalid: input command must be sync, rollback, verify, status, scan or report, not 'deploy-everything'$/m);
  expect(run.summary).toContain('vm-sync: failed before reaching any VM');
  expect(JSON.parse(run.outputs.results)).toMatchObject({ commit: null, vms: [], error: { code: 'config_invalid' } });
  expect(run.outputs.failed).toBe('');
});

test('a run that fails before the fan-out still writes every output, closes its statuses and writes a summary', async () => {
  // A real failure before any VM: the git remote does not answer (nothing listens on port 9).
  const config = path.join(world.dir, 'unreachable.yml');
  fs.writeFileSync(
    config,
    fs.readFileSync(world.configPath, 'utf8').replace(/url: .*/, 'url: http://127.0.0.1:9/git/app.git').replace(/main_repo_path: .*/, `main_repo_path: ${path.join(world.dir, 'runner', 'elsewhere')}`),
  );
  const sha = world.ws.git(world.ws.work, ['rev-parse', 'HEAD']);
  const before = github.api.length;
  const run = await runAction({ command: 'sync', config: 'unreachable.yml', environment: 'production' }, { name: 'workflow_dispatch', sha, payload: {} });

  expect(run.code).toBe(1);
  expect(run.stdout).toMatch(/^::error::git_failed: /m);
  expect(Object.keys(run.outputs).sort()).toEqual(['commit', 'failed', 'findings', 'results', 'skipped', 'synced']);
  expect({ ...run.outputs, results: undefined }).toEqual({ commit: '', failed: '', findings: '0', results: undefined, skipped: '', synced: '' });
  const results = JSON.parse(run.outputs.results) as { command: string; commit: null; vms: unknown[]; error: { code: string; message: string } };
  expect([results.command, results.commit, results.vms, results.error.code]).toEqual(['sync', null, [], 'git_failed']);
  expect(run.summary).toContain('## vm-sync: failed before reaching any VM');
  expect(run.summary).toContain('❌ `git_failed`: ');
  // Every status this run set to pending was closed.
  const statuses = github.calls().slice(before).filter((c) => c.call.includes('/statuses/'));
  const last = new Map(statuses.map((c) => [c.body.context, c.body.state]));
  expect([...last]).toEqual([['vm-sync/secret-scan', 'error']]);
  expect(statuses.at(-1)?.body.description).toMatch(/^git_failed: the run stopped before the scan was reported: /);
});

test('text a VM controls reaches the summary, statuses, annotations and outputs escaped and bounded', async () => {
  const sentinel = path.join(world.target('vm01'), '.sync_rev');
  const original = fs.readFileSync(sentinel);
  const planted = '\u001b[31m<img src=x onerror=alert(1)>[x](http://e)|`\u009b';
  fs.writeFileSync(sentinel, `${planted}\n`);
  try {
    const sha = world.ws.git(world.ws.work, ['rev-parse', 'HEAD']);
    const before = github.api.length;
    const run = await runAction({ command: 'verify' }, { name: 'workflow_dispatch', sha, payload: {} });

    expect(run.code).toBe(1);
    const results = JSON.parse(run.outputs.results) as { vms: Array<{ id: string; error: { code: string; message: string } | null }> };
    expect(results.vms.find((vm) => vm.id === 'vm01')?.error?.code).toBe('sentinel_unreadable');
    expect(run.outputs.failed.split(',')).toContain('vm01');
    // eslint-disable-next-line no-control-regex
    const control = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/;
    for (const [channel, text] of Object.entries({ stdout: run.stdout, summary: run.summary, results: run.outputs.results })) {
      expect([channel, control.test(text)]).toEqual([channel, false]);
    }
    expect(run.summary.includes('<img')).toBe(false);
    expect(run.summary).toContain('&lt;img src=x onerror=alert(1)&gt;\\[x\\](http://e)\\|');
    expect(Buffer.byteLength(run.outputs.results)).toBeLessThan(64 * 1024);
    const status = github.calls().slice(before).filter((c) => c.body.context === 'vm-sync/vm01').at(-1);
    expect(status?.body.state).toBe('error');
    expect(String(status?.body.description).length).toBeLessThanOrEqual(140);
    expect(control.test(String(status?.body.description))).toBe(false);
  } finally {
    fs.writeFileSync(sentinel, original);
  }
});

test('command: rollback flips every VM back to its previous release: no transfer, no scan, no commit status, a summary', async () => {
  const deploy = async (content: string): Promise<string> => {
    let before = '0'.repeat(40); // the branch's first push, when this test runs alone
    try {
      before = world.ws.git(world.ws.work, ['rev-parse', 'HEAD']);
    } catch {
      // no commit yet
    }
    const sha = world.ws.commit({ 'index.html': content }, content.trim());
    world.ws.push();
    const run = await runAction({ command: 'sync' }, { name: 'push', sha, payload: { before, after: sha, ref: 'refs/heads/main' } });
    expect([run.code, run.outputs.failed]).toEqual([0, '']);
    return sha;
  };
  const older = await deploy('<h1>before the rollback</h1>\n');
  const newer = await deploy('<h1>the release rolled back</h1>\n');
  for (const id of ['vm01', 'vm02']) expect(world.sentinel(id)).toBe(`${newer}\n`);
  const callsBefore = github.calls().length;

  const run = await runAction({ command: 'rollback' }, { name: 'workflow_dispatch', sha: newer, payload: {} });

  expect(run.code).toBe(0);
  for (const id of ['vm01', 'vm02']) expect(world.sentinel(id)).toBe(`${older}\n`);
  const results = JSON.parse(run.outputs.results);
  expect(results.command).toBe('rollback');
  expect(results.vms.map((vm: { id: string; action: string; result: string; bytes_sent: number; rev_before: string; rev_after: string }) => [vm.id, vm.action, vm.result, vm.bytes_sent, vm.rev_before, vm.rev_after])).toEqual([
    ['vm01', 'rollback', 'success', 0, newer, older],
    ['vm02', 'rollback', 'success', 0, newer, older],
  ]);
  // No scan ran and no status was posted: the pushed commit's verdict is not the rollback's to change.
  expect(results.scan).toBeNull();
  expect(github.calls().slice(callsBefore).filter((c) => c.call.includes('/statuses/'))).toEqual([]);
  expect(run.summary).toContain('## vm-sync rollback: 2 rolled back\n');

  // Rolling back to a commit no VM keeps fails with no_release, and changes nothing.
  const never = world.ws.commit({ 'index.html': '<h1>never deployed</h1>\n' }, 'never deployed');
  world.ws.push();
  const refused = await runAction({ command: 'rollback', to: never }, { name: 'workflow_dispatch', sha: never, payload: {} });
  expect(refused.code).toBe(1);
  expect(JSON.parse(refused.outputs.results).vms.map((vm: { error: { code: string } | null }) => vm.error?.code)).toEqual(['no_release', 'no_release']);
  expect(refused.stdout).toMatch(/^::error::no_release: /m);
  for (const id of ['vm01', 'vm02']) expect(world.sentinel(id)).toBe(`${older}\n`);
});

test('sync checks that the deployed branch is protected: a warning in the log and the summary when it is not, a notice when it cannot tell, never a failure', async () => {
  const sha = world.ws.git(world.ws.work, ['rev-parse', 'HEAD']);
  const cases: Array<{ answer: boolean | number | { protected: boolean; contexts: string[] } | undefined; token?: string; log: RegExp | null; summary: string | null }> = [
    {
      answer: false,
      log: /^::warning title=vm-sync%3A branch protection::branch main of acme\/app is not protected: anyone who can push to it deploys what they push, unreviewed, and can force-push or delete it\. To fix: protect it \(Settings → Branches, or a ruleset\): require a pull request before merging with at least one approving review, require the status check vm-sync\/secret-scan, and block direct pushes, force pushes and deletions \(README: Branch protection\)$/m,
      summary:
        '\n⚠️ **Branch protection:** branch main of acme/app is not protected: anyone who can push to it deploys what they push, unreviewed, and can force-push or delete it. To fix: protect it (Settings → Branches, or a ruleset): require a pull request before merging with at least one approving review, require the status check vm-sync/secret-scan, and block direct pushes, force pushes and deletions (README: Branch protection).\n',
    },
    { answer: { protected: true, contexts: ['vm-sync/secret-scan', 'ci'] }, log: null, summary: null },
    { answer: { protected: true, contexts: ['ci'] }, log: /^::notice title=vm-sync%3A branch protection::branch main of acme\/app is protected, but its required status checks \(ci\) do not include vm-sync\/secret-scan\./m, summary: 'ℹ️ **Branch protection:** branch main of acme/app is protected, but its required status checks (ci) do not include vm-sync/secret-scan.' },
    { answer: 403, log: /^::notice title=vm-sync%3A branch protection::could not check whether branch main of acme\/app is protected \(HTTP 403: Resource not accessible by integration\)\. To fix: give the token read access/m, summary: 'ℹ️ **Branch protection:** could not check whether branch main of acme/app is protected (HTTP 403: Resource not accessible by integration).' },
    { answer: undefined, log: /^::notice title=vm-sync%3A branch protection::could not check whether branch main of acme\/app is protected \(HTTP 404: Branch not found\)/m, summary: 'ℹ️ **Branch protection:** could not check whether branch main of acme/app is protected (HTTP 404: Branch not found).' },
    { answer: false, token: '', log: /^::notice title=vm-sync%3A branch protection::could not check whether branch main of acme\/app is protected \(no github-token\)/m, summary: '(no github-token)' },
  ];
  for (const c of cases) {
    github.branches = c.answer === undefined ? {} : { main: c.answer };
    const before = github.api.length;
    const run = await runAction({ command: 'sync', ...(c.token === undefined ? {} : { 'github-token': c.token }) }, { name: 'workflow_dispatch', sha, payload: {} });
    const label = JSON.stringify(c.answer);
    expect([label, run.code, run.outputs.failed]).toEqual([label, 0, '']);
    // Exactly one request, the documented one, with the job's token; none without a token.
    const asked = github.api.slice(before).filter((r) => r.path.includes('/branches/'));
    if (c.token === '') expect(asked).toEqual([]);
    else expect(asked.map((r) => [r.method, r.path, r.authorization])).toEqual([['GET', '/api/v3/repos/acme/app/branches/main', `token ${TOKEN}`]]);
    if (c.log) expect(run.stdout).toMatch(c.log);
    else expect([label, run.stdout.match(/^::(warning|notice).*branch protection.*$/m)]).toEqual([label, null]);
    if (c.summary) expect(run.summary).toContain(c.summary);
    else expect(run.summary).not.toContain('Branch protection');
    expect(visible(run)).not.toContain(TOKEN);
  }
  github.branches = {};
});

test('a VM whose key is group-readable fails alone with key_invalid and the chmod that fixes it; the other VM is checked', async () => {
  const key = path.join(world.fleet.keyDir, 'id_ed25519_vm02');
  fs.chmodSync(key, 0o640);
  try {
    const sha = world.ws.git(world.ws.work, ['rev-parse', 'HEAD']);
    const run = await runAction({ command: 'status' }, { name: 'workflow_dispatch', sha, payload: {} });
    expect(run.code).toBe(1);
    const results = JSON.parse(run.outputs.results) as { vms: Array<{ id: string; result: string; error: { code: string; message: string } | null }> };
    expect(results.vms.map((vm) => [vm.id, vm.result, vm.error?.code ?? null])).toEqual([
      ['vm01', 'success', null],
      ['vm02', 'failed', 'key_invalid'],
    ]);
    expect(run.outputs.failed).toBe('vm02');
    expect(run.stdout).toContain(`::error title=vm-sync%3A vm02 failed::vm02: key_invalid: the SSH key for vm02, ${key}, is readable by other users (mode 640): OpenSSH refuses such a key, and so does vm-sync: run chmod 600 ${key}.`);
    expect(run.summary).toContain('key\\_invalid');
  } finally {
    fs.chmodSync(key, 0o600);
  }
});
