import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cloneLockPath, readCloneLock, withCloneLock } from '../../src/git/clone-lock.js';
import { deployedRefName, gitOutput, RunnerRepo } from '../../src/git/repo.js';
import { makeScratchDir, sweepScratchDirs } from '../../src/local/scratch.js';
import { processStart } from '../../src/remote/lock.js';

/*
 * The runner-host clone's lock, its git error reporting, the ref names that
 * record deployed commits and the temporary-directory sweep: real git, real
 * processes (a holder that was killed is a real dead pid), real files.
 */

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-clone-unit-'));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

function git(cwd: string, args: string[]): string {
  const result = spawnSync('git', args, { cwd, encoding: 'utf8', env: { ...process.env, GIT_AUTHOR_NAME: 'T', GIT_AUTHOR_EMAIL: 't@example.invalid', GIT_COMMITTER_NAME: 'T', GIT_COMMITTER_EMAIL: 't@example.invalid' } });
  if (result.status !== 0) throw new Error(`git ${args.join(' ')}: ${result.stderr}`);
  return result.stdout.trim();
}

function esc(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** A process that was started and then killed with SIGKILL: its pid and start time, now dead. */
async function deadProcess(): Promise<{ pid: number; start: string }> {
  const child = spawn('sleep', ['60'], { stdio: 'ignore' });
  await new Promise((r) => child.once('spawn', r));
  const pid = child.pid!;
  const start = processStart(pid);
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  return { pid, start };
}

async function liveProcess(): Promise<{ child: ChildProcess; pid: number; start: string }> {
  const child = spawn('sleep', ['60'], { stdio: 'ignore' });
  await new Promise((r) => child.once('spawn', r));
  return { child, pid: child.pid!, start: processStart(child.pid!) };
}

/** What a lock left by a holder with this pid would hold: a real record (taken and released here) with the pid swapped. */
async function lockRecordOf(clone: string, holder: { pid: number; start: string }): Promise<string> {
  let record = '';
  await withCloneLock(clone, 'sync: fetch, reset and export', {}, async () => {
    record = fs.readlinkSync(cloneLockPath(clone));
  });
  return record.replace(`pid=${process.pid} `, `pid=${holder.pid} `).replace(/ start=\d+ /, ` start=${holder.start} `);
}

describe('the runner-host lock', () => {
  test('lives beside the clone, in its state directory', () => {
    expect(cloneLockPath('/srv/app')).toBe('/srv/.app.vm-sync/clone.lock');
    expect(cloneLockPath('/srv/deploy/site.example/')).toBe('/srv/deploy/.site.example.vm-sync/clone.lock');
  });

  test('two runs in one process never hold it at once, also when many start together', async () => {
    const clone = path.join(dir, 'app');
    const spans: Array<[number, number]> = [];
    const waits: string[] = [];
    await Promise.all(
      Array.from({ length: 6 }, (_, i) =>
        withCloneLock(clone, `run ${i}`, { onWait: (m) => waits.push(m) }, async () => {
          const start = performance.now();
          await new Promise((r) => setTimeout(r, 30));
          spans.push([start, performance.now()]);
        }),
      ),
    );
    spans.sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < spans.length; i++) expect(spans[i][0]).toBeGreaterThanOrEqual(spans[i - 1][1]);
    // Every run but the first waited, and each said so once, naming the holder.
    expect(waits).toHaveLength(5);
    for (const message of waits) {
      expect(message).toMatch(new RegExp(`^waiting for the runner-host clone ${esc(clone)}: held by pid ${process.pid} on \\S+ since \\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\dZ \\(\\d+ s ago\\), run \\d; waiting up to 300 s$`));
    }
    expect(fs.existsSync(cloneLockPath(clone))).toBe(false);
  });

  test('is re-entrant within one run', async () => {
    const clone = path.join(dir, 'app');
    const result = await withCloneLock(clone, 'outer', { waitMs: 500 }, () => withCloneLock(clone, 'inner', { waitMs: 500 }, async () => 'done'));
    expect(result).toBe('done');
  });

  test('a live holder past the wait limit fails with runner_busy, naming it and what to do', async () => {
    const clone = path.join(dir, 'app');
    const live = await liveProcess();
    try {
      fs.mkdirSync(path.dirname(cloneLockPath(clone)), { recursive: true });
      fs.symlinkSync(await lockRecordOf(clone, live), cloneLockPath(clone));
      const waits: string[] = [];
      const started = Date.now();
      const error = await withCloneLock(clone, 'sync', { waitMs: 700, onWait: (m) => waits.push(m) }, async () => 'ran').catch((e: unknown) => e);
      expect(Date.now() - started).toBeGreaterThanOrEqual(700);
      expect(error).toMatchObject({ code: 'runner_busy' });
      const message = (error as Error).message;
      expect(message).toContain(`the runner-host clone ${clone} is still in use after waiting 1 s: held by pid ${live.pid} on `);
      expect(message).toContain('sync: fetch, reset and export');
      expect(message).toContain(`remove ${cloneLockPath(clone)}`);
      expect(message).toContain('VM_SYNC_CLONE_WAIT_S');
      expect(waits).toEqual([expect.stringMatching(new RegExp(`^waiting for the runner-host clone ${esc(clone)}: held by pid ${live.pid} on .*; waiting up to 1 s$`))]);
      // The holder's lock is still there: a waiter never removes a live one.
      expect(readCloneLock(cloneLockPath(clone))).toMatchObject({ pid: live.pid });
    } finally {
      live.child.kill('SIGKILL');
    }
  });

  test('a dead holder (killed with -9) is stale at once, also with many waiters racing to break it', async () => {
    const clone = path.join(dir, 'app');
    const dead = await deadProcess();
    fs.mkdirSync(path.dirname(cloneLockPath(clone)), { recursive: true });
    fs.symlinkSync(await lockRecordOf(clone, dead), cloneLockPath(clone));
    const spans: Array<[number, number]> = [];
    const started = Date.now();
    await Promise.all(
      Array.from({ length: 5 }, () =>
        withCloneLock(clone, 'sync', { waitMs: 5000 }, async () => {
          const start = performance.now();
          await new Promise((r) => setTimeout(r, 20));
          spans.push([start, performance.now()]);
        }),
      ),
    );
    spans.sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < spans.length; i++) expect(spans[i][0]).toBeGreaterThanOrEqual(spans[i - 1][1]);
    expect(Date.now() - started).toBeLessThan(3000);
    expect(fs.readdirSync(path.dirname(cloneLockPath(clone)))).toEqual([]);
  });

  test('a holder whose pid now belongs to another process (other start time) is stale', async () => {
    const clone = path.join(dir, 'app');
    const live = await liveProcess();
    try {
      fs.mkdirSync(path.dirname(cloneLockPath(clone)), { recursive: true });
      fs.symlinkSync(await lockRecordOf(clone, { pid: live.pid, start: String(Number(live.start) - 7) }), cloneLockPath(clone));
      await expect(withCloneLock(clone, 'sync', { waitMs: 300 }, async () => 'ran')).resolves.toBe('ran');
    } finally {
      live.child.kill('SIGKILL');
    }
  });

  test('an aborted run stops waiting with interrupted', async () => {
    const clone = path.join(dir, 'app');
    let release!: () => void;
    const holding = withCloneLock(clone, 'holder', {}, () => new Promise<void>((r) => (release = r)));
    await new Promise((r) => setTimeout(r, 20));
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 300);
    await expect(withCloneLock(clone, 'waiter', { signal: controller.signal }, async () => 'ran')).rejects.toMatchObject({ code: 'interrupted' });
    release();
    await holding;
  });
});

