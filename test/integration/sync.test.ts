import fs from 'node:fs';
import path from 'node:path';
import { handshakeCount } from '../../src/demo/fleet.js';
import { expectedTree, snapshotTree, World } from '../helpers/world.js';

/**
 * One fleet of three real sshd VMs taken through a whole history. Tests run in
 * order and build on each other, as deploys do.
 */
let world: World;
const commits: Record<string, string> = {};

beforeAll(async () => {
  world = await World.create(['vm01', 'vm02', 'vm03']);
});
afterAll(() => world?.destroy());

const ids = ['vm01', 'vm02', 'vm03'];
const handshakes = (): number[] => ids.map((id) => handshakeCount(world.vm(id)));

function expectDeployed(sha: string): void {
  const expected = expectedTree(world.ws, sha);
  for (const id of ids) {
    expect(world.sentinel(id)).toBe(`${sha}\n`);
    expect(snapshotTree(world.target(id))).toEqual(expected);
    // The target is the managed symlink to a complete release.
    expect(fs.lstatSync(world.target(id)).isSymbolicLink()).toBe(true);
    expect(fs.readlinkSync(world.target(id))).toMatch(new RegExp(`^\\.app\\.vm-sync/releases/\\d{8}T\\d{6}(\\d{3})?Z-${sha.slice(0, 12)}`));
  }
}

test('first deploy: byte-identical trees, .sync_rev, one SSH handshake per VM', async () => {
  commits.c1 = world.ws.commit(
    {
      'README.md': '# app\n',
      'src/main.py': 'print("v1")\n',
      'src/util.py': 'X = 1\n',
      'docs/with space.txt': 'spaces in the name\n',
      'docs/ünïcødé-日本.txt': 'unicode name\n',
      'bin/run': { content: '#!/bin/sh\necho run\n', executable: true },
      'config/local.json': '{"debug": false}\n',
      'link-inside': { symlink: 'src/main.py' },
      'escape-relative': { symlink: '../../../../../etc/passwd' },
      'escape-absolute': { symlink: '/etc/hostname' },
      'big/blob.bin': Buffer.alloc(300_000, 7).toString('latin1'),
    },
    'c1',
  );
  world.ws.push();
  const before = handshakes();

  const run = await world.cli(['sync']);

  expect(run.code).toBe(0);
  expect(run.json.commit).toBe(commits.c1);
  expect(run.json.vms.map((vm) => [vm.id, vm.state, vm.action, vm.result, vm.rev_before, vm.rev_after, vm.verified, vm.error])).toEqual(
    ids.map((id) => [id, 'fresh', 'deploy', 'success', null, `${commits.c1}\n`.trim(), true, null]),
  );
  for (const vm of run.json.vms) {
    expect(vm.files_changed).toBe(8); // regular files; symlinks and dirs are not "files transferred"
    expect(vm.bytes_sent).toBeGreaterThan(200); // a compressible blob (zstd squeezes it below 1%), but something was sent
    expect(vm.duration_ms).toBeGreaterThan(0);
  }
  expectDeployed(commits.c1);
  expect(handshakes().map((n, i) => n - before[i])).toEqual([1, 1, 1]);

  // Symlinks, inside or escaping the tree, arrive as symlinks: never followed, never copied as files.
  for (const id of ids) {
    expect(fs.readlinkSync(path.join(world.target(id), 'escape-relative'))).toBe('../../../../../etc/passwd');
    expect(fs.readlinkSync(path.join(world.target(id), 'escape-absolute'))).toBe('/etc/hostname');
  }
  // The runner-host repo was cloned and brought to the commit.
  expect(world.ws.git(world.runnerRepo, ['rev-parse', 'HEAD'])).toBe(commits.c1);
});

