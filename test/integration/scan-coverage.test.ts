import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { RunnerRepo } from '../../src/git/repo.js';
import { renderSummary } from '../../src/report/summary.js';
import { planScan } from '../../src/scan/plan.js';
import { plantedSecrets, secretFragments } from '../helpers/secrets.js';
import { tarOf, zipOf } from '../helpers/archives.js';
import { snapshotTree, World, type CliRun } from '../helpers/world.js';

/*
 * The secret-scan gate covers everything that is deployed, with settings the
 * scanned commit cannot weaken, within a time limit. Real gitleaks, git, sshd
 * and rsync; every test pushes to the origin and runs the CLI as a user would.
 */
const ZERO = '0'.repeat(40);
let world: World;
const secrets = plantedSecrets();
const fragments = secretFragments(secrets);
const token = secrets.github;

beforeAll(async () => {
  world = await World.create(['vm01']);
  world.ws.commit({ 'README.md': '# app\n', 'src/app.py': 'print("ok")\n' }, 'clean start');
  world.ws.push();
  expect((await world.cli(['sync'])).code).toBe(0);
});
afterAll(() => world?.destroy());

/** Fails when any fragment of a planted secret appears in the texts. */
function expectNoSecret(...texts: string[]): void {
  const all = texts.join('\n');
  for (const fragment of fragments) {
    if (all.includes(fragment)) throw new Error(`a secret fragment reached the output: ${fragment.slice(0, 4)}…`);
  }
}

/** Every output a user sees of a run: stdout, stderr and the job summary made from its report. */
function outputs(run: CliRun): string[] {
  return [run.stdout, run.stderr, run.json?.scan ? renderSummary(run.json, { runUrl: '', failure: null }) : ''];
}

/** The run ended because the scan found secrets (an error would show here, with its message, instead). */
function expectBlocked(run: CliRun): void {
  expect(run.json.error ?? null).toBeNull();
  expect(run.code).toBe(3);
}

const head = (): string => world.ws.git(world.ws.work, ['rev-parse', 'HEAD']);

/** Commits files with any bytes (null deletes), as a developer would, and pushes. */
function commitPush(files: Record<string, string | Buffer | null>, message: string): string {
  for (const [name, content] of Object.entries(files)) {
    const file = path.join(world.ws.work, name);
    fs.rmSync(file, { force: true, recursive: true });
    if (content === null) continue;
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, content);
  }
  world.ws.git(world.ws.work, ['add', '--all', '--force']);
  world.ws.git(world.ws.work, ['commit', '--quiet', '--allow-empty', '-m', message]);
  world.ws.push();
  return head();
}

/**
 * Takes main back to `base` (a force push): the planted token leaves the
 * branch's history, so a later resync does not meet it again.
 */
function rewind(base: string): void {
  world.ws.git(world.ws.work, ['reset', '--quiet', '--hard', base]);
  world.ws.push(true);
}

/** What the runner host recorded as deployed to vm01. */
const deployedCommit = (): string => world.ws.git(world.runnerRepo, ['rev-parse', 'refs/vm-sync/deployed/vm01']);


const line = `api_token = "${token}"\n`;

// Places gitleaks' default config skips by path, with other depths and names than the issue's.
const skippedPaths: Array<[string, string | Buffer]> = [
  ['node_modules/x/index.js', line],
  ['web/app/node_modules/@scope/pkg/lib/deep/index.cjs', line],
  ['vendor/github.com/acme/lib/conf.go', line],
  ['third_party/vendor/bundle/ruby/3.2.0/gems/x/lib/x.rb', line],
  ['package-lock.json', `{ "token": "${token}" }\n`],
  ['frontend/yarn.lock', line],
  ['services/api/go.sum', line],
  ['go.mod', `// ${line}`],
  ['assets/logo.png', line],
  ['docs/Manual.PDF', line],
  ['fonts/brand.woff2', line],
  ['tools/lint/.gitleaks.toml', `# ${line}`],
  ['static/js/jquery-3.7.1.min.js', line],
  ['venv/lib/python3.11/site-packages/x.py', line],
  ['pkg-1.2.dist-info/METADATA', line],
];

