import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cloneLockPath, withCloneLock } from '../../src/git/clone-lock.js';
import { makeScratchDir } from '../../src/local/scratch.js';
import { processStart } from '../../src/remote/lock.js';
import { expectedTree, snapshotTree, withCloneWait, World } from '../helpers/world.js';

/*
 * The runner-host clone under concurrent runs, corruption and kill -9, through
 * the CLI against real sshd VMs whose ids are not valid git ref names as they
 * are. Tests build on each other in order, as deploys do.
 */

const ids = ['web.lock', 'a..b', 'vm.', 'vm01'];
let world: World;
let lockPath: string;

beforeAll(async () => {
  world = await World.create(ids);
  lockPath = cloneLockPath(world.runnerRepo);
});
afterAll(() => world?.destroy());

function expectDeployed(id: string, sha: string): void {
  expect(world.sentinel(id)).toBe(`${sha}\n`);
  expect(snapshotTree(world.target(id))).toEqual(expectedTree(world.ws, sha));
}

function esc(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}


/** A process started and killed with SIGKILL: its pid and start time, now dead. */
async function deadProcess(): Promise<{ pid: number; start: string }> {
  const child = spawn('sleep', ['60'], { stdio: 'ignore' });
  await new Promise((r) => child.once('spawn', r));
  const owner = { pid: child.pid!, start: processStart(child.pid!) };
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  return owner;
}

/** Renames a path made by this process so its owner stamp names `owner` instead. */
function restamp(own: string, owner: { pid: number; start: string }): string {
  const moved = path.join(path.dirname(own), path.basename(own).replace(`-${process.pid}-${processStart(process.pid)}-`, `-${owner.pid}-${owner.start}-`));
  fs.renameSync(own, moved);
  return moved;
}

/** The loose object file of `sha` in the runner-host clone (the test fails if git packed it). */
function looseObject(sha: string): string {
  const file = path.join(world.runnerRepo, '.git', 'objects', sha.slice(0, 2), sha.slice(2));
  expect(fs.existsSync(file)).toBe(true);
  return file;
}

function corruptCopies(): string[] {
  return fs.readdirSync(path.dirname(world.runnerRepo)).filter((n) => n.startsWith('app.corrupt-')).sort();
}

test('VM ids that are not valid ref names as they are deploy, are recorded, and the next resync scans only what is new', async () => {
  const c1 = world.ws.commit({ 'app.txt': 'v1\n', 'lib/a.txt': 'a\n' }, 'c1');
  world.ws.push();
  const run = await world.cli(['sync']);
  expect(run.code).toBe(0);
  expect(run.json.vms.map((vm) => [vm.id, vm.result])).toEqual(ids.map((id) => [id, 'success']));
  for (const id of ids) expectDeployed(id, c1);
  expect(world.ws.git(world.runnerRepo, ['for-each-ref', '--format=%(refname) %(objectname)', 'refs/vm-sync/deployed/']).split('\n').sort()).toEqual(
    ['refs/vm-sync/deployed/a%2E%2Eb', 'refs/vm-sync/deployed/vm%2E', 'refs/vm-sync/deployed/vm01', 'refs/vm-sync/deployed/web%2Elock'].map((ref) => `${ref} ${c1}`),
  );

  const c2 = world.ws.commit({ 'app.txt': 'v2\n' }, 'c2');
  world.ws.push();
  const next = await world.cli(['sync']);
  expect(next.code).toBe(0);
  expect(next.json.scan?.description).toBe(`resync: the 1 commit the VMs do not have yet and the tree of ${c2.slice(0, 12)}`);
  for (const id of ids) expectDeployed(id, c2);
});

