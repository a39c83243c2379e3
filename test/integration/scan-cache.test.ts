import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { tarOf, zipOf } from '../helpers/archives.js';
import { plantedSecrets, secretFragments } from '../helpers/secrets.js';
import { RunnerRepo } from '../../src/git/repo.js';
import { runSecretScan } from '../../src/scan/gate.js';
import { planScan } from '../../src/scan/plan.js';
import { silentEvents } from '../../src/sync/types.js';
import { World, type CliRun } from '../helpers/world.js';

/*
 * The runner host's scan cache (src/scan/cache.ts): each (blob, path) and
 * each commit is scanned once per set of scan settings and gitleaks version.
 * What gitleaks was asked to scan is observed through a wrapper that logs the
 * files under the directory it scans (dir mode) and its --log-opts (git mode).
 * Real gitleaks behind the wrapper; the report must be what an uncached scan says.
 */

let world: World;
let wrapper: string;
let log: string;
const secrets = plantedSecrets();
const fragments = secretFragments(secrets);
const token = `GITHUB_TOKEN=${secrets.github}\n`;

beforeAll(async () => {
  world = await World.create(['c01']);
  log = path.join(world.dir, 'gitleaks-calls.log');
  wrapper = path.join(world.dir, 'gitleaks-wrapper');
  const real = (process.env.PATH ?? '').split(':').map((d) => path.join(d, 'gitleaks')).find((f) => fs.existsSync(f)) as string;
  // Logs one line per call: the mode, and for dir mode every file under the scanned dir (its last argument).
  fs.writeFileSync(
    wrapper,
    [
      '#!/bin/sh',
      `log='${log}'`,
      'if [ -e "$log.fail" ] && [ "$1" = dir ]; then echo "ERR forced failure" >&2; exit 1; fi',
      'if [ "$1" = version ] && [ -e "$log.version" ]; then cat "$log.version"; exit 0; fi',
      'for last; do :; done',
      'if [ "$1" = dir ]; then printf "dir %s\\n" "$(cd "$last" && find . -type f | wc -l)" >> "$log"; fi',
      'if [ "$1" = git ]; then printf "git\\n" >> "$log"; fi',
      `exec '${real}' "$@"`,
      '',
    ].join('\n'),
    { mode: 0o755 },
  );
  world.ws.commit({ '.gitleaks.toml': "[extend]\nuseDefault = true\n[[rules]]\nid = \"no-key-files\"\ndescription = \"key files\"\npath = '''\\.key$'''\n", 'README.md': '# app\n', 'src/a.txt': 'hello\n' }, 'base');
  world.ws.push();
  world.writeConfig({ repository: [`secret_scanning: { gitleaks_path: ${wrapper} }`] });
});
afterAll(() => world?.destroy());

const head = (): string => world.ws.git(world.ws.work, ['rev-parse', 'HEAD']);
const calls = (): string[] => (fs.existsSync(log) ? fs.readFileSync(log, 'utf8').trim().split('\n').filter(Boolean) : []);
const cacheDir = (): string => path.join(path.dirname(world.runnerRepo), `.${path.basename(world.runnerRepo)}.vm-sync`, 'scan-cache');

async function scan(range: string): Promise<{ run: CliRun; calls: string[] }> {
  fs.rmSync(log, { force: true });
  const run = await world.cli(['scan', '--range', range]);
  for (const fragment of fragments) expect(run.stdout + run.stderr).not.toContain(fragment);
  return { run, calls: calls() };
}

function commit(files: Record<string, string>, message: string): string {
  world.ws.commit(files, message);
  world.ws.push();
  return head();
}

test('a warm cache scans nothing again, and reports exactly what the cold scan did', async () => {
  const base = head();
  // An archive inside an archive under a name gitleaks does not open: reported unscanned, and remembered so.
  fs.mkdirSync(path.join(world.ws.work, 'assets'), { recursive: true });
  fs.writeFileSync(path.join(world.ws.work, 'assets/outer.zip'), zipOf({ 'inner.tgz': zlib.gzipSync(tarOf({ 'x.txt': 'hello\n' })) }));
  const a = commit({ 'src/b.txt': 'b\n' }, 'a');
  const cold = await scan(`${base}..${a}`);
  expect(cold.run.code).toBe(0);
  expect(cold.run.json.scan?.cache).toMatchObject({ files_cached: 0, commits_cached: 0, commits_scanned: 1 });
  const warm = await scan(`${base}..${a}`);
  expect(cold.run.json.scan?.unscanned).toEqual([expect.objectContaining({ path: 'assets/outer.zip!inner.tgz', reason: 'archive' })]);
  expect(warm.run.json.scan?.cache).toEqual({ files_scanned: 0, files_cached: cold.run.json.scan?.cache?.files_scanned, commits_scanned: 0, commits_cached: 1 });
  // Nothing is read again, not even the archive (its unscannable entry is remembered), and gitleaks never runs.
  expect(warm.calls).toEqual([]);
  expect({ ...warm.run.json.scan, cache: null }).toEqual({ ...cold.run.json.scan, cache: null });
});

