import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { RunnerRepo } from '../../src/git/repo.js';
import { runSecretScan } from '../../src/scan/gate.js';
import { planScan } from '../../src/scan/plan.js';
import { silentEvents } from '../../src/sync/types.js';
import { plantedSecrets, secretFiles, secretFragments } from '../helpers/secrets.js';
import { snapshotTree, World } from '../helpers/world.js';

/*
 * The secret-scan gate against the real gitleaks binary (on PATH; .ci/run
 * builds it). Each test pushes to the origin; the runner-host clone fetches.
 */
const ZERO = '0'.repeat(40);
let world: World;
const secrets = plantedSecrets();
const fragments = secretFragments(secrets);

beforeAll(async () => {
  world = await World.create(['vm01', 'vm02']);
  world.ws.commit({ 'README.md': '# app\n', 'src/app.py': 'print("ok")\n' }, 'clean start');
  world.ws.push();
  expect((await world.cli(['sync'])).code).toBe(0);
});
afterAll(() => world?.destroy());

/** Asserts that no fragment of any planted secret appears in the given texts. */
function expectNoSecret(...texts: string[]): void {
  const all = texts.join('\n');
  for (const fragment of fragments) {
    if (all.includes(fragment)) throw new Error(`a secret fragment reached the output: ${fragment.slice(0, 4)}…`);
  }
}

/** The runner-host clone, fetched, as the scan sees it. */
function runnerRepo(): RunnerRepo {
  world.ws.git(world.runnerRepo, ['fetch', '--quiet', 'origin', '+refs/heads/*:refs/remotes/origin/*']);
  return new RunnerRepo(world.runnerRepo, 'origin', 'main', null);
}

const settings = { enabled: true, tool: 'gitleaks' as const, configPath: '.gitleaks.toml', blockOnSecrets: true, gitleaksPath: null, timeoutS: 600 };

test('a clean push scans its commits and tree and lets the deploy through', async () => {
  const before = world.ws.git(world.ws.work, ['rev-parse', 'HEAD']);
  world.ws.commit({ 'src/app.py': 'print("v2")\n' }, 'clean change 1');
  const after = world.ws.commit({ 'src/util.py': 'X = 1\n' }, 'clean change 2');
  world.ws.push();
  const scan = await world.cli(['scan', '--range', `${before}..${after}`], { config: true });
  expect(scan.code).toBe(0);
  expect(scan.json.scan).toMatchObject({ commits_scanned: 2, tree_scanned: true, findings: [], blocked: false });
  expect((await world.cli(['sync'])).code).toBe(0);
});

