import { PassThrough } from 'node:stream';
import { parseConfig } from '../../src/config/load.js';
import type { JumpHost, VmConfig } from '../../src/config/types.js';
import { KnownHosts } from '../../src/remote/known-hosts.js';
import { tunnelTo, type JumpOpener } from '../../src/remote/jump.js';

const jump: JumpHost = { name: 'bastion', host: '198.51.100.5', user: 'jump', port: 22, maxSessions: 2, keyPath: '/k/id_ed25519_jump_bastion' };
const vm = (i: number): VmConfig => ({ id: `vm${i}`, host: `10.0.0.${i}`, user: 'deploy', port: 22, repoPath: '~/app', keyPath: `/k/id_ed25519_vm${i}`, jump });
const tick = (ms = 5): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A fake jump host: counts connections, forwards and disposals. */
function fakeJump(options: { fail?: boolean } = {}): { opener: JumpOpener; opened: number; disposed: number; forwards: string[] } {
  const state = { opened: 0, disposed: 0, forwards: [] as string[], opener: (async () => undefined) as unknown as JumpOpener };
  state.opener = async (config) => {
    expect(config).toEqual({ id: 'jump host bastion', host: jump.host, user: jump.user, port: jump.port, keyPath: jump.keyPath, repoPath: '' });
    state.opened++;
    await tick();
    if (options.fail) throw Object.assign(new Error('connect ECONNREFUSED'), { code: 'unreachable' });
    return {
      carriers: [],
      forward: async (host: string, port: number) => {
        state.forwards.push(`${host}:${port}`);
        return new PassThrough();
      },
      dispose: () => void state.disposed++,
    };
  };
  return state;
}

test('every VM behind a jump host shares one connection to it; at most max_sessions are being opened at once', async () => {
  const fake = fakeJump();
  const knownHosts = new KnownHosts('');
  let opening = 0;
  let most = 0;
  const one = async (i: number): Promise<() => void> => {
    const tunnel = await tunnelTo(vm(i), knownHosts, fake.opener)!({ connectTimeoutMs: 1000 });
    opening++;
    most = Math.max(most, opening);
    await tick(10); // the VM's own SSH handshake through the tunnel
    opening--;
    tunnel.opened();
    return tunnel.closed;
  };
  const closers = await Promise.all([1, 2, 3, 4, 5, 6].map(one));
  expect(fake.opened).toBe(1);
  expect(most).toBe(2);
  expect(fake.forwards).toEqual([1, 2, 3, 4, 5, 6].map((i) => `10.0.0.${i}:22`));
  // Every VM's session is still open (an all-at-once flip waits on all of them): no deadlock, one connection.
  expect(fake.disposed).toBe(0);
  for (const close of closers) close();
  await tick(400);
  expect(fake.disposed).toBe(1);
});

test('a jump host that is down fails each VM with jump_unreachable: one attempt for the VMs waiting, a later retry connects afresh', async () => {
  const fake = fakeJump({ fail: true });
  const knownHosts = new KnownHosts('');
  // Three VMs, two opening slots: the third waits, then fails with the same attempt rather than a second timeout.
  const results = await Promise.allSettled([1, 2, 3].map((i) => tunnelTo(vm(i), knownHosts, fake.opener)!({ connectTimeoutMs: 1000 })));
  for (const result of results) {
    expect(result.status).toBe('rejected');
    expect((result as PromiseRejectedResult).reason).toMatchObject({ code: 'jump_unreachable' });
    expect(String((result as PromiseRejectedResult).reason.message)).toMatch(/every VM behind jump host bastion fails until it is back/);
  }
  expect(fake.opened).toBe(1);
  await tick(1100);
  await expect(tunnelTo(vm(4), knownHosts, fake.opener)!({ connectTimeoutMs: 1000 })).rejects.toMatchObject({ code: 'jump_unreachable' });
  expect(fake.opened).toBe(2);
});

test('a VM without a jump host has no tunnel', () => {
  expect(tunnelTo({ ...vm(1), jump: null }, new KnownHosts(''), fakeJump().opener)).toBeNull();
});

describe('jump_hosts in the config', () => {
  const base = (extra: string): string =>
    ['jump_hosts:', '  bastion: { ip: 198.51.100.5, ssh_user: jump, ssh_port: 2222, max_sessions: 4 }', '  edge: { ip: 198.51.100.6, ssh_user: jump }', 'vms:', '  vm01: { ip: 10.0.0.11, ssh_user: deploy, jump: bastion }', '  vm02: { ip: 10.0.0.12, ssh_user: deploy }', extra, 'repository: { main_repo_path: /srv/app, vm_repo_paths: { default: /srv/app } }', 'remote_execution: { key_storage_path: /keys }', ''].join('\n');

  test('a VM names its jump host; the jump host has its own key and defaults', () => {
    const config = parseConfig(base('  vm03: { ip: 10.0.0.13, ssh_user: deploy, jump: edge }'), 'c.yml');
    expect(config.vms.map((v) => [v.id, v.jump ?? null])).toEqual([
      ['vm01', { name: 'bastion', host: '198.51.100.5', user: 'jump', port: 2222, maxSessions: 4, keyPath: '/keys/id_ed25519_jump_bastion' }],
      ['vm02', null],
      ['vm03', { name: 'edge', host: '198.51.100.6', user: 'jump', port: 22, maxSessions: 8, keyPath: '/keys/id_ed25519_jump_edge' }],
    ]);
  });

  test.each([
    ['  vm03: { ip: 10.0.0.13, ssh_user: deploy, jump: nowhere }', /vms\.vm03\.jump names unknown jump host 'nowhere' \(jump_hosts: bastion, edge\)/],
    ['  vm03: { ip: 10.0.0.13, ssh_user: deploy, jmp: edge }', /jmp/],
  ])('%s is a config error', (line, message) => {
    expect(() => parseConfig(base(line), 'c.yml')).toThrow(message);
  });

  test.each([
    ['  bad/name: { ip: 1.2.3.4, ssh_user: j }', /jump host name 'bad\/name'/],
    ['  b2: { ip: "1.2.3.4; rm -rf /", ssh_user: j }', /jump_hosts\.b2\.ip is not a valid address/],
    ['  b2: { ip: 1.2.3.4, ssh_user: "-oProxyCommand=x" }', /jump_hosts\.b2\.ssh_user is not a valid user name/],
    ['  b2: { ip: 1.2.3.4, ssh_user: j, max_sessions: 0 }', /max_sessions/],
    ['  b2: { ip: 1.2.3.4, ssh_user: j, port: 22 }', /port/],
  ])('jump host %s is a config error', (line, message) => {
    const text = base('').replace('jump_hosts:\n', `jump_hosts:\n${line}\n`);
    expect(() => parseConfig(text, 'c.yml')).toThrow(message);
  });
});
