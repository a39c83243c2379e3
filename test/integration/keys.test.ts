import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { adoptJumpKey, jumpKeyFile, writeJumpConfig } from '../helpers/jump-net.js';
import { World, type CliRun } from '../helpers/world.js';

/*
 * Item 4: a problem with one VM's key file fails that VM alone, in every
 * command, with key_invalid and the command that fixes it; `--vm` of another
 * VM does not notice. A jump host's key fails only the VMs behind it.
 */
const isRoot = process.getuid?.() === 0;
const user = os.userInfo().username;
let world: World;
let key: string;
let saved: Buffer;
let sha2 = '';

type Row = { id: string; result: string; error: { code: string; message: string } | null };
const rows = (run: CliRun): Record<string, Row> => Object.fromEntries((run.json.vms as unknown as Row[]).map((r) => [r.id, r]));

function restoreKey(): void {
  fs.rmSync(key, { recursive: true, force: true });
  fs.writeFileSync(key, saved, { mode: 0o600 });
  fs.chmodSync(key, 0o600);
}

function writeConfig(extra: string[] = []): void {
  world.writeConfig({ rollout: ['max_failed: "100%"', ...extra] });
}

beforeAll(async () => {
  world = await World.create(['vm01', 'vm02', 'vm03', 'bastion']);
  key = path.join(world.fleet.keyDir, 'id_ed25519_vm02');
  saved = fs.readFileSync(key);
  // The bastion is only a jump host: leave it out of the fleet.
  writeConfig();
  dropVm('bastion');
  world.ws.commit({ 'index.html': 'one\n' }, 'one');
  world.ws.push();
  expect((await world.cli(['sync'])).code).toBe(0);
  sha2 = world.ws.commit({ 'index.html': 'two\n' }, 'two');
  world.ws.push();
  expect((await world.cli(['sync'])).code).toBe(0);
}, 120_000);
afterAll(() => world?.destroy());
afterEach(() => {
  restoreKey();
  writeConfig();
  dropVm('bastion');
});

/** Removes a VM's line from the config (the bastion is a jump host here, not a deploy target). */
function dropVm(id: string): void {
  const text = fs.readFileSync(world.configPath, 'utf8');
  fs.writeFileSync(world.configPath, text.split('\n').filter((l) => !l.startsWith(`  ${id}: {`)).join('\n'));
}

/** Each way a key file can be unusable, with what the row must say. */
const BREAKS: Array<{ name: string; rootOnly?: boolean; apply: () => void; says: () => RegExp }> = [
  { name: 'group-readable (640)', apply: () => fs.chmodSync(key, 0o640), says: () => new RegExp(`is readable by other users \\(mode 640\\).*run chmod 600 ${key}\\.$`) },
  { name: 'world-readable (604)', apply: () => fs.chmodSync(key, 0o604), says: () => new RegExp(`is readable by other users \\(mode 604\\).*run chmod 600 ${key}\\.$`) },
  { name: 'group-writable (620)', apply: () => fs.chmodSync(key, 0o620), says: () => new RegExp(`is writable by other users \\(mode 620\\).*run chmod 600 ${key}\\.$`) },
  { name: 'missing', apply: () => fs.rmSync(key), says: () => new RegExp(`${key}, does not exist: put the private key there \\(vm-sync expects it at remote_execution\\.key_storage_path/id_ed25519_vm02\\), or create one: ssh-keygen -t ed25519 -N '' -f ${key}`) },
  {
    name: 'a directory',
    apply: () => {
      fs.rmSync(key);
      fs.mkdirSync(key);
    },
    says: () => /, is a directory: replace it with the private key file/,
  },
  {
    name: 'protected by a passphrase',
    apply: () => {
      const other = path.join(world.dir, 'encrypted_key');
      fs.rmSync(other, { force: true });
      execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', 'a passphrase', '-f', other]);
      fs.copyFileSync(other, key);
    },
    says: () => new RegExp(`is protected by a passphrase, which an unattended deploy cannot type: remove the passphrase \\(ssh-keygen -p -N '' -f ${key}\\)`),
  },
  { name: 'a public key', apply: () => fs.writeFileSync(key, fs.readFileSync(`${key}.pub`)), says: () => /holds a public key, not the private one/ },
  { name: 'not a key', apply: () => fs.writeFileSync(key, 'hello\n'), says: () => /is not a private key vm-sync can read/ },
  {
    name: 'owned by another user',
    rootOnly: true,
    apply: () => fs.chownSync(key, 4242, 4242),
    says: () => new RegExp(`is owned by uid 4242, not by ${user} who runs vm-sync: run chown ${user} ${key}\\.$`),
  },
];

