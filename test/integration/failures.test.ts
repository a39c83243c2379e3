import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { handshakeCount, stopVm } from '../../src/demo/fleet.js';
import { expectedTree, snapshotTree, World } from '../helpers/world.js';

/** A PATH directory with everything from /usr/bin and /bin except rsync: a VM without rsync installed. */
function pathWithoutRsync(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-norsync-'));
  for (const bin of ['/usr/bin', '/bin']) {
    for (const name of fs.readdirSync(bin)) {
      if (name === 'rsync' || fs.existsSync(path.join(dir, name))) continue;
      fs.symlinkSync(path.join(bin, name), path.join(dir, name));
    }
  }
  return dir;
}

let world: World;
let noRsyncPath: string;
let sha: string;

/**
 * These tests are about each VM's own failure: the healthy VMs go on whatever
 * the others do. By default (max_failed: 0) a failed VM holds the flip back
 * for the whole fleet; fleet-rollout.test.ts covers that.
 */
const ISOLATED = ['max_failed: "100%"'];

beforeAll(async () => {
  noRsyncPath = pathWithoutRsync();
  world = await World.create(['ok1', 'down', 'badhostkey', 'noauth', 'norsync', 'ok2'], {
    sshdExtra: { norsync: [`SetEnv PATH=${noRsyncPath}`] },
  });
  // badhostkey: pin some other key for it (as if the VM were impersonated or rebuilt).
  const other = path.join(world.dir, 'other_host_key');
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', other]);
  const port = world.vm('badhostkey').port;
  const pinned = fs.readFileSync(world.fleet.knownHosts, 'utf8').split('\n').map((line) =>
    line.startsWith(`[127.0.0.1]:${port} `) ? `[127.0.0.1]:${port} ${fs.readFileSync(`${other}.pub`, 'utf8').split(' ').slice(0, 2).join(' ')}` : line,
  );
  fs.writeFileSync(world.fleet.knownHosts, pinned.join('\n'));
  // noauth: the VM does not know our key.
  fs.writeFileSync(path.join(world.vm('noauth').dir, 'authorized_keys'), '');
  world.writeConfig({ rollout: ISOLATED });
  stopVm(world.vm('down'));
  sha = world.ws.commit({ 'app.txt': 'v1\n', 'lib/a.txt': 'a\n' }, 'v1');
  world.ws.push();
});
afterAll(() => {
  world?.destroy();
  fs.rmSync(noRsyncPath, { recursive: true, force: true });
});

test('each broken VM fails with its own code and advice while the healthy ones deploy', async () => {
  const hostKeyAttempts = handshakeCount(world.vm('badhostkey'));
  const run = await world.cli(['sync']);

  expect(run.code).toBe(1);
  const byId = Object.fromEntries(run.json.vms.map((vm) => [vm.id, vm]));
  expect(Object.fromEntries(run.json.vms.map((vm) => [vm.id, [vm.result, vm.error?.code ?? null]]))).toEqual({
    ok1: ['success', null],
    down: ['failed', 'unreachable'],
    badhostkey: ['failed', 'host_key_mismatch'],
    noauth: ['failed', 'auth_failed'],
    norsync: ['failed', 'remote_rsync_missing'],
    ok2: ['success', null],
  });
  expect(byId.down.error?.message).toMatch(/Check the VM is up/);
  expect(byId.badhostkey.error?.message).toMatch(/does not match the pinned key: offered SHA256:\S+, pinned SHA256:\S+/);
  expect(byId.noauth.error?.message).toMatch(/authorized_keys/);
  expect(byId.norsync.error?.message).toMatch(/install it there/);

  // The healthy VMs hold exactly the commit; the broken ones were not touched.
  for (const id of ['ok1', 'ok2']) {
    expect(world.sentinel(id)).toBe(`${sha}\n`);
    expect(snapshotTree(world.target(id))).toEqual(expectedTree(world.ws, sha));
  }
  for (const id of ['down', 'badhostkey', 'noauth', 'norsync']) expect(fs.existsSync(world.target(id))).toBe(false);

  // Only network failures are retried: the host key and auth failures are not.
  expect(run.stderr).toMatch(/\[down\] unreachable: .* retry 1\/1/);
  expect(run.stderr).not.toMatch(/\[(badhostkey|noauth|norsync)\] .* retry/);
  expect(handshakeCount(world.vm('badhostkey'))).toBe(hostKeyAttempts); // never authenticated

  // The human table shows the same, one row per VM, with the advice below it.
  const table = await world.cli(['sync'], { json: false });
  expect(table.code).toBe(1);
  expect(table.stdout).toMatch(/^down +127\.0\.0\.1 +unknown +none +failed \(unreachable\)/m);
  expect(table.stdout).toMatch(/^ok1 +127\.0\.0\.1 +up-to-date +none +success/m);
  expect(table.stdout).toMatch(/^badhostkey: host_key_mismatch: host key of badhostkey/m);
});

