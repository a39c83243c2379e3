import fs from 'node:fs';
import path from 'node:path';
import { shardOf } from '../../src/config/shard.js';
import { runAction } from '../helpers/action-run.js';
import { FakeGitHub } from '../helpers/github-server.js';
import { World } from '../helpers/world.js';

/*
 * A fleet spread over shards, end to end with real sshd, rsync and git: each
 * shard deploys only its VMs, `report --merge` (CLI) and `command: report`
 * (the bundled Action, against a fake GitHub) make one report of them, and a
 * shard that wrote no results is missing, never success.
 */
const IDS = ['web1', 'web2', 'api1', 'api2', 'db1'];
const N = 3;
let world: World;
let github: FakeGitHub;
let results: string;
/** The last commit deployed. */
let deployed = '';
/** The first commit deployed. */
let first = '';

const shardVms = (k: number): string[] => IDS.filter((id) => shardOf(id, N) === k);

beforeAll(async () => {
  world = await World.create(IDS);
  github = await FakeGitHub.start(path.dirname(world.ws.origin));
  results = path.join(world.dir, 'results');
  fs.mkdirSync(results);
  // The partition these tests rely on: at least two non-empty shards (checked, so a change of hash cannot make the test vacuous).
  expect([1, 2, 3].filter((k) => shardVms(k).length > 0).length).toBeGreaterThanOrEqual(2);
});
afterAll(async () => {
  await github?.stop();
  world?.destroy();
});

test('each shard deploys exactly its own VMs; the merge reports all of them, in config order', async () => {
  const sha = world.ws.commit({ 'index.html': '<h1>sharded</h1>\n' }, 'sharded deploy');
  world.ws.push();
  const done = new Set<string>();
  for (let k = 1; k <= N; k++) {
    const run = await world.cli(['sync', '--shard', `${k}/${N}`]);
    expect(run.code).toBe(0);
    expect(run.json.shard).toEqual({ index: k, count: N });
    expect(run.json.vms.map((vm) => vm.id)).toEqual(shardVms(k));
    for (const id of shardVms(k)) done.add(id);
    // This shard's VMs and the earlier shards' serve the commit; the later shards' VMs are untouched.
    for (const id of IDS) expect(world.sentinel(id)).toBe(done.has(id) ? `${sha}\n` : null);
    fs.writeFileSync(path.join(results, `shard-${k}.json`), run.stdout);
  }
  first = sha;

  const merged = await world.cli(['report', '--merge', results]);
  expect(merged.code).toBe(0);
  expect(merged.json.vms.map((vm) => [vm.id, vm.result, vm.rev_after])).toEqual(IDS.map((id) => [id, 'success', sha]));
  expect(merged.json.shards).toEqual({ expected: N, received: [1, 2, 3], missing: [], failed: [] });

  const table = await world.cli(['report', '--merge', ...[1, 2, 3].map((k) => path.join(results, `shard-${k}.json`)), '--summary', path.join(world.dir, 'summary.md')], { json: false });
  expect(table.code).toBe(0);
  expect(table.stdout).toContain(`shards: 3 of 3 reported`);
  expect(table.stdout).toContain(`: 5 deployed\n`);
  expect(fs.readFileSync(path.join(world.dir, 'summary.md'), 'utf8')).toContain('## vm-sync sync (3 shards merged): 5 deployed\n');
});

test('a shard whose results are missing fails each of its VMs with shard_missing and the merge exits 1', async () => {
  const gone = [1, 2, 3].find((k) => shardVms(k).length > 0) as number;
  const dir = path.join(world.dir, 'partial');
  fs.mkdirSync(dir);
  for (let k = 1; k <= N; k++) if (k !== gone) fs.copyFileSync(path.join(results, `shard-${k}.json`), path.join(dir, `shard-${k}.json`));

  const merged = await world.cli(['report', '--merge', dir]);
  expect(merged.code).toBe(1);
  expect(merged.json.shards?.missing).toEqual([gone]);
  expect(merged.json.vms.map((vm) => [vm.id, vm.error?.code ?? vm.result])).toEqual(IDS.map((id) => [id, shardVms(gone).includes(id) ? 'shard_missing' : 'success']));

  // Without the config nobody can name the missing shard's VMs, and the merge still fails.
  const blind = await world.cli(['report', '--merge', dir], { config: false });
  expect(blind.code).toBe(1);
  expect(blind.json.vms.map((vm) => vm.id).sort()).toEqual(IDS.filter((id) => !shardVms(gone).includes(id)).sort());
  expect(blind.stdout).toContain(`"missing": [\n      ${gone}\n    ]`);
});

test('verify and status take --shard too; scan does not, and a bad K/N is a usage error', async () => {
  const k = [1, 2, 3].find((i) => shardVms(i).length > 0) as number;
  for (const command of ['verify', 'status']) {
    const run = await world.cli([command, '--shard', `${k}/${N}`]);
    expect(run.code).toBe(0);
    expect(run.json.vms.map((vm) => vm.id)).toEqual(shardVms(k));
  }
  const usage = await world.cli(['scan', '--shard', '1/2']);
  expect(usage.code).toBe(2);
  expect(usage.json.error?.message).toBe('--shard only applies to sync, rollback, verify and status');
  const bad = await world.cli(['sync', '--shard', '4/3']);
  expect(bad.code).toBe(2);
  expect(bad.json.error?.message).toMatch(/^--shard must be K\/N with 1 <= K <= N <= 256/);
});