test.each(BREAKS.map((b) => [b.name, b] as const))('a VM key that is %s fails that VM alone (status), and --vm of another VM does not notice', async (_name, broken) => {
  if (broken.rootOnly && !isRoot) return;
  broken.apply();
  const run = await world.cli(['status']);
  expect(run.code).toBe(1);
  const byId = rows(run);
  expect([byId.vm02.result, byId.vm02.error?.code]).toEqual(['failed', 'key_invalid']);
  expect(byId.vm02.error?.message).toMatch(broken.says());
  expect(byId.vm02.error?.message).toMatch(/^the SSH key for vm02, /);
  for (const id of ['vm01', 'vm03']) expect([id, byId[id].result, byId[id].error]).toEqual([id, 'success', null]);
  // Nothing of the key's content reaches the output.
  expect(run.stdout + run.stderr).not.toMatch(/PRIVATE KEY|b3BlbnNzaC1rZXk/);

  const alone = await world.cli(['status', '--vm', 'vm01']);
  expect(alone.code).toBe(0);
  expect(alone.json.vms.map((vm) => vm.id)).toEqual(['vm01']);
});

test('a group-readable key for vm02 fails vm02 alone in sync, verify, rollback, locks, unlock and doctor; vm01 and vm03 carry on', async () => {
  fs.chmodSync(key, 0o640);
  const fix = `run chmod 600 ${key}.`;

  const sha3 = world.ws.commit({ 'index.html': 'three\n' }, 'three');
  world.ws.push();
  const sync = await world.cli(['sync']);
  expect(sync.code).toBe(1);
  let byId = rows(sync);
  expect([byId.vm02.result, byId.vm02.error?.code]).toEqual(['failed', 'key_invalid']);
  expect(byId.vm02.error?.message.endsWith(fix)).toBe(true);
  // Not retried: the key does not get better by waiting.
  expect(byId.vm02.error?.message).not.toMatch(/attempts\)/);
  for (const id of ['vm01', 'vm03']) {
    expect([id, byId[id].result]).toEqual([id, 'success']);
    expect(world.sentinel(id)).toBe(`${sha3}\n`);
  }
  expect(world.sentinel('vm02')).toBe(`${sha2}\n`);

  const verify = await world.cli(['verify']);
  byId = rows(verify);
  expect([verify.code, byId.vm02.error?.code, byId.vm01.result, byId.vm03.result]).toEqual([1, 'key_invalid', 'success', 'success']);

  const rollback = await world.cli(['rollback']);
  byId = rows(rollback);
  expect([rollback.code, byId.vm02.error?.code, byId.vm01.result, byId.vm03.result]).toEqual([1, 'key_invalid', 'success', 'success']);
  for (const id of ['vm01', 'vm03']) expect(world.sentinel(id)).toBe(`${sha2}\n`);

  const locks = await world.cli(['locks']);
  const lockRows = Object.fromEntries((locks.json as unknown as { vms: Array<{ id: string; error: { code: string; message: string } | null; detail: string }> }).vms.map((r) => [r.id, r]));
  expect(locks.code).toBe(1);
  expect(lockRows.vm02.error?.code).toBe('key_invalid');
  expect(lockRows.vm02.detail).toContain(fix);
  expect([lockRows.vm01.detail, lockRows.vm03.detail]).toEqual(['not locked', 'not locked']);

  const unlock = await world.cli(['unlock', '--vm', 'vm02,vm01']);
  const unlockRows = Object.fromEntries((unlock.json as unknown as { vms: Array<{ id: string; outcome: string; detail: string }> }).vms.map((r) => [r.id, r]));
  expect(unlock.code).toBe(1);
  expect(unlockRows.vm02.outcome).toBe('failed');
  expect(unlockRows.vm02.detail).toContain(fix);
  expect(unlockRows.vm01.outcome).toBe('not-locked');

  const doctor = await world.cli(['doctor']);
  const doc = doctor.json as unknown as { ready: boolean; vms: Array<{ id: string; ready: boolean; checks: Array<{ name: string; status: string; detail: string; hint: string | null }> }> };
  expect([doctor.code, doc.ready]).toEqual([1, false]);
  const vm02 = doc.vms.find((vm) => vm.id === 'vm02');
  expect(vm02?.ready).toBe(false);
  expect(vm02?.checks.find((c) => c.name === 'key')).toEqual({ name: 'key', status: 'fail', detail: expect.stringContaining('is readable by other users (mode 640)'), hint: `run chmod 600 ${key}` });
  for (const vm of doc.vms.filter((v) => v.id !== 'vm02')) expect([vm.id, vm.ready, vm.checks[0].status]).toEqual([vm.id, true, 'ok']);

  // The text says it on vm02's line, with the fix under it.
  const text = await world.cli(['doctor'], { json: false });
  expect(text.stdout).toMatch(new RegExp(`^vm02 +FAIL +key +the SSH key for vm02, ${key}, is readable by other users \\(mode 640\\)`, 'm'));
  expect(text.stdout).toContain(`fix: run chmod 600 ${key}\n`);

  // Every command with --vm vm01 is untouched by vm02's key.
  for (const args of [['status'], ['verify', '--commit', sha2], ['locks'], ['doctor'], ['sync'], ['rollback', '--to', sha2]]) {
    const run = await world.cli([...args, '--vm', 'vm01']);
    expect([args.join(' '), run.code]).toEqual([args.join(' '), 0]);
    expect(run.stdout).not.toContain('vm02');
  }

  // Fixed as told, vm02 deploys.
  fs.chmodSync(key, 0o600);
  const again = await world.cli(['sync', '--vm', 'vm02']);
  expect(again.code).toBe(0);
  expect(world.sentinel('vm02')).toBe(`${sha3}\n`);
});