test('no byte of any private key reaches stdout or stderr', async () => {
  const run = await world.cli(['sync'], { json: false });
  const runJson = await world.cli(['sync']);
  const output = run.stdout + run.stderr + runJson.stdout + runJson.stderr;
  for (const vm of world.fleet.vms) {
    const key = fs.readFileSync(path.join(world.fleet.keyDir, `id_ed25519_${vm.id}`), 'utf8');
    const body = key.split('\n').filter((line) => line && !line.startsWith('-----')).join('');
    expect(body.length).toBeGreaterThan(100);
    for (let i = 0; i + 24 <= body.length; i += 12) expect(output).not.toContain(body.slice(i, i + 24));
  }
});

test('a lock held by another run is respected; a stale one is taken over', async () => {
  const stateDir = path.join(world.vm('ok1').home, '.app.vm-sync');
  const lock = path.join(stateDir, 'lock');
  fs.mkdirSync(lock);
  fs.writeFileSync(path.join(lock, 'owner'), `other-runner:42:abc ${Math.floor(Date.now() / 1000)}\n`);
  const next = world.ws.commit({ 'app.txt': 'v2\n' }, 'v2');
  world.ws.push();

  const held = await world.cli(['sync', '--vm', 'ok1,ok2']);
  const byId = Object.fromEntries(held.json.vms.map((vm) => [vm.id, vm]));
  expect(byId.ok1.error?.code).toBe('locked');
  expect(byId.ok1.error?.message).toContain('other-runner:42:abc');
  expect(world.sentinel('ok1')).toBe(`${sha}\n`);
  expect(byId.ok2.result).toBe('success');
  expect(fs.readFileSync(path.join(lock, 'owner'), 'utf8')).toContain('other-runner:42:abc'); // not ours to release

  fs.writeFileSync(path.join(lock, 'owner'), `other-runner:42:abc ${Math.floor(Date.now() / 1000) - 10_000}\n`);
  const stale = await world.cli(['sync', '--vm', 'ok1']);
  expect(stale.json.vms[0]).toMatchObject({ result: 'success', rev_after: next });
  expect(stale.json.vms[0].notes.join('\n')).toContain('took over a stale lock left by other-runner:42:abc');
  expect(fs.existsSync(lock)).toBe(false); // ours, released
});

test('a first deploy over an existing plain directory keeps it aside and says where', async () => {
  const target = world.target('ok2');
  fs.rmSync(target, { recursive: true, force: true });
  fs.rmSync(path.join(world.vm('ok2').home, '.app.vm-sync'), { recursive: true, force: true });
  fs.mkdirSync(target);
  fs.writeFileSync(path.join(target, 'precious.txt'), 'hand-made\n');

  const run = await world.cli(['sync', '--vm', 'ok2']);

  expect(run.json.vms[0]).toMatchObject({ state: 'fresh', result: 'success' });
  const note = run.json.vms[0].notes.find((n) => n.startsWith('kept the directory'));
  expect(note).toBeDefined();
  const kept = /as (\S+)$/.exec(note ?? '')?.[1] ?? '';
  expect(fs.readFileSync(path.join(kept, 'precious.txt'), 'utf8')).toBe('hand-made\n');
  expect(fs.lstatSync(target).isSymbolicLink()).toBe(true);
});

