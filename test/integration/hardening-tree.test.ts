import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { FileChange } from '../../src/demo/workspace.js';
import {
  commitExactly,
  configure,
  destroyWorld,
  ESC,
  expectRevShapes,
  killVmProcesses,
  liveRev,
  liveSentinel,
  releaseFifo,
  rows,
  snapshotAll,
  stateDir,
  waitNoVmProcesses,
} from '../helpers/hardening.js';
import { expectedTree, snapshotTree, World } from '../helpers/world.js';

/*
 * Contract 1, 5 and 6b of the remote hardening: what a commit's tree holds
 * never steers a write outside the target, the live sentinel is read only as
 * vm-sync's own regular file, abandoned partial releases are cleaned up and
 * said so, and VM-controlled sentinel text never reaches the output raw.
 * Real sshd, rsync and git; every assertion is on the VM's bytes or the report.
 */

let world: World;
const fifos: string[] = [];

beforeAll(async () => {
  world = await World.create(['atomic', 'inplace', 'sa', 'si', 'big', 'left']);
  commitExactly(world, { 'README.md': '# app\n' }, 'base');
});
afterAll(() => {
  for (const fifo of fifos) releaseFifo(fifo);
  destroyWorld(world);
});
afterEach(() => {
  for (const fifo of fifos) releaseFifo(fifo);
  killVmProcesses(world);
});

const LAYOUTS = { atomic: [], inplace: ['layout: in-place'] } as const;

/** The tree a commit should produce, without whatever it commits at `.sync_rev` (vm-sync's sentinel stands there). */
function expectedWithoutSentinel(sha: string): Record<string, string> {
  return Object.fromEntries(Object.entries(expectedTree(world.ws, sha)).filter(([p]) => p !== '.sync_rev' && !p.startsWith('.sync_rev/')));
}

/** Deploys with the layout the VM uses and asserts what a user checks on it. */
async function deployAndCheck(id: 'atomic' | 'inplace', sha: string, victims: Record<string, string>, committedSentinel: boolean): Promise<void> {
  world.writeConfig({ repository: [...LAYOUTS[id]] });
  const run = await world.cli(['sync', '--vm', id]);
  const row = rows(run)[id];
  const context = `${id} @ ${sha.slice(0, 7)}: ${JSON.stringify(row?.error ?? run.json.error ?? null)} notes=${JSON.stringify(row?.notes ?? [])}`;
  expect([context, run.code, row?.result, row?.verified, row?.rev_after]).toEqual([context, 0, 'success', true, sha]);
  expectRevShapes(row);
  // The live sentinel is vm-sync's own regular file, whatever the tree held there.
  expect([context, liveSentinel(world, id)]).toEqual([context, { kind: 'file', text: `${sha}\n` }]);
  expect(snapshotTree(world.target(id))).toEqual(expectedWithoutSentinel(sha));
  if (committedSentinel) expect([context, row.notes.some((n) => /\.sync_rev/.test(n))]).toEqual([context, true]);
  if (id === 'atomic') expect(fs.lstatSync(world.target(id)).isSymbolicLink()).toBe(true);
  else expect(fs.lstatSync(world.target(id)).isDirectory()).toBe(true);
  // Nothing outside the target was written through a link.
  for (const [file, bytes] of Object.entries(victims)) expect([id, file, fs.readFileSync(file, 'utf8')]).toEqual([id, file, bytes]);
}

