import fs from 'node:fs';
import path from 'node:path';
import { destroyWorld } from '../helpers/hardening.js';
import { cliWith, secondConfig } from '../helpers/fleet-release.js';
import { World, type CliRun } from '../helpers/world.js';
import { loadConfig } from '../../src/config/load.js';
import { KnownHosts } from '../../src/remote/known-hosts.js';
import { VmSession } from '../../src/remote/session.js';
import { RemoteTarget } from '../../src/remote/target.js';
import type { VmReport } from '../../src/sync/types.js';

/*
 * `vm-sync verify --deep` against real sshd VMs: what each VM serves, file by
 * file, against its commit's tree as vm-sync deploys it. What a user checks:
 * a fresh deploy is clean (exit 0); each kind of change made by hand on a VM
 * is reported as what it is (exit 1, release_drifted), with names a VM chose
 * escaped in the output; shared paths and excluded paths are not drift; and
 * `sync --force --vm X` makes the VM clean again.
 */

let world: World;
let c1: string;
const DEEP_IDS = ['d1', 'd2'];

beforeAll(async () => {
  world = await World.create(['d1', 'd2', 'ip']);
  world.writeConfig({ repository: ['shared_paths: [data/]'] });
});
afterAll(() => destroyWorld(world));

const rows = (run: CliRun): Record<string, VmReport> => Object.fromEntries(run.json.vms.map((vm) => [vm.id, vm]));
const clean = (checked: number): VmReport['drift'] => ({ checked, changed: 0, missing: 0, extra: 0, paths: [] });

/** The raw bytes of a name a VM user could create: a newline, an escape sequence and a byte that is not UTF-8. */
const EVIL = Buffer.concat([Buffer.from('evil\n\x1b[31mred'), Buffer.from([0xff]), Buffer.from('.txt')]);

// The commit's deployed entries: app.txt, same-size.txt, to-delete.txt, becomes-link.txt, link,
// dir, dir/nested.txt, bin, bin/run, crlf.txt, .gitattributes, and the shared path data (a link).
// __pycache__ is excluded (the default rsync_excludes), export-ignored.txt is export-ignore'd.
const CHECKED = 12;

test('after a deploy, verify --deep finds every VM clean (exit 0)', async () => {
  world.ws.commit(
    {
      '.gitattributes': 'export-ignored.txt export-ignore\ncrlf.txt text eol=crlf\n',
      'app.txt': 'hello\n',
      'same-size.txt': 'abcdef\n',
      'to-delete.txt': 'delete me\n',
      'becomes-link.txt': 'a file for now\n',
      link: { symlink: 'app.txt' },
      'dir/nested.txt': 'nested\n',
      'bin/run': { content: '#!/bin/sh\necho run\n', executable: true },
      'crlf.txt': 'line one\nline two\n',
      'export-ignored.txt': 'never deployed\n',
      'data/seed.txt': 'seed\n',
      '__pycache__/m.pyc': 'excluded\n',
    },
    'c1',
  );
  world.ws.push();
  c1 = world.ws.git(world.ws.work, ['rev-parse', 'HEAD']);
  const sync = await world.cli(['sync', '--vm', DEEP_IDS.join(',')]);
  expect(sync.code).toBe(0);
  // The export converts line endings: a check against git's blobs would call this file changed.
  expect(fs.readFileSync(path.join(world.target('d1'), 'crlf.txt'), 'utf8')).toBe('line one\r\nline two\r\n');

  const run = await world.cli(['verify', '--deep', '--vm', DEEP_IDS.join(',')]);

  expect(run.code).toBe(0);
  expect(run.json.vms.map((vm) => [vm.id, vm.result, vm.verified, vm.error, vm.rev_after, vm.drift])).toEqual(DEEP_IDS.map((id) => [id, 'success', true, null, c1, clean(CHECKED)]));
  const table = await world.cli(['verify', '--deep', '--vm', 'd1'], { json: false });
  expect(table.code).toBe(0);
  expect(table.stdout).toMatch(/VERIFIED\s+DRIFT\n/);
  expect(table.stdout).toMatch(/\byes\s+clean\n/);
});

test('plain verify does not read the files: no drift field is filled', async () => {
  const run = await world.cli(['verify', '--vm', 'd1']);
  expect(run.code).toBe(0);
  expect(run.json.vms[0].drift).toBeNull();
});