test('second deploy: adds, deletes, renames, mode changes; unchanged files hard-linked, not sent', async () => {
  commits.c2 = world.ws.commit(
    {
      'src/main.py': 'print("v2")\n', // modified
      'src/util.py': null, // deleted
      'src/helpers.py': 'X = 1\n', // "renamed" from util.py (same content)
      'config/local.json': { content: '{"debug": false}\n', executable: true }, // mode change only
      'docs/new file ☃.md': 'new\n', // added
      'link-inside': { symlink: 'src/helpers.py' }, // retargeted link
    },
    'c2',
  );
  world.ws.push();
  const previousRelease = fs.realpathSync(world.target('vm01'));
  const before = handshakes();

  const run = await world.cli(['sync']);

  expect(run.code).toBe(0);
  for (const vm of run.json.vms) {
    expect([vm.state, vm.result, vm.rev_before, vm.rev_after]).toEqual(['behind', 'success', commits.c1, commits.c2]);
    expect(vm.files_changed).toBeLessThanOrEqual(4);
    expect(vm.bytes_sent).toBeLessThan(20_000); // the 300 KB blob is not sent again
  }
  expectDeployed(commits.c2);
  expect(handshakes().map((n, i) => n - before[i])).toEqual([1, 1, 1]);

  const live = fs.realpathSync(world.target('vm01'));
  expect(live).not.toBe(previousRelease);
  expect(fs.statSync(path.join(live, 'big/blob.bin')).ino).toBe(fs.statSync(path.join(previousRelease, 'big/blob.bin')).ino);
  // The previous release is still complete on disk (keep_releases: 3), with its own sentinel.
  expect(fs.readFileSync(path.join(previousRelease, '.sync_rev'), 'utf8')).toBe(`${commits.c1}\n`);
});

test('a sync when every VM is on the commit transfers nothing and costs one handshake', async () => {
  const before = handshakes();
  const run = await world.cli(['sync']);
  expect(run.code).toBe(0);
  for (const vm of run.json.vms) {
    expect([vm.state, vm.action, vm.result, vm.files_changed, vm.bytes_sent, vm.verified]).toEqual(['up-to-date', 'none', 'success', 0, 0, true]);
  }
  expect(handshakes().map((n, i) => n - before[i])).toEqual([1, 1, 1]);
  // This runner deployed the commit to every VM: nothing was exported or scanned.
  expect(run.json.scan).toBeNull();
  expect(run.stderr).toContain('nothing exported or scanned');
});

test('a VM that left the commit behind the runner\'s back gets the tree after all: exported and scanned then', async () => {
  // vm02 is put back on its previous release by hand: the runner's record still says it has the commit.
  const releases = path.join(world.vm('vm02').home, '.app.vm-sync', 'releases');
  const live = fs.readlinkSync(world.target('vm02'));
  const older = fs.readdirSync(releases).filter((n) => !n.endsWith('.partial') && `.app.vm-sync/releases/${n}` !== live).sort().at(-1) as string;
  fs.symlinkSync(`.app.vm-sync/releases/${older}`, `${world.target('vm02')}.tmp`);
  fs.renameSync(`${world.target('vm02')}.tmp`, world.target('vm02'));
  // ...and its release of the commit is gone (else the run would flip back to it, sending nothing).
  fs.rmSync(path.join(world.vm('vm02').home, live), { recursive: true, force: true });
  const stale = world.sentinel('vm02');
  expect(stale).not.toBe(`${commits.c2}\n`);

  const run = await world.cli(['sync']);

  expect(run.code).toBe(0);
  const byId = Object.fromEntries(run.json.vms.map((vm) => [vm.id, vm]));
  expect([byId.vm01.action, byId.vm02.action, byId.vm03.action]).toEqual(['none', 'deploy', 'none']);
  expect(byId.vm02).toMatchObject({ result: 'success', rev_after: commits.c2, verified: true });
  expect(run.json.scan).not.toBeNull();
  expect(run.stderr).toContain('exporting and scanning it now');
  expectDeployed(commits.c2);
});

test('status and verify read .sync_rev back from every VM', async () => {
  const status = await world.cli(['status']);
  expect(status.code).toBe(0);
  expect(status.json.vms.map((vm) => [vm.id, vm.state, vm.rev_after])).toEqual(ids.map((id) => [id, 'up-to-date', commits.c2]));

  const verifyOld = await world.cli(['verify', '--commit', commits.c1]);
  expect(verifyOld.code).toBe(1);
  expect(verifyOld.json.vms.every((vm) => vm.error?.code === 'verify_mismatch' && vm.state === 'ahead')).toBe(true);

  const verify = await world.cli(['verify']);
  expect(verify.code).toBe(0);
  expect(verify.json.vms.every((vm) => vm.verified)).toBe(true);
});