test('symlinks and directories a commit puts at .sync_rev, .sync_rev.tmp and similar names steer no write (atomic and in-place)', async () => {
  const v = path.join(world.dir, 'victims');
  fs.mkdirSync(v, { recursive: true });
  // A relative link at the tree root resolves from a release directory
  // (<home>/.app.vm-sync/releases/<name>/) to the VM's directory, and from the
  // in-place target (<home>/app/) to the world directory: plant victims at both.
  const relTargets = (name: string): string[] => [
    path.join(world.vm('atomic').dir, name),
    path.join(world.vm('inplace').dir, name),
    path.join(world.dir, name),
  ];
  const victims: Record<string, string> = {};
  const plant = (file: string): string => {
    const bytes = `victim ${path.basename(file)} ${crypto.randomBytes(4).toString('hex')}\n`;
    fs.writeFileSync(file, bytes);
    victims[file] = bytes;
    return file;
  };
  for (const name of ['victim-rel', 'victim-rel-tmp']) relTargets(name).forEach(plant);
  const abs = {
    rev: plant(path.join(v, 'abs-sync-rev')),
    tmp: plant(path.join(v, 'abs-sync-rev-tmp')),
    dotnew: plant(path.join(v, 'abs-sync-rev-new')),
    tilde: plant(path.join(v, 'abs-sync-rev-tilde')),
    lock: plant(path.join(v, 'abs-sync-rev-lock')),
  };

  const commits: Array<{ label: string; changes: Record<string, FileChange>; committedSentinel: boolean }> = [
    {
      label: 'relative .sync_rev link, absolute .sync_rev.tmp link',
      changes: { 'app.txt': 'one\n', '.sync_rev': { symlink: '../../../../victim-rel' }, '.sync_rev.tmp': { symlink: abs.tmp } },
      committedSentinel: true,
    },
    {
      label: 'absolute .sync_rev link, relative .sync_rev.tmp link, other sentinel-like names',
      changes: {
        'app.txt': 'two\n',
        '.sync_rev': { symlink: abs.rev },
        '.sync_rev.tmp': { symlink: '../../../../victim-rel-tmp' },
        '.sync_rev.new': { symlink: abs.dotnew },
        '.sync_rev~': { symlink: abs.tilde },
        '.sync_rev.lock': { symlink: abs.lock },
      },
      committedSentinel: true,
    },
    {
      label: 'directories at .sync_rev and .sync_rev.tmp',
      changes: {
        'app.txt': 'three\n',
        '.sync_rev': null,
        '.sync_rev.tmp': null,
        '.sync_rev/inner.txt': 'a directory where the sentinel goes\n',
        '.sync_rev.tmp/inner.txt': 'a directory where a temporary sentinel might go\n',
      },
      committedSentinel: true,
    },
    {
      label: 'a regular .sync_rev claiming another commit',
      changes: { 'app.txt': 'four\n', '.sync_rev': `${'0'.repeat(40)}\n`, '.sync_rev.tmp': null },
      committedSentinel: true,
    },
  ];

  for (const { label, changes, committedSentinel } of commits) {
    const sha = world.ws.commit(changes, label);
    world.ws.push();
    for (const id of ['atomic', 'inplace'] as const) await deployAndCheck(id, sha, victims, committedSentinel);
  }

  // And a clean commit afterwards: still the right tree and sentinel.
  const clean = world.ws.commit({ '.sync_rev': null, 'app.txt': 'five\n' }, 'clean');
  world.ws.push();
  for (const id of ['atomic', 'inplace'] as const) await deployAndCheck(id, clean, victims, false);
  world.writeConfig();
});

test('a directory that was a symlink out of the target in the previous commit is never written through (atomic and in-place)', async () => {
  const outside = path.join(world.dir, 'outside-dir');
  // sub2 -> ../../../outside-rel resolves from a release directory
  // (<home>/.app.vm-sync/releases/<name>/) to <home>/outside-rel, and from the
  // in-place target (<home>/app/) to <world>/vms/outside-rel.
  const watched = [outside, path.join(world.vm('atomic').home, 'outside-rel'), path.join(world.dir, 'vms', 'outside-rel')];
  for (const dir of watched) {
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'file'), `outside ${dir}\n`);
  }
  const before = Object.fromEntries(watched.map((d) => [d, snapshotAll(d)]));

  const first = commitExactly(world, { sub: { symlink: outside }, sub2: { symlink: '../../../outside-rel' }, 'app.txt': 'links\n' }, 'sub is a link out');
  for (const id of ['atomic', 'inplace'] as const) await deployAndCheck(id, first, {}, false);
  const second = world.ws.commit({ sub: null, sub2: null, 'sub/file': 'inside\n', 'sub/new.txt': 'new\n', 'sub2/file': 'inside too\n' }, 'sub is a real dir');
  world.ws.push();
  for (const id of ['atomic', 'inplace'] as const) {
    await deployAndCheck(id, second, {}, false);
    expect(fs.lstatSync(path.join(world.target(id), 'sub')).isDirectory()).toBe(true);
    expect(fs.readFileSync(path.join(world.target(id), 'sub', 'file'), 'utf8')).toBe('inside\n');
  }
  for (const d of watched) expect([d, snapshotAll(d)]).toEqual([d, before[d]]);
  world.writeConfig();
});