test('a push adding secrets blocks the sync before any byte reaches a VM; no secret byte is printed or written', async () => {
  const treesBefore = ['vm01', 'vm02'].map((id) => snapshotTree(world.vm(id).home));
  const good = world.ws.git(world.ws.work, ['rev-parse', 'HEAD']);
  const bad = world.ws.commit(secretFiles(secrets), 'add config (with secrets)');
  world.ws.push();
  const sarif = path.join(world.dir, 'findings.sarif');

  const run = await world.cli(['sync', '--sarif', sarif]);
  const table = await world.cli(['sync'], { json: false });
  // Take the secrets out of the tree again for the next tests (they stay in history, before the next bases).
  world.ws.commit(Object.fromEntries(Object.keys(secretFiles(secrets)).map((f) => [f, null])), 'remove secrets');
  world.ws.push();

  expect(run.code).toBe(3);
  expect(table.code).toBe(3);
  // The VMs were connected and locked while the scan ran; each was left as it was, and its row says why.
  expect(run.json.vms.map((vm) => [vm.id, vm.result, vm.error?.code, vm.rev_after, vm.bytes_sent, vm.staged_at])).toEqual(
    ['vm01', 'vm02'].map((id) => [id, 'failed', 'secrets_found', good, 0, null]),
  );
  expect(run.json.vms[0].error?.message).toMatch(/nothing was sent to this VM/);
  expect(run.json.scan?.blocked).toBe(true);
  const rules = new Set(run.json.scan?.findings.map((f) => f.rule));
  for (const rule of ['github-pat', 'slack-bot-token', 'private-key', 'aws-access-token']) expect(rules).toContain(rule);
  const github = run.json.scan?.findings.find((f) => f.rule === 'github-pat' && f.source === 'commits');
  expect(github).toEqual({ rule: 'github-pat', file: 'config/github.env', line: 1, commit: bad.slice(0, 12), author: 'Demo Dev', fingerprint: `${bad}:config/github.env:github-pat:1`, source: 'commits' });
  expect(table.stdout).toMatch(/DEPLOY BLOCKED, no VM was sent it/);
  expect(run.stderr).toMatch(/vm-sync: secrets_found: \d+ possible secrets? in what would be deployed; the deploy was blocked and no VM was sent it/);
  expect(table.stdout).toContain(`github-pat in config/github.env:1 (commit ${bad.slice(0, 12)} by Demo Dev)`);

  // Nothing reached a VM: the same trees, state directories included (no staged release, no lock left).
  expect(['vm01', 'vm02'].map((id) => snapshotTree(world.vm(id).home))).toEqual(treesBefore);

  // No fragment of any secret in stdout, stderr, the JSON document, the table or the SARIF file.
  const sarifText = fs.readFileSync(sarif, 'utf8');
  expect(JSON.parse(sarifText).runs[0].results.length).toBe(run.json.scan?.findings.length);
  expectNoSecret(run.stdout, run.stderr, table.stdout, table.stderr, sarifText);

  // The committed bundle, as its own process with a private TMPDIR: the same
  // verdict, no secret in its output or SARIF, and no file left behind.
  const tmp = path.join(world.dir, 'private-tmp');
  fs.mkdirSync(tmp);
  const bundleSarif = path.join(world.dir, 'bundle.sarif');
  const bundle = spawnSync(process.execPath, [path.join(process.cwd(), 'dist', 'cli.js'), 'scan', '--config', world.configPath, '--range', `${good}..${bad}`, '--sarif', bundleSarif, '--json'], {
    encoding: 'utf8',
    env: { ...process.env, TMPDIR: tmp },
  });
  expect(bundle.status).toBe(3);
  expect(JSON.parse(bundle.stdout).scan.findings.length).toBeGreaterThanOrEqual(4);
  expectNoSecret(bundle.stdout, bundle.stderr, fs.readFileSync(bundleSarif, 'utf8'));
  expect(fs.readdirSync(tmp)).toEqual([]);
});

test('a secret added and removed within one push is still caught (history, not just the tree)', async () => {
  const base = world.ws.git(world.ws.work, ['rev-parse', 'HEAD']);
  world.ws.commit({ 'notes.txt': `token: ${secrets.github}\n` }, 'oops');
  const head = world.ws.commit({ 'notes.txt': 'nothing here\n' }, 'remove it');
  world.ws.push();
  const scan = await world.cli(['scan', '--range', `${base}..${head}`]);
  expect(scan.code).toBe(3);
  expect(scan.json.scan?.findings.map((f) => [f.rule, f.source])).toEqual([['github-pat', 'commits']]);
  expectNoSecret(scan.stdout, scan.stderr);
});