test('runs started together on one clone all succeed: the later ones wait for the runner-host lock', async () => {
  const c3 = world.ws.commit({ 'app.txt': 'v3\n', 'lib/b.txt': 'b\n' }, 'c3');
  const c4 = world.ws.commit({ 'app.txt': 'v4\n', 'lib/a.txt': null }, 'c4');
  world.ws.push();
  const c5 = world.ws.commit({ 'app.txt': 'v5\n' }, 'c5');
  world.ws.push();

  // Each run fetches (there is something new), resets and exports its own commit at the same moment.
  const runs = await Promise.all([
    world.cli(['sync', '--vm', 'web.lock', '--commit', c3]),
    world.cli(['sync', '--vm', 'a..b', '--commit', c4]),
    world.cli(['sync', '--vm', 'vm.']),
    world.cli(['sync', '--vm', 'vm01', '--commit', c3]),
  ]);

  for (const run of runs) {
    expect(run.stderr).not.toMatch(/index\.lock|cannot lock ref|unable to|fatal/i);
    expect(run.code).toBe(0);
  }
  expectDeployed('web.lock', c3);
  expectDeployed('a..b', c4);
  expectDeployed('vm.', c5);
  expectDeployed('vm01', c3);
  const waited = runs.filter((run) => /waiting for the runner-host clone /.test(run.stderr));
  expect(waited.length).toBeGreaterThanOrEqual(1);
  // The holder is another run of this process, preparing its deploy or recording what it deployed.
  for (const run of waited) expect(run.stderr).toMatch(new RegExp(`waiting for the runner-host clone ${esc(world.runnerRepo)}: held by pid ${process.pid} on \\S+ since \\S+ \\(\\d+ s ago\\), (sync: fetch, reset and export \\S+|recording deployed commits); waiting up to 300 s`));
  expect(fs.existsSync(lockPath)).toBe(false);
  const recorded = (ref: string): string => world.ws.git(world.runnerRepo, ['rev-parse', `refs/vm-sync/deployed/${ref}`]);
  expect([recorded('web%2Elock'), recorded('a%2E%2Eb'), recorded('vm%2E'), recorded('vm01')]).toEqual([c3, c4, c5, c3]);
});

test('a run that holds the clone past the wait limit fails the other with runner_busy; released in time, the other goes on', async () => {
  const c6 = world.ws.commit({ 'app.txt': 'v6\n' }, 'c6');
  world.ws.push();
  let release!: () => void;
  const holding = withCloneLock(world.runnerRepo, 'a deploy from another job', {}, () => new Promise<void>((r) => (release = r)));
  try {
    const busy = await withCloneWait('1', () => world.cli(['sync', '--vm', 'vm01']));
    expect(busy.code).toBe(1);
    expect(busy.json.error?.code).toBe('runner_busy');
    expect(busy.json.error?.message).toContain(`the runner-host clone ${world.runnerRepo} is still in use after waiting 1 s: held by pid ${process.pid} on `);
    expect(busy.json.error?.message).toContain('a deploy from another job');
    expect(busy.json.error?.message).toContain(`remove ${lockPath}`);
    expect(busy.stderr).toContain(`waiting for the runner-host clone ${world.runnerRepo}: held by pid ${process.pid}`);
    expect(world.sentinel('vm01')).not.toBe(`${c6}\n`); // nothing reached a VM

    setTimeout(() => release(), 1500);
    const waited = await withCloneWait('30', () => world.cli(['sync', '--vm', 'vm01']));
    expect(waited.code).toBe(0);
    expect(waited.stderr.match(/waiting for the runner-host clone/g)).toHaveLength(1);
    expectDeployed('vm01', c6);
  } finally {
    release();
    await holding;
  }
});

test("a lock left by a run killed with -9 is taken at once", async () => {
  const dead = await deadProcess();
  let record = '';
  await withCloneLock(world.runnerRepo, 'sync: fetch, reset and export refs/remotes/origin/main', {}, async () => {
    record = fs.readlinkSync(lockPath);
  });
  fs.symlinkSync(record.replace(`pid=${process.pid} `, `pid=${dead.pid} `).replace(/ start=\d+ /, ` start=${dead.start} `), lockPath);
  const c7 = world.ws.commit({ 'app.txt': 'v7\n' }, 'c7');
  world.ws.push();
  const started = Date.now();
  const run = await withCloneWait('60', () => world.cli(['sync', '--vm', 'vm01']));
  expect(run.code).toBe(0);
  expect(run.stderr).not.toContain('waiting for the runner-host clone');
  expect(Date.now() - started).toBeLessThan(20_000);
  expectDeployed('vm01', c7);
  expect(fs.existsSync(lockPath)).toBe(false);
});