describe('git errors', () => {
  test("keep git's whole output, bounded, with the file to remove", () => {
    const stderr = [
      "fatal: Unable to create '/srv/app/.git/index.lock': File exists.",
      '',
      'Another git process seems to be running in this repository, e.g.',
      'an editor opened by \'git commit\'. Please make sure all processes',
      'are terminated then try again. If it still fails, a git process',
      'may have crashed in this repository earlier:',
      'remove the file manually to continue.',
    ].join('\n');
    const out = gitOutput(stderr);
    expect(out).toContain("'/srv/app/.git/index.lock'");
    expect(out.split('\n').at(-1)).toBe('remove the file manually to continue.');
  });

  test('are cut to the last lines, count repeats, mask URL credentials and control characters', () => {
    const noise = Array.from({ length: 300 }, (_, i) => `error: line ${i} ${'x'.repeat(40)}`);
    const out = gitOutput([...noise, 'error: packfile p.pack does not match index', 'error: packfile p.pack does not match index', 'error: packfile p.pack does not match index', "fatal: unable to access 'https://bot:s3cr3tTok@git.example/r.git/': \u001b[31mfailed"].join('\n'));
    expect(out.length).toBeLessThanOrEqual(2100);
    expect(out.split('\n').length).toBeLessThanOrEqual(21);
    expect(out).toContain('earlier lines cut');
    expect(out).toContain('error: packfile p.pack does not match index (3 times)');
    expect(out).toContain("https://***@git.example/r.git/': ?[31mfailed");
    expect(out).not.toContain('s3cr3tTok');
    expect(gitOutput('')).toBe('(git printed nothing)');
  });

  test('a failed reset names the lock file git wants removed', async () => {
    const clone = path.join(dir, 'app');
    git(dir, ['init', '--quiet', '--initial-branch=main', clone]);
    fs.writeFileSync(path.join(clone, 'a.txt'), 'a\n');
    git(clone, ['add', '.']);
    git(clone, ['commit', '--quiet', '-m', 'a']);
    fs.writeFileSync(path.join(clone, '.git', 'index.lock'), '');
    const repo = new RunnerRepo(clone, 'origin', 'main', null, {}, { managed: true });
    const error = await repo.checkout(git(clone, ['rev-parse', 'HEAD'])).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'git_failed' });
    expect((error as Error).message).toContain(`${clone}/.git/index.lock': File exists.`);
    expect((error as Error).message).toContain('remove the file manually to continue.');
  });
});

