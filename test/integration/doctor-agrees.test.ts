import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { encodeLockOwner, ownIdentity } from '../../src/remote/lock.js';
import { World, type CliRun } from '../helpers/world.js';

/*
 * Item 5: doctor checks what sync fails on. Each VM is broken one way; doctor
 * must name the check and its fix for that VM only, and a sync right after
 * must fail exactly the VMs doctor called not ready (and succeed on the ones
 * it only warned about, doing what the warning said).
 */
interface DoctorCheck {
  name: string;
  status: string;
  detail: string;
  hint: string | null;
}
interface DoctorDoc {
  ready: boolean;
  runner_host: { ready: boolean; checks: DoctorCheck[] };
  vms: Array<{ id: string; ready: boolean; checks: DoctorCheck[] }>;
}
type Row = { id: string; result: string; error: { code: string; message: string } | null; notes: string[] };

const IDS = ['good', 'chatty', 'garbled', 'sentdir', 'unmanaged', 'dangling', 'lockdead', 'lockfresh'];
let world: World;
let sha2 = '';

const doctorOf = (run: CliRun): DoctorDoc => run.json as unknown as DoctorDoc;
const rowsOf = (run: CliRun): Record<string, Row> => Object.fromEntries((run.json.vms as unknown as Row[]).map((r) => [r.id, r]));
const stateDir = (id: string): string => path.join(world.vm(id).home, '.app.vm-sync');
/** The checks of a VM that are not ok, as `name:status`. */
const notOk = (doc: DoctorDoc, id: string): string[] => (doc.vms.find((vm) => vm.id === id)?.checks ?? []).filter((c) => c.status !== 'ok').map((c) => `${c.name}:${c.status}`);
const checkOf = (doc: DoctorDoc, id: string, name: string): DoctorCheck | undefined => doc.vms.find((vm) => vm.id === id)?.checks.find((c) => c.name === name);

let savedRunnerDir: string | undefined;
beforeAll(async () => {
  world = await World.create(IDS);
  // A runner directory as the actions/runner package lays it out, at a version GitHub accepts, so the runner
  // check is ok here whatever this machine has at /opt/actions-runner.
  savedRunnerDir = process.env.VM_SYNC_RUNNER_DIR;
  const runner = path.join(world.dir, 'actions-runner');
  fs.mkdirSync(path.join(runner, 'bin'), { recursive: true });
  fs.writeFileSync(path.join(runner, 'config.sh'), '#!/bin/sh\n');
  fs.writeFileSync(path.join(runner, 'bin', 'Runner.Listener.deps.json'), JSON.stringify({ targets: { '.NETCoreApp,Version=v8.0/linux-x64': { 'Runner.Listener/2.330.0': {} } }, libraries: { 'Runner.Listener/2.330.0': { type: 'project' } } }));
  process.env.VM_SYNC_RUNNER_DIR = runner;
  world.writeConfig({ rollout: ['max_failed: "100%"'] });
  world.ws.commit({ 'index.html': 'one\n' }, 'one');
  world.ws.push();
  const first = await world.cli(['sync', '--vm', IDS.filter((id) => id !== 'unmanaged').join(',')]);
  expect(first.code).toBe(0);
  sha2 = world.ws.commit({ 'index.html': 'two\n' }, 'two');
  world.ws.push();

  // chatty: a start-up file that prints on every non-interactive session.
  fs.writeFileSync(path.join(world.vm('chatty').home, '.bashrc'), 'echo "welcome to chatty"\n');
  // garbled: something other than vm-sync wrote the sentinel.
  fs.writeFileSync(path.join(world.target('garbled'), '.sync_rev'), 'deployed by hand\n');
  // sentdir: the sentinel is a directory.
  fs.rmSync(path.join(world.target('sentdir'), '.sync_rev'));
  fs.mkdirSync(path.join(world.target('sentdir'), '.sync_rev'));
  // unmanaged: a real directory at the target, never deployed by vm-sync.
  fs.mkdirSync(world.target('unmanaged'));
  fs.writeFileSync(path.join(world.target('unmanaged'), 'keep.txt'), 'mine\n');
  // dangling: the live release is gone.
  fs.rmSync(fs.realpathSync(world.target('dangling')), { recursive: true });
  // lockdead: a vm-sync lock of a process of this host that no longer exists, deadline an hour away.
  const dead = spawnSync('true').pid as number;
  fs.symlinkSync(encodeLockOwner({ ...ownIdentity(), pid: dead, pidStart: '1', commit: 'c'.repeat(40), run: '', deadline: Math.floor(Date.now() / 1000) + 3600 }), path.join(stateDir('lockdead'), 'lock'));
  // lockfresh: a lock with an empty owner record, just made.
  fs.writeFileSync(path.join(stateDir('lockfresh'), 'lock'), '');
}, 120_000);
afterAll(() => {
  if (savedRunnerDir === undefined) delete process.env.VM_SYNC_RUNNER_DIR;
  else process.env.VM_SYNC_RUNNER_DIR = savedRunnerDir;
  world?.destroy();
});