test.each(skippedPaths)('a token in %s is found in the deployed tree, and blocks', async (file, content) => {
  const base = head();
  commitPush({ [file]: content }, `add ${file}`);
  const scan = await world.cli(['scan', '--range', `${base}..${head()}`]);
  rewind(base);
  expectBlocked(scan);
  expect(scan.json.scan?.findings).toEqual(expect.arrayContaining([expect.objectContaining({ rule: 'github-pat', file, source: 'tree', fingerprint: `${file}:github-pat:1` })]));
  expectNoSecret(...outputs(scan));
});

const archives: Array<[string, Buffer, string]> = [
  ['dist/pkg-1.0.0.tgz', zlib.gzipSync(tarOf({ 'package/lib/index.js': line })), 'package/lib/index.js'],
  ['releases/app.tar.gz', zlib.gzipSync(tarOf({ 'a/b/c/d/settings.env': line })), 'a/b/c/d/settings.env'],
  ['assets/bundle.zip', zipOf({ 'conf/secret.env': line }), 'conf/secret.env'],
  ['lib/plugin.jar', zipOf({ 'META-INF/app.properties': line }), 'META-INF/app.properties'],
  ['data/snapshot.bin', zipOf({ 'dump.sql': line }), 'dump.sql'],
  ['backup/plain.tar', tarOf({ 'etc/app.conf': line }), 'etc/app.conf'],
  ['logs/trace.gz', zlib.gzipSync(line), ''],
];

test.each(archives)('a token inside the archive %s is found, with the entry named, and blocks', async (file, bytes, entry) => {
  const base = head();
  commitPush({ [file]: bytes }, `add ${file}`);
  const scan = await world.cli(['scan', '--range', `${base}..${head()}`]);
  rewind(base);
  expectBlocked(scan);
  const where = entry ? `${file}!${entry}` : file;
  expect(scan.json.scan?.findings).toEqual(expect.arrayContaining([expect.objectContaining({ rule: 'github-pat', file: where, source: 'tree' })]));
  expectNoSecret(...outputs(scan));
});

test('a text file whose name gitleaks takes for an archive (git.git\'s t5515/fetch.br-*) is scanned as text: its token blocks, a clean one passes', async () => {
  // gitleaks opens `*.br*` as brotli by name and logs "could not read file" as an error: the scan must neither fail nor skip it.
  const base = head();
  commitPush({ 't/t5515/fetch.br-branches-default': `# fetch output\n${line}`, 't/t5515/fetch.br-clean': 'clean text\n' }, 'misnamed files');
  const blocked = await world.cli(['scan', '--range', `${base}..${head()}`]);
  rewind(base);
  expectBlocked(blocked);
  expect(blocked.json.scan?.findings).toEqual(expect.arrayContaining([expect.objectContaining({ rule: 'github-pat', file: 't/t5515/fetch.br-branches-default', source: 'tree', line: 2 })]));
  commitPush({ 't/t5515/fetch.br-clean': 'clean text\n' }, 'misnamed clean file');
  const clean = await world.cli(['scan', '--range', `${base}..${head()}`]);
  rewind(base);
  expect([clean.code, clean.json.error ?? null, clean.json.scan?.findings]).toEqual([0, null, []]);
  expectNoSecret(...outputs(blocked), ...outputs(clean));
});

