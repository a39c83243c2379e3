import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { commitExactly, configure, destroyWorld, snapshotAll } from '../helpers/hardening.js';
import { releases } from '../helpers/fleet-release.js';
import { expectedTree, snapshotTree, World, type CliRun } from '../helpers/world.js';
import type { VmReport } from '../../src/sync/types.js';

/*
 * The stream transfer (src/sync/stream.ts + agent.sh `apply`): a release is
 * the live one hard-link copied plus the changes of `git diff`, sent as one
 * compressed tar per starting commit and codec (zstd where the VM runs it,
 * else gzip). What a user checks: the VM serves exactly
 * the commit's tree, the release it came from is untouched, little is sent,
 * and where the stream cannot apply (drift, no GNU tar, rsync-only patterns)
 * rsync does the work and the row says why.
 */

let world: World;
let outside: string;
let bins: string;
let noZstd: string;
const IDS = ['s1', 's2', 's3', 'plain'];

beforeAll(async () => {
  outside = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-stream-outside-'));
  fs.writeFileSync(path.join(outside, 'keep.txt'), 'not vm-sync\'s\n');
  // VM "plain" has a tar that is not GNU tar: the stream cannot apply there.
  bins = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-stream-bins-'));
  fs.writeFileSync(path.join(bins, 'tar'), '#!/bin/sh\nif [ "$1" = --version ]; then echo "tar (busybox) 1.36"; exit 0; fi\nexec /bin/tar "$@"\n', { mode: 0o755 });
  // VM "s3" has a zstd that does not run: it gets gzip streams.
  noZstd = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-stream-nozstd-'));
  fs.writeFileSync(path.join(noZstd, 'zstd'), '#!/bin/sh\necho "zstd: not here" >&2\nexit 127\n', { mode: 0o755 });
  world = await World.create(IDS, { sshdExtra: { plain: [`SetEnv PATH=${bins}:/usr/bin:/bin`], s3: [`SetEnv PATH=${noZstd}:/usr/bin:/bin`] } });
});
afterAll(() => {
  destroyWorld(world);
  fs.rmSync(outside, { recursive: true, force: true });
  fs.rmSync(bins, { recursive: true, force: true });
  fs.rmSync(noZstd, { recursive: true, force: true });
});

function rows(run: CliRun): Record<string, VmReport> {
  return Object.fromEntries((run.json.vms as VmReport[]).map((vm) => [vm.id, vm]));
}

/** Every VM serves exactly `sha`'s tree, and every kept release still holds exactly its own commit's tree. */
function expectExact(sha: string, ids = IDS): void {
  const want = deployable(expectedTree(world.ws, sha));
  for (const id of ids) {
    expect([id, snapshotTree(world.target(id))]).toEqual([id, want]);
    for (const kept of releases(world, id)) {
      const dir = path.join(world.vm(id).home, '.app.vm-sync', 'releases', kept.name);
      expect([id, kept.name, snapshotTree(dir)]).toEqual([id, kept.name, deployable(expectedTree(world.ws, kept.rev as string))]);
    }
  }
}

/** A commit's tree without what the default rsync_excludes leave out (`__pycache__`, `.vscode` at any depth). */
function deployable(tree: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(tree).filter(([p]) => !p.split('/').some((c) => c === '__pycache__' || c === '.vscode')));
}

const streamed = (run: CliRun, id: string): boolean => new RegExp(`\\[${id}\\] staging [0-9a-f]{12} from .* stream`).test(run.stderr);
/** The codec of the stream a VM was staged from (null: none). */
const codecOf = (run: CliRun, id: string): string | null => new RegExp(`\\[${id}\\] staging [0-9a-f]{12} from .* (\\w+) stream`).exec(run.stderr)?.[1] ?? null;