/** Plants `make(file)` as the live `.sync_rev` of sa (atomic, in its live release) and si (in-place), runs status. */
async function statusWithPlanted(make: (file: string) => void): Promise<void> {
  for (const id of ['sa', 'si']) {
    const file = path.join(world.target(id), '.sync_rev');
    fs.rmSync(file, { force: true, recursive: true });
    make(file);
  }
  configure(world, { timeoutS: 20 });
  const started = Date.now();
  const run = await world.cli(['status', '--vm', 'sa,si']);
  const table = await world.cli(['status', '--vm', 'sa,si'], { json: false });
  const elapsed = Date.now() - started;
  world.writeConfig();
  const byId = rows(run);
  const output = run.stdout + run.stderr + table.stdout + table.stderr;
  const kinds = ['sa', 'si'].map((id) => [id, byId[id]?.result, byId[id]?.error?.code, byId[id]?.rev_before ?? null]);
  expect([run.json.error ?? null, kinds]).toEqual([null, [
    ['sa', 'failed', 'sentinel_unreadable', null],
    ['si', 'failed', 'sentinel_unreadable', null],
  ]]);
  for (const id of ['sa', 'si']) {
    expectRevShapes(byId[id]);
    expect(byId[id].duration_ms).toBeLessThan(8000);
  }
  expect(elapsed).toBeLessThan(16000); // two status runs, neither waited for a timeout
  expect(run.code).toBe(1);
  expect(output).not.toContain(ESC);
  expect(output).not.toContain('\u0000');
  expect(output.length).toBeLessThan(20000);
}

describe('a live .sync_rev that is not a regular file is reported sentinel_unreadable at once, never followed or read', () => {
  let sha = '';
  beforeAll(async () => {
    sha = commitExactly(world, { 'app.txt': 'plain\n' }, 'plain tree');
    configure(world);
    expect((await world.cli(['sync', '--vm', 'sa'])).code).toBe(0);
    configure(world, { repository: ['layout: in-place'] });
    expect((await world.cli(['sync', '--vm', 'si'])).code).toBe(0);
    configure(world);
    expect([liveRev(world, 'sa'), liveRev(world, 'si')]).toEqual([sha, sha]);
  });
  afterEach(async () => {
    for (const fifo of fifos) releaseFifo(fifo);
    // Nothing of those reads is left running on the VMs.
    const left = [...(await waitNoVmProcesses(world.vm('sa'), 3000)), ...(await waitNoVmProcesses(world.vm('si'), 3000))];
    for (const id of ['sa', 'si']) {
      const file = path.join(world.target(id), '.sync_rev');
      fs.rmSync(file, { force: true, recursive: true });
      fs.writeFileSync(file, `${sha}\n`);
    }
    expect(left).toEqual([]);
  });

  const variants: Array<[string, (file: string) => void]> = [
    // Followed, this would read "up-to-date": it holds the very commit.
    ['a symlink to a file elsewhere', (file) => {
      const elsewhere = path.join(world.dir, 'elsewhere-rev');
      fs.writeFileSync(elsewhere, `${sha}\n`);
      fs.symlinkSync(elsewhere, file);
    }],
    ['a dangling symlink', (file) => fs.symlinkSync(path.join(world.dir, 'nothing-here'), file)],
    // Reading a FIFO nobody writes blocks forever.
    ['a FIFO', (file) => {
      execFileSync('mkfifo', [file]);
      fifos.push(file);
    }],
    // Endless bytes, no newline.
    ['a symlink to /dev/zero', (file) => fs.symlinkSync('/dev/zero', file)],
    ['a zero character device (mknod c 1 5)', (file) => execFileSync('mknod', [file, 'c', '1', '5'])],
  ];
  test.each(variants)('%s', async (label, make) => {
    if (label.includes('mknod') && process.getuid?.() !== 0) return; // needs root; CI runs as root
    await statusWithPlanted(make);
  }, 60_000);
});