test('what cannot be scanned is reported with the reason: a real binary, an archive inside an archive', async () => {
  const elf = Buffer.concat([Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]), Buffer.from(line)]);
  const base = head();
  commitPush({ 'bin/tool': elf, 'assets/outer.zip': zipOf({ 'inner.tgz': zlib.gzipSync(tarOf({ 'x.txt': 'hello\n' })) }), 'docs/readme.txt': 'plain\n' }, 'binaries');
  const scan = await world.cli(['scan', '--range', `${base}..${head()}`]);
  const table = await world.cli(['scan', '--range', `${base}..${head()}`], { json: false });
  rewind(base);
  expect(scan.code).toBe(0);
  expect(scan.json.scan?.unscanned).toEqual([
    { path: 'assets/outer.zip!inner.tgz', reason: 'archive', detail: expect.stringContaining('archive inside an archive') },
    { path: 'bin/tool', reason: 'binary', detail: 'binary file (application/x-executable)' },
  ]);
  expect(scan.json.scan?.unscanned_count).toBe(2);
  expect(table.stdout).toContain('not scanned: 2 deployed files or archive entries');
  expect(table.stdout).toContain('    - bin/tool: binary: binary file (application/x-executable)');
  expect(renderSummary(scan.json, { runUrl: '', failure: null })).toContain('**2 deployed files or archive entries could not be scanned**');
  expect(scan.stderr).toMatch(/secret scan: 2 deployed files or archive entries could not be scanned: assets\/outer\.zip!inner\.tgz/);
  expectNoSecret(...outputs(scan), table.stdout);
});

// Ways a commit could switch its own scan off.
const selfAllowlisting: Array<[string, Record<string, string>]> = [
  ['a .gitleaks.toml allowlisting every path', { '.gitleaks.toml': "[extend]\nuseDefault = true\n[[allowlists]]\npaths = ['''.*''']\n" }],
  ['a .gitleaks.toml allowlisting the token pattern', { '.gitleaks.toml': "[extend]\nuseDefault = true\n[[allowlists]]\nregexes = ['''ghp_[0-9A-Za-z]+''']\n" }],
  ['a .gitleaks.toml disabling the rules', { '.gitleaks.toml': '[extend]\nuseDefault = true\ndisabledRules = ["github-pat", "generic-api-key"]\n' }],
  ['a .gitleaks.toml without the default rules', { '.gitleaks.toml': "[[rules]]\nid = \"nothing\"\nregex = '''zzzz-never-zzzz'''\n" }],
  ['a .gitleaksignore listing the finding', { '.gitleaksignore': 'config/prod.env:github-pat:1\n' }],
];

test.each(selfAllowlisting)('%s arriving with a token is not in force for that push: blocked, nothing sent to a VM, the change shown', async (_name, settingsFiles) => {
  const before = snapshotTree(world.vm('vm01').home);
  const good = head();
  const bad = commitPush({ ...settingsFiles, 'config/prod.env': line }, 'settings and a token together');
  const run = await world.cli(['sync']);
  const table = await world.cli(['sync'], { json: false });
  const scan = await world.cli(['scan', '--range', `${good}..${bad}`]);
  rewind(good);

  expectBlocked(run);
  expect(run.json.vms.map((vm) => [vm.id, vm.result, vm.error?.code, vm.bytes_sent])).toEqual([['vm01', 'failed', 'secrets_found', 0]]);
  expect(snapshotTree(world.vm('vm01').home)).toEqual(before);
  const changed = Object.keys(settingsFiles).map((p) => ({ path: p, change: 'added' }));
  expect(run.json.scan?.configuration).toMatchObject({ commit: deployedCommit(), reason: 'the commit this runner last deployed', changed });
  expect(run.json.scan?.configuration?.weakening.join(' ')).toMatch(/would hide \d+ (of the \d+ )?finding/);
  expectBlocked(scan);
  expect(scan.json.scan?.configuration).toMatchObject({ commit: good, reason: 'the base of the range', changed });
  expect(table.stdout).toContain(`SCAN SETTINGS CHANGED by this change: ${changed.map((c) => `${c.path} (added)`).join(', ')}; they take effect from the next deploy`);
  expect(table.stdout).toContain('WEAKENS THE SCAN: ');
  const summary = renderSummary(run.json, { runUrl: '', failure: null });
  expect(summary).toContain('**This change modifies the scan settings**');
  expect(summary).toContain('**It weakens the scan**');
  expectNoSecret(...outputs(run), ...outputs(scan), table.stdout, table.stderr);
});