/** A history that exercises every kind of change, one commit at a time. */
const history = (): Array<Record<string, Parameters<typeof commitExactly>[1][string]>> => [
  {
    'app.txt': 'v1\n',
    'lib/a.txt': 'a\n',
    'lib/deep/b.txt': 'b\n',
    'bin/run': { content: '#!/bin/sh\necho 1\n', executable: true },
    'mode.sh': 'echo mode\n',
    'becomes-dir': 'file first\n',
    'becomes-file/x.txt': 'x\n',
    'becomes-link': 'was a file\n',
    'link-to-app': { symlink: 'app.txt' },
    'escape': { symlink: outside },
    'name with spaces.txt': 'spaces\n',
    '-leading-dash': 'dash\n',
    'weird\\back"quote\'.txt': 'q\n',
    'big.bin': 'z'.repeat(200_000),
    '__pycache__/m.pyc': 'excluded by default\n',
    'sub/.vscode/settings.json': '{}\n',
  },
  {
    'app.txt': 'v2\n', // modified
    'lib/a.txt': 'a\n',
    // lib/deep/b.txt deleted: lib/deep must go too
    'bin/run': { content: '#!/bin/sh\necho 1\n', executable: true },
    'mode.sh': { content: 'echo mode\n', executable: true }, // mode change only
    'becomes-dir/inner.txt': 'now a directory\n', // file -> directory
    'becomes-file': 'now a file\n', // directory -> file
    'becomes-link': { symlink: 'lib/a.txt' }, // file -> symlink
    'link-to-app': { symlink: 'bin/run' }, // symlink target change
    'escape': { symlink: outside },
    'renamed with spaces.txt': 'spaces\n', // rename
    '-leading-dash': 'dash 2\n',
    'weird\\back"quote\'.txt': 'q\n',
    'big.bin': 'z'.repeat(200_000),
    'new\nline.txt': 'a name with a newline\n',
  },
  {
    // The committed symlink out of the tree becomes a directory with files: nothing may land outside.
    'escape/keep.txt': 'inside the release\n',
    'escape/new.txt': 'also inside\n',
    'app.txt': 'v3\n',
    'becomes-dir': 'a file again\n',
    'becomes-link': 'a file again\n',
    'big.bin': 'z'.repeat(200_000),
  },
];

test('deploys every kind of change through the stream: exact trees, releases untouched, nothing outside written, little sent', async () => {
  configure(world);
  const before = snapshotAll(outside);
  const shas: string[] = [];
  for (const [i, files] of history().entries()) {
    shas.push(commitExactly(world, files, `c${i + 1}`));
    const run = await world.cli(['sync']);
    const byId = rows(run);
    expect([i, run.code, IDS.map((id) => byId[id]?.result)]).toEqual([i, 0, IDS.map(() => 'success')]);
    expectExact(shas[i]);
    for (const id of ['s1', 's2', 's3']) expect([i, id, streamed(run, id)]).toEqual([i, id, true]);
    // A VM without GNU tar gets the same release through rsync.
    expect([i, streamed(run, 'plain')]).toEqual([i, false]);
    if (i > 0) {
      // Only the changes travel: the 200 KB file (unchanged) is hard-linked, not sent.
      for (const id of ['s1', 's2', 's3']) expect([i, id, byId[id].bytes_sent < 20_000]).toEqual([i, id, true]);
    }
    // zstd where the VM runs it, gzip on s3 (its zstd does not run); the same release either way (expectExact).
    expect([i, ['s1', 's2', 's3'].map((id) => codecOf(run, id))]).toEqual([i, ['zstd', 'zstd', 'gzip']]);
    // One stream per codec for the fleet: the VMs on one codec report the same size.
    expect(byId.s1.bytes_sent).toBe(byId.s2.bytes_sent);
    expect(byId.s3.bytes_sent).not.toBe(byId.s1.bytes_sent);
  }
  expect(snapshotAll(outside)).toEqual(before);
  // Excluded by the default rsync_excludes, on both paths.
  for (const id of IDS) {
    expect(fs.existsSync(path.join(world.target(id), '__pycache__'))).toBe(false);
  }
});