test('one new commit: that commit and its one new file are scanned; a secret in it still blocks', async () => {
  const before = head();
  const clean = commit({ 'src/c.txt': 'c\n' }, 'clean');
  await scan(`${before}..${clean}`);
  const leak = commit({ 'config/prod.env': token }, 'leak');
  const run = await scan(`${before}..${leak}`);
  expect(run.run.code).toBe(3);
  // Only the new file (the others are known clean, the archive known for what it cannot have scanned).
  expect(run.run.json.scan?.cache).toMatchObject({ files_scanned: 1, commits_scanned: 1, commits_cached: 1 });
  expect(run.run.json.scan?.unscanned).toEqual([expect.objectContaining({ path: 'assets/outer.zip!inner.tgz', reason: 'archive' })]);
  expect(run.run.json.scan?.findings).toEqual(expect.arrayContaining([expect.objectContaining({ rule: 'github-pat', file: 'config/prod.env', source: 'tree' })]));
  // Found again on every run: a file with a finding is never recorded clean.
  const again = await scan(`${before}..${leak}`);
  expect(again.run.code).toBe(3);
  // The token leaves the tree (later ranges start after it).
  world.ws.git(world.ws.work, ['rm', '-q', 'config/prod.env']);
  world.ws.git(world.ws.work, ['commit', '-q', '-m', 'token removed']);
  world.ws.push();
});

test('the same clean bytes at a path a rule matches by name are scanned, and found (the cache key is blob and path)', async () => {
  const before = head();
  const first = commit({ 'keys/server.txt': 'hello\n' }, 'a text file');
  expect((await scan(`${before}..${first}`)).run.code).toBe(0);
  // A pure rename adds no line, so the commit scan has nothing to read (and must not fail for it: it is
  // complete): only the tree scan can see the new name.
  world.ws.git(world.ws.work, ['mv', 'keys/server.txt', 'keys/server.key']);
  world.ws.git(world.ws.work, ['commit', '-q', '-m', 'renamed to a key file']);
  world.ws.push();
  const run = await scan(`${first}..${head()}`);
  expect(run.run.json.scan?.cache?.files_cached).toBeGreaterThan(0);
  expect(run.run.code).toBe(3);
  expect(run.run.json.scan?.findings).toEqual(expect.arrayContaining([expect.objectContaining({ rule: 'no-key-files', file: 'keys/server.key', source: 'tree' })]));
});

test('another gitleaks version, a damaged cache or a failed scan: everything is scanned again, nothing wrongly trusted', async () => {
  const base = head();
  const c = commit({ 'src/d.txt': 'd\n' }, 'd');
  await scan(`${base}..${c}`);
  expect((await scan(`${base}..${c}`)).run.json.scan?.cache?.files_cached).toBeGreaterThan(0);

  fs.writeFileSync(`${log}.version`, '9.9.9-other\n');
  const other = await scan(`${base}..${c}`);
  fs.rmSync(`${log}.version`);
  expect(other.run.json.scan?.cache).toMatchObject({ files_cached: 0, commits_cached: 0 });

  expect((await scan(`${base}..${c}`)).run.json.scan?.cache?.files_cached).toBe(0); // the real version's cache, made again
  for (const file of fs.readdirSync(cacheDir())) fs.writeFileSync(path.join(cacheDir(), file), 'not a cache line\n');
  const damaged = await scan(`${base}..${c}`);
  expect(damaged.run.json.scan?.cache).toMatchObject({ files_cached: 0, commits_cached: 0 });
  expect(damaged.run.stderr).toMatch(/scan cache .* is damaged or too large: it is ignored and everything is scanned/);

  // A failing tree scan records nothing, not even the commits it had scanned.
  for (const file of fs.readdirSync(cacheDir())) fs.rmSync(path.join(cacheDir(), file));
  fs.writeFileSync(`${log}.fail`, '');
  const failed = await scan(`${base}..${c}`);
  fs.rmSync(`${log}.fail`);
  expect(failed.run.json.error?.code).toBe('scan_failed');
  expect(fs.readdirSync(cacheDir()).filter((f) => fs.statSync(path.join(cacheDir(), f)).size > 0)).toEqual([]);
});