test('a secret that arrives through a merge is caught: from the side branch, and from a conflict resolution', async () => {
  const base = world.ws.git(world.ws.work, ['rev-parse', 'HEAD']);
  world.ws.git(world.ws.work, ['checkout', '--quiet', '-b', 'side']);
  world.ws.commit({ 'side.env': `SLACK=${secrets.slack}\n` }, 'side work');
  world.ws.commit({ 'shared.txt': 'side version\n' }, 'side edits shared');
  world.ws.git(world.ws.work, ['checkout', '--quiet', 'main']);
  world.ws.commit({ 'shared.txt': 'main version\n' }, 'main edits shared');
  try {
    world.ws.git(world.ws.work, ['merge', '--quiet', '--no-edit', 'side']);
  } catch {
    // conflict on shared.txt, resolved below with a secret only the merge commit holds
  }
  fs.writeFileSync(path.join(world.ws.work, 'shared.txt'), `aws_access_key_id = ${secrets.awsKeyId}\n`);
  fs.rmSync(path.join(world.ws.work, 'side.env'));
  world.ws.git(world.ws.work, ['add', '-A']);
  world.ws.git(world.ws.work, ['commit', '--quiet', '--no-edit']);
  const head = world.ws.git(world.ws.work, ['rev-parse', 'HEAD']);
  world.ws.push();

  const scan = await world.cli(['scan', '--range', `${base}..${head}`]);
  expect(scan.code).toBe(3);
  const found = scan.json.scan?.findings.filter((f) => f.source === 'commits').map((f) => [f.rule, f.file]);
  expect(found).toEqual(expect.arrayContaining([['slack-bot-token', 'side.env'], ['aws-access-token', 'shared.txt']]));
  // The AWS key only ever existed in the merge commit's resolution; it is in the tree too.
  expect(scan.json.scan?.findings.filter((f) => f.source === 'tree').map((f) => f.file)).toEqual(['shared.txt']);
  world.ws.commit({ 'shared.txt': 'clean\n' }, 'clean shared');
  world.ws.push();
});

test('a merge is read against its first parent: what it adds there is scanned, what only its other side lacks is not read again', async () => {
  const base = world.ws.git(world.ws.work, ['rev-parse', 'HEAD']);
  // An old topic branch: forked here, one commit of its own.
  world.ws.git(world.ws.work, ['checkout', '--quiet', '-b', 'old-topic']);
  world.ws.commit({ 'topic.txt': 'topic work\n' }, 'topic work');
  world.ws.git(world.ws.work, ['checkout', '--quiet', 'main']);
  // Meanwhile main moves on: many lines the topic branch never saw, one of them a secret.
  const main1 = world.ws.commit({ 'main-notes.txt': `${Array.from({ length: 50 }, (_, i) => `note ${i}`).join('\n')}\n`, 'deploy.env': `TOKEN=${secrets.github}\n` }, 'main work');
  world.ws.push();
  // The secret is found in main's own commit...
  const first = await world.cli(['scan', '--range', `${base}..${main1}`]);
  expect(first.code).toBe(3);
  expect(first.json.scan?.findings.filter((f) => f.source === 'commits').map((f) => f.commit)).toEqual([main1.slice(0, 12)]);
  // ...and removed again, so main is clean.
  const main2 = world.ws.commit({ 'deploy.env': null }, 'drop the token');
  // The topic branch merged with its changes discarded (-s ours): against its first parent the merge adds
  // nothing. Against its second parent it would "add" all of main's work since the fork; that is not read
  // again (it is main's own commits, scanned above), so the merge is neither a finding nor a scanned commit.
  world.ws.git(world.ws.work, ['merge', '--quiet', '--no-edit', '-s', 'ours', 'old-topic']);
  const merge = world.ws.git(world.ws.work, ['rev-parse', 'HEAD']);
  world.ws.push();
  const scan = await world.cli(['scan', '--range', `${main2}..${merge}`]);
  expect(scan.code).toBe(0);
  expect(scan.json.scan).toMatchObject({ commits_scanned: 1, findings: [], blocked: false }); // the topic commit only
  // A secret the merge itself brings (a line its first parent lacks) is still found: see the conflict-resolution test.
  expectNoSecret(first.stdout, first.stderr, scan.stdout, scan.stderr);
});