test('a live .sync_rev with escapes, markdown, HTML and 10 MB of text: sentinel_unreadable, no escape printed, a small JSON document', async () => {
  world.writeConfig();
  commitExactly(world, { 'app.txt': 'plain for big\n' }, 'plain tree for big');
  expect((await world.cli(['sync', '--vm', 'big'])).code).toBe(0);
  const hostile =
    `\u001b[2J\u001b[31m# pwned <img src=x onerror=alert(1)> [click](https://evil.invalid) | table | \u001b]0;title\u0007\n` +
    `${'\u001b[5m<script>alert(2)</script> **bold** '.repeat(1000)}\n` +
    'A'.repeat(10 * 1024 * 1024) +
    '\n';
  fs.writeFileSync(path.join(world.target('big'), '.sync_rev'), hostile);
  const run = await world.cli(['status', '--vm', 'big']);
  const table = await world.cli(['status', '--vm', 'big'], { json: false });
  const verify = await world.cli(['verify', '--vm', 'big']);
  expect(rows(run).big).toMatchObject({ result: 'failed', error: { code: 'sentinel_unreadable' }, rev_before: null, rev_after: null });
  expect(rows(verify).big.result).toBe('failed');
  expect(run.code).toBe(1);
  for (const out of [run, table, verify]) {
    expect(out.stdout + out.stderr).not.toContain(ESC);
    expect(out.stdout + out.stderr).not.toContain('\u0007');
    expect(out.stdout + out.stderr).not.toContain('<script>');
  }
  expect(Buffer.byteLength(run.stdout)).toBeLessThan(100 * 1024);
  expect(Buffer.byteLength(verify.stdout)).toBeLessThan(100 * 1024);
  expect(Buffer.byteLength(table.stdout + table.stderr)).toBeLessThan(100 * 1024);
});

test('abandoned partial releases of other commits are removed by the next sync, and the row says so', async () => {
  world.writeConfig();
  commitExactly(world, { 'app.txt': 'plain for left\n' }, 'plain tree for left');
  expect((await world.cli(['sync', '--vm', 'left'])).code).toBe(0);
  const releases = path.join(stateDir(world, 'left'), 'releases');
  const others = [crypto.randomBytes(20).toString('hex'), crypto.randomBytes(20).toString('hex')];
  fs.mkdirSync(path.join(releases, `${others[0]}.partial`));
  fs.writeFileSync(path.join(releases, `${others[0]}.partial`, 'half.bin'), crypto.randomBytes(1000));
  fs.mkdirSync(path.join(releases, `${others[1]}.partial`, 'deep', 'er'), { recursive: true });
  fs.writeFileSync(path.join(releases, `${others[1]}.partial`, 'deep', 'er', 'file'), 'x\n');

  const next = commitExactly(world, { 'app.txt': `leftovers ${Date.now()}\n` }, 'after leftovers');
  const run = await world.cli(['sync', '--vm', 'left']);
  const row = rows(run).left;
  expect([run.code, row.result, row.rev_after, liveRev(world, 'left')]).toEqual([0, 'success', next, next]);
  const partials = fs.readdirSync(releases).filter((n) => n.endsWith('.partial'));
  expect(partials).toEqual([]);
  for (const other of others) expect([other, row.notes.some((n) => n.includes(other.slice(0, 12)))]).toEqual([other, true]);
});

test('a symlink planted at releases/<sha>.partial (this commit\'s or another\'s) is never written or deleted through', async () => {
  configure(world);
  commitExactly(world, { 'app.txt': 'plain for left again\n' }, 'plain tree for left again');
  const ready = await world.cli(['sync', '--vm', 'left']);
  expect([ready.code, ready.json.error ?? null, rows(ready).left?.error ?? null]).toEqual([0, null, null]);
  const next = commitExactly(world, { 'app.txt': `through a planted partial ${Date.now()}\n`, 'more/b.txt': 'b\n' }, 'through a planted partial');
  const releases = path.join(stateDir(world, 'left'), 'releases');
  const victims = ['victim-partial-own', 'victim-partial-other'].map((name) => {
    const dir = path.join(world.dir, name);
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'app.txt'), 'not yours\n');
    fs.writeFileSync(path.join(dir, 'keep.txt'), 'keep\n');
    return dir;
  });
  fs.symlinkSync(victims[0], path.join(releases, `${next}.partial`));
  fs.symlinkSync(victims[1], path.join(releases, `${crypto.randomBytes(20).toString('hex')}.partial`));
  const before = victims.map((d) => snapshotAll(d));

  const run = await world.cli(['sync', '--vm', 'left']);
  const row = rows(run).left;
  expect([run.code, row.result, row.rev_after, liveRev(world, 'left')]).toEqual([0, 'success', next, next]);
  expect(snapshotTree(world.target('left'))).toEqual(expectedTree(world.ws, next));
  expect(victims.map((d) => snapshotAll(d))).toEqual(before);
  // The live release is a real directory inside releases/, not the planted link.
  const live = fs.readlinkSync(world.target('left'));
  expect(fs.lstatSync(path.join(world.vm('left').home, live)).isDirectory()).toBe(true);
});
