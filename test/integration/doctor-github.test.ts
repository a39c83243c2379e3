import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { FakeGitHub } from '../helpers/github-server.js';
import { World } from '../helpers/world.js';

/*
 * `vm-sync doctor --github`: the deployed branch's protection, asked with a
 * token from GITHUB_TOKEN / GH_TOKEN (never argv) at GITHUB_API_URL, for the
 * repository the config's url names. Run as the real CLI bundle, so the
 * environment and the process list are the real ones.
 */
const TOKEN = `ghp_${'D0ct0r'.repeat(6)}`;
let world: World;
let github: FakeGitHub;

beforeAll(async () => {
  world = await World.create(['vm01']);
  github = await FakeGitHub.start(path.dirname(world.ws.origin));
  world.ws.commit({ 'index.html': 'x\n' }, 'one');
  world.ws.push();
  execFileSync('git', ['clone', '--quiet', world.ws.origin, world.runnerRepo]);
  // The config names the repository by its GitHub URL; the clone fetches from the same place.
  const url = 'https://github.example/acme/app.git';
  fs.writeFileSync(world.configPath, fs.readFileSync(world.configPath, 'utf8').replace(/url: .*/, `url: ${url}`));
  execFileSync('git', ['-C', world.runnerRepo, 'remote', 'set-url', 'origin', url]);
});
afterAll(async () => {
  await github?.stop();
  world?.destroy();
});

/** Runs the CLI bundle asynchronously: the fake GitHub answers from this process, so it must not block. */
function cli(args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.resolve('dist/cli.js'), ...args], { env: { PATH: process.env.PATH, HOME: process.env.HOME, GITHUB_API_URL: `${github.url}/api/v3`, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

const doctor = (env: NodeJS.ProcessEnv, json = true) => cli(['doctor', '--github', '--config', world.configPath, ...(json ? ['--json'] : [])], env);

const protectionOf = (stdout: string): { name: string; status: string; detail: string; hint: string | null } =>
  (JSON.parse(stdout) as { runner_host: { checks: Array<{ name: string; status: string; detail: string; hint: string | null }> } }).runner_host.checks.find((c) => c.name === 'branch_protection') as never;

test('doctor --github asks GET /repos/acme/app/branches/main with the token from GITHUB_TOKEN and warns when the branch is not protected', async () => {
  github.branches = { main: false };
  const before = github.api.length;
  const run = await doctor({ GITHUB_TOKEN: TOKEN });
  expect(run.code).toBe(0); // a warning, not a failure
  expect(github.api.slice(before).map((r) => [r.method, r.path, r.authorization])).toEqual([['GET', '/api/v3/repos/acme/app/branches/main', `Bearer ${TOKEN}`]]);
  expect(protectionOf(run.stdout)).toEqual({
    name: 'branch_protection',
    status: 'warn',
    detail: 'branch main of acme/app is not protected: anyone who can push to it deploys what they push, unreviewed, and can force-push or delete it',
    hint: 'protect it (Settings → Branches, or a ruleset): require a pull request before merging with at least one approving review, require the status check vm-sync/secret-scan, and block direct pushes, force pushes and deletions (README: Branch protection)',
  });
  expect(run.stdout + run.stderr).not.toContain(TOKEN);
  const text = await doctor({ GITHUB_TOKEN: TOKEN }, false);
  expect(text.stdout).toMatch(/^runner host +WARN +branch_protection +branch main of acme\/app is not protected/m);
  expect(text.stdout + text.stderr).not.toContain(TOKEN);
});

test('GH_TOKEN works too; a protected branch requiring the scan is ok; 403 and 404 are "could not check", never a failure', async () => {
  github.branches = { main: { protected: true, contexts: ['vm-sync/secret-scan'] } };
  let run = await doctor({ GH_TOKEN: TOKEN });
  expect([run.code, protectionOf(run.stdout).status, protectionOf(run.stdout).detail]).toEqual([0, 'ok', 'branch main of acme/app is protected']);
  expect(github.api.at(-1)?.authorization).toBe(`Bearer ${TOKEN}`);

  github.branches = { main: 403 };
  run = await doctor({ GITHUB_TOKEN: TOKEN });
  expect([run.code, protectionOf(run.stdout).status]).toEqual([0, 'skipped']);
  expect(protectionOf(run.stdout).detail).toBe('could not check whether branch main of acme/app is protected (HTTP 403: Resource not accessible by integration)');

  github.branches = {};
  run = await doctor({ GITHUB_TOKEN: TOKEN });
  expect([run.code, protectionOf(run.stdout).detail]).toEqual([0, 'could not check whether branch main of acme/app is protected (HTTP 404: Branch not found)']);
  expect(run.stdout + run.stderr).not.toContain(TOKEN);
});

test('without a token nothing is asked, and doctor says how to give one; without --github nothing is asked at all', async () => {
  const before = github.api.length;
  const run = await doctor({});
  expect(protectionOf(run.stdout)).toEqual({
    name: 'branch_protection',
    status: 'skipped',
    detail: 'cannot check branch main of acme/app: no token',
    hint: 'export GITHUB_TOKEN (or GH_TOKEN) with read access to the repository, then run doctor --github again',
  });
  const plain = await cli(['doctor', '--config', world.configPath, '--json'], { GITHUB_TOKEN: TOKEN });
  expect(plain.code).toBe(0);
  expect(protectionOf(plain.stdout)).toBeUndefined();
  expect(github.api.length).toBe(before);
  // --github is doctor's only.
  const misuse = await cli(['status', '--github', '--config', world.configPath], {});
  expect([misuse.code, misuse.stderr]).toEqual([2, 'vm-sync: --github only applies to doctor\nRun vm-sync status --help for its options.\n']);
});
