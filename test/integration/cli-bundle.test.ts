import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { snapshotTree, World } from '../helpers/world.js';

/**
 * The committed bundle, run the way an operator runs it on the runner host:
 * `node dist/cli.js` copied to a directory with no node_modules.
 */
const bundleDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-bundle-'));
const bundle = path.join(bundleDir, 'cli.js');
fs.copyFileSync(path.join(process.cwd(), 'dist', 'cli.js'), bundle);

function vmSync(args: string[], timeoutMs = 120_000): { code: number | null; stdout: string; stderr: string } {
  // SIGKILL: a process that cannot exit (a handle left open) must not hold the test past its limit.
  const result = spawnSync(process.execPath, [bundle, ...args], { encoding: 'utf8', cwd: bundleDir, timeout: timeoutMs, killSignal: 'SIGKILL' });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

let world: World;
beforeAll(async () => {
  world = await World.create(['vm01', 'vm02']);
  world.ws.commit({ 'index.html': '<h1>hi</h1>\n' }, 'first');
  world.ws.push();
});
afterAll(() => {
  world?.destroy();
  fs.rmSync(bundleDir, { recursive: true, force: true });
});

test('sync prints the table and exits 0; --json prints one parseable document', () => {
  const sync = vmSync(['sync', '--config', world.configPath]);
  expect(sync.stderr).toContain('[vm01] live on');
  expect(sync.code).toBe(0);
  expect(sync.stdout).toMatch(/^vm-sync sync of [0-9a-f]{12}: 2 deployed$/m);
  expect(sync.stdout).toMatch(/^vm01 +127\.0\.0\.1 +fresh +deploy +success/m);

  const status = vmSync(['status', '--config', world.configPath, '--json']);
  expect(status.code).toBe(0);
  const doc = JSON.parse(status.stdout);
  expect(Object.keys(doc.vms[0]).sort()).toEqual(
    ['id', 'host', 'state', 'action', 'result', 'rev_before', 'rev_after', 'files_changed', 'bytes_sent', 'duration_ms', 'verified', 'notes', 'error', 'staged_at', 'flipped_at', 'health', 'health_output', 'release', 'drift', 'post_sync'].sort(),
  );
  expect(doc.vms.map((vm: { state: string }) => vm.state)).toEqual(['up-to-date', 'up-to-date']);
  // status names the live release (the symlink's target), and nothing was staged, flipped or checked.
  for (const vm of doc.vms) {
    expect(vm.release).toBe(path.basename(fs.readlinkSync(path.join(world.vm(vm.id).home, 'app'))));
    expect([vm.staged_at, vm.flipped_at, vm.health]).toEqual([null, null, 'skipped']);
  }
});

test('a config error exits 2 with one line per problem, before touching anything', () => {
  const bad = path.join(world.dir, 'bad.yml');
  fs.writeFileSync(bad, fs.readFileSync(world.configPath, 'utf8').replace('concurrency: 8', 'concurrency: 0\n  colour: blue'));
  const result = vmSync(['sync', '--config', bad]);
  expect(result.code).toBe(2);
  expect(result.stderr).toMatch(/bad\.yml:\d+: sync\.concurrency must be a whole number from 1 to 256/);
  expect(result.stderr).toMatch(/bad\.yml:\d+: unknown key 'colour' in sync/);
  expect(result.stdout).toBe('');
});

test('usage errors exit 2; a VM that fails exits 1', () => {
  expect(vmSync(['sync']).code).toBe(2);
  expect(vmSync(['launch', '--config', world.configPath]).code).toBe(2);
  const unknownVm = vmSync(['sync', '--config', world.configPath, '--vm', 'vm09']);
  expect(unknownVm.code).toBe(2);
  expect(unknownVm.stderr).toContain('unknown VM id vm09 (configured: vm01, vm02)');

  const verify = vmSync(['verify', '--config', world.configPath, '--commit', '0000000']);
  expect(verify.code).toBe(1);
  expect(verify.stderr).toContain('git_failed: commit 0000000 is not on any branch of origin');
});

test('a sync of a commit the remote does not have fails with that error and exits: the SSH connections started meanwhile are closed', () => {
  // Each VM's handshake starts while the runner host fetches (it overlaps that work); a run that fails there
  // must close them, or the process would never exit.
  const before = ['vm01', 'vm02'].map((id) => snapshotTree(world.vm(id).home));
  const missing = 'c0ffee'.repeat(6) + 'c0ff';
  const sync = vmSync(['sync', '--config', world.configPath, '--commit', missing], 30_000);
  expect(sync.code).toBe(1);
  expect(sync.stderr).toContain(`git_failed: commit ${missing} is not on any branch of origin`);
  expect(['vm01', 'vm02'].map((id) => snapshotTree(world.vm(id).home))).toEqual(before);
});