describe('a dry run and an unusable clone', () => {
  test('a dry run never moves the clone aside or clones again: it says what a sync would do, and the clone stays as it was', async () => {
    const origin = path.join(dir, 'origin.git');
    const work = path.join(dir, 'work');
    git(dir, ['init', '--quiet', '--bare', '--initial-branch=main', origin]);
    git(dir, ['clone', '--quiet', origin, work]);
    fs.writeFileSync(path.join(work, 'a.txt'), 'a\n');
    git(work, ['add', '.']);
    git(work, ['commit', '--quiet', '-m', 'a']);
    git(work, ['push', '--quiet', 'origin', 'main']);
    const clone = path.join(dir, 'app');
    git(dir, ['clone', '--quiet', origin, clone]);
    // A clone left unusable (HEAD names a branch that is not there: a cut-short clone or checkout looks the same).
    git(clone, ['symbolic-ref', 'HEAD', 'refs/heads/gone']);
    fs.writeFileSync(path.join(clone, 'notes.txt'), 'by hand\n');
    const inode = fs.statSync(clone).ino;
    const repo = new RunnerRepo(clone, 'origin', 'main', origin, {}, { managed: true });
    const exportDir = path.join(dir, 'export');
    const error = await repo.prepareDeploy({ fetch: true, dryRun: true, force: false, exportDir }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'git_failed' });
    expect((error as Error).message).toContain('a dry run changes nothing on the runner host');
    expect((error as Error).message).toContain('a sync moves it aside');
    expect(fs.statSync(clone).ino).toBe(inode);
    expect(git(clone, ['symbolic-ref', 'HEAD'])).toBe('refs/heads/gone');
    expect(fs.readFileSync(path.join(clone, 'notes.txt'), 'utf8')).toBe('by hand\n');
    expect(fs.readdirSync(dir).filter((name) => name.startsWith('app.corrupt-'))).toEqual([]);
    // The real sync repairs it, as before.
    expect(await repo.prepareDeploy({ fetch: true, force: false, exportDir })).toBe(git(work, ['rev-parse', 'HEAD']));
    expect(fs.readdirSync(dir).filter((name) => name.startsWith('app.corrupt-'))).toHaveLength(1);
  });
});

describe('deployed-commit refs', () => {
  const ids = ['vm01', 'web-1.eu', 'web.lock', 'a..b', 'vm.', 'x.lock.lock', 'A_b-c', 'a.b..c.', '9', 'web%2Elock'];

  test.each(ids)('%s gets a ref git accepts', (id) => {
    const ref = deployedRefName(id);
    expect(spawnSync('git', ['check-ref-format', ref]).status).toBe(0);
    expect(decodeURIComponent(ref.replace('refs/vm-sync/deployed/', ''))).toBe(id);
  });

  test('ids that were valid refs keep their old ref; no two ids share one', () => {
    expect(deployedRefName('vm01')).toBe('refs/vm-sync/deployed/vm01');
    expect(deployedRefName('web-1.eu')).toBe('refs/vm-sync/deployed/web-1.eu');
    expect(deployedRefName('web.lock')).toBe('refs/vm-sync/deployed/web%2Elock');
    expect(new Set(ids.map(deployedRefName)).size).toBe(ids.length);
  });

  test('one transaction records every id, skips an unknown commit, and deployed() reads each back', async () => {
    const clone = path.join(dir, 'app');
    git(dir, ['init', '--quiet', '--initial-branch=main', clone]);
    git(clone, ['commit', '--quiet', '--allow-empty', '-m', 'one']);
    const one = git(clone, ['rev-parse', 'HEAD']);
    git(clone, ['commit', '--quiet', '--allow-empty', '-m', 'two']);
    const two = git(clone, ['rev-parse', 'HEAD']);
    // A record written before ids were encoded (a valid id) is still found.
    git(clone, ['update-ref', 'refs/vm-sync/deployed/old.vm', one]);
    const repo = new RunnerRepo(clone, 'origin', 'main', null, {}, { managed: true });
    await repo.recordDeployed([
      { vmId: 'web.lock', sha: one },
      { vmId: 'a..b', sha: two },
      { vmId: 'vm.', sha: two },
      { vmId: 'ghost', sha: 'f'.repeat(40) },
      { vmId: 'short', sha: 'abc' },
      { vmId: 'web.lock', sha: two },
    ]);
    await repo.recordDeployed('vm01', one);
    expect(await repo.deployed('web.lock')).toBe(two);
    expect(await repo.deployed('a..b')).toBe(two);
    expect(await repo.deployed('vm.')).toBe(two);
    expect(await repo.deployed('vm01')).toBe(one);
    expect(await repo.deployed('old.vm')).toBe(one);
    expect(await repo.deployed('ghost')).toBeNull();
    expect(await repo.deployed('short')).toBeNull();
    // All at once (one for-each-ref), in the order asked: the same answers.
    const ids = ['short', 'web.lock', 'a..b', 'vm.', 'vm01', 'old.vm', 'ghost'];
    expect(await repo.deployedOf(ids)).toEqual([null, two, two, two, one, one, null]);
    // A record that is not a commit (an annotated tag written by hand) reads as deployed() reads it.
    git(clone, ['tag', '-a', '-m', 'annotated', 'ann', one]);
    git(clone, ['update-ref', deployedRefName('tagged'), git(clone, ['rev-parse', 'ann'])]);
    expect([await repo.deployedOf(['tagged', 'vm01']), await repo.deployed('tagged')]).toEqual([[one, one], one]);
    expect(fs.existsSync(cloneLockPath(clone))).toBe(false);
  });
});