test("a git failure shows git's whole error: the file to remove", async () => {
  const stale = path.join(world.runnerRepo, '.git', 'index.lock');
  fs.writeFileSync(stale, '');
  try {
    const run = await world.cli(['sync', '--vm', 'vm01', '--force']);
    expect(run.code).toBe(1);
    expect(run.json.error?.code).toBe('git_failed');
    expect(run.json.error?.message).toContain(`Unable to create '${stale}': File exists.`);
    expect(run.json.error?.message).toContain('remove the file manually to continue.');
    expect(run.stderr).toContain(`'${stale}'`);
  } finally {
    fs.rmSync(stale, { force: true });
  }
});

describe('a corrupt object that HEAD^{tree} does not reach, in the commit being deployed', () => {
  // Each case damages what only the new commit has, after the runner host fetched it.
  // (A fetch would bring a missing branch tip back by itself, so that case runs with --no-fetch.)
  const cases: Array<[string, (sha: string) => string, string[]]> = [
    ['a blob only the new commit has', (sha) => world.ws.git(world.runnerRepo, ['rev-parse', `${sha}:fresh/only-here.txt`]), []],
    ['the new commit’s tree', (sha) => world.ws.git(world.runnerRepo, ['rev-parse', `${sha}^{tree}`]), []],
    ['the new commit itself (the branch tip), --no-fetch', (sha) => sha, ['--no-fetch']],
    ['a blob only the new commit has, --no-fetch', (sha) => world.ws.git(world.runnerRepo, ['rev-parse', `${sha}:fresh/only-here.txt`]), ['--no-fetch']],
  ];

  test.each(cases)('%s: moved aside, cloned again once, deployed; older corrupt copies pruned', async (name, objectOf, flags) => {
    const sha = world.ws.commit({ 'fresh/only-here.txt': `new in ${name}\n`, 'app.txt': `${name}\n` }, name);
    world.ws.push();
    world.ws.git(world.runnerRepo, ['fetch', '--quiet', 'origin']);
    fs.rmSync(looseObject(objectOf(sha)));
    // Evidence from earlier re-clones: an old copy (pruned), and look-alikes that are not ours to delete.
    const parent = path.dirname(world.runnerRepo);
    fs.mkdirSync(path.join(parent, 'app.corrupt-20200101T000000Z', '.git'), { recursive: true });
    fs.mkdirSync(path.join(parent, 'elsewhere'), { recursive: true });
    if (!fs.existsSync(path.join(parent, 'app.corrupt-20200102T000000Z'))) fs.symlinkSync('elsewhere', path.join(parent, 'app.corrupt-20200102T000000Z'));
    fs.writeFileSync(path.join(parent, 'app.corrupt-notes'), 'mine\n');
    const before = corruptCopies().filter((n) => /^app\.corrupt-\d{8}T\d{6}Z(-\d+)?$/.test(n) && fs.lstatSync(path.join(parent, n)).isDirectory());

    const run = await world.cli(['sync', '--vm', 'vm01', ...flags]);

    expect(run.code).toBe(0);
    expect(run.json.commit).toBe(sha);
    expectDeployed('vm01', sha);
    const moved = /runner-host repo was corrupt: moved to (\S+\.corrupt-\d{8}T\d{6}Z(?:-\d+)?) and cloned again/.exec(run.stderr);
    expect(moved).not.toBeNull();
    expect(run.stderr.match(/cloned again/g)).toHaveLength(1);
    // The new copy is kept, with the damage in it; every older one of ours is gone.
    expect(fs.existsSync(path.join(moved![1], '.git'))).toBe(true);
    for (const old of before) expect(fs.existsSync(path.join(parent, old))).toBe(false);
    expect(corruptCopies()).toEqual(['app.corrupt-20200102T000000Z', path.basename(moved![1]), 'app.corrupt-notes'].sort());
    expect(fs.readlinkSync(path.join(parent, 'app.corrupt-20200102T000000Z'))).toBe('elsewhere');
    expect(world.ws.git(world.runnerRepo, ['rev-parse', 'HEAD'])).toBe(sha);
  });

  test('a commit missing between the deployed one and the branch tip: the branch check recovers too', async () => {
    const target = world.ws.commit({ 'app.txt': 'target\n' }, 'target');
    const middle = world.ws.commit({ 'app.txt': 'middle\n' }, 'middle');
    world.ws.commit({ 'app.txt': 'tip\n' }, 'tip');
    world.ws.push();
    world.ws.git(world.runnerRepo, ['fetch', '--quiet', 'origin']);
    fs.rmSync(looseObject(middle));

    const run = await world.cli(['sync', '--vm', 'vm01', '--commit', target]);

    expect(run.code).toBe(0);
    expect(run.stderr).toMatch(/runner-host repo was corrupt: moved to \S+ and cloned again/);
    expectDeployed('vm01', target);
  });
});

