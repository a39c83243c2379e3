import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { setEntryPoint } from '../../src/advice.js';
import { loadConfig } from '../../src/config/load.js';
import { execute } from '../../src/execute.js';
import { renderSummary } from '../../src/report/summary.js';
import { plantedSecrets, secretFiles } from '../helpers/secrets.js';
import { World, type CliRun } from '../helpers/world.js';

/*
 * Honest status, verify, dry-run and scan (issue 12, items 3 and 6), through
 * the CLI against real sshd VMs, a real git remote and real rsync and
 * gitleaks. Tests build on each other in order, as deploys do.
 */

let world: World;
const commits: Record<string, string> = {};
const ids = ['vm01', 'vm02', 'vm03'];
/** Every CLI output of this file, checked for hedged or wrong plurals at the end. */
const outputs: string[] = [];

beforeAll(async () => {
  world = await World.create(ids);
});
afterAll(() => world?.destroy());

async function cli(args: string[], options: { json?: boolean } = {}): Promise<CliRun> {
  const run = await world.cli(args, options);
  outputs.push(run.stdout, run.stderr);
  return run;
}

const clone = (args: string[]): string => world.ws.git(world.runnerRepo, args);
const short = (sha: string): string => sha.slice(0, 12);
const states = (run: CliRun): string[] => run.json.vms.map((vm) => vm.state);
const stateDirOf = (id: string): string => path.join(world.vm(id).home, '.app.vm-sync');

/**
 * What a dry run must leave alone on the runner host: the clone's HEAD, index
 * (bytes), working tree (every file, tracked or not) and every ref but the
 * ones a fetch updates (remote-tracking refs and refs/vm-sync/branches/), and
 * vm-sync's kept exports.
 */
function runnerHostSnapshot(): Record<string, string> {
  const out: Record<string, string> = {};
  out.HEAD = clone(['rev-parse', 'HEAD']);
  out.symbolic = clone(['rev-parse', '--symbolic-full-name', 'HEAD']);
  out.index = createHash('sha256').update(fs.readFileSync(path.join(world.runnerRepo, '.git', 'index'))).digest('hex');
  out.refs = clone(['for-each-ref', '--format=%(refname) %(objectname)'])
    .split('\n')
    .filter((line) => !line.startsWith('refs/remotes/') && !line.startsWith('refs/vm-sync/branches/'))
    .join('\n');
  const walk = (dir: string, rel: string): void => {
    for (const name of fs.readdirSync(dir).sort()) {
      if (rel === '' && name === '.git') continue;
      const full = path.join(dir, name);
      const stat = fs.lstatSync(full);
      const key = `tree:${rel}${name}`;
      if (stat.isDirectory()) walk(full, `${rel}${name}/`);
      else out[key] = stat.isSymbolicLink() ? `link ${fs.readlinkSync(full)}` : `${(stat.mode & 0o777).toString(8)} ${createHash('sha256').update(fs.readFileSync(full)).digest('hex')}`;
    }
  };
  walk(world.runnerRepo, '');
  const exports = path.join(path.dirname(world.runnerRepo), '.app.vm-sync', 'exports');
  out.exports = fs.existsSync(exports) ? fs.readdirSync(exports).sort().join(',') : '(none)';
  return out;
}