describe('temporary directories', () => {
  /** A scratch directory as a process with this pid and start time would have named it. */
  function scratchOf(kind: string, owner: { pid: number; start: string }): string {
    const own = makeScratchDir(kind);
    const name = path.basename(own).replace(`-${process.pid}-${processStart(process.pid)}-`, `-${owner.pid}-${owner.start}-`);
    const full = path.join(path.dirname(own), name);
    fs.renameSync(own, full);
    fs.mkdirSync(path.join(full, 'tree', 'deep'), { recursive: true });
    fs.writeFileSync(path.join(full, 'tree', 'deep', 'file'), 'x');
    return full;
  }

  test('are private and named after their owner', () => {
    const own = makeScratchDir('export');
    try {
      expect(path.basename(own)).toMatch(new RegExp(`^vm-sync-export-[0-9a-f]{8}-${process.pid}-${processStart(process.pid)}-[A-Za-z0-9]{6}$`));
      expect(fs.statSync(own).mode & 0o777).toBe(0o700);
    } finally {
      fs.rmSync(own, { recursive: true, force: true });
    }
  });

  test("a dead run's are swept; a live run's, another user's and a symlink are not", async () => {
    const dead = await deadProcess();
    const live = await liveProcess();
    const created: string[] = [];
    try {
      const deadExport = scratchOf('export', dead);
      const deadRsh = scratchOf('rsh', dead);
      const deadGitleaks = scratchOf('gitleaks', dead);
      const liveExport = scratchOf('export', live);
      const mine = makeScratchDir('export');
      const othersUser = scratchOf('export', dead);
      fs.chownSync(othersUser, 65534, 65534);
      const target = path.join(dir, 'keep-me');
      fs.mkdirSync(target);
      const link = `${scratchOf('rsh', dead)}`;
      fs.rmSync(link, { recursive: true });
      fs.symlinkSync(target, link);
      created.push(liveExport, mine, othersUser, link);

      // The shared temporary directory may hold other killed runs' leftovers, which the sweep rightly removes too.
      const removed = sweepScratchDirs();
      expect(removed).toEqual(expect.arrayContaining([deadExport, deadRsh, deadGitleaks]));
      for (const kept of [liveExport, mine, othersUser, link]) expect(removed).not.toContain(kept);
      for (const gone of [deadExport, deadRsh, deadGitleaks]) expect(fs.existsSync(gone)).toBe(false);
      for (const kept of [liveExport, mine, othersUser]) expect(fs.existsSync(kept)).toBe(true);
      expect(fs.lstatSync(link).isSymbolicLink()).toBe(true);
      expect(fs.existsSync(target)).toBe(true);
    } finally {
      live.child.kill('SIGKILL');
      for (const p of created) fs.rmSync(p, { recursive: true, force: true });
    }
  });

  test('the sweep is cheap: a temp directory with thousands of other entries', () => {
    const tmp = path.join(dir, 'tmp');
    fs.mkdirSync(tmp);
    for (let i = 0; i < 5000; i++) fs.writeFileSync(path.join(tmp, `other-${i}`), '');
    const started = performance.now();
    expect(sweepScratchDirs(tmp)).toEqual([]);
    expect(performance.now() - started).toBeLessThan(200);
  });
});
