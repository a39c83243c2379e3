import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
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

test('act push: the scan job, then the sync job on the self-hosted label, deploy the pushed commit to every VM', async () => {
  fs.writeFileSync(path.join(repo, 'CHANGELOG.md'), '# changes\n- first deploy through act\n');
  git('add', 'CHANGELOG.md');
  git('commit', '--quiet', '-m', 'first deploy');
  const head = git('rev-parse', 'HEAD');

  const run = await act(['push', '-W', '.github/workflows/deploy.yml', '-e', pushEvent(git('rev-parse', 'HEAD~1'), head)]);

  expect(run.log).toMatch(/\[deploy\/scan\] 🏁 {2}Job succeeded/);
  // deploy.yml's matrix: two shards, each deploying its own VMs.
  for (const shard of [1, 2]) expect(run.log).toMatch(new RegExp(`\\[deploy/sync \\(shard ${shard}\\)-${shard}\\] 🏁 {2}Job succeeded`));
  for (const id of ['vm01', 'vm02']) expect(run.log).toContain(`[deploy/sync (shard ${shardOf(id, 2)})-${shardOf(id, 2)}]`);
  expect(run.code).toBe(0);
  const tree = path.join(world.dir, 'expected');
  fs.mkdirSync(tree);
  execFileSync('sh', ['-c', 'git -C "$1" -c tar.umask=022 archive HEAD | tar -x -C "$2"', 'sh', repo, tree]);
  for (const id of ['vm01', 'vm02']) {
    expect(world.sentinel(id)).toBe(`${head}\n`);
    expect(snapshotTree(world.target(id))).toEqual(snapshotTree(tree));
  }
});

test('act push of a secret: the scan job fails, the sync job never runs, no VM changes, nothing printed', async () => {
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