test('a refused --commit leaves the clone behind, and status and verify still compare with the fetched tip', async () => {
  commits.c1 = world.ws.commit({ 'a.txt': 'one\n', 'keep.txt': 'keep\n' }, 'c1');
  world.ws.push();
  expect((await cli(['sync'])).code).toBe(0);
  commits.c2 = world.ws.commit({ 'a.txt': 'two\n' }, 'c2');
  world.ws.push();
  expect((await cli(['sync'])).code).toBe(0);

  const refused = await cli(['sync', '--commit', commits.c1]);
  expect(refused.code).toBe(1);
  expect(refused.json.vms.every((vm) => vm.error?.code === 'refused_ahead')).toBe(true);
  // The refused run reset the clone to c1: HEAD is not what is deployable.
  expect(clone(['rev-parse', 'HEAD'])).toBe(commits.c1);

  const status = await cli(['status']);
  expect(status.code).toBe(0);
  expect(status.json.commit).toBe(commits.c2);
  expect(states(status)).toEqual(['up-to-date', 'up-to-date', 'up-to-date']);
  expect(status.json.baseline).toEqual({ ref: 'origin/main', fetched: true, note: 'fetched just now' });
  const verify = await cli(['verify']);
  expect(verify.code).toBe(0);
  expect(verify.json.commit).toBe(commits.c2);

  // Another place the clone can be left: checked out by hand on an old commit.
  clone(['checkout', '--quiet', '--detach', commits.c1]);
  const again = await cli(['status', '--vm', 'vm02']);
  expect(states(again)).toEqual(['up-to-date']);
  const table = await cli(['status'], { json: false });
  expect(table.stdout).toContain(`vm-sync status of ${short(commits.c2)}: 3 up to date\n`);
  expect(table.stdout).toContain(`compared with origin/main at ${short(commits.c2)}, fetched just now`);
});

test('the status line counts where each VM stands: "N up to date, M behind", never "3/3 ok" when all are behind', async () => {
  commits.c3 = world.ws.commit({ 'a.txt': 'three\n' }, 'c3');
  world.ws.push();

  // Not fetched: compared with the tip as last fetched, and labelled so.
  const stale = await cli(['status', '--no-fetch']);
  expect(stale.json.commit).toBe(commits.c2);
  expect(states(stale)).toEqual(['up-to-date', 'up-to-date', 'up-to-date']);
  expect(stale.json.baseline).toEqual({ ref: 'origin/main', fetched: false, note: 'as last fetched: this run did not fetch' });

  const behind = await cli(['status'], { json: false });
  expect(behind.code).toBe(0);
  expect(behind.stdout).toContain(`vm-sync status of ${short(commits.c3)}: 3 behind\n`);
  expect(behind.stdout).not.toMatch(/ok/);

  expect((await cli(['sync', '--vm', 'vm01'])).code).toBe(0);
  const mixed = await cli(['status']);
  expect(states(mixed)).toEqual(['up-to-date', 'behind', 'behind']);
  expect(renderSummary(mixed.json, { runUrl: '', failure: null })).toContain('## vm-sync status: 1 up to date, 2 behind\n');
  const verify = await cli(['verify'], { json: false });
  expect(verify.code).toBe(1);
  expect(verify.stdout).toContain(`vm-sync verify of ${short(commits.c3)}: 1 up to date, 2 behind\n`);
});

test('status falls back to the tip as last fetched when the fetch fails, and says so', async () => {
  const origin = world.ws.origin;
  fs.renameSync(origin, `${origin}.away`);
  try {
    const status = await cli(['status']);
    expect(status.code).toBe(0);
    expect(status.json.commit).toBe(commits.c3);
    expect(states(status)).toEqual(['up-to-date', 'behind', 'behind']);
    expect(status.json.baseline?.fetched).toBe(false);
    expect(status.json.baseline?.note).toMatch(/^as last fetched: the fetch failed, so this may be out of date \(.+\)$/);
    expect(status.stderr).toContain('WARNING: could not fetch origin/main; comparing with the runner-host clone as last fetched');
    const table = await cli(['status'], { json: false });
    expect(table.stdout).toContain(`WARNING: compared with origin/main at ${short(commits.c3)}, as last fetched: the fetch failed`);
    // sync and scan deploy or gate what they fetched: a failed fetch fails them.
    const sync = await cli(['sync']);
    expect(sync.code).toBe(1);
    expect(sync.json.error?.code).toBe('git_failed');
    expect(sync.json.error?.message).toContain('--no-fetch');
  } finally {
    fs.renameSync(`${origin}.away`, origin);
  }
});