test('an older commit arriving late is refused (ahead) unless --force', async () => {
  const refused = await world.cli(['sync', '--commit', commits.c1]);
  expect(refused.code).toBe(1);
  for (const vm of refused.json.vms) {
    expect([vm.state, vm.action, vm.result, vm.error?.code]).toEqual(['ahead', 'refuse', 'refused', 'refused_ahead']);
    expect(vm.error?.message).toContain('--force');
  }
  expectDeployed(commits.c2); // nothing moved

  const forced = await world.cli(['sync', '--commit', commits.c1, '--force', '--vm', 'vm03']);
  expect(forced.code).toBe(0);
  expect(forced.json.vms.map((vm) => [vm.id, vm.state, vm.result])).toEqual([['vm03', 'ahead', 'success']]);
  expect(world.sentinel('vm03')).toBe(`${commits.c1}\n`);
  expect(world.sentinel('vm01')).toBe(`${commits.c2}\n`);
});

test('rewritten history (force push) is diverged: deployed, and said so', async () => {
  world.ws.git(world.ws.work, ['reset', '--quiet', '--hard', commits.c1]);
  commits.c3 = world.ws.commit({ 'src/main.py': 'print("v3 rewritten")\n' }, 'c3 rewritten');
  world.ws.push(true);

  const run = await world.cli(['sync']);

  expect(run.code).toBe(0);
  const byId = Object.fromEntries(run.json.vms.map((vm) => [vm.id, vm]));
  expect(byId.vm01.state).toBe('diverged');
  expect(byId.vm01.notes.join('\n')).toContain('history diverged');
  expect(byId.vm03.state).toBe('behind'); // vm03 was rolled back to c1, an ancestor of c3
  expectDeployed(commits.c3);
});

test('a sentinel naming a commit the runner host never saw is diverged too', async () => {
  const live = fs.realpathSync(world.target('vm02'));
  fs.writeFileSync(path.join(live, '.sync_rev'), `${'f'.repeat(40)}\n`);
  const status = await world.cli(['status', '--vm', 'vm02']);
  expect(status.json.vms[0].state).toBe('diverged');
  const run = await world.cli(['sync', '--vm', 'vm02']);
  expect(run.json.vms[0]).toMatchObject({ state: 'diverged', result: 'success', rev_before: 'f'.repeat(40), rev_after: commits.c3 });
});

test('a garbled sentinel is an error, never treated as fresh', async () => {
  const live = fs.realpathSync(world.target('vm02'));
  fs.writeFileSync(path.join(live, '.sync_rev'), 'hello\n');
  const run = await world.cli(['sync', '--vm', 'vm02']);
  expect(run.code).toBe(1);
  expect(run.json.vms[0].error?.code).toBe('sentinel_unreadable');
  expect(fs.realpathSync(world.target('vm02'))).toBe(live); // untouched
  fs.writeFileSync(path.join(live, '.sync_rev'), `${commits.c3}\n`);
});

test('--dry-run says what would change and changes nothing', async () => {
  commits.c4 = world.ws.commit({ 'src/main.py': 'print("v4")\n', 'added.txt': 'new\n', 'README.md': null }, 'c4');
  world.ws.push();
  const before = Object.fromEntries(ids.map((id) => [id, snapshotTree(path.join(world.vm(id).home))]));

  const run = await world.cli(['sync', '--dry-run']);

  expect(run.code).toBe(0);
  expect(run.json.dry_run).toBe(true);
  for (const vm of run.json.vms) {
    expect([vm.state, vm.action, vm.result, vm.rev_after]).toEqual(['behind', 'deploy', 'success', commits.c3]);
    expect(vm.files_changed).toBe(3);
    expect(vm.notes[0]).toBe('would add 1 file, change 1 file and delete 1 file');
    expect(vm.notes.slice(1, 4).sort()).toEqual(['would add: added.txt', 'would change: src/main.py', 'would delete: README.md']);
  }
  for (const id of ids) expect(snapshotTree(world.vm(id).home)).toEqual(before[id]);
});

test('old releases are pruned to keep_releases; the live one is never pruned', async () => {
  const run = await world.cli(['sync']);
  expect(run.code).toBe(0);
  for (const id of ids) {
    const releases = fs.readdirSync(path.join(world.vm(id).home, '.app.vm-sync', 'releases'));
    expect(releases.length).toBeLessThanOrEqual(3);
    expect(releases).toContain(path.basename(fs.realpathSync(world.target(id))));
    expect(releases.some((r) => r.endsWith('.partial'))).toBe(false);
  }
  expectDeployed(commits.c4);
});
