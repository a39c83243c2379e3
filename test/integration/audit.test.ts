/*
 * Nothing left out silently, and an audit trail (issue 12, items 7 and 8),
 * against real sshd VMs, rsync and git:
 * - committed paths that rsync_excludes drops are listed in the report;
 * - post_sync_command's output is captured (bounded, cleaned, masked) and a
 *   failure keeps its last 20 lines;
 * - every run is journaled on the runner host; each VM keeps a revisions.log;
 *   `vm-sync history` shows both, and skips what is not a record.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { stateDirOf } from '../../src/git/exports.js';
import { readJournal } from '../../src/journal/journal.js';
import { parseRevisions } from '../../src/remote/revisions.js';
import { renderSummary } from '../../src/report/summary.js';
import { renderTable } from '../../src/report/table.js';
import { stopVm } from '../../src/demo/fleet.js';
import { World } from '../helpers/world.js';

let world: World;
const journalFile = (): string => path.join(stateDirOf(world.runnerRepo), 'journal.jsonl');
const revisionsLog = (id: string): string => path.join(world.vm(id).home, '.app.vm-sync', 'revisions.log');
const revisionLines = (id: string): string[] => fs.readFileSync(revisionsLog(id), 'utf8').split('\n').filter(Boolean);
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/;

beforeAll(async () => {
  world = await World.create(['vm01', 'vm02']);
});
afterAll(() => world?.destroy());

test('committed paths that rsync_excludes leaves out are counted and listed (several pattern forms, rsync\'s own meaning)', async () => {
  world.writeConfig({
    repository: [`rsync_excludes: [.git, .vscode, __pycache__, /build, "+ src/keep.log", "**/*.log", "cache/", "- secret dir/"]`],
  });
  const sha = world.ws.commit(
    {
      'app.txt': 'v1\n',
      '.vscode/settings.json': '{}\n',
      'pkg/__pycache__/m.pyc': 'pyc\n',
      'build/out.js': 'built\n',
      'lib/build/kept.js': 'not anchored: kept\n',
      'src/keep.log': 'kept by the + rule\n',
      'src/deep/x.log': 'dropped by **\n',
      'cache': 'a file named cache: kept (cache/ matches directories only)\n',
      'tmp/cache/c.bin': 'dropped: a cache directory\n',
      'secret dir/a.txt': 'dropped by the - rule\n',
    },
    'v1',
  );
  world.ws.push();
  const run = await world.cli(['sync']);
  expect(run.code).toBe(0);
  const dropped = ['.vscode/settings.json', 'build/out.js', 'pkg/__pycache__/m.pyc', 'secret dir/a.txt', 'src/deep/x.log', 'tmp/cache/c.bin'];
  expect(run.json.excluded).toEqual({ count: 6, paths: dropped, patterns: ['.git', '.vscode', '__pycache__', '/build', '+ src/keep.log', '**/*.log', 'cache/', '- secret dir/'] });
  // What the report says is what the VM got: the listed paths are absent, the others present.
  for (const id of ['vm01', 'vm02']) {
    expect(world.sentinel(id)).toBe(`${sha}\n`);
    for (const p of dropped) expect(fs.existsSync(path.join(world.target(id), p))).toBe(false);
    for (const p of ['app.txt', 'lib/build/kept.js', 'src/keep.log', 'cache']) expect(fs.existsSync(path.join(world.target(id), p))).toBe(true);
  }
  const sentence = 'rsync_excludes left out 6 committed paths, not deployed: .vscode/settings.json, build/out.js, pkg/__pycache__/m.pyc, secret dir/a.txt, src/deep/x.log, tmp/cache/c.bin';
  expect(run.json.notes).toEqual([sentence]);
  expect(run.stderr).toContain(sentence);
  expect(renderTable(run.json)).toContain(`note: ${sentence}`);
  expect(renderSummary(run.json, { runUrl: '', failure: null })).toContain('ℹ️ rsync\\_excludes left out 6 committed paths, not deployed: .vscode/settings.json, build/out.js, pkg/\\_\\_pycache\\_\\_/m.pyc');
});