test('ignore entries for an earlier commit, pushed with it, do not hide it (history and tree)', async () => {
  const base = head();
  const leak = world.ws.commit({ 'keys/deploy.env': line }, 'a token');
  const hide = world.ws.commit({ '.gitleaksignore': `${leak}:keys/deploy.env:github-pat:1\nkeys/deploy.env:github-pat:1\n` }, 'ignore it');
  world.ws.push();
  const scan = await world.cli(['scan', '--range', `${base}..${hide}`]);
  rewind(base);
  expectBlocked(scan);
  expect(scan.json.scan?.findings.map((f) => [f.source, f.fingerprint]).sort()).toEqual([
    ['commits', `${leak}:keys/deploy.env:github-pat:1`],
    ['tree', 'keys/deploy.env:github-pat:1'],
  ]);
  expect(scan.json.scan?.configuration?.weakening).toEqual(['.gitleaksignore gains 2 entries, which would hide 2 findings of this scan']);
});

test('a tree-only scan of a CI checkout (never a deploy recorded) takes the settings of the commit before, not its own', async () => {
  const checkout = path.join(world.dir, `checkout-${crypto.randomBytes(3).toString('hex')}`);
  const base = head();
  const bad = commitPush({ '.gitleaksignore': 'config/db.env:github-pat:1\n', 'config/db.env': line }, 'ignore and token in one commit');
  execFileSync('git', ['clone', '--quiet', `file://${world.ws.origin}`, checkout]);
  const scan = await world.cli(['scan', '--repo', checkout, '--commit', bad]);
  rewind(base);
  expectBlocked(scan);
  expect(scan.json.scan?.commits_scanned).toBe(0);
  expect(scan.json.scan?.findings.map((f) => f.fingerprint)).toEqual(['config/db.env:github-pat:1']);
  expect(scan.json.scan?.configuration).toMatchObject({ commit: world.ws.git(checkout, ['rev-parse', `${bad}~1`]), changed: [{ path: '.gitleaksignore', change: 'added' }] });
});

test('an inline gitleaks:allow comment in the scanned commit does not silence its own token', async () => {
  const base = head();
  commitPush({ 'app/settings.py': `TOKEN = "${token}"  # gitleaks:allow\n` }, 'inline allow');
  const scan = await world.cli(['scan', '--range', `${base}..${head()}`]);
  rewind(base);
  expectBlocked(scan);
  expect(scan.json.scan?.findings.map((f) => [f.source, f.file])).toEqual(expect.arrayContaining([['tree', 'app/settings.py'], ['commits', 'app/settings.py']]));
});

test('a settings change on its own deploys, is shown, and is the one in force for the next deploy', async () => {
  const config = "[extend]\nuseDefault = true\n[[allowlists]]\ntargetRules = [\"github-pat\", \"generic-api-key\"]\npaths = ['''^fixtures/''']\n";
  const withConfig = commitPush({ '.gitleaks.toml': config }, 'waive the token rules in fixtures/');
  const first = await world.cli(['sync']);
  expect(first.code).toBe(0);
  expect(first.json.scan?.configuration).toMatchObject({ changed: [{ path: '.gitleaks.toml', change: 'added' }], weakening: [] });
  expect(renderSummary(first.json, { runUrl: '', failure: null })).toContain('**This change modifies the scan settings**: `.gitleaks.toml` (added)');

  const fixture = commitPush({ 'fixtures/token.txt': line }, 'a test fixture');
  const second = await world.cli(['sync']);
  expect(second.json.scan?.findings).toEqual([]);
  expect(second.code).toBe(0);
  expect(second.json.scan).toMatchObject({ findings: [], configuration: { commit: withConfig, files: ['.gitleaks.toml'], changed: [] } });
  expect(second.json.vms.map((vm) => vm.rev_after)).toEqual([fixture]);
  expect(fs.readFileSync(path.join(world.target('vm01'), 'fixtures', 'token.txt'), 'utf8')).toBe(line);
  expectNoSecret(...outputs(first), ...outputs(second));

  commitPush({ 'fixtures/token.txt': null, '.gitleaks.toml': null }, 'drop the fixture and its waiver');
  expect((await world.cli(['sync'])).code).toBe(0);
});