test('--dry-run writes nothing on the runner host: HEAD, index, working tree, refs and the kept exports stay', async () => {
  // The clone as a user might have left it: on an old commit, with an edit and an untracked file.
  fs.writeFileSync(path.join(world.runnerRepo, 'keep.txt'), 'edited by hand\n');
  fs.writeFileSync(path.join(world.runnerRepo, 'untracked.txt'), 'not in git\n');
  commits.c4 = world.ws.commit({ 'a.txt': 'four\n' }, 'c4');
  world.ws.push();
  const before = runnerHostSnapshot();

  const dry = await cli(['sync', '--dry-run']);

  expect(dry.code).toBe(0);
  expect(dry.json.commit).toBe(commits.c4);
  expect(runnerHostSnapshot()).toEqual(before);
  // It fetched (a fetch changes what is known, not what is deployed or checked out).
  expect(clone(['rev-parse', 'refs/remotes/origin/main'])).toBe(commits.c4);
  // ...and a real sync still resets and cleans the clone as before.
  expect((await cli(['sync'])).code).toBe(0);
  expect(clone(['rev-parse', 'HEAD'])).toBe(commits.c4);
  expect(fs.existsSync(path.join(world.runnerRepo, 'untracked.txt'))).toBe(false);
});

test('dry-run output: files only, in words, the first ten and "and N more"', async () => {
  const many = Object.fromEntries(Array.from({ length: 12 }, (_, i) => [`many/deep/f${String(i + 1).padStart(2, '0')}.txt`, `${i}\n`]));
  commits.c5 = world.ws.commit({ ...many, 'a.txt': 'five\n', 'keep.txt': null, 'link': { symlink: 'a.txt' } }, 'c5');
  world.ws.push();

  const dry = await cli(['sync', '--dry-run', '--vm', 'vm01']);

  const vm = dry.json.vms[0];
  expect([vm.state, vm.action, vm.result]).toEqual(['behind', 'deploy', 'success']);
  // 12 new files and a new symlink, one changed, one deleted; the new directories many/ and many/deep/ are not files.
  expect(vm.files_changed).toBe(15);
  expect(vm.notes[0]).toBe('would add 13 files, change 1 file and delete 1 file');
  const listed = vm.notes.filter((n) => /^would (add|change|delete): /.test(n));
  expect(listed).toHaveLength(10);
  expect(listed).toEqual(expect.arrayContaining(['would change: a.txt', 'would delete: keep.txt', 'would add: many/deep/f01.txt']));
  expect(vm.notes).toContain('…and 5 more files');
  // No rsync itemize codes, no directory among the listed.
  expect(vm.notes.join('\n')).not.toMatch(/[<>ch.*][fdL][.+cstpogu]{9}|\*deleting|\/$/m);
  expect(listed.some((n) => n.endsWith('many/') || n.endsWith('many/deep/'))).toBe(false);

  // One change: "1 file", not "1 files".
  expect((await cli(['sync', '--vm', 'vm02'])).code).toBe(0);
  commits.c5b = world.ws.commit({ 'a.txt': 'five b\n' }, 'c5b');
  world.ws.push();
  const one = await cli(['sync', '--dry-run', '--vm', 'vm02']);
  expect(one.json.vms[0].notes.slice(0, 2)).toEqual(['would change 1 file', 'would change: a.txt']);
  expect(one.json.vms[0].files_changed).toBe(1);
  expect(one.stderr).toContain('to 1 VM, ');
});