test('a change to the trusted settings is another key: everything is scanned with the new settings', async () => {
  const base = head();
  const c = commit({ 'src/e.txt': 'e\n' }, 'e');
  await scan(`${base}..${c}`);
  const next = commit({ '.gitleaks.toml': "[extend]\nuseDefault = true\n" }, 'settings change');
  const d = commit({ 'src/f.txt': 'f\n' }, 'f');
  const run = await scan(`${next}..${d}`);
  expect(run.run.json.scan?.configuration?.commit).toBe(next);
  expect(run.run.json.scan?.cache).toMatchObject({ files_cached: 0, commits_cached: 0 });
});

test('vm-sync scan on the runner host exports only the files the cache does not vouch for: no kept export is made, the sync after it exports from its own', async () => {
  const exportsDir = path.join(path.dirname(world.runnerRepo), `.${path.basename(world.runnerRepo)}.vm-sync`, 'exports');
  const kept = (): string[] => (fs.existsSync(exportsDir) ? fs.readdirSync(exportsDir).filter((n) => n.startsWith('ready-')).sort() : []);
  const first = commit({ 'src/one.txt': 'one\n' }, 'export 1');
  expect((await world.cli(['scan', '--commit', first])).code).toBe(0);
  // What every scan reads again (files an earlier test left that are never recorded clean).
  const again = (await world.cli(['scan', '--commit', first])).json.scan?.cache?.files_scanned ?? NaN;
  const before = kept();
  const second = commit({ 'src/two.txt': 'two\n', 'src/four.txt': 'four\n' }, 'export 2');
  const b = await world.cli(['scan', '--commit', second]);
  expect(b.code).toBe(0);
  expect(b.json.scan?.cache).toMatchObject({ files_scanned: again + 2 });
  expect(b.stderr).not.toMatch(/export of [0-9a-f]{12}:/);
  expect(kept()).toEqual(before);
  // The sync that follows the scan (its own job in deploy.yml) makes its own export.
  const sync = await world.cli(['sync', '--commit', second]);
  expect(sync.code).toBe(0);
  expect(sync.stderr).toContain(`export of ${second.slice(0, 12)}: `);
  expect(sync.json.vms.map((vm) => vm.rev_after)).toEqual([second]);
  const afterSync = kept();
  // The files exported for the scan hold their bytes: a token in a new one is found there (and only there).
  const third = commit({ 'src/five.txt': token }, 'export 3');
  const c = await world.cli(['scan', '--commit', third]);
  expect(c.code).toBe(3);
  expect(c.json.scan?.cache).toMatchObject({ files_scanned: again + 1 });
  expect(c.json.scan?.findings.filter((f) => f.source === 'tree').map((f) => f.file)).toEqual(['src/five.txt']);
  expect(kept()).toEqual(afterSync);
});

test('the tree scan reads the export without touching it: every file keeps its ctime (the release stream reads the same files meanwhile)', async () => {
  // GNU tar, building the release stream from the export while the scan runs, fails on a file whose ctime
  // changes under it ("file changed as we read it"); a hard link into the scan's view changes it.
  world.ws.commit({ 'src/b.txt': 'bee\n', 'docs/c.md': '# see\n' }, 'files for the view');
  world.ws.push();
  world.ws.git(world.runnerRepo, ['fetch', '--quiet', 'origin', '+refs/heads/*:refs/remotes/origin/*']);
  const sha = head();
  const repo = new RunnerRepo(world.runnerRepo, 'origin', 'main', null);
  const exportDir = path.join(world.dir, 'ctime-export');
  await repo.exportTree(sha, exportDir);
  const files = (dir: string): string[] => fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? files(path.join(dir, e.name)) : [path.join(dir, e.name)]));
  const ctimes = (): Record<string, number> => Object.fromEntries(files(exportDir).map((f) => [f, fs.lstatSync(f).ctimeMs]));
  const before = ctimes();
  await new Promise((resolve) => setTimeout(resolve, 50));
  // An empty cache: every file of the tree goes into the view.
  fs.rmSync(cacheDir(), { recursive: true, force: true });
  const plan = await planScan(repo, { kind: 'range', range: `${sha}~1..${sha}` });
  const settings = { enabled: true, tool: 'gitleaks' as const, configPath: '.gitleaks.toml', blockOnSecrets: true, gitleaksPath: wrapper, timeoutS: 600 };
  const report = await runSecretScan({ settings, plan, repoDir: world.runnerRepo, countCommitsAddingText: (s) => repo.countCommitsAddingText(s), exportDir, cacheDir: cacheDir(), events: silentEvents });
  // (Earlier tests left findings in the tree: whether it blocks is not the point here.)
  expect(report).toMatchObject({ tree_scanned: true, cache: { files_scanned: Object.keys(before).length, files_cached: 0 } });
  expect(ctimes()).toEqual(before);
});