// An absolute extend target that exists, as a shared runner-host file would.
const absoluteBase = path.join(os.tmpdir(), `vm-sync-test-base-${crypto.randomBytes(4).toString('hex')}.toml`);
fs.writeFileSync(absoluteBase, '[extend]\nuseDefault = true\n');
afterAll(() => fs.rmSync(absoluteBase, { force: true }));

test.each([
  ['that gitleaks cannot load', '[[rules]\nid = \n', 'cannot be loaded by gitleaks'],
  ['that extends a relative path (read from the tree under scan)', '[extend]\npath = "ci/base.toml"\n', 'vm-sync does not follow [extend] path'],
  ['that extends an absolute path (a file no commit pins)', `[extend]\npath = "${absoluteBase}"\n`, 'vm-sync does not follow [extend] path'],
])('a new .gitleaks.toml %s is refused before it can become the trusted one', async (_what, config, message) => {
  const before = snapshotTree(world.vm('vm01').home);
  const base = head();
  commitPush({ '.gitleaks.toml': config, 'ci/base.toml': "[[rules]]\nid = \"none\"\nregex = '''zzzz-never'''\n" }, 'new scan config');
  const run = await world.cli(['sync']);
  rewind(base);
  expect(run.code).toBe(2);
  expect(run.json.error).toEqual({ code: 'config_invalid', message: expect.stringContaining(message) });
  expect(run.json.error?.message).toContain('from the next deploy on it would be the one in force');
  // The VM was locked while the scan ran, then left exactly as it was.
  expect(snapshotTree(world.vm('vm01').home)).toEqual(before);
});

test('the settings come from a trusted commit for every way in: range base, push tip, new branch, resync, root', async () => {
  const repo = new RunnerRepo(world.runnerRepo, 'origin', 'main', null);
  world.ws.git(world.runnerRepo, ['fetch', '--quiet', 'origin', '+refs/heads/*:refs/remotes/origin/*']);
  const mainTip = head();
  world.ws.git(world.ws.work, ['checkout', '--quiet', '-b', 'topic']);
  world.ws.commit({ 't1.txt': '1\n' }, 'topic 1');
  const tip = world.ws.commit({ 't2.txt': '2\n' }, 'topic 2');
  world.ws.git(world.ws.work, ['push', '--quiet', 'origin', 'topic']);
  world.ws.git(world.ws.work, ['checkout', '--quiet', 'main']);
  world.ws.git(world.runnerRepo, ['fetch', '--quiet', 'origin', '+refs/heads/*:refs/remotes/origin/*']);

  expect((await planScan(repo, { kind: 'range', range: `${mainTip}..${tip}` })).trusted).toEqual({ commit: mainTip, reason: 'the base of the range' });
  expect((await planScan(repo, { kind: 'push', before: mainTip, after: tip, branch: 'refs/heads/topic' })).trusted).toEqual({ commit: mainTip, reason: 'the branch tip before the push' });
  expect((await planScan(repo, { kind: 'push', before: ZERO, after: tip, branch: 'refs/heads/topic' })).trusted.commit).toBe(mainTip);
  const deployed = await repo.deployed('vm01');
  expect((await planScan(repo, { kind: 'resync', head: tip, deployed: [deployed] })).trusted).toEqual({ commit: deployed, reason: 'the commit this runner last deployed' });
  // Nothing recorded: no commit of the history being deployed is trusted (one could weaken the scan of the next).
  expect((await planScan(repo, { kind: 'resync', head: tip, deployed: [] })).trusted.commit).toBeNull();
  // A CI checkout never has records: it trusts the first parent (the sync job's own scan decides the deploy).
  expect((await planScan(repo, { kind: 'resync', head: tip, deployed: [], withoutRecord: 'first-parent' })).trusted.commit).toBe(world.ws.git(world.ws.work, ['rev-parse', `${tip}~1`]));
  const root = world.ws.git(world.ws.work, ['rev-list', '--max-parents=0', 'HEAD']);
  expect((await planScan(repo, { kind: 'resync', head: root, deployed: [] })).trusted.commit).toBeNull();
});

