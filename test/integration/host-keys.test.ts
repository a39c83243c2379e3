import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fingerprint } from '../../src/remote/known-hosts.js';
import { World } from '../helpers/world.js';

/*
 * Host-key problems against real sshd: the loopback VMs have only an ed25519
 * host key. Each is a host-key failure (never `unreachable`, never retried)
 * with a message that names what is pinned, what the VM shows, and the fix.
 */
let world: World;
let original: string;

/** A fresh key pair of `type` made by ssh-keygen: its known_hosts "type base64" part and blob. */
function newKey(name: string, type: string): { line: string; blob: Buffer } {
  const file = path.join(world.dir, `other_${name}`);
  execFileSync('ssh-keygen', ['-q', '-t', type, '-N', '', '-f', file]);
  const [keyType, b64] = fs.readFileSync(`${file}.pub`, 'utf8').split(' ');
  return { line: `${keyType} ${b64}`, blob: Buffer.from(b64, 'base64') };
}

/** The VM's real host key as its sshd serves it. */
function vmKey(id: string): { line: string; blob: Buffer } {
  const [keyType, b64] = fs.readFileSync(path.join(world.vm(id).dir, 'ssh_host_ed25519_key.pub'), 'utf8').split(' ');
  return { line: `${keyType} ${b64}`, blob: Buffer.from(b64, 'base64') };
}

/** Rewrites the pinned known_hosts: `lines` replace the VM's own line. */
function pin(id: string, lines: string[]): void {
  const name = `[127.0.0.1]:${world.vm(id).port}`;
  fs.writeFileSync(world.fleet.knownHosts, [...original.split('\n').filter((l) => l && !l.startsWith(`${name} `)), ...lines.map((l) => l.replace('NAME', name))].join('\n') + '\n');
}

/** sshd's log lines for connections whose key exchange found no common host key type. */
function negotiationFailures(id: string): number {
  return (fs.readFileSync(world.vm(id).log, 'utf8').match(/no matching host key type found/g) ?? []).length;
}

beforeAll(async () => {
  world = await World.create(['vm01', 'vm02']);
  // Each VM's failure is its own here: the healthy VM flips whatever the other does.
  world.writeConfig({ rollout: ['max_failed: "100%"'] });
  original = fs.readFileSync(world.fleet.knownHosts, 'utf8');
  world.ws.commit({ 'index.html': 'v1\n' }, 'v1');
  world.ws.push();
});
afterAll(() => world?.destroy());
afterEach(() => fs.writeFileSync(world.fleet.knownHosts, original));

test.each([
  ['rsa', 'ssh-rsa'],
  ['ecdsa', 'ecdsa-sha2-nistp256'],
])('a %s-only pin against an ed25519-only VM is host_key_mismatch naming both types, not retried', async (type, typeName) => {
  pin('vm01', [`NAME ${newKey(`vm01-${type}`, type).line}`]);
  const before = negotiationFailures('vm01');
  const run = await world.cli(['sync']);

  expect(run.code).toBe(1);
  const [vm01, vm02] = run.json.vms;
  expect([vm02.id, vm02.result]).toEqual(['vm02', 'success']);
  expect([vm01.result, vm01.error?.code]).toEqual(['failed', 'host_key_mismatch']);
  const port = world.vm('vm01').port;
  expect(vm01.error?.message).toBe(
    `host key of vm01 (${world.fleet.user}@127.0.0.1:${port}) cannot be checked: known_hosts pins only ${typeName} key for [127.0.0.1]:${port}, ` +
      `and the VM offers host key types ssh-ed25519 (its ssh-ed25519 key is ${fingerprint(vmKey('vm01').blob)}). ` +
      `Pin one of the keys the VM has: fetch them with ssh-keyscan -p ${port} 127.0.0.1, verify the fingerprint out of band, and add the line to known_hosts. Retrying will not help.`,
  );
  // One attempt (config retries: 1): a retry would have shown up in sshd's log and in the notes.
  expect(negotiationFailures('vm01') - before).toBe(1);
  expect(vm01.notes).toEqual([]);
  expect(world.sentinel('vm01')).toBeNull();
}, 60_000);

test('the VM presents a key that a @revoked line vetoes: host_key_revoked, says REVOKED', async () => {
  const stale = vmKey('vm01');
  pin('vm01', [`NAME ${newKey('vm01-new', 'ed25519').line}`, `@revoked NAME ${stale.line}`]);
  const run = await world.cli(['sync']);

  const vm01 = run.json.vms.find((vm) => vm.id === 'vm01');
  expect(vm01?.error?.code).toBe('host_key_revoked');
  expect(vm01?.error?.message).toContain(`is REVOKED: it presented ${fingerprint(stale.blob)} (ssh-ed25519), which a @revoked line for [127.0.0.1]:${world.vm('vm01').port} in known_hosts vetoes`);
  expect(vm01?.notes).toEqual([]);
  expect(world.sentinel('vm01')).toBeNull();
}, 60_000);

test('a revoked key of a type that is not pinned is still named REVOKED', async () => {
  // Pinned: an RSA key (the VM has none). Revoked, by a wildcard line: the VM's ed25519 key.
  pin('vm01', [`NAME ${newKey('vm01-rsa2', 'rsa').line}`, `@revoked 127.0.0.* ${vmKey('vm01').line}`, `@revoked [127.0.0.1]:* ${vmKey('vm01').line}`]);
  const run = await world.cli(['sync']);
  const vm01 = run.json.vms.find((vm) => vm.id === 'vm01');
  expect(vm01?.error?.code).toBe('host_key_revoked');
  expect(vm01?.error?.message).toContain(`REVOKED: it presented ${fingerprint(vmKey('vm01').blob)} (ssh-ed25519)`);
}, 60_000);

test('every pinned key revoked: host_key_revoked before connecting, not host_key_unknown', async () => {
  const key = vmKey('vm02');
  fs.appendFileSync(world.fleet.knownHosts, `@revoked [127.0.0.1]:${world.vm('vm02').port} ${key.line}\n`);
  const connections = (fs.readFileSync(world.vm('vm02').log, 'utf8').match(/Connection from /g) ?? []).length;
  const run = await world.cli(['sync']);

  const vm02 = run.json.vms.find((vm) => vm.id === 'vm02');
  expect(vm02?.error?.code).toBe('host_key_revoked');
  expect(vm02?.error?.message).toMatch(new RegExp(`^every host key pinned for \\[127\\.0\\.0\\.1\\]:${world.vm('vm02').port} in known_hosts is REVOKED \\(@revoked ${fingerprint(key.blob).replace(/[+/]/g, '\\$&')}\\)`));
  expect((fs.readFileSync(world.vm('vm02').log, 'utf8').match(/Connection from /g) ?? []).length).toBe(connections);
  expect(run.json.vms.find((vm) => vm.id === 'vm01')?.result).toBe('success');
}, 60_000);