test('post_sync_command runs in the new release with the commit; its failure is reported', async () => {
  world.writeConfig({ rollout: ISOLATED, sync: ['post_sync_command: "echo \\"$VM_SYNC_COMMIT $(cat app.txt)\\" > $HOME/post-sync.out"'] });
  const next = world.ws.commit({ 'app.txt': 'v3\n' }, 'v3');
  world.ws.push();
  const run = await world.cli(['sync', '--vm', 'ok1']);
  expect(run.json.vms[0].result).toBe('success');
  expect(fs.readFileSync(path.join(world.vm('ok1').home, 'post-sync.out'), 'utf8')).toBe(`${next} v3\n`);

  world.writeConfig({ rollout: ISOLATED, sync: ['post_sync_command: "echo restart failed >&2; exit 4"'] });
  const failing = await world.cli(['sync', '--vm', 'ok2']);
  expect(failing.code).toBe(1);
  expect(failing.json.vms[0].error).toEqual({ code: 'post_sync_failed', message: expect.stringContaining('exited 4 on ok2: restart failed') });
  expect(world.sentinel('ok2')).toBe(`${next}\n`); // the release itself is live and verified
  world.writeConfig({ rollout: ISOLATED });
});

test('a commit that is not on the default branch is refused unless --force', async () => {
  world.ws.git(world.ws.work, ['checkout', '--quiet', '-b', 'feature']);
  const feature = world.ws.commit({ 'app.txt': 'unmerged\n' }, 'unmerged work');
  world.ws.git(world.ws.work, ['push', '--quiet', 'origin', 'feature']);
  world.ws.git(world.ws.work, ['checkout', '--quiet', 'main']);
  world.ws.git(world.runnerRepo, ['fetch', '--quiet', 'origin', 'feature']);

  const refused = await world.cli(['sync', '--vm', 'ok1', '--commit', feature]);
  expect(refused.code).toBe(1);
  expect(refused.json.error?.code).toBe('commit_not_on_branch');
  expect(refused.stderr).toContain('--force');
  expect(world.sentinel('ok1')).not.toBe(`${feature}\n`);

  const forced = await world.cli(['sync', '--vm', 'ok1', '--commit', feature, '--force']);
  expect(forced.json.vms[0]).toMatchObject({ result: 'success', rev_after: feature });
});

test('a corrupt runner-host clone is moved aside, never deleted, and cloned again', async () => {
  fs.rmSync(path.join(world.runnerRepo, '.git', 'objects'), { recursive: true, force: true });
  fs.mkdirSync(path.join(world.runnerRepo, '.git', 'objects'));
  const run = await world.cli(['sync', '--vm', 'ok1', '--force']);
  expect(run.stderr).toMatch(/runner-host repo was corrupt: moved to \S+\.corrupt-\d{8}T\d{6}Z and cloned again/);
  expect(run.json.vms[0].result).toBe('success');
  const aside = fs.readdirSync(path.dirname(world.runnerRepo)).filter((n) => n.startsWith('app.corrupt-'));
  expect(aside).toHaveLength(1);
});

test('layout: in-place keeps a plain directory and writes .sync_rev last', async () => {
  world.writeConfig({ rollout: ISOLATED, repository: ['layout: in-place'] });
  try {
    const target = world.target('ok2');
    fs.rmSync(target, { recursive: true, force: true });
    const head = world.ws.git(world.ws.work, ['rev-parse', 'HEAD']);
    const run = await world.cli(['sync', '--vm', 'ok2']);
    expect(run.json.vms[0]).toMatchObject({ result: 'success', rev_after: head, verified: true });
    expect(fs.lstatSync(target).isDirectory()).toBe(true);
    expect(snapshotTree(target)).toEqual(expectedTree(world.ws, head));
  } finally {
    world.writeConfig({ rollout: ISOLATED });
  }
});