test('a release changed by hand on the VM (drift) is not built upon: rsync repairs it, the row says so', async () => {
  configure(world);
  const base = commitExactly(world, { 'app.txt': 'drift base\n', 'data/x.txt': 'x\n', 'data/y.txt': 'y\n' }, 'drift base');
  expect((await world.cli(['sync'])).code).toBe(0);
  // By hand, in the live release: a changed file (same size, so only its mtime/inode can tell), a new file.
  fs.writeFileSync(path.join(world.target('s1'), 'data/x.txt'), 'X\n');
  fs.writeFileSync(path.join(world.target('s2'), 'data/extra.txt'), 'left by someone\n');
  const next = commitExactly(world, { 'app.txt': 'after drift\n', 'data/x.txt': 'x\n', 'data/y.txt': 'y\n' }, 'after drift');
  const run = await world.cli(['sync']);
  const byId = rows(run);
  expect(run.code).toBe(0);
  for (const id of ['s1', 's2']) {
    expect([id, streamed(run, id), byId[id].notes.some((n) => /changed on .* after vm-sync sealed it \(drift\): staged through rsync/.test(n))]).toEqual([id, false, true]);
  }
  expect(streamed(run, 's3')).toBe(true);
  expect(base).not.toBe(next);
  for (const id of ['s1', 's2', 's3']) expect([id, snapshotTree(world.target(id))]).toEqual([id, expectedTree(world.ws, next)]);
});

