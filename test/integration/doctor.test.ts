import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { stopVm } from '../../src/demo/fleet.js';
import { KnownHosts } from '../../src/remote/known-hosts.js';
import { VmSession } from '../../src/remote/session.js';
import { World } from '../helpers/world.js';

const isRoot = process.getuid?.() === 0;
let world: World;
let noRsyncPath: string;
const mounts: string[] = [];

beforeAll(async () => {
  noRsyncPath = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-norsync-'));
  for (const name of fs.readdirSync('/usr/bin')) if (name !== 'rsync') fs.symlinkSync(path.join('/usr/bin', name), path.join(noRsyncPath, name));
  world = await World.create(['ok', 'down', 'unpinned', 'rekeyed', 'noauth', 'nokey', 'norsync', 'full', 'readonly'], {
    sshdExtra: { norsync: [`SetEnv PATH=${noRsyncPath}`] },
  });
  const kh = fs.readFileSync(world.fleet.knownHosts, 'utf8').split('\n');
  const portOf = (id: string): string => `[127.0.0.1]:${world.vm(id).port} `;
  const other = path.join(world.dir, 'other_key');
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', other]);
  const otherKey = fs.readFileSync(`${other}.pub`, 'utf8').split(' ').slice(0, 2).join(' ');
  fs.writeFileSync(
    world.fleet.knownHosts,
    kh
      .filter((l) => !l.startsWith(portOf('unpinned')))
      .map((l) => (l.startsWith(portOf('rekeyed')) ? `${portOf('rekeyed')}${otherKey}` : l))
      .join('\n'),
  );
  fs.writeFileSync(path.join(world.vm('noauth').dir, 'authorized_keys'), '');
  fs.rmSync(path.join(world.fleet.keyDir, 'id_ed25519_nokey'));
  stopVm(world.vm('down'));
  // A stale lock on "ok": a warning, not a failure.
  fs.mkdirSync(path.join(world.vm('ok').home, '.app.vm-sync', 'lock'), { recursive: true });
  fs.writeFileSync(path.join(world.vm('ok').home, '.app.vm-sync', 'lock', 'owner'), `dead-runner:1:x ${Math.floor(Date.now() / 1000) - 5000}\n`);
  if (isRoot) {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', world.vm('full').home]);
    mounts.push(world.vm('full').home);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'ro,size=1m', 'tmpfs', world.vm('readonly').home]);
    mounts.push(world.vm('readonly').home);
  }
  // A tree of ~2 MB for the free-space check.
  world.ws.commit({ 'big.txt': 'x'.repeat(2_000_000), 'app.txt': 'hi\n' }, 'two megabytes');
  world.ws.push();
  execFileSync('git', ['clone', '--quiet', world.ws.origin, world.runnerRepo]);
});
afterAll(() => {
  for (const m of mounts) execFileSync('umount', [m]);
  world?.destroy();
  fs.rmSync(noRsyncPath, { recursive: true, force: true });
});

test('doctor diagnoses every VM in parallel, one line per check, with a fix for each failure', async () => {
  const run = await world.cli(['doctor']);
  expect(run.code).toBe(1);
  const doc = run.json as unknown as { tree_bytes: number; vms: Array<{ id: string; ready: boolean; checks: Array<{ name: string; status: string; detail: string; hint: string | null }> }> };
  expect(doc.tree_bytes).toBeGreaterThan(2_000_000);
  const byId = Object.fromEntries(doc.vms.map((vm) => [vm.id, vm]));
  const failed = (id: string): string | undefined => byId[id].checks.find((c) => c.status === 'fail')?.name;

  expect(byId.ok.ready).toBe(true);
  expect(byId.ok.checks.map((c) => `${c.name}:${c.status}`)).toEqual(['key:ok', 'tcp:ok', 'host_key:ok', 'auth:ok', 'shell:ok', 'rsync:ok', 'target:ok', 'live:ok', 'free_space:ok', 'timeout:ok', 'lock:warn', 'sync_rev:ok']);
  expect(byId.ok.checks.find((c) => c.name === 'lock')?.detail).toMatch(/stale lock left by dead-runner:1:x, \d+s old/);

  expect(failed('down')).toBe('tcp');
  expect(failed('unpinned')).toBe('host_key');
  expect(failed('rekeyed')).toBe('host_key');
  expect(failed('noauth')).toBe('auth');
  expect(failed('nokey')).toBe('key');
  expect(failed('norsync')).toBe('rsync');
  if (isRoot) {
    expect(failed('full')).toBe('free_space');
    expect(failed('readonly')).toBe('target');
  }

  // The line it suggests for an unpinned VM is exactly that VM's host key.
  const hostPub = fs.readFileSync(path.join(world.vm('unpinned').dir, 'ssh_host_ed25519_key.pub'), 'utf8').split(' ').slice(0, 2).join(' ');
  const hint = byId.unpinned.checks.find((c) => c.name === 'host_key')?.hint ?? '';
  expect(hint).toContain(`add this line to ${world.fleet.knownHosts}: [127.0.0.1]:${world.vm('unpinned').port} ${hostPub}`);
  expect(byId.rekeyed.checks.find((c) => c.name === 'host_key')?.hint).toMatch(/otherwise treat this as an attack/);
  expect(byId.noauth.checks.find((c) => c.name === 'auth')?.hint).toMatch(/authorized_keys/);
  expect(byId.nokey.checks.find((c) => c.name === 'key')?.hint).toMatch(/ssh-keygen -t ed25519/);
  expect(byId.nokey.checks.map((c) => `${c.name}:${c.status}`)).toEqual(['key:fail', 'tcp:ok', 'host_key:ok', 'auth:skipped']);
  expect(byId.norsync.checks.find((c) => c.name === 'rsync')?.hint).toBe('install rsync on norsync (apt-get install rsync)');

  const text = await world.cli(['doctor'], { json: false });
  expect(text.code).toBe(1);
  expect(text.stdout).toMatch(/^down +FAIL +tcp +127\.0\.0\.1:\d+ not reachable: ECONNREFUSED$/m);
  expect(text.stdout).toMatch(/^ +fix: install rsync on norsync/m);
  expect(text.stdout).toMatch(/^1 of 9 VMs ready for a sync; not ready: down, unpinned, rekeyed, noauth, nokey, norsync/m);
});

test('doctor exits 0 when every VM is ready', async () => {
  const run = await world.cli(['doctor', '--vm', 'ok']);
  expect(run.code).toBe(0);
});

test('session.run quotes every word and times out cleanly', async () => {
  const kh = new KnownHosts(fs.readFileSync(world.fleet.knownHosts, 'utf8'));
  const config = (await import('../../src/config/load.js')).loadConfig(world.configPath, { checkFiles: false });
  const vm = config.vms.find((v) => v.id === 'ok');
  if (!vm) throw new Error('no vm');
  const session = await VmSession.open(vm, kh, { connectTimeoutMs: 5000 });
  try {
    const tricky = `it's $(touch /tmp/pwned) ; \`id\` "x"`;
    expect(await session.run(['printf', '%s', tricky], 5000)).toEqual({ code: 0, stdout: tricky, stderr: '', other: '' });
    expect((await session.run(['sh', '-c', 'exit 7'], 5000)).code).toBe(7);
    const started = Date.now();
    await expect(session.run(['sleep', '10'], 300)).rejects.toMatchObject({ code: 'timeout' });
    expect(Date.now() - started).toBeLessThan(3000);
  } finally {
    session.dispose();
  }
});