test('more excluded paths than listed: the count covers all, the list the first 20; names are shown cleaned', async () => {
  world.writeConfig({ repository: ['rsync_excludes: [.git, "*.tmp"]'] });
  const files: Record<string, string> = { 'app.txt': 'v2\n', 'esc\u001b[31mape.tmp': 'x\n' };
  for (let i = 0; i < 25; i++) files[`t/f${String(i).padStart(2, '0')}.tmp`] = `${i}\n`;
  world.ws.commit(files, 'many tmp files');
  world.ws.push();
  const run = await world.cli(['sync', '--vm', 'vm01']);
  expect(run.code).toBe(0);
  expect(run.json.excluded?.count).toBe(26);
  expect(run.json.excluded?.paths).toHaveLength(20);
  expect(run.json.excluded?.paths[0]).toBe('esc?[31mape.tmp');
  expect(run.json.notes?.[0]).toMatch(/left out 26 committed paths, .* and 6 more$/);
  expect(run.stderr).not.toMatch(CONTROL);
});

test('post_sync_command output: per VM in the log and in --json, bounded to 200 lines, control characters cleaned, secrets masked', async () => {
  // Built at run time: no token-shaped literal in this file for the repository's own scan.
  const token = `ghp_${crypto.randomBytes(18).toString('hex').slice(0, 36)}`;
  const password = `pw-${crypto.randomBytes(6).toString('hex')}`;
  const script = [
    'i=1; while [ $i -le 250 ]; do echo "line $i"; i=$((i+1)); done',
    `echo "token ${token} in the output"`,
    `echo "DB_PASSWORD=${password}" >&2`,
    "printf 'colour \\033[31mred\\033[0m bell \\007 title \\033]0;pwned\\007 end\\n'",
    'echo "commit $VM_SYNC_COMMIT"',
  ].join('; ');
  world.writeConfig({ sync: [`post_sync_command: ${JSON.stringify(script)}`] });
  const sha = world.ws.commit({ 'app.txt': 'v3\n' }, 'v3');
  world.ws.push();
  const run = await world.cli(['sync']);
  expect(run.code).toBe(0);
  for (const vm of run.json.vms) {
    const post = vm.post_sync;
    expect(post?.exit_code).toBe(0);
    const lines = post?.output_tail.split('\n') ?? [];
    // The last 200 lines, with a first line saying the earlier ones were not kept.
    expect(lines[0]).toBe('[… earlier output not kept]');
    expect(lines).toHaveLength(201);
    expect(lines[1]).toBe('line 55');
    expect(lines.slice(-4)).toEqual(['token [masked] in the output', 'DB_PASSWORD=[masked]', 'colour red bell ? title  end', `commit ${sha}`]);
  }
  const all = `${run.stdout}\n${run.stderr}`;
  expect(all).not.toContain(token);
  expect(all).not.toContain(password);
  expect(all).not.toContain('pwned');
  expect(run.stderr).not.toMatch(CONTROL);
  // Each VM's lines under its own prefix on stderr.
  for (const id of ['vm01', 'vm02']) {
    expect(run.stderr).toContain(`[${id}] post_sync: line 250`);
    expect(run.stderr).toContain(`[${id}] post_sync: token [masked] in the output`);
  }
});

test('post_sync_command output over a real channel: a secret in a line longer than the session bound is masked, and no line it prints is a workflow command', async () => {
  const password = `pw-${crypto.randomBytes(6).toString('hex')}`;
  // One long line, in two writes: the first ends inside the secret's name, just past the session's 8,192-character
  // line bound (8,196 characters: however a pipe splits it, at page sizes, only its end passes the bound).
  const script = [
    `printf '%8190s PASSW' x`,
    'sleep 0.3',
    `printf 'ORD=${password} done\\n'`,
    `echo '##[stop-commands]pause-token'`,
    `echo '  ::add-mask::x'`,
    `printf 'soft\\302\\255::error::forged\\n'`,
    'echo restarted',
  ].join('; ');
  world.writeConfig({ sync: [`post_sync_command: ${JSON.stringify(script)}`] });
  world.ws.commit({ 'app.txt': 'v3b\n' }, 'v3b');
  world.ws.push();
  const run = await world.cli(['sync', '--vm', 'vm01']);
  expect(run.code).toBe(0);
  const tail = run.json.vms[0].post_sync?.output_tail ?? '';
  expect(tail.split('\n').slice(-4)).toEqual(['##[stop-commands]pause-token', '  ::add-mask::x', 'soft\u00ad::error::forged', 'restarted']);
  const all = `${run.stdout}\n${run.stderr}`;
  expect(all).not.toContain(password);
  // As the runner reads lines: `::` first after leading whitespace, `##[` anywhere, ignoring format characters.
  const commands = all.split('\n').filter((line) => {
    const seen = line.replace(/[\p{Cf}]/gu, '');
    return seen.trimStart().startsWith('::') || seen.includes('##[');
  });
  expect(commands).toEqual([]);
  expect(run.stderr).toContain('[vm01] post_sync: ## [stop-commands]pause-token');
  expect(run.stderr).toContain('[vm01] post_sync: restarted');
});