test('a live release changed by hand while the scan runs, after its copy was made ahead: not built upon, rsync repairs it', async () => {
  configure(world);
  commitExactly(world, { 'app.txt': 'during base\n', 'data/x.txt': 'x\n' }, 'during base');
  expect((await world.cli(['sync'])).code).toBe(0);
  // A gitleaks that, once, waits for s1's copy ahead, then changes a file of s1's live release in place
  // (same size, same inode: the copy's hard link sees the change too), then scans as gitleaks does.
  const real = (process.env.PATH ?? '').split(':').map((d) => path.join(d, 'gitleaks')).find((f) => fs.existsSync(f)) as string;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-stream-during-'));
  const wrapper = path.join(dir, 'gitleaks');
  const tmp = path.join(world.vm('s1').home, '.app.vm-sync', 'tmp');
  const file = path.join(world.target('s1'), 'data', 'x.txt');
  fs.writeFileSync(
    wrapper,
    `#!/bin/sh\nif [ ! -e ${dir}/done ]; then\n  : > ${dir}/done\n  i=0\n  while [ $i -lt 200 ] && ! ls ${tmp}/linked.* >/dev/null 2>&1; do sleep 0.05; i=$((i + 1)); done\n  ls ${tmp}/linked.* > ${dir}/seen 2>/dev/null\n  sleep 1.1\n  printf 'X\\n' > ${file}\nfi\nexec ${real} "$@"\n`,
    { mode: 0o755 },
  );
  try {
    world.writeConfig({ repository: [`secret_scanning: { gitleaks_path: ${wrapper} }`], rollout: ['max_failed: "100%"'] });
    const next = commitExactly(world, { 'app.txt': 'after during\n', 'data/x.txt': 'x\n' }, 'after during');
    const run = await world.cli(['sync']);
    expect(run.code).toBe(0);
    // The copy was made while gitleaks ran, and the change came after it.
    expect(fs.readFileSync(path.join(dir, 'seen'), 'utf8')).toMatch(/linked\.[0-9a-f]{40}/);
    expect(rows(run).s1.notes.join('\n')).toMatch(/stream transfer refused by s1 .*changed on this VM after vm-sync sealed it.*staged through rsync instead/);
    // Every VM serves exactly the commit, s1 included: the changed file is the commit's again.
    for (const id of ['s1', 's2', 's3']) expect([id, snapshotTree(world.target(id))]).toEqual([id, deployable(expectedTree(world.ws, next))]);
    expect(streamed(run, 's2')).toBe(true);
    // No copy ahead or its record is left on any VM.
    for (const id of IDS) expect([id, fs.readdirSync(path.join(world.vm(id).home, '.app.vm-sync', 'tmp')).filter((n) => n.startsWith('linked.'))]).toEqual([id, []]);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('sync.transfer: rsync never streams; rsync_excludes with a wildcard falls back to rsync and is honoured', async () => {
  configure(world, { sync: ['transfer: rsync'] });
  const a = commitExactly(world, { 'app.txt': 'rsync only\n', 'x.log': 'log\n' }, 'rsync only');
  let run = await world.cli(['sync']);
  expect(run.code).toBe(0);
  for (const id of IDS) expect([id, streamed(run, id)]).toEqual([id, false]);
  expect(snapshotTree(world.target('s1'))).toEqual(expectedTree(world.ws, a));

  configure(world, { repository: ['rsync_excludes: [".git", "*.log"]'] });
  const b = commitExactly(world, { 'app.txt': 'with a wildcard exclude\n', 'x.log': 'log 2\n', 'sub/y.log': 'y\n' }, 'wildcard');
  run = await world.cli(['sync']);
  expect(run.code).toBe(0);
  expect(streamed(run, 's1')).toBe(false);
  expect(rows(run).s1.notes.join('\n')).toMatch(/built with other rsync_excludes or shared_paths than now: staged through rsync/);
  expect(fs.existsSync(path.join(world.target('s1'), 'x.log'))).toBe(false);
  // Built with this config now, the release could be a base, but only rsync knows what `*.log` leaves out.
  const c = commitExactly(world, { 'app.txt': 'with a wildcard exclude, again\n', 'x.log': 'log 3\n', 'sub/y.log': 'y\n' }, 'wildcard again');
  const again = await world.cli(['sync', '--vm', 's1']);
  expect([again.code, streamed(again, 's1')]).toEqual([0, false]);
  expect(again.stderr).toMatch(/stream transfer not possible \(rsync_excludes has patterns only rsync understands/);
  expect(fs.readFileSync(path.join(world.target('s1'), 'app.txt'), 'utf8')).toBe('with a wildcard exclude, again\n');
  expect(c).not.toBe(b);
  configure(world, { repository: ['rsync_excludes: [".git", "*.log"]'] });
  expect(fs.existsSync(path.join(world.target('s1'), 'sub/y.log'))).toBe(false);
  expect(b).not.toBe(a);
});

test('a release built with other rsync_excludes is not built upon: what is excluded now is gone from the new release', async () => {
  configure(world);
  const first = commitExactly(world, { 'app.txt': 'k1\n', 'cache/data.bin': 'cached\n' }, 'k1');
  expect((await world.cli(['sync', '--vm', 's1'])).code).toBe(0);
  expect(fs.existsSync(path.join(world.target('s1'), 'cache/data.bin'))).toBe(true);
  configure(world, { repository: ['rsync_excludes: [".git", "cache"]'] });
  const second = commitExactly(world, { 'app.txt': 'k2\n', 'cache/data.bin': 'cached\n' }, 'k2');
  const run = await world.cli(['sync', '--vm', 's1']);
  expect([run.code, streamed(run, 's1'), rows(run).s1.notes.some((n) => /built with other rsync_excludes or shared_paths than now/.test(n))]).toEqual([0, false, true]);
  expect(fs.existsSync(path.join(world.target('s1'), 'cache'))).toBe(false);
  expect(fs.readFileSync(path.join(world.target('s1'), 'app.txt'), 'utf8')).toBe('k2\n');
  // Built with the new key, the next release streams again.
  commitExactly(world, { 'app.txt': 'k3\n', 'cache/data.bin': 'cached\n' }, 'k3');
  const again = await world.cli(['sync', '--vm', 's1']);
  expect([again.code, streamed(again, 's1'), fs.existsSync(path.join(world.target('s1'), 'cache'))]).toEqual([0, true, false]);
  expect(first).not.toBe(second);
  configure(world);
});