test('doctor names each break on its VM only, with the fix; sync then fails exactly the VMs doctor called not ready', async () => {
  const doctor = await world.cli(['doctor']);
  const doc = doctorOf(doctor);
  expect(doctor.code).toBe(1);
  expect(doc.runner_host.ready).toBe(true);
  expect(doc.runner_host.checks.map((c) => `${c.name}:${c.status}`)).toEqual(['runner:ok', 'known_hosts:ok', 'gitleaks:ok', 'clone:ok']);

  expect(notOk(doc, 'good')).toEqual([]);
  expect(notOk(doc, 'chatty')).toEqual(['shell:warn']);
  expect(notOk(doc, 'garbled')).toEqual(['sync_rev:fail']);
  expect(notOk(doc, 'sentdir')).toEqual(['sync_rev:fail']);
  expect(notOk(doc, 'unmanaged')).toEqual(['live:warn']);
  expect(notOk(doc, 'dangling')).toEqual(['live:warn']);
  expect(notOk(doc, 'lockdead')).toEqual(['lock:warn']);
  expect(notOk(doc, 'lockfresh')).toEqual(['lock:fail']);

  const chatty = checkOf(doc, 'chatty', 'shell');
  expect(chatty?.detail).toBe(`${world.fleet.user}'s login shell prints 18 bytes on stdout for a non-interactive command ("welcome to chatty"): rsync fails on it with remote_shell_unclean: sync --dry-run, and any deploy that falls back to rsync (a release changed by hand, a VM without GNU tar); the stream transfer itself is unaffected`);
  expect(chatty?.hint).toMatch(/^on chatty: make .*'s start-up files .* print nothing unless the shell is interactive \(e\.g\. begin ~\/\.bashrc with: case \$- in \*i\*\) ;; \*\) return ;; esac\)/);
  expect(checkOf(doc, 'garbled', 'sync_rev')).toEqual({
    name: 'sync_rev',
    status: 'fail',
    detail: `${world.target('garbled')}/.sync_rev holds "deployed by hand", not a commit hash: a sync fails with sentinel_unreadable`,
    hint: `remove ${world.target('garbled')}/.sync_rev on garbled to treat the VM as fresh, or run vm-sync sync --force --vm garbled`,
  });
  expect(checkOf(doc, 'sentdir', 'sync_rev')?.detail).toBe(`${world.target('sentdir')}/.sync_rev is a directory: vm-sync never follows or reads it, so a sync fails with sentinel_unreadable`);
  expect(checkOf(doc, 'unmanaged', 'live')?.detail).toBe(
    `${world.target('unmanaged')} is a directory vm-sync did not create: the first sync moves it aside to ${stateDir('unmanaged')}/previous-<UTC time> (kept, never deleted) and puts its release symlink in its place`,
  );
  expect(checkOf(doc, 'dangling', 'live')?.detail).toMatch(new RegExp(`^${world.target('dangling')} points at release \\S+, which is gone: the VM serves nothing now`));
  expect(checkOf(doc, 'lockdead', 'lock')?.detail).toMatch(/^lock of a process that no longer exists: run .* deploying cccccccccccc/);
  expect(checkOf(doc, 'lockfresh', 'lock')).toEqual({
    name: 'lock',
    status: 'fail',
    detail: expect.stringMatching(/^lock with an empty or unreadable owner record \(empty, \d+s old\): a sync fails with locked until it is 60s old, then takes it over$/),
    hint: 'clear it now if no deploy is running: vm-sync unlock --vm lockfresh',
  });

  // The text shows the same, each fix under its line, and both verdicts.
  const text = await world.cli(['doctor'], { json: false });
  expect(text.stdout).toMatch(/^garbled +FAIL +sync_rev +.*not a commit hash/m);
  expect(text.stdout).toMatch(/^runner host +OK +gitleaks +gitleaks .* passed the probe every scan runs first/m);
  expect(text.stdout).toContain('\nrunner host: ready\n5 of 8 VMs ready for a sync; not ready: garbled, sentdir, lockfresh\n');

  // Now the sync: the VMs doctor called ready deploy, the others fail on what doctor named.
  const sync = await world.cli(['sync']);
  const rows = rowsOf(sync);
  for (const vm of doc.vms) expect([vm.id, rows[vm.id].result === 'success']).toEqual([vm.id, vm.ready]);
  expect([rows.garbled.error?.code, rows.sentdir.error?.code, rows.lockfresh.error?.code]).toEqual(['sentinel_unreadable', 'sentinel_unreadable', 'locked']);
  for (const id of ['good', 'chatty', 'unmanaged', 'dangling', 'lockdead']) expect([id, world.sentinel(id)]).toEqual([id, `${sha2}\n`]);
  // What the warnings said would happen did.
  const aside = fs.readdirSync(stateDir('unmanaged')).filter((n) => n.startsWith('previous-'));
  expect(aside).toHaveLength(1);
  expect(aside[0]).toMatch(/^previous-\d{8}T\d{6}Z$/);
  expect(fs.readFileSync(path.join(stateDir('unmanaged'), aside[0], 'keep.txt'), 'utf8')).toBe('mine\n');
  expect(rows.lockdead.notes.join('\n')).toMatch(/took over a stale lock/);
});

test('a chatty login shell fails doctor and sync alike when every transfer is rsync', async () => {
  world.writeConfig({ sync: ['transfer: rsync'], rollout: ['max_failed: "100%"'] });
  try {
    const doctor = await world.cli(['doctor', '--vm', 'chatty,good']);
    const doc = doctorOf(doctor);
    expect(doctor.code).toBe(1);
    expect(notOk(doc, 'chatty')).toEqual(['shell:fail']);
    expect(checkOf(doc, 'chatty', 'shell')?.detail).toMatch(/every sync of chatty uses rsync \(sync\.transfer: rsync\) and fails with remote_shell_unclean$/);
    expect(notOk(doc, 'good')).toEqual([]);
    world.ws.commit({ 'index.html': 'three\n' }, 'three');
    world.ws.push();
    const sync = await world.cli(['sync', '--vm', 'chatty,good']);
    const rows = rowsOf(sync);
    expect([rows.chatty.error?.code, rows.good.result]).toEqual(['remote_shell_unclean', 'success']);
  } finally {
    world.writeConfig({ rollout: ['max_failed: "100%"'] });
  }
});

describe('the runner host, checked once', () => {
  const git = (...args: string[]): string => execFileSync('git', ['-C', world.runnerRepo, ...args], { encoding: 'utf8' });

  test('a git lock file left in the clone: doctor says the runner host is not ready (every VM stays ready), and sync fails on it', async () => {
    const lock = path.join(world.runnerRepo, '.git', 'index.lock');
    fs.writeFileSync(lock, '');
    try {
      const doctor = await world.cli(['doctor', '--vm', 'good']);
      const doc = doctorOf(doctor);
      expect([doctor.code, doc.ready, doc.runner_host.ready, doc.vms[0].ready]).toEqual([1, false, false, true]);
      expect(doc.runner_host.checks.filter((c) => c.status !== 'ok')).toEqual([
        {
          name: 'clone',
          status: 'fail',
          detail: expect.stringMatching(new RegExp(`^${lock} exists \\(\\d+ s old\\): git refuses to change the clone while it is there, so every sync fails with git_failed$`)),
          hint: `if no git process works in ${world.runnerRepo} (ps -ef | grep git): rm ${lock}`,
        },
      ]);
      const text = await world.cli(['doctor', '--vm', 'good'], { json: false });
      expect(text.stdout).toContain('\nrunner host: not ready (clone): every sync from it fails\n1 of 1 VM ready for a sync\n');
      world.ws.commit({ 'index.html': 'four\n' }, 'four');
      world.ws.push();
      const sync = await world.cli(['sync', '--vm', 'good']);
      expect(sync.code).toBe(1);
      expect(sync.json.error?.code).toBe('git_failed');
      expect(sync.json.error?.message).toContain('index.lock');
    } finally {
      fs.rmSync(lock, { force: true });
    }
  });

  test('the clone fetching from another repository than repository.url: doctor fails it with the command that fixes it', async () => {
    const url = git('config', '--get', 'remote.origin.url').trim();
    const other = path.join(world.dir, 'other.git');
    execFileSync('git', ['init', '-q', '--bare', other]);
    git('remote', 'set-url', 'origin', other);
    try {
      const doc = doctorOf(await world.cli(['doctor', '--vm', 'good']));
      expect(doc.runner_host.checks.filter((c) => c.status !== 'ok')).toEqual([
        {
          name: 'clone',
          status: 'fail',
          detail: `${world.runnerRepo} fetches from ${other}, not from repository.url ${world.ws.origin}: sync would deploy that repository's commits`,
          hint: `git -C ${world.runnerRepo} remote set-url origin ${world.ws.origin} (or correct repository.url)`,
        },
      ]);
      // The same repository written another way is the same repository.
      git('remote', 'set-url', 'origin', `${url}/`);
      expect(doctorOf(await world.cli(['doctor', '--vm', 'good'])).runner_host.ready).toBe(true);
    } finally {
      git('remote', 'set-url', 'origin', url);
    }
  });

  test('a rebase left in the clone is a warning (sync resets it and succeeds); a clone that is no git repository is re-cloned as doctor says', async () => {
    fs.mkdirSync(path.join(world.runnerRepo, '.git', 'rebase-merge'));
    let doc = doctorOf(await world.cli(['doctor', '--vm', 'good']));
    expect(doc.runner_host.ready).toBe(true);
    expect(doc.runner_host.checks.filter((c) => c.status !== 'ok').map((c) => [c.name, c.status, c.hint])).toEqual([
      ['clone', 'warn', `finish or abort it (git -C ${world.runnerRepo} rebase --abort), and work in a clone of your own`],
    ]);
    expect((await world.cli(['sync', '--vm', 'good'])).code).toBe(0);
    fs.rmSync(path.join(world.runnerRepo, '.git', 'rebase-merge'), { recursive: true, force: true });

    fs.rmSync(path.join(world.runnerRepo, '.git'), { recursive: true });
    doc = doctorOf(await world.cli(['doctor', '--vm', 'good']));
    expect(doc.runner_host.checks.filter((c) => c.status !== 'ok')).toEqual([
      {
        name: 'clone',
        status: 'warn',
        detail: `${world.runnerRepo} is not a git clone (no .git): the next sync moves it to ${world.runnerRepo}.corrupt-<UTC time> and clones ${world.ws.origin} again`,
        hint: `nothing to do if that is expected; to keep what is in ${world.runnerRepo}, move it elsewhere first`,
      },
    ]);
    expect((await world.cli(['sync', '--vm', 'good'])).code).toBe(0);
    expect(fs.readdirSync(path.dirname(world.runnerRepo)).filter((n) => n.startsWith('app.corrupt-'))).toHaveLength(1);
  });

  test('gitleaks missing where the config points: doctor fails it, and a sync that must scan fails with gitleaks_missing', async () => {
    world.writeConfig({ repository: ['secret_scanning: { gitleaks_path: /nonexistent/gitleaks }'], rollout: ['max_failed: "100%"'] });
    try {
      const doc = doctorOf(await world.cli(['doctor', '--vm', 'good']));
      const gitleaks = doc.runner_host.checks.find((c) => c.name === 'gitleaks');
      expect([doc.runner_host.ready, gitleaks?.status]).toEqual([false, 'fail']);
      expect(gitleaks?.detail).toBe('gitleaks not found or not executable at /nonexistent/gitleaks: fix secret_scanning.gitleaks_path. Every sync fails with gitleaks_missing.');
      expect(gitleaks?.hint).toMatch(/^install gitleaks 8\.30\.1 \(https:\/\/github\.com\/gitleaks\/gitleaks\/releases\/tag\/v8\.30\.1\) on PATH/);
      world.ws.commit({ 'index.html': 'five\n' }, 'five');
      world.ws.push();
      const sync = await world.cli(['sync', '--vm', 'good']);
      expect([sync.code, sync.json.error?.code ?? sync.json.vms[0]?.error?.code]).toEqual([1, 'gitleaks_missing']);
    } finally {
      world.writeConfig({ rollout: ['max_failed: "100%"'] });
    }
  });

  test('known_hosts missing: doctor names it once for the runner host', async () => {
    const kh = fs.readFileSync(world.fleet.knownHosts);
    fs.rmSync(world.fleet.knownHosts);
    try {
      const doc = doctorOf(await world.cli(['doctor', '--vm', 'good']));
      expect(doc.runner_host.checks.find((c) => c.name === 'known_hosts')?.status).toBe('fail');
      expect((await world.cli(['status', '--vm', 'good'])).code).toBe(2);
    } finally {
      fs.writeFileSync(world.fleet.knownHosts, kh);
    }
  });
});