test('a failing post_sync_command keeps its last 20 lines in the failure message and its exit code in the row', async () => {
  world.writeConfig({ sync: [`post_sync_command: 'i=1; while [ $i -le 30 ]; do echo "out $i"; i=$((i+1)); done; echo "restart failed" >&2; exit 5'`] });
  world.ws.commit({ 'app.txt': 'v4\n' }, 'v4');
  world.ws.push();
  const run = await world.cli(['sync', '--vm', 'vm01']);
  expect(run.code).toBe(1);
  const [row] = run.json.vms;
  expect(row.error?.code).toBe('post_sync_failed');
  const quoted = ['out 12', 'out 13', 'out 14', 'out 15', 'out 16', 'out 17', 'out 18', 'out 19', 'out 20', 'out 21', 'out 22', 'out 23', 'out 24', 'out 25', 'out 26', 'out 27', 'out 28', 'out 29', 'out 30', 'restart failed'];
  expect(row.error?.message).toBe(`post_sync_command exited 5 on vm01: ${quoted.join(' | ')}. The new release is live; fix the command and run vm-sync sync --force --vm vm01 to run it again.`);
  expect(row.post_sync).toEqual({ exit_code: 5, output_tail: [...Array.from({ length: 30 }, (_, i) => `out ${i + 1}`), 'restart failed'].join('\n') });
  expect(renderTable(run.json)).toContain('vm01: post_sync_failed: post_sync_command exited 5 on vm01: out 12 | out 13');
  world.writeConfig();
});

test('every run is journaled on the runner host, and each flip, revert and rollback lands in the VM\'s revisions.log', async () => {
  world.writeConfig({ rollout: ['max_failed: "100%"'] });
  const before = readJournal(journalFile()).records.length;
  const c1 = world.ws.commit({ 'app.txt': 'j1\n' }, 'j1');
  world.ws.push();
  const first = await world.cli(['sync']);
  expect(first.code).toBe(0);
  const c2 = world.ws.commit({ 'app.txt': 'j2\n' }, 'j2');
  world.ws.push();
  const second = await world.cli(['sync']);
  expect(second.code).toBe(0);
  const back = await world.cli(['rollback', '--vm', 'vm02']);
  expect(back.code).toBe(0);
  const status = await world.cli(['status']);
  const { records, skipped } = readJournal(journalFile());
  expect(skipped).toBe(0);
  const mine = records.slice(before);
  expect(mine.map((r) => [r.run_id, r.command, r.commit, r.exit_code])).toEqual([
    [first.json.run_id, 'sync', c1, 0],
    [second.json.run_id, 'sync', c2, 0],
    [back.json.run_id, 'rollback', null, 0],
    [status.json.run_id, 'status', c2, status.code],
  ]);
  expect(new Set(mine.map((r) => r.run_id)).size).toBe(4);
  for (const r of mine) {
    expect(r.trigger).toEqual({ kind: 'cli', user: expect.any(String), sudo_user: process.env.SUDO_USER || null, host: expect.any(String) });
    expect(Date.parse(r.ended_at)).toBeGreaterThanOrEqual(Date.parse(r.started_at));
  }
  expect(mine[1].vms).toEqual([
    { id: 'vm01', state: 'behind', action: 'deploy', result: 'success', code: null, rev: c2 },
    { id: 'vm02', state: 'behind', action: 'deploy', result: 'success', code: null, rev: c2 },
  ]);
  expect(mine[2].vms).toEqual([{ id: 'vm02', state: 'unknown', action: 'rollback', result: 'success', code: null, rev: c1 }]);

  // The VM's own record: the last three changes of vm02, with the run that made each.
  const tail = revisionLines('vm02').slice(-3).map((l) => l.split(' '));
  expect(tail.map((f) => [f[2], f[3], f[4], f[5]])).toEqual([
    // From whatever vm02 served before (nothing, when this test runs alone).
    ['deploy', expect.stringMatching(/^([0-9a-f]{40}|-)$/), c1, first.json.run_id],
    ['deploy', c1, c2, second.json.run_id],
    ['rollback', c2, c1, back.json.run_id],
  ]);
  for (const f of tail) expect(f[1]).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
  expect(revisionLines('vm01').at(-1)?.split(' ').slice(2, 6)).toEqual(['deploy', c1, c2, second.json.run_id]);
});