test('dry run predicts the move-aside of what vm-sync did not create at the target; the real sync does exactly that', async () => {
  const target = world.target('vm03');
  const cases: Array<{ what: string; make: () => void }> = [
    { what: 'the directory', make: () => { fs.mkdirSync(target); fs.writeFileSync(path.join(target, 'theirs.txt'), 'theirs\n'); } },
    { what: 'the file', make: () => fs.writeFileSync(target, 'a plain file\n') },
    { what: 'the symlink', make: () => fs.symlinkSync('/nonexistent/elsewhere', target) },
  ];
  for (const { what, make } of cases) {
    fs.rmSync(target, { recursive: true, force: true });
    make();
    const dry = await cli(['sync', '--dry-run', '--vm', 'vm03']);
    const vm = dry.json.vms[0];
    expect(vm.result).toBe('success');
    const predicted = `would move ${what} at ${target} aside to ${stateDirOf('vm03')}/previous-<UTC time> (vm-sync did not create it, so it is kept, never deleted) and point ${target} at the new release`;
    expect(vm.notes).toContain(predicted);
    if (what === 'the directory') {
      // theirs.txt is not in the commit: left out of the release, kept in the directory moved aside.
      expect(vm.notes).toContain('would leave out: theirs.txt');
      expect(vm.notes).toContain('the 1 file left out stays in the copy moved aside');
      expect(vm.state).toBe('fresh');
    } else expect(vm.notes).toContainEqual(expect.stringMatching(/^would add \d+ files$/));
    if (what === 'the symlink') expect(vm.state).toBe('broken'); // a symlink to nothing serves nothing

    const real = await cli(['sync', '--vm', 'vm03']);
    expect(real.json.vms[0].result).toBe('success');
    const kept = real.json.vms[0].notes.find((n) => n.startsWith('kept the directory that stood at'));
    expect(kept).toMatch(new RegExp(`^kept the directory that stood at ${target} as ${stateDirOf('vm03')}/previous-\\d{8}T\\d{6}Z(-\\d+)?$`));
    expect(world.sentinel('vm03')).toBe(`${commits.c5b}\n`);
    fs.rmSync(kept!.split(' as ')[1], { recursive: true, force: true });
  }
});

test('a missing live release is broken, not fresh: status, verify, dry run; a sync repairs it', async () => {
  expect((await cli(['sync'])).code).toBe(0);
  const live = fs.readlinkSync(world.target('vm02'));
  fs.rmSync(path.join(world.vm('vm02').home, live), { recursive: true, force: true });

  const status = await cli(['status']);
  expect(states(status)).toEqual(['up-to-date', 'broken', 'up-to-date']);
  expect(status.json.vms[1].notes).toContain(`${world.target('vm02')} is a symlink to the release ${path.basename(live)}, which is gone: the VM serves nothing there; a sync deploys a new release`);
  const table = await cli(['status'], { json: false });
  expect(table.stdout).toContain(`vm-sync status of ${short(commits.c5b)}: 2 up to date, 1 broken\n`);
  const verify = await cli(['verify', '--vm', 'vm02']);
  expect(verify.code).toBe(1);
  expect(verify.json.vms[0].error?.message).toBe(`vm02 is on nothing (its live release is gone), expected ${short(commits.c5b)} (broken): run vm-sync sync --vm vm02.`);
  const dry = await cli(['sync', '--dry-run', '--vm', 'vm02']);
  expect([dry.json.vms[0].state, dry.json.vms[0].action]).toEqual(['broken', 'deploy']);
  // vm-sync's own symlink is replaced, not moved aside.
  expect(dry.json.vms[0].notes.some((n) => n.startsWith('would move'))).toBe(false);

  const sync = await cli(['sync', '--vm', 'vm02']);
  expect([sync.json.vms[0].state, sync.json.vms[0].result]).toEqual(['broken', 'success']);
  expect(world.sentinel('vm02')).toBe(`${commits.c5b}\n`);
});