test('push shapes: new branch scans only its own commits; force push scans from the merge base; delete scans nothing', async () => {
  const repo = runnerRepo();
  // New branch with two commits, one secret.
  world.ws.git(world.ws.work, ['checkout', '--quiet', '-b', 'feature']);
  world.ws.commit({ 'f1.txt': 'one\n' }, 'feature 1');
  const tip = world.ws.commit({ 'f2.env': `GITHUB_TOKEN=${secrets.github}\n` }, 'feature 2');
  world.ws.git(world.ws.work, ['push', '--quiet', 'origin', 'feature']);
  const fresh = await planScan(runnerRepo(), { kind: 'push', before: ZERO, after: tip, branch: 'refs/heads/feature' });
  expect(fresh.commits?.count).toBe(2);
  expect(fresh.description).toMatch(/^new branch: the 2 commits no other remote branch has/);

  // Force push: rewrite feature onto a different second commit.
  world.ws.git(world.ws.work, ['reset', '--quiet', '--hard', 'HEAD~1']);
  const rewritten = world.ws.commit({ 'f3.txt': 'three\n' }, 'feature 2 rewritten');
  world.ws.git(world.ws.work, ['push', '--quiet', '--force', 'origin', 'feature']);
  const forced = await planScan(runnerRepo(), { kind: 'push', before: tip, after: rewritten, branch: 'feature' });
  expect(forced.commits?.count).toBe(1);
  expect(forced.description).toMatch(/^force push: the 1 commit after the merge base/);
  const exportDir = path.join(world.dir, 'export-forced');
  await repo.exportTree(rewritten, exportDir);
  const clean = await runSecretScan({ settings, plan: forced, repoDir: world.runnerRepo, countCommitsAddingText: (s) => repo.countCommitsAddingText(s), exportDir, events: silentEvents });
  expect(clean).toMatchObject({ commits_scanned: 1, findings: [], blocked: false });

  const deleted = await planScan(repo, { kind: 'push', before: rewritten, after: ZERO });
  expect(deleted).toEqual({ head: null, commits: null, description: 'branch deleted: nothing to deploy, nothing to scan', trusted: { commit: null, reason: 'nothing to scan' } });
  world.ws.git(world.ws.work, ['checkout', '--quiet', 'main']);
});

test('a shallow clone cannot prove its range: scan_range_unresolved, never a pass', async () => {
  const shallow = path.join(world.dir, 'shallow');
  execFileSync('git', ['clone', '--quiet', '--depth', '1', `file://${world.ws.origin}`, shallow]);
  const head = world.ws.git(world.ws.work, ['rev-parse', 'HEAD']);
  const base = world.ws.git(world.ws.work, ['rev-parse', 'HEAD~3']);
  const scan = await world.cli(['scan', '--repo', shallow, '--range', `${base}..${head}`]);
  expect(scan.code).toBe(1);
  expect(scan.json.error?.code).toBe('scan_range_unresolved');
  expect(scan.stderr).toContain('fetch-depth: 0');
});

test('a gitleaks whose git log saw no commit, where the range adds text: scan_range_unresolved, never a pass', async () => {
  const real = execFileSync('sh', ['-c', 'command -v gitleaks'], { encoding: 'utf8' }).trim();
  const wrapper = path.join(world.dir, 'gitleaks-blind');
  // As gitleaks 8.27+ does when its own git log fails: "0 commits scanned", no leaks, exit 0.
  fs.writeFileSync(wrapper, `#!/bin/sh\nif [ "$1" = git ]; then echo "2:51PM INF 0 commits scanned." >&2; echo "2:51PM INF no leaks found" >&2; r=""; for a in "$@"; do case $p in --report-path) r=$a ;; esac; p=$a; done; echo '[]' > "$r"; exit 0; fi\nexec "${real}" "$@"\n`, { mode: 0o755 });
  const head = world.ws.git(world.ws.work, ['rev-parse', 'HEAD']);
  const base = world.ws.git(world.ws.work, ['rev-parse', 'HEAD~3']);
  world.writeConfig({ repository: [`secret_scanning: { gitleaks_path: ${wrapper} }`] });
  try {
    const scan = await world.cli(['scan', '--range', `${base}..${head}`]);
    expect(scan.code).toBe(1);
    expect(scan.json.error?.code).toBe('scan_range_unresolved');
    expect(scan.json.error?.message).toMatch(/gitleaks scanned 0 commits where [1-9]\d* of the \d+ add text/);
  } finally {
    world.writeConfig();
  }
});