test('with the default rollout.max_failed (0), vm02 failing on its key halts the flip of the others like any failed VM, each row saying why', async () => {
  world.writeConfig();
  dropVm('bastion');
  fs.chmodSync(key, 0o644);
  const before = world.sentinel('vm01');
  const sha = world.ws.commit({ 'index.html': 'halted\n' }, 'halted');
  world.ws.push();
  const run = await world.cli(['sync']);
  const byId = rows(run);
  expect(byId.vm02.error?.code).toBe('key_invalid');
  expect([byId.vm01.result, byId.vm01.error?.code]).toEqual(['skipped', 'rollout_halted']);
  expect(world.sentinel('vm01')).toBe(before);
  expect(sha).not.toBe(before);
});

test('a bad jump host key fails only the VMs behind that jump host, in sync and doctor', async () => {
  adoptJumpKey(world.fleet.keyDir, 'bastion', 'bastion');
  const bastionFile = path.join(world.fleet.keyDir, jumpKeyFile('bastion'));
  writeJumpConfig(world, { bastion: { ip: '127.0.0.1', port: world.vm('bastion').port, maxSessions: 4 }, vmIp: '127.0.0.1', behind: ['vm01', 'vm02'], direct: ['vm03'], sync: '{ concurrency: 8, connect_timeout_s: 5, timeout_s: 60, retries: 1 }' });
  try {
    expect((await world.cli(['status'])).code).toBe(0);
    fs.chmodSync(bastionFile, 0o644);
    const sha = world.ws.commit({ 'index.html': 'jump\n' }, 'jump');
    world.ws.push();
    const run = await world.cli(['sync']);
    const byId = rows(run);
    expect(run.code).toBe(1);
    for (const id of ['vm01', 'vm02']) {
      expect([id, byId[id].error?.code]).toEqual([id, 'key_invalid']);
      expect(byId[id].error?.message).toBe(
        `the SSH key for jump host bastion, ${bastionFile}, is readable by other users (mode 644): OpenSSH refuses such a key, and so does vm-sync: run chmod 600 ${bastionFile}. (every VM behind jump host bastion fails until it is fixed; the other VMs are not affected)`,
      );
    }
    expect([byId.vm03.result, world.sentinel('vm03')]).toEqual(['success', `${sha}\n`]);

    const doctor = await world.cli(['doctor']);
    const doc = doctor.json as unknown as { vms: Array<{ id: string; ready: boolean; checks: Array<{ name: string; status: string; detail: string; hint: string | null }> }> };
    const byVm = Object.fromEntries(doc.vms.map((vm) => [vm.id, vm]));
    for (const id of ['vm01', 'vm02']) {
      const jump = byVm[id].checks.find((c) => c.name === 'jump');
      expect([id, byVm[id].ready, jump?.status, jump?.hint]).toEqual([id, false, 'fail', `run chmod 600 ${bastionFile}`]);
      expect(jump?.detail).toMatch(/^jump host bastion \(.*\): key: the SSH key for jump host bastion, .* is readable by other users \(mode 644\)/);
    }
    expect(byVm.vm03.ready).toBe(true);
  } finally {
    fs.chmodSync(bastionFile, 0o600);
  }
});