test('the Action: a shard with skip-scan writes its results file; command: report posts one aggregate status, failure while a shard is missing', async () => {
  const sha = world.ws.commit({ 'index.html': '<h1>sharded v2</h1>\n' }, 'second sharded deploy');
  world.ws.push();
  const k = [1, 2, 3].find((i) => shardVms(i).length > 0) as number;
  const dir = path.join(world.dir, 'artifacts');
  fs.mkdirSync(path.join(dir, `vm-sync-results-${k}`), { recursive: true });
  const push = { name: 'push', sha, payload: { before: '0'.repeat(40), after: sha, ref: 'refs/heads/main' } };

  github.api.length = 0;
  const shard = await runAction(world, github, { command: 'sync', shard: `${k}/${N}`, 'skip-scan': 'true', 'results-path': `artifacts/vm-sync-results-${k}/vm-sync-results-${k}.json` }, push);
  expect(shard.code).toBe(0);
  for (const id of IDS) expect(world.sentinel(id)?.trim() === sha).toBe(shardVms(k).includes(id));
  const contexts = github.calls().filter((c) => c.call === `POST /api/v3/repos/acme/app/statuses/${sha}`).map((c) => c.body.context);
  // No scan here (the scan job did it): no vm-sync/secret-scan status, one status pair per VM of this shard only.
  expect([...new Set(contexts)].sort()).toEqual(shardVms(k).map((id) => `vm-sync/${id}`).sort());
  const written = JSON.parse(fs.readFileSync(path.join(dir, `vm-sync-results-${k}`, `vm-sync-results-${k}.json`), 'utf8'));
  expect(written.shard).toEqual({ index: k, count: N });
  expect(written.scan).toBeNull();

  github.api.length = 0;
  const report = await runAction(world, github, { command: 'report', results: 'artifacts', shards: String(N) }, push);
  expect(report.code).toBe(1);
  const statuses = github.calls().filter((c) => c.call.startsWith('POST /api/v3/repos/acme/app/statuses/'));
  const ok = shardVms(k).length;
  expect(statuses.map((c) => [c.call, c.body.context, c.body.state, c.body.description])).toEqual([
    [`POST /api/v3/repos/acme/app/statuses/${sha}`, 'vm-sync', 'failure', `${ok} of ${IDS.length} VMs ok in ${N} shards, ${N - 1} shards missing`],
  ]);
  expect(report.outputs.failed.split(',').sort()).toEqual(IDS.filter((id) => !shardVms(k).includes(id)).sort());
  expect(report.summary).toContain(`## vm-sync sync (${N} shards merged): ${ok} deployed, ${IDS.length - ok} failed\n`);
  expect(report.summary).toContain('`shard_missing`');

  // The other shards come back: the aggregate turns success.
  for (let i = 1; i <= N; i++) {
    if (i === k) continue;
    fs.mkdirSync(path.join(dir, `vm-sync-results-${i}`));
    const run = await runAction(world, github, { command: 'sync', shard: `${i}/${N}`, 'skip-scan': 'true', 'results-path': `artifacts/vm-sync-results-${i}/r.json` }, push);
    expect(run.code).toBe(0);
  }
  github.api.length = 0;
  const whole = await runAction(world, github, { command: 'report', results: 'artifacts', shards: String(N) }, push);
  expect(whole.code).toBe(0);
  expect(github.calls().map((c) => [c.call, c.body.context, c.body.state, c.body.description])).toEqual([
    [`POST /api/v3/repos/acme/app/statuses/${sha}`, 'vm-sync', 'success', `${IDS.length} of ${IDS.length} VMs ok in ${N} shards`],
  ]);
  for (const id of IDS) expect(world.sentinel(id)).toBe(`${sha}\n`);
  deployed = sha;
});

test('the Action: a report with no results at all fails every VM, and an input error is still an aggregate error status', async () => {
  const sha = deployed;
  const push = { name: 'push', sha, payload: { before: '0'.repeat(40), after: sha, ref: 'refs/heads/main' } };
  github.api.length = 0;
  const none = await runAction(world, github, { command: 'report', results: 'no-such-dir', shards: '2' }, push);
  expect(none.code).toBe(1);
  expect(none.outputs.failed.split(',').sort()).toEqual([...IDS].sort());
  expect(github.calls().map((c) => [c.body.context, c.body.state])).toEqual([['vm-sync', 'failure']]);

  fs.mkdirSync(path.join(world.dir, 'junk'));
  fs.writeFileSync(path.join(world.dir, 'junk', 'x.json'), '{"not": "results"}');
  github.api.length = 0;
  const junk = await runAction(world, github, { command: 'report', results: 'junk' }, push);
  expect(junk.code).toBe(1);
  expect(github.calls().map((c) => [c.body.context, c.body.state])).toEqual([['vm-sync', 'error']]);
  expect(junk.summary).toContain('results_invalid');
});

test('rollback --shard flips back only the VMs of its shard', async () => {
  const k = [1, 2, 3].find((i) => shardVms(i).length > 0) as number;
  const run = await world.cli(['rollback', '--shard', `${k}/${N}`]);
  expect(run.code).toBe(0);
  expect(run.json.vms.map((vm) => [vm.id, vm.result])).toEqual(shardVms(k).map((id) => [id, 'success']));
  for (const id of IDS) expect(world.sentinel(id)).toBe(`${shardVms(k).includes(id) ? first : deployed}\n`);
});