test('changes made by hand are each reported as what they are; shared and excluded paths are not drift', async () => {
  const t = world.target('d1');
  fs.writeFileSync(path.join(t, 'app.txt'), 'HELLO\n'); // same size, other content
  fs.chmodSync(path.join(t, 'dir/nested.txt'), 0o600);
  fs.writeFileSync(path.join(t, 'added.txt'), 'added by hand\n');
  fs.rmSync(path.join(t, 'to-delete.txt'));
  fs.rmSync(path.join(t, 'becomes-link.txt'));
  fs.symlinkSync('app.txt', path.join(t, 'becomes-link.txt'));
  fs.rmSync(path.join(t, 'link'));
  fs.symlinkSync('dir/nested.txt', path.join(t, 'link'));
  fs.writeFileSync(Buffer.concat([Buffer.from(`${t}/`), EVIL]), 'named by someone\n');
  // The application's own data: written through the shared path's link, into vm-sync's shared directory.
  fs.writeFileSync(path.join(t, 'data/seed.txt'), 'the application changed this\n');
  fs.writeFileSync(path.join(t, 'data/new-upload.bin'), 'uploaded\n');
  // An excluded path the application makes at run time.
  fs.mkdirSync(path.join(t, 'dir/__pycache__'));
  fs.writeFileSync(path.join(t, 'dir/__pycache__/nested.pyc'), 'compiled\n');

  const run = await world.cli(['verify', '--deep', '--vm', DEEP_IDS.join(',')]);

  expect(run.code).toBe(1);
  const { d1, d2 } = rows(run);
  expect([d1.result, d1.verified, d1.error?.code]).toEqual(['failed', false, 'release_drifted']);
  expect(d1.error?.message).toContain('vm-sync sync --force --vm d1');
  expect(d1.error?.message).toContain('4 changed, 1 missing, 2 extra');
  expect(d1.drift).toEqual({
    checked: CHECKED,
    changed: 4,
    missing: 1,
    extra: 2,
    paths: [
      { path: 'added.txt', what: 'extra', detail: 'file' },
      { path: 'app.txt', what: 'changed', detail: 'content' },
      { path: 'becomes-link.txt', what: 'changed', detail: 'type file -> symlink' },
      { path: 'dir/nested.txt', what: 'changed', detail: 'mode 0644 -> 0600' },
      { path: 'evil\\x0a\\x1b[31mred\\xff.txt', what: 'extra', detail: 'file' },
      { path: 'link', what: 'changed', detail: 'symlink target' },
      { path: 'to-delete.txt', what: 'missing', detail: 'file' },
    ],
  });
  // The other VM is untouched.
  expect([d2.result, d2.verified, d2.error, d2.drift]).toEqual(['success', true, null, clean(CHECKED)]);

  // The table: the drift column and every path, escaped; the raw name never reaches the terminal.
  const table = await world.cli(['verify', '--deep', '--vm', 'd1'], { json: false });
  expect(table.code).toBe(1);
  expect(table.stdout).toMatch(/^d1 .*\bno\s+4 changed, 1 missing, 2 extra$/m);
  expect(table.stdout).toContain('d1: drift: extra: evil\\x0a\\x1b[31mred\\xff.txt (file)');
  expect(table.stdout).toContain('d1: drift: changed: link (symlink target)');
  for (const out of [table.stdout, table.stderr, run.stdout, run.stderr]) {
    expect(out).not.toContain('\x1b');
    expect(out).not.toContain('evil\n');
    expect(Buffer.from(out, 'latin1').includes(EVIL)).toBe(false);
    expect(Buffer.from(out, 'utf8').includes(EVIL)).toBe(false);
  }
});

test('a shared path that is no longer a link to the shared directory is drift', async () => {
  const t = world.target('d2');
  fs.rmSync(path.join(t, 'data'));
  fs.mkdirSync(path.join(t, 'data'));
  fs.writeFileSync(path.join(t, 'data/seed.txt'), 'a copy, not the shared one\n');

  const run = await world.cli(['verify', '--deep', '--vm', 'd2']);

  expect(run.code).toBe(1);
  expect(run.json.vms[0].error?.code).toBe('release_drifted');
  expect(run.json.vms[0].drift).toEqual({
    checked: CHECKED,
    changed: 1,
    missing: 0,
    extra: 0,
    paths: [{ path: 'data', what: 'changed', detail: "type symlink -> dir (a shared path must link to vm-sync's shared directory)" }],
  });
});