test('scan without options scans what sync would deploy: the fetched tip, not the clone HEAD', async () => {
  clone(['checkout', '--quiet', '--detach', commits.c1]);
  const secrets = plantedSecrets();
  commits.c6 = world.ws.commit({ 'config/github.env': secretFiles(secrets)['config/github.env'] }, 'c6');
  world.ws.push();

  const notFetched = await cli(['scan', '--no-fetch']);
  expect(notFetched.json.commit).toBe(commits.c5b);
  expect(notFetched.json.baseline).toEqual({ ref: 'origin/main', fetched: false, note: 'as last fetched: this run did not fetch' });
  expect(notFetched.code).toBe(0);

  const scan = await cli(['scan']);
  expect(scan.code).toBe(3);
  expect(scan.json.commit).toBe(commits.c6);
  expect(scan.json.scan?.description).toContain(`the tree of ${short(commits.c6)}`);
  expect(scan.json.scan?.findings.map((f) => f.file)).toContain('config/github.env');
  // Same range as a sync: the commits the VMs do not have yet (c6 only).
  expect(scan.json.scan?.description).toBe(`resync: the 1 commit the VMs do not have yet and the tree of ${short(commits.c6)}`);
  // Take the secret out of the history again (a force push), so the deploys that follow are not blocked by it.
  world.ws.git(world.ws.work, ['reset', '--quiet', '--hard', commits.c5b]);
  commits.c7 = world.ws.commit({ 'c7.txt': 'seven\n' }, 'c7');
  world.ws.push(true);
});

test('--commit of another pushed branch: fetched and reported as not merged, deployable with --force', async () => {
  world.ws.git(world.ws.work, ['checkout', '--quiet', '-b', 'feature']);
  commits.f1 = world.ws.commit({ 'feature.txt': 'f1\n' }, 'f1');
  commits.f2 = world.ws.commit({ 'feature.txt': 'f2\n' }, 'f2');
  world.ws.git(world.ws.work, ['push', '--quiet', 'origin', 'HEAD:refs/heads/feature']);
  world.ws.git(world.ws.work, ['checkout', '--quiet', 'main']);
  commits.unpushed = world.ws.git(world.ws.work, ['commit-tree', '-p', commits.c7, '-m', 'never pushed', `${commits.c7}^{tree}`]);

  // An abbreviated hash of a commit inside the branch: found by fetching every branch, into a namespace of its own.
  const inner = await cli(['sync', '--commit', commits.f1.slice(0, 10)]);
  expect(inner.code).toBe(1);
  expect(inner.json.error?.code).toBe('commit_not_on_branch');
  expect(inner.json.error?.message).toBe(`${commits.f1} is not on origin/main (it is on origin's branch feature): only merged commits are deployed. Merge it into main, or deploy it anyway with --force.`);
  // The remote-tracking refs (what is deployable, and what the scan calls "other branches") are left alone.
  expect(clone(['for-each-ref', '--format=%(refname)', 'refs/remotes/']).split('\n').filter((ref) => !ref.endsWith('/HEAD'))).toEqual(['refs/remotes/origin/main']);
  expect(clone(['rev-parse', 'refs/vm-sync/branches/feature'])).toBe(commits.f2);

  // The tip of another branch by its full hash: fetched by that hash alone.
  world.ws.git(world.ws.work, ['checkout', '--quiet', '-b', 'other', commits.c7]);
  commits.g1 = world.ws.commit({ 'other.txt': 'g1\n' }, 'g1');
  world.ws.git(world.ws.work, ['push', '--quiet', 'origin', 'HEAD:refs/heads/other']);
  world.ws.git(world.ws.work, ['checkout', '--quiet', 'main']);
  const byHash = await cli(['sync', '--commit', commits.g1]);
  expect(byHash.json.error?.code).toBe('commit_not_on_branch');
  expect(byHash.json.error?.message).toBe(`${commits.g1} is not on origin/main: only merged commits are deployed. Merge it into main, or deploy it anyway with --force.`);
  expect(byHash.stderr).toContain(`fetched ${short(commits.g1)} from origin by its hash`);

  const forced = await cli(['sync', '--commit', commits.f1, '--force', '--vm', 'vm01']);
  expect(forced.code).toBe(0);
  expect(world.sentinel('vm01')).toBe(`${commits.f1}\n`);
  const verify = await cli(['verify', '--commit', commits.f1, '--vm', 'vm01']);
  expect(verify.code).toBe(0);

  const nowhere = await cli(['sync', '--commit', commits.unpushed]);
  expect(nowhere.json.error?.code).toBe('git_failed');
  expect(nowhere.json.error?.message).toBe(
    `commit ${commits.unpushed} is not on any branch of origin (every branch was fetched just now): push it to a branch first (git push origin ${commits.unpushed}:refs/heads/NAME); to deploy it without --force, merge it into main.`,
  );
  const offline = await cli(['sync', '--no-fetch', '--commit', commits.unpushed]);
  expect(offline.json.error?.message).toBe(`commit ${commits.unpushed} is not in the runner-host clone ${world.runnerRepo}, which was not fetched: drop --no-fetch so vm-sync fetches it, or push it to origin first.`);
});