test('the real gitleaks executable is keyed by its bytes: proven once per runner host, and a rebuild of the same version is another key', async () => {
  const real = (process.env.PATH ?? '').split(':').map((d) => path.join(d, 'gitleaks')).find((f) => fs.existsSync(f)) as string;
  const build = path.join(world.dir, 'gitleaks-build');
  fs.copyFileSync(real, build);
  fs.chmodSync(build, 0o755);
  const digest = (): string => crypto.createHash('sha256').update(fs.readFileSync(build)).digest('hex');
  const probed = (): string[] => fs.readFileSync(path.join(cacheDir(), 'probed-1'), 'utf8').split('\n').filter(Boolean);
  world.writeConfig({ repository: [`secret_scanning: { gitleaks_path: ${build} }`] });
  try {
    fs.rmSync(cacheDir(), { recursive: true, force: true });
    const base = head();
    const c = commit({ 'src/rebuild.txt': 'clean\n' }, 'for the rebuild');
    // (Earlier tests left findings in the tree: they are found every time, and are not the point here.)
    const cold = await scan(`${base}..${c}`);
    expect(cold.run.json.scan?.cache).toMatchObject({ files_cached: 0, commits_cached: 0 });
    // The build that passed the probe is recorded by the digest of its bytes.
    expect(probed()).toEqual([digest()]);
    const warm = await scan(`${base}..${c}`);
    expect(warm.run.json.scan?.cache).toMatchObject({ commits_cached: 1, files_cached: (cold.run.json.scan?.cache?.files_scanned ?? 0) - (warm.run.json.scan?.cache?.files_scanned ?? 0) });
    expect(warm.run.json.scan?.cache?.files_cached).toBeGreaterThan(0);

    // The same version with other bytes (as a build with another regex engine or other built-in rules would be).
    const version = execFileSync(build, ['version'], { encoding: 'utf8' });
    const first = digest();
    fs.appendFileSync(build, Buffer.from([0]));
    expect(execFileSync(build, ['version'], { encoding: 'utf8' })).toBe(version);
    const rebuilt = await scan(`${base}..${c}`);
    expect(rebuilt.run.json.scan?.cache).toMatchObject({ files_cached: 0, commits_cached: 0 });
    expect([rebuilt.run.code, rebuilt.run.json.scan?.findings]).toEqual([cold.run.code, cold.run.json.scan?.findings]);
    expect(probed()).toEqual([first, digest()]);
  } finally {
    world.writeConfig({ repository: [`secret_scanning: { gitleaks_path: ${wrapper} }`] });
  }
});

test('an archive whose entry gitleaks cannot read (a truncated tar member) is remembered so: the warm scan does not read it again', async () => {
  const base = head();
  // The cache vouches for the tree as it is (an earlier test used another gitleaks build, another key).
  await scan(`${base}..${base}`);
  fs.mkdirSync(path.join(world.ws.work, 'assets'), { recursive: true });
  const whole = tarOf({ 'big.txt': 'hello world\n'.repeat(20000) });
  fs.writeFileSync(path.join(world.ws.work, 'assets/cut.tar'), whole.subarray(0, 4096));
  const a = commit({ 'src/cut-note.txt': 'a truncated archive\n' }, 'a truncated archive');
  const cold = await scan(`${base}..${a}`);
  // (Earlier tests left findings in the tree: they are found every time, and are not the point here.)
  expect(cold.run.json.scan?.unscanned).toEqual(expect.arrayContaining([expect.objectContaining({ path: 'assets/cut.tar!big.txt', reason: 'unreadable' })]));
  const warm = await scan(`${base}..${a}`);
  // Both new files are vouched for now (only files an earlier test left with findings are read again).
  expect(warm.run.json.scan?.cache?.files_scanned).toBe((cold.run.json.scan?.cache?.files_scanned ?? NaN) - 2);
  expect({ ...warm.run.json.scan, cache: null }).toEqual({ ...cold.run.json.scan, cache: null });
  world.ws.git(world.ws.work, ['rm', '-q', 'assets/cut.tar']);
  world.ws.git(world.ws.work, ['commit', '-q', '-m', 'truncated archive removed']);
  world.ws.push();
});