test('a failed run is journaled with each VM\'s code; a run that fails before its VMs with its error', async () => {
  world.writeConfig();
  const cN = world.ws.commit({ 'app.txt': `only vm01 ${Date.now()}\n` }, 'only vm01');
  world.ws.push();
  expect((await world.cli(['sync', '--vm', 'vm01'])).code).toBe(0);
  const early = await world.cli(['verify', '--commit', 'no-such-ref']);
  expect(early.code).toBe(1);
  const failed = readJournal(journalFile()).records.at(-1);
  expect(failed).toMatchObject({ command: 'verify', commit: 'no-such-ref', exit_code: 1, vms: [], error: { code: early.json.error?.code } });
  const out = await world.cli(['verify']);
  expect(out.code).toBe(1);
  expect(out.json.commit).toBe(cN);
  const record = readJournal(journalFile()).records.at(-1);
  expect(record?.run_id).toBe(out.json.run_id);
  expect(record?.vms.map((v) => [v.id, v.result, v.code, v.rev])).toEqual([
    ['vm01', 'success', null, cN],
    ['vm02', 'failed', 'verify_mismatch', expect.not.stringMatching(cN)],
  ]);
});

test('a health check that fails is reverted, and the revert is in revisions.log', async () => {
  world.writeConfig();
  world.ws.commit({ 'app.txt': `healthy ${Date.now()}\n` }, 'healthy');
  world.ws.push();
  expect((await world.cli(['sync', '--vm', 'vm01'])).code).toBe(0);
  world.writeConfig({ rollout: ['health_command: "exit 3"'] });
  const live = world.sentinel('vm01')?.trim();
  const bad = world.ws.commit({ 'app.txt': 'unhealthy\n' }, 'unhealthy');
  world.ws.push();
  const run = await world.cli(['sync', '--vm', 'vm01']);
  expect(run.json.vms[0].error?.code).toBe('health_failed');
  const last2 = revisionLines('vm01').slice(-2).map((l) => l.split(' ').slice(2, 6));
  expect(last2).toEqual([
    ['deploy', live, bad, run.json.run_id],
    ['revert', bad, live, run.json.run_id],
  ]);
  world.writeConfig();
});

test('layout in-place: each deploy is a line of revisions.log too (from the commit it replaced, no release)', async () => {
  world.writeConfig({ repository: ['layout: in-place'] });
  fs.writeFileSync(world.configPath, fs.readFileSync(world.configPath, 'utf8').replace('vm_repo_paths: { default: ~/app }', 'vm_repo_paths: { default: ~/inplace }'));
  const runs: Array<{ sha: string; run: string }> = [];
  for (const n of [1, 2]) {
    const sha = world.ws.commit({ 'app.txt': `in place ${n} ${Date.now()}\n` }, `in place ${n}`);
    world.ws.push();
    const run = await world.cli(['sync', '--vm', 'vm02']);
    expect(run.code).toBe(0);
    runs.push({ sha, run: run.json.run_id as string });
  }
  const lines = fs.readFileSync(path.join(world.vm('vm02').home, '.inplace.vm-sync', 'revisions.log'), 'utf8').split('\n').filter(Boolean);
  expect(lines.map((l) => l.split(' ').slice(2))).toEqual([
    ['deploy', '-', runs[0].sha, runs[0].run, '-'],
    ['deploy', runs[0].sha, runs[1].sha, runs[1].run, '-'],
  ]);
  world.writeConfig();
});