test.each([
  ['at the top of the tree', 'assets/huge.js'],
  ['in a path the first pass skips', 'node_modules/huge/index.js'],
])('a scan that exceeds timeout_s fails closed (%s): scan_timeout, gitleaks killed, nothing sent to a VM', async (_where, file) => {
  // Long single-line text is gitleaks' slowest input: about 2 MB/s here for a release build (RE2), 1 MB/s for a
  // plain `go install` build; 16 MB takes several times the 2 s limit either way.
  const alphabet = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/=_- ';
  const big = Buffer.from(Array.from(crypto.randomBytes(16 * 1024 * 1024), (b) => alphabet.charCodeAt(b % alphabet.length)));
  const before = snapshotTree(world.vm('vm01').home);
  const base = head();
  commitPush({ [file]: big }, 'a huge single-line file');
  world.writeConfig({ repository: ['secret_scanning: { timeout_s: 2 }'] });
  try {
    const started = Date.now();
    const run = await world.cli(['sync']);
    const elapsed = Date.now() - started;
    expect(run.code).toBe(1);
    expect(run.json.error?.code).toBe('scan_timeout');
    expect(run.json.error?.message).toContain('repository.secret_scanning.timeout_s (2 s)');
    expect(elapsed).toBeLessThan(15000);
    expect(snapshotTree(world.vm('vm01').home)).toEqual(before);
    // gitleaks was stopped, not left running: no gitleaks of this process survives.
    const stamp = `-${process.pid}-`;
    const left = execFileSync('ps', ['-eo', 'args'], { encoding: 'utf8' }).split('\n').filter((l) => l.includes('gitleaks') && l.includes(stamp));
    expect(left).toEqual([]);
  } finally {
    world.writeConfig();
    rewind(base);
  }
});

test('with no deploy recorded, the repository\'s own waivers are not trusted; --scan-base names a commit whose settings are', async () => {
  const waiver = "[extend]\nuseDefault = true\n[[allowlists]]\ntargetRules = [\"github-pat\", \"generic-api-key\"]\npaths = ['''^fixtures/''']\n";
  const base = commitPush({ '.gitleaks.toml': waiver, 'fixtures/token.txt': line }, 'a reviewed fixture and its waiver');
  const tip = commitPush({ 'README.md': `# app ${Date.now()}\n` }, 'unrelated change');
  // A new runner host: no record of what the VMs hold.
  fs.rmSync(world.runnerRepo, { recursive: true, force: true });

  const blocked = await world.cli(['sync']);
  expectBlocked(blocked);
  expect(blocked.json.scan?.configuration?.commit).toBeNull();
  expect(blocked.json.scan?.findings.map((f) => f.file)).toContain('fixtures/token.txt');

  const vouched = await world.cli(['sync', '--scan-base', base]);
  expect(vouched.code).toBe(0);
  expect(vouched.json.scan?.configuration?.commit).toBe(base);
  expect(vouched.json.vms.map((vm) => vm.rev_after)).toEqual(world.fleet.vms.map(() => tip));
  expectNoSecret(...outputs(blocked), ...outputs(vouched));

  // With the record in place, the next resync trusts it without being told.
  const next = await world.cli(['sync', '--force']);
  expect([next.code, next.json.scan?.configuration?.commit]).toEqual([0, tip]);
  commitPush({ 'fixtures/token.txt': null, '.gitleaks.toml': null }, 'drop the fixture and its waiver');
  expect((await world.cli(['sync'])).code).toBe(0);
});
