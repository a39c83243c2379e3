import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { shardOf } from '../../src/config/shard.js';
import { plantedSecrets, secretFragments } from '../helpers/secrets.js';
import { snapshotTree, World } from '../helpers/world.js';

/*
 * deploy.yml end to end with act, on this host (-P ...=-self-hosted from
 * .actrc, no Docker), against a fleet of real sshd VMs. act exits 0 even when
 * it skips a job whose label it does not map, so every assertion is on the
 * VMs themselves.
 */
describe('deploy.yml with act on a test fleet (origin named like a GitHub repository)', () => {
  let world: World;
  let repo: string;

  const git = (...args: string[]): string =>
    execFileSync('git', args, {
      cwd: repo,
      encoding: 'utf8',
      env: { ...process.env, GIT_AUTHOR_NAME: 'Dev', GIT_AUTHOR_EMAIL: 'dev@example.invalid', GIT_COMMITTER_NAME: 'Dev', GIT_COMMITTER_EMAIL: 'dev@example.invalid' },
    }).trim();

  function act(args: string[]): Promise<{ code: number | null; log: string }> {
    const child = spawn('act', args, { cwd: repo, env: process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let log = '';
    child.stdout.on('data', (d: Buffer) => (log += d.toString()));
    child.stderr.on('data', (d: Buffer) => (log += d.toString()));
    return new Promise((resolve, reject) => {
      child.on('error', (error) => reject(new Error(`cannot run act (${error.message}): install it with go install github.com/nektos/act@v0.2.87 (bash .ci/run does)`)));
      child.on('close', (code) => resolve({ code, log }));
    });
  }

  function pushEvent(before: string, after: string): string {
    const file = path.join(world.dir, `push-${after.slice(0, 7)}.json`);
    fs.writeFileSync(file, JSON.stringify({ ref: 'refs/heads/main', before, after, repository: { default_branch: 'main' } }));
    return file;
  }

  beforeAll(async () => {
    world = await World.create(['vm01', 'vm02']);
    // This repository as it is on disk (action.yml, dist/, workflows, .actrc), as a fresh repo to deploy.
    repo = path.join(world.dir, 'app');
    for (const file of execFileSync('git', ['ls-files', '-co', '--exclude-standard'], { encoding: 'utf8' }).split('\n').filter(Boolean)) {
      if (!fs.existsSync(file)) continue;
      fs.mkdirSync(path.dirname(path.join(repo, file)), { recursive: true });
      fs.cpSync(file, path.join(repo, file));
    }
    const config = fs.readFileSync(world.configPath, 'utf8').replace(/url: .*/, `url: ${repo}`);
    fs.writeFileSync(path.join(repo, 'vm-sync.yml'), config);
    execFileSync('git', ['init', '--quiet', '--initial-branch=main', repo]);
    git('add', '--all', '--force');
    git('commit', '--quiet', '-m', 'the app');
    // act takes the repository's name from its remote; nothing is fetched from it.
    git('remote', 'add', 'origin', 'https://github.com/acme/app.git');
  });
  afterAll(() => world?.destroy());

  test('act push: the scan job, then the sync job on the self-hosted label, deploy the pushed commit (not the newer HEAD) to every VM', async () => {
    fs.writeFileSync(path.join(repo, 'CHANGELOG.md'), '# changes\n- first deploy through act\n');
    git('add', 'CHANGELOG.md');
    git('commit', '--quiet', '-m', 'first deploy');
    const pushed = git('rev-parse', 'HEAD');
    // A later local commit: act sets GITHUB_SHA to HEAD when the event has no "deleted": false; the push's after must win.
    fs.writeFileSync(path.join(repo, 'LATER.md'), 'not pushed yet\n');
    git('add', 'LATER.md');
    git('commit', '--quiet', '-m', 'not pushed');

    const run = await act(['push', '-W', '.github/workflows/deploy.yml', '-e', pushEvent(git('rev-parse', 'HEAD~2'), pushed)]);

    expect(run.log).toMatch(/\[deploy\/scan\] 🏁 {2}Job succeeded/);
    // deploy.yml's matrix: two shards, each deploying its own VMs.
    for (const shard of [1, 2]) expect(run.log).toMatch(new RegExp(`\\[deploy/sync \\(shard ${shard}\\)-${shard}\\] 🏁 {2}Job succeeded`));
    for (const id of ['vm01', 'vm02']) expect(run.log).toContain(`[deploy/sync (shard ${shardOf(id, 2)})-${shardOf(id, 2)}]`);
    expect(run.code).toBe(0);
    const tree = path.join(world.dir, 'expected');
    fs.mkdirSync(tree);
    execFileSync('sh', ['-c', 'git -C "$1" -c tar.umask=022 archive "$3" | tar -x -C "$2"', 'sh', repo, tree, pushed]);
    for (const id of ['vm01', 'vm02']) {
      expect(world.sentinel(id)).toBe(`${pushed}\n`);
      expect(snapshotTree(world.target(id))).toEqual(snapshotTree(tree));
    }
  });

  test('act push of a secret: the scan job fails, the sync job never runs, no VM changes, nothing printed', async () => {
    git('reset', '--quiet', '--hard', 'HEAD~1'); // drop the commit that was never pushed
    const before = git('rev-parse', 'HEAD');
    const vmsBefore = ['vm01', 'vm02'].map((id) => snapshotTree(world.vm(id).home));
    const secrets = plantedSecrets();
    fs.writeFileSync(path.join(repo, 'deploy.env'), `GITHUB_TOKEN=${secrets.github}\nSLACK=${secrets.slack}\n`);
    git('add', 'deploy.env');
    git('commit', '--quiet', '-m', 'oops');
    const head = git('rev-parse', 'HEAD');

    const run = await act(['push', '-W', '.github/workflows/deploy.yml', '-e', pushEvent(before, head)]);

    expect(run.code).not.toBe(0);
    expect(run.log).toMatch(/\[deploy\/scan\] 🏁 {2}Job failed/);
    expect(run.log).not.toMatch(/\[deploy\/sync[^\]]*\] ⭐ Run/);
    expect(run.log).toMatch(/secrets_found: \d+ possible secrets?:/);
    expect(['vm01', 'vm02'].map((id) => snapshotTree(world.vm(id).home))).toEqual(vmsBefore);
    for (const fragment of secretFragments(secrets)) expect(run.log.includes(fragment)).toBe(false);
  });

  test('act workflow_dispatch with dry-run: the sync job runs and changes no VM', async () => {
    // Rewind past the secret commit: a resync scans every commit the VMs do not have yet, and
    // a pushed-then-removed secret would (rightly) keep blocking it until rotated and ignored.
    git('reset', '--quiet', '--hard', 'HEAD~1');
    fs.writeFileSync(path.join(repo, 'NOTES.md'), 'clean change\n');
    git('add', 'NOTES.md');
    git('commit', '--quiet', '-m', 'clean change');
    const vmsBefore = ['vm01', 'vm02'].map((id) => snapshotTree(world.vm(id).home));
    const event = path.join(world.dir, 'dispatch.json');
    // In an event file, workflow_dispatch booleans are the strings "true"/"false" (act ignores --input with -e).
    fs.writeFileSync(event, JSON.stringify({ ref: 'refs/heads/main', inputs: { vms: 'vm01', force: 'false', 'dry-run': 'true' }, repository: { default_branch: 'main' } }));

    const run = await act(['workflow_dispatch', '-W', '.github/workflows/deploy.yml', '-e', event]);

    const shard = shardOf('vm01', 2);
    expect(run.log).toMatch(new RegExp(`\\[deploy/sync \\(shard ${shard}\\)-${shard}\\] 🏁 {2}Job succeeded`));
    expect(run.log).toContain(`vm-sync sync (shard ${shard}/2): 1 would be deployed (dry run: nothing changed)`);
    expect(['vm01', 'vm02'].map((id) => snapshotTree(world.vm(id).home))).toEqual(vmsBefore);
  });
});

/** The commands of the README's act walk-through: its first sh block after the heading, one command a line. */
function readmeActCommands(): string[] {
  const readme = fs.readFileSync('README.md', 'utf8');
  const section = readme.slice(readme.indexOf('### Try the workflows locally with act'));
  const block = /```sh\n([\s\S]*?)```/.exec(section);
  if (!block) throw new Error('README: no sh block in "Try the workflows locally with act"');
  return block[1].split('\n').filter((line) => line.trim() !== '' && !line.trim().startsWith('#'));
}

/** Runs one README line with sh in `cwd`, as a user's shell would; output and exit code. */
function shell(line: string, cwd: string): Promise<{ code: number | null; log: string }> {
  const child = spawn('sh', ['-c', line], { cwd, env: process.env, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout.on('data', (d: Buffer) => (log += d.toString()));
  child.stderr.on('data', (d: Buffer) => (log += d.toString()));
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, log }));
  });
}