test('a missing gitleaks is an error, never a skipped scan', async () => {
  world.writeConfig({ repository: ['secret_scanning: { gitleaks_path: /nonexistent/gitleaks }'] });
  try {
    const run = await world.cli(['sync', '--force']);
    expect(run.code).toBe(1);
    expect(run.json.error).toEqual({ code: 'gitleaks_missing', message: expect.stringContaining('/nonexistent/gitleaks') });
  } finally {
    world.writeConfig();
  }
});

test('gitleaks crashing (even after printing a secret) blocks the deploy and prints no secret', async () => {
  const real = execFileSync('sh', ['-c', 'command -v gitleaks'], { encoding: 'utf8' }).trim();
  const wrapper = path.join(world.dir, 'gitleaks-crash');
  // Behaves like a gitleaks that dumps a candidate and dies mid-scan.
  fs.writeFileSync(wrapper, `#!/bin/sh\n"${real}" "$@" >/dev/null 2>&1\necho "ERR panic: runtime error near ${secrets.github} and ${secrets.awsSecret}" >&2\nkill -SEGV $$\n`, { mode: 0o755 });
  world.writeConfig({ repository: [`secret_scanning: { gitleaks_path: ${wrapper} }`] });
  try {
    const run = await world.cli(['sync', '--force']);
    const table = await world.cli(['sync', '--force'], { json: false });
    expect(run.code).toBe(1);
    expect(run.json.error?.code).toBe('scan_failed');
    expect(run.json.error?.message).toContain('[scrubbed]');
    expectNoSecret(run.stdout, run.stderr, table.stdout, table.stderr);
  } finally {
    world.writeConfig();
  }
});

test('a gitleaks whose `version` fails with a secret in its output: the scan cache is skipped, and nothing of that output is shown', async () => {
  const real = execFileSync('sh', ['-c', 'command -v gitleaks'], { encoding: 'utf8' }).trim();
  const wrapper = path.join(world.dir, 'gitleaks-bad-version');
  // Scans like gitleaks; only `gitleaks version` (the scan cache's key) breaks, printing what it last read.
  fs.writeFileSync(wrapper, `#!/bin/sh
if [ "$1" = version ]; then echo "panic near ${secrets.github}"; echo "ERR near ${secrets.awsSecret}" >&2; exit 2; fi
exec "${real}" "$@"
`, { mode: 0o755 });
  world.writeConfig({ repository: [`secret_scanning: { gitleaks_path: ${wrapper} }`] });
  const base = world.ws.git(world.ws.work, ['rev-parse', 'HEAD']);
  const head = world.ws.commit({ 'version-note.txt': 'clean\n' }, 'a clean change');
  world.ws.push();
  try {
    const run = await world.cli(['scan', '--range', `${base}..${head}`, '-v']);
    // The scan itself ran in full, without the cache.
    expect(run.code).toBe(0);
    expect(run.json.scan).toMatchObject({ commits_scanned: 1, tree_scanned: true, findings: [], blocked: false, cache: null });
    expectNoSecret(run.stdout, run.stderr);
    expect(run.stderr).toContain('cannot be used (gitleaks version failed (exit 2)): everything is scanned');
  } finally {
    world.writeConfig();
  }
});