test('history: the journal as a table and a document, with --vm the VM\'s revisions.log; garbled lines are skipped and counted, never printed', async () => {
  world.writeConfig();
  world.ws.commit({ 'app.txt': `history ${Date.now()}\n` }, 'history');
  world.ws.push();
  const deployed = await world.cli(['sync', '--vm', 'vm01']);
  expect(deployed.code).toBe(0);
  await world.cli(['status']); // at least two runs in the journal, whatever ran before
  // Damage both logs: a line that is not JSON, and hostile revisions.log lines.
  fs.appendFileSync(journalFile(), '{"v":1,"run_id":"x"\n\u001b]0;owned\u0007 not json\n');
  fs.appendFileSync(revisionsLog('vm01'), 'vm-sync-rev-1 2026-01-01T00:00:00Z deploy - \u001b[2J 20260101T000000Z-0a1b2c3d -\nvm-sync-rev-1 2026-01-01T00:00:00Z deploy - 0123456789012345678901234567890123456789 ok;rm -\n');
  const doc = await world.cli(['history', '--vm', 'vm01', '--limit', '4']);
  expect(doc.code).toBe(0);
  const history = doc.json as unknown as {
    journal: { records: Array<{ run_id: string; vms: Array<{ id: string }> }>; total: number; skipped: number };
    vm: { id: string; present: boolean; revisions: Array<{ action: string; to: string; time: string; from: string | null; run: string | null; release: string | null }>; skipped: number; error: null };
  };
  const all = readJournal(journalFile()).records.filter((r) => r.vms.some((v) => v.id === 'vm01'));
  expect(history.journal.skipped).toBe(2);
  expect(history.journal.total).toBe(all.length);
  expect(history.journal.records.map((r) => r.run_id)).toEqual(all.slice(-4).map((r) => r.run_id));
  expect(history.vm).toMatchObject({ id: 'vm01', present: true, skipped: 2, error: null });
  // The last 4 lines: the 2 garbled ones and the records before them (1 when this test runs alone), the newest this test's deploy.
  expect(history.vm.revisions).toEqual(parseRevisions(revisionLines('vm01').slice(-4)).revisions);
  expect(history.vm.revisions.length).toBeGreaterThanOrEqual(1);
  expect(history.vm.revisions.at(-1)).toMatchObject({ action: 'deploy', to: deployed.json.commit, run: deployed.json.run_id });

  const text = await world.cli(['history', '--vm', 'vm01', '--limit', '4'], { json: false });
  expect(text.code).toBe(0);
  expect(text.stdout).not.toMatch(CONTROL);
  expect(text.stdout).not.toContain('owned');
  expect(text.stdout).not.toContain('ok;rm');
  expect(text.stdout).toMatch(/^journal .*journal\.jsonl: (the last 4 of \d+ runs|1 run|[2-4] runs) that included vm01$/m);
  expect(text.stdout).toMatch(/^STARTED +RUN +COMMAND +COMMIT +DRY +SHARD +RESULT +BY$/m);
  expect(text.stdout).toContain('note: 2 lines of the journal are not records (damaged or edited) and were skipped');
  expect(text.stdout).toContain('note: 2 lines of revisions.log on vm01 are not records (garbled or written by something else) and were skipped');
  expect(text.stdout).toMatch(/^TIME +ACTION +FROM +TO +RUN +RELEASE$/m);
  expect(text.stdout).toMatch(new RegExp(`^\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\dZ +deploy +([0-9a-f]{7}|-) +${deployed.json.commit.slice(0, 7)} +${deployed.json.run_id} +\\S+$`, 'm'));

  // Without --vm: every run.
  const plain = await world.cli(['history', '--limit', '1'], { json: false });
  expect(plain.stdout).toMatch(/the last 1 of \d+ runs\n/);
  // A VM that is down fails only the --vm part, after one attempt: the journal is still shown, exit 1.
  stopVm(world.vm('vm02'));
  const started = Date.now();
  const down = await world.cli(['history', '--vm', 'vm02'], { json: false });
  expect(down.code).toBe(1);
  expect(Date.now() - started).toBeLessThan(4000);
  expect(down.stdout).toMatch(/^journal .* runs? that included vm02$/m);
  expect(down.stdout).toMatch(/^revisions\.log on vm02: could not be read: unreachable: /m);
  const usage = await world.cli(['history', '--vm', 'nope']);
  expect(usage.code).toBe(2);
  const bad = await world.cli(['history', '--limit', '0']);
  expect(bad.code).toBe(2);
});