describe("the README's act walk-through, as written, in a fresh clone", () => {
  let tmp: string;
  let clone: string;
  const gitIn = (cwd: string, ...args: string[]): string =>
    execFileSync('git', args, {
      cwd,
      encoding: 'utf8',
      env: { ...process.env, GIT_AUTHOR_NAME: 'Dev', GIT_AUTHOR_EMAIL: 'dev@example.invalid', GIT_COMMITTER_NAME: 'Dev', GIT_COMMITTER_EMAIL: 'dev@example.invalid' },
    }).trim();

  beforeAll(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-readme-act-'));
    clone = path.join(tmp, 'vm-sync');
    // A plain clone of this repository: its origin is a local path, as for anyone who clones a directory.
    execFileSync('git', ['clone', '--quiet', process.cwd(), clone]);
    // The branch a clone from GitHub has checked out (this checkout may be on another branch, or detached in CI).
    gitIn(clone, 'checkout', '--quiet', '-B', 'main');
    // What is being tested is this working tree: its uncommitted changes become one more commit of the clone.
    for (const file of execFileSync('git', ['ls-files', '-co', '--exclude-standard'], { encoding: 'utf8' }).split('\n').filter(Boolean)) {
      const target = path.join(clone, file);
      if (!fs.existsSync(file)) {
        fs.rmSync(target, { force: true });
        continue;
      }
      fs.mkdirSync(path.dirname(target), { recursive: true });
      fs.cpSync(file, target);
    }
    gitIn(clone, 'add', '--all');
    if (gitIn(clone, 'status', '--porcelain') !== '') gitIn(clone, 'commit', '--quiet', '-m', 'the working tree under test');
  });
  afterAll(async () => {
    if (clone && fs.existsSync(path.join(clone, 'dist', 'cli.js'))) await shell('node dist/cli.js demo stop', clone);
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  test('every command succeeds; the push deploys HEAD to every VM; status says so; the dry-run dispatch changes nothing; stop stops the 3 VMs', async () => {
    const commands = readmeActCommands();
    // The README's own order: set up, push, check, dispatch, stop.
    expect(commands.map((c) => c.split(/\s+/).slice(0, 3).join(' '))).toEqual([
      'go install github.com/nektos/act@v0.2.87',
      'node dist/cli.js demo',
      'cp .vm-sync-demo/vm-sync.yml vm-sync.yml',
      'sed -e "s/BEFORE_SHA/$(git',
      'act push -W',
      'node dist/cli.js status',
      'act workflow_dispatch -W',
      'node dist/cli.js demo',
    ]);
    const head = gitIn(clone, 'rev-parse', 'HEAD');
    const vmsDir = path.join(clone, '.vm-sync-demo', 'vms');
    const served = (): Record<string, Record<string, string>> => Object.fromEntries(fs.readdirSync(vmsDir).map((id) => [id, snapshotTree(path.join(vmsDir, id, 'home', 'app'))]));
    const logs: string[] = [];
    for (const command of commands) {
      // act is installed already (bash .ci/run does it); the test must not build it.
      if (command.startsWith('go install ')) continue;
      if (command.startsWith('act workflow_dispatch')) {
        const before = served();
        const run = await shell(command, clone);
        expect({ command, code: run.code }).toEqual({ command, code: 0 });
        expect(run.log).toMatch(/vm-sync sync \(shard 1\/2\): (\d+ would be deployed|\d+ up to date)(, \d+ (would be deployed|up to date))? \(dry run: nothing changed\)/);
        expect(served()).toEqual(before);
        logs.push(run.log);
        continue;
      }
      const run = await shell(command, clone);
      logs.push(run.log);
      expect({ command, code: run.code, log: run.code === 0 ? '' : run.log }).toEqual({ command, code: 0, log: '' });
      if (command.startsWith('act push')) {
        expect(run.log).toMatch(/\[deploy\/scan\] 🏁 {2}Job succeeded/);
        for (const shard of [1, 2]) expect(run.log).toMatch(new RegExp(`\\[deploy/sync \\(shard ${shard}\\)-${shard}\\] 🏁 {2}Job succeeded`));
        const tree = path.join(tmp, 'expected');
        fs.mkdirSync(tree);
        execFileSync('sh', ['-c', 'git -C "$1" -c tar.umask=022 archive HEAD | tar -x -C "$2"', 'sh', clone, tree]);
        const ids = fs.readdirSync(vmsDir).sort();
        expect(ids).toEqual(['vm01', 'vm02', 'vm03']);
        for (const id of ids) {
          expect(fs.readFileSync(path.join(vmsDir, id, 'home', 'app', '.sync_rev'), 'utf8')).toBe(`${head}\n`);
          expect(snapshotTree(path.join(vmsDir, id, 'home', 'app'))).toEqual(snapshotTree(tree));
        }
      }
      if (command.startsWith('node dist/cli.js status')) expect(run.log).toMatch(/: 3 up to date\b/);
      if (command === 'node dist/cli.js demo stop') expect(run.log).toContain('3 running, 3 stopped: vm01, vm02, vm03');
    }
    expect(logs).toHaveLength(commands.length - 1);
  });
});