test('.gitleaksignore entries (from the next deploy on) and block_on_secrets: false are honoured', async () => {
  const base = world.ws.git(world.ws.work, ['rev-parse', 'HEAD']);
  const head = world.ws.commit({ 'fixtures/token.txt': `${secrets.github}\n` }, 'test fixture');
  world.ws.push();
  const blocked = await world.cli(['scan', '--range', `${base}..${head}`]);
  expect(blocked.code).toBe(3);
  const fingerprints = blocked.json.scan?.findings.map((f) => f.fingerprint) ?? [];
  expect(fingerprints).toEqual(expect.arrayContaining([`${head}:fixtures/token.txt:github-pat:1`, 'fixtures/token.txt:github-pat:1']));

  // The ignore entries arrive in the range being scanned: they apply from the next deploy, not to this one.
  const ignored = world.ws.commit({ '.gitleaksignore': `${fingerprints.join('\n')}\n` }, 'ignore the fixture token');
  world.ws.push();
  const same = await world.cli(['scan', '--range', `${base}..${ignored}`]);
  expect(same.code).toBe(3);
  expect(same.json.scan?.configuration).toMatchObject({ commit: base, changed: [{ path: '.gitleaksignore', change: 'added' }] });
  // Once they are in the base, they are honoured.
  const later = world.ws.commit({ 'README.md': '# app\nwith fixtures\n' }, 'later change');
  world.ws.push();
  const allowed = await world.cli(['scan', '--range', `${ignored}..${later}`]);
  expect(allowed.code).toBe(0);
  expect(allowed.json.scan?.findings).toEqual([]);
  expect(allowed.json.scan?.configuration).toMatchObject({ commit: ignored, files: ['.gitleaksignore'], changed: [] });

  const next = world.ws.commit({ 'more.env': `TOKEN=${secrets.github}\n` }, 'another');
  world.ws.push();
  world.writeConfig({ repository: ['secret_scanning: { block_on_secrets: false }'] });
  try {
    const run = await world.cli(['sync']);
    expect(run.code).toBe(0);
    expect(run.json.scan).toMatchObject({ blocked: false });
    expect(run.json.scan?.findings.length).toBeGreaterThan(0);
    expect(run.stderr).toMatch(/WARNING: \d+ possible secrets? found and repository.secret_scanning.block_on_secrets is false/);
    expect(run.json.vms.map((vm) => vm.rev_after)).toEqual([next, next]);
    expectNoSecret(run.stdout, run.stderr);
  } finally {
    world.writeConfig();
  }
});

test('a manual resync scans only the commits the VMs do not have yet', async () => {
  world.ws.commit({ 'r1.txt': 'one\n', 'more.env': null }, 'resync 1 (drops the token file the previous test left in the tree)');
  world.ws.commit({ 'r2.txt': 'two\n' }, 'resync 2');
  world.ws.push();
  const run = await world.cli(['sync']);
  expect(run.code).toBe(0);
  expect(run.json.scan?.commits_scanned).toBe(2);
  expect(run.json.scan?.description).toMatch(/^resync: the 2 commits the VMs do not have yet/);
});

test('a push that only changes binary files passes (gitleaks counts no commit there, and that is right)', async () => {
  const base = world.ws.git(world.ws.work, ['rev-parse', 'HEAD']);
  fs.writeFileSync(path.join(world.ws.work, 'logo.png'), Buffer.from([0x89, 0x50, 0x4e, 0x47, 0, 0, 0, 0, 1, 2, 3]));
  world.ws.git(world.ws.work, ['add', 'logo.png']);
  world.ws.git(world.ws.work, ['commit', '--quiet', '-m', 'binary only']);
  const head = world.ws.git(world.ws.work, ['rev-parse', 'HEAD']);
  world.ws.push();
  const scan = await world.cli(['scan', '--range', `${base}..${head}`]);
  expect(scan.code).toBe(0);
  expect(scan.json.scan).toMatchObject({ commits_scanned: 0, findings: [], blocked: false });
});