test('sync --force --vm rebuilds the drifted release from the commit: verify --deep is clean again, shared data kept', async () => {
  for (const id of DEEP_IDS) {
    const sync = await world.cli(['sync', '--force', '--vm', id]);
    expect([id, sync.code]).toEqual([id, 0]);
  }

  const run = await world.cli(['verify', '--deep', '--vm', DEEP_IDS.join(',')]);

  expect(run.code).toBe(0);
  expect(run.json.vms.map((vm) => [vm.id, vm.result, vm.drift])).toEqual(DEEP_IDS.map((id) => [id, 'success', clean(CHECKED)]));
  expect(fs.readFileSync(path.join(world.target('d1'), 'app.txt'), 'utf8')).toBe('hello\n');
  expect(fs.readFileSync(path.join(world.target('d1'), 'data/seed.txt'), 'utf8')).toBe('the application changed this\n');
});

test('the listing is bounded: past its byte cap the channel is cut, past its entry cap the VM refuses; both say "too many entries"', async () => {
  const config = loadConfig(world.configPath);
  const vm = config.vms.find((v) => v.id === 'd1');
  if (!vm) throw new Error('no d1');
  const session = await VmSession.open(vm, new KnownHosts(fs.readFileSync(config.knownHostsPath, 'utf8')), { connectTimeoutMs: 5000 });
  try {
    const target = new RemoteTarget(session, vm.repoPath, Date.now() + 60_000);
    const generous = { maxEntries: 1000, maxCompressedBytes: 1 << 20, maxBytes: 1 << 20 };
    // The live release: the 12 deployed entries and .sync_rev.
    expect((await target.listing('release', generous)).size).toBe(CHECKED + 1);
    await expect(target.listing('release', { ...generous, maxCompressedBytes: 64 })).rejects.toThrow(/^too many entries on d1 for the deep verify: its listing is over 64 bytes gzip'd/);
    await expect(target.listing('release', { ...generous, maxEntries: 3 })).rejects.toThrow(/^too many entries on d1 for the deep verify: \S+ holds more than 3 entries/);
    await expect(target.listing('release', { ...generous, maxBytes: 200 })).rejects.toThrow(/^too many entries on d1 for the deep verify: its listing is over 200 bytes/);
    // A target that is not a plain directory is not listed as one.
    await expect(target.listing('dir', generous)).rejects.toThrow(/is not a directory: nothing to list/);
  } finally {
    session.dispose();
  }
});

test('layout in-place, with an exclude pattern only rsync understands: changes are found, VM-only files are not called extra (and the row says so)', async () => {
  const config = secondConfig(world, 'inplace', { repository: ['layout: in-place', 'rsync_excludes: [".git", "*.log"]'] });
  world.ws.commit({ 'debug.log': 'excluded by a wildcard\n', 'logs/keep.txt': 'kept\n' }, 'c2');
  world.ws.push();
  const c2 = world.ws.git(world.ws.work, ['rev-parse', 'HEAD']);
  expect((await cliWith(config, ['sync', '--vm', 'ip'])).code).toBe(0);
  const t = world.target('ip');
  expect(fs.lstatSync(t).isDirectory()).toBe(true);
  expect(fs.existsSync(path.join(t, 'debug.log'))).toBe(false);

  const before = await cliWith(config, ['verify', '--deep', '--vm', 'ip']);
  expect(before.code).toBe(0);
  // No shared path here: data/seed.txt is a plain file; __pycache__ is deployed (not excluded in this config); debug.log is not.
  expect(before.json.vms[0].drift).toEqual(clean(17));
  expect(before.json.vms[0].rev_after).toBe(c2);

  fs.writeFileSync(path.join(t, 'same-size.txt'), 'ABCDEF\n');
  fs.writeFileSync(path.join(t, 'only-on-the-vm.txt'), 'x\n');
  const after = await cliWith(config, ['verify', '--deep', '--vm', 'ip']);

  expect(after.code).toBe(1);
  const row = after.json.vms[0];
  expect([row.result, row.error?.code]).toEqual(['failed', 'release_drifted']);
  expect(row.drift).toEqual({ checked: 17, changed: 1, missing: 0, extra: 0, paths: [{ path: 'same-size.txt', what: 'changed', detail: 'content' }] });
  expect(row.notes.join('\n')).toContain('files only the VM has were not compared, so none is reported as extra');
});

test('--deep is for verify only: a usage error elsewhere', async () => {
  const run = await world.cli(['status', '--deep'], { json: false });
  expect(run.code).toBe(2);
  expect(run.stderr).toContain('--deep only applies to verify');
});