test('what runs killed with -9 left in the temporary directory is swept by the next run; a live run’s is not', async () => {
  const dead = await deadProcess();
  const live = spawn('sleep', ['60'], { stdio: 'ignore' }) as ChildProcess;
  await new Promise((r) => live.once('spawn', r));
  const liveOwner = { pid: live.pid!, start: processStart(live.pid!) };
  try {
    const deadDirs = ['export', 'rsh', 'gitleaks'].map((kind) => {
      const dir = restamp(makeScratchDir(kind), dead);
      fs.mkdirSync(path.join(dir, 'tree', 'src'), { recursive: true });
      fs.writeFileSync(path.join(dir, 'tree', 'src', 'main.py'), 'print(1)\n');
      return dir;
    });
    const liveDir = restamp(makeScratchDir('export'), liveOwner);
    // A clone that a killed run was making beside the runner-host clone.
    const tempClone = `${world.runnerRepo}.vm-sync-clone-${path.basename(deadDirs[0]).split('-').slice(3, 6).join('-')}-abc123`;
    fs.mkdirSync(path.join(tempClone, '.git'), { recursive: true });

    const run = await world.cli(['sync', '--vm', 'vm01', '--force']);
    expect(run.code).toBe(0);
    for (const dir of deadDirs) expect(fs.existsSync(dir)).toBe(false);
    expect(fs.existsSync(tempClone)).toBe(false);
    expect(fs.existsSync(liveDir)).toBe(true);
    // (The shared temporary directory may hold other killed runs' leftovers too: they go as well.)
    const swept = /removed (\d+) temporary directories left by vm-sync runs that died: (.*)/.exec(run.stderr);
    expect(Number(swept?.[1])).toBeGreaterThanOrEqual(3);
    for (const dir of deadDirs) expect(swept?.[2].split(', ')).toContain(dir);
    expect(swept?.[2]).not.toContain(liveDir);

    // verify/status and scan sweep too.
    const again = restamp(makeScratchDir('export'), dead);
    expect((await world.cli(['status'])).code).toBe(0);
    expect(fs.existsSync(again)).toBe(false);
    const scanLeft = restamp(makeScratchDir('gitleaks'), dead);
    expect((await world.cli(['scan'])).code).toBe(0);
    expect(fs.existsSync(scanLeft)).toBe(false);
    expect(fs.existsSync(liveDir)).toBe(true);
    fs.rmSync(liveDir, { recursive: true, force: true });
  } finally {
    live.kill('SIGKILL');
  }
  // Nothing of the runs in this process is left behind.
  expect(fs.readdirSync(os.tmpdir()).filter((n) => n.includes(`-${process.pid}-${processStart(process.pid)}-`))).toEqual([]);
});