test('a server that refuses a hash it does not advertise: every branch is fetched instead', async () => {
  world.ws.git(world.ws.work, ['checkout', '--quiet', 'feature']);
  commits.f3 = world.ws.commit({ 'feature.txt': 'f3\n' }, 'f3');
  commits.f4 = world.ws.commit({ 'feature.txt': 'f4\n' }, 'f4');
  world.ws.git(world.ws.work, ['push', '--quiet', 'origin', 'HEAD:refs/heads/feature']);
  world.ws.git(world.ws.work, ['checkout', '--quiet', 'main']);
  // Protocol v0 and no allow*SHA1InWant: only branch tips may be asked for by hash; f3 is not one.
  world.ws.git(world.ws.origin, ['config', 'uploadpack.allowReachableSHA1InWant', 'false']);
  const env = { GIT_CONFIG_COUNT: '1', GIT_CONFIG_KEY_0: 'protocol.version', GIT_CONFIG_VALUE_0: '0' };
  Object.assign(process.env, env);
  try {
    const run = await cli(['sync', '--commit', commits.f3, '--force', '--vm', 'vm01']);
    expect(run.code).toBe(0);
    expect(run.stderr).toContain(`fetched the branches of origin: ${short(commits.f3)} is on feature`);
    expect(world.sentinel('vm01')).toBe(`${commits.f3}\n`);
  } finally {
    for (const key of Object.keys(env)) delete process.env[key];
  }
});

test("the Action's messages name its inputs, never the CLI's flags", async () => {
  const config = loadConfig(world.configPath);
  const previous = setEntryPoint('action');
  try {
    const notMerged = await execute(config, { name: 'sync', options: { commit: commits.f4 } }).catch((e: Error) => e);
    expect(notMerged).toBeInstanceOf(Error);
    expect((notMerged as Error).message).toBe(`${commits.f4} is not on origin/main: only merged commits are deployed. Merge it into main, or deploy it anyway with input force: true.`);
    const nowhere = await execute(config, { name: 'sync', options: { commit: 'f'.repeat(40) } }).catch((e: Error) => e);
    expect((nowhere as Error).message).toContain('to deploy it without input force: true, merge it into main.');
    // A VM that is behind fails verify with advice in the Action's terms.
    const verify = await execute(config, { name: 'verify', options: { commit: commits.c7, vms: ['vm02'] } });
    expect(verify.vms[0].error?.message).toBe(`vm02 is on ${short(commits.c5b)}, expected ${short(commits.c7)} (behind): run the Action with command: sync and vms: vm02.`);
    for (const text of [(notMerged as Error).message, (nowhere as Error).message, verify.vms[0].error?.message ?? '']) expect(text).not.toMatch(/--[a-z]/);
  } finally {
    setEntryPoint(previous);
  }
});

test('no output of this file hedges a plural or says "1 files"', () => {
  const text = outputs.join('\n');
  expect(text).not.toMatch(/\w\((s|es)\)/);
  expect(text).not.toMatch(/\b1 (files|VMs|commits|paths|releases|secrets|directories|notes)\b/);
});
