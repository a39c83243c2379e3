import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { expectedTree, snapshotTree, World } from '../helpers/world.js';

/*
 * A VM whose disk fills up mid-transfer. The VM's home is a 4 MiB tmpfs, which
 * takes root to mount: CI runs as root; elsewhere this file reports itself
 * skipped rather than pretending.
 */
const isRoot = process.getuid?.() === 0;
const maybe = isRoot ? test : test.skip;

let world: World;
let mounted = false;
beforeAll(async () => {
  world = await World.create(['small', 'roomy']);
  // Each VM's failure is its own here: the healthy VM flips whatever the other does.
  world.writeConfig({ rollout: ['max_failed: "100%"'] });
  if (isRoot) {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', world.vm('small').home]);
    mounted = true;
  }
});
afterAll(() => {
  if (mounted) execFileSync('umount', [world.vm('small').home]);
  world?.destroy();
});

maybe('a full disk is storage_full, the VM keeps its last release, the other VM deploys', async () => {
  const first = world.ws.commit({ 'small.bin': crypto.randomBytes(500_000).toString('base64') }, 'fits');
  world.ws.push();
  expect((await world.cli(['sync'])).code).toBe(0);

  const second = world.ws.commit({ 'huge.bin': crypto.randomBytes(6_000_000).toString('base64') }, 'does not fit');
  world.ws.push();
  const run = await world.cli(['sync']);

  expect(run.code).toBe(1);
  const byId = Object.fromEntries(run.json.vms.map((vm) => [vm.id, vm]));
  expect([byId.small.error?.code, byId.small.error?.message]).toEqual(['storage_full', expect.any(String)]);
  expect(byId.small.error?.message).toMatch(/No space left on device/);
  expect(byId.roomy).toMatchObject({ result: 'success', rev_after: second });
  // rsync signals its remote shell (our bridge) with SIGUSR1 on error: it must
  // die like ssh, never open a Node inspector.
  expect(run.stderr + JSON.stringify(run.json)).not.toContain('Debugger listening');
  // Not retried: a full disk is not a network failure.
  expect(run.stderr).not.toMatch(/\[small\] .*retry/);
  expect(world.sentinel('small')).toBe(`${first}\n`);
  expect(snapshotTree(world.target('small'))).toEqual(expectedTree(world.ws, first));
  expect(fs.existsSync(`${world.vm('small').home}/.app.vm-sync/lock`)).toBe(false);
});

maybe('the same through rsync (sync.transfer: rsync): storage_full, not retried, the VM keeps its release', async () => {
  const kept = world.sentinel('small');
  world.writeConfig({ sync: ['transfer: rsync'], rollout: ['max_failed: "100%"'] });
  const next = world.ws.commit({ 'huge2.bin': crypto.randomBytes(6_000_000).toString('base64') }, 'does not fit either');
  world.ws.push();
  const run = await world.cli(['sync']);
  world.writeConfig({ rollout: ['max_failed: "100%"'] });
  const byId = Object.fromEntries(run.json.vms.map((vm) => [vm.id, vm]));
  expect([run.code, byId.small.error?.code, byId.roomy.result, byId.roomy.rev_after]).toEqual([1, 'storage_full', 'success', next]);
  expect(byId.small.error?.message).toMatch(/No space left on device/);
  expect(run.stderr).not.toMatch(/\[small\] .*retry/);
  expect(world.sentinel('small')).toBe(kept);
});
