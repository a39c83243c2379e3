import { PassThrough } from 'node:stream';
import type { JumpHost, VmConfig } from '../../src/config/types.js';
import { KnownHosts } from '../../src/remote/known-hosts.js';
import { tunnelTo, type JumpOpener, type JumpSession } from '../../src/remote/jump.js';

/*
 * The jump link (src/remote/jump.ts) against a jump host that misbehaves
 * after the handshake: it stops answering, or its connection dies while VMs
 * behind it are still being deployed. Fakes stand for the jump connection.
 */
const jump = (maxSessions: number): JumpHost => ({ name: 'bastion', host: '198.51.100.5', user: 'jump', port: 22, maxSessions, keyPath: '/k/j' });
const vm = (i: number, j: JumpHost): VmConfig => ({ id: `vm${i}`, host: `10.0.0.${i}`, user: 'deploy', port: 22, repoPath: '~/app', keyPath: `/k/vm${i}`, jump: j });
const tick = (ms = 5): Promise<void> => new Promise((r) => setTimeout(r, ms));
/** Resolves to 'hang' if `p` has not settled within `ms`. */
const within = <T>(p: Promise<T>, ms: number): Promise<T | 'hang'> => Promise.race([p, tick(ms).then(() => 'hang' as const)]);

interface Fake {
  opener: JumpOpener;
  opened: number;
  disposed: number;
  /** What the next forward does. */
  mode: 'ok' | 'dead' | 'silent' | 'refused';
}
function fakeJump(): Fake {
  const fake: Fake = { opened: 0, disposed: 0, mode: 'ok', opener: null as unknown as JumpOpener };
  fake.opener = async () => {
    fake.opened++;
    await tick();
    const generation = fake.opened;
    const session: JumpSession = {
      carriers: [],
      forward: (host) => {
        // A connection that died answers every later forward with ssh2's "Not connected" (no channel-open reason).
        if (fake.mode === 'dead' && generation === 1) return Promise.reject(new Error('Not connected'));
        if (fake.mode === 'silent') return new Promise(() => undefined);
        if (fake.mode === 'refused') return Promise.reject(Object.assign(new Error(`(SSH) Channel open failure: Connection refused (${host})`), { reason: 2 }));
        return Promise.resolve(new PassThrough());
      },
      dispose: () => void fake.disposed++,
    };
    return session;
  };
  return fake;
}

test('a jump connection that died mid-run is not reused: the next VM (or its retry) reconnects, or fails jump_unreachable', async () => {
  const fake = fakeJump();
  const knownHosts = new KnownHosts('');
  const j = jump(2);
  // vm1 is deployed over the first connection and keeps its session open (a staged VM waiting for the flip).
  const first = await tunnelTo(vm(1, j), knownHosts, fake.opener)!({ connectTimeoutMs: 1000 });
  first.opened();
  // The bastion restarts: its connection is gone.
  fake.mode = 'dead';
  const second = await tunnelTo(vm(2, j), knownHosts, fake.opener)!({ connectTimeoutMs: 1000 }).then(
    (t) => ({ ok: true as const, t }),
    (error: { code?: string; message?: string }) => ({ ok: false as const, error }),
  );
  if (second.ok) {
    // Reconnected at once: a second connection.
    expect(fake.opened).toBe(2);
  } else {
    // Or failed as the jump host's failure, not as "check the VM is up"...
    expect(second.error.code).toBe('jump_unreachable');
    // ...and the retry connects afresh instead of inheriting the dead connection.
    const retry = await tunnelTo(vm(2, j), knownHosts, fake.opener)!({ connectTimeoutMs: 1000 });
    expect(fake.opened).toBe(2);
    retry.opened();
    retry.closed();
  }
  first.closed();
  await tick(400);
  // Both connections are closed once no VM uses the link (no open socket keeps the CLI alive).
  expect(fake.disposed).toBe(2);
});

test('the jump host refusing to reach one VM is that VM\'s failure (unreachable); the connection is kept for the others', async () => {
  const fake = fakeJump();
  const knownHosts = new KnownHosts('');
  const j = jump(2);
  const first = await tunnelTo(vm(1, j), knownHosts, fake.opener)!({ connectTimeoutMs: 1000 });
  first.opened();
  fake.mode = 'refused';
  await expect(tunnelTo(vm(2, j), knownHosts, fake.opener)!({ connectTimeoutMs: 1000 })).rejects.toMatchObject({ code: 'unreachable', message: expect.stringMatching(/Check the VM is up/) });
  fake.mode = 'ok';
  const third = await tunnelTo(vm(3, j), knownHosts, fake.opener)!({ connectTimeoutMs: 1000 });
  expect(fake.opened).toBe(1);
  third.opened();
  third.closed();
  first.closed();
  await tick(400);
  expect(fake.disposed).toBe(1);
});

test('a jump host that stops answering channel opens cannot hold a VM past its budget', async () => {
  const fake = fakeJump();
  const knownHosts = new KnownHosts('');
  const j = jump(2);
  const first = await tunnelTo(vm(1, j), knownHosts, fake.opener)!({ connectTimeoutMs: 1000 });
  first.opened();
  fake.mode = 'silent';
  // The VM's budget (its signal) runs out after 200 ms; connect_timeout_s is long.
  const opening = tunnelTo(vm(2, j), knownHosts, fake.opener)!({ connectTimeoutMs: 60_000, signal: AbortSignal.timeout(200) });
  const outcome = await within(opening.catch((error: { code?: string }) => error), 3000);
  expect(outcome).not.toBe('hang');
  expect(outcome).toMatchObject({ code: expect.stringMatching(/^(timeout|jump_unreachable)$/) });
  // Without a budget, connect_timeout_s bounds it.
  const bounded = tunnelTo(vm(3, j), knownHosts, fake.opener)!({ connectTimeoutMs: 300 });
  expect(await within(bounded.catch((error: { code?: string }) => error), 3000)).toMatchObject({ code: 'jump_unreachable' });
  first.closed();
  await tick(400);
});

test('12 VMs behind max_sessions 1, all held open (all-at-once): no deadlock; waiters cancelled by their budget leave no slot behind', async () => {
  const fake = fakeJump();
  const knownHosts = new KnownHosts('');
  const j = jump(1);
  // vm1 takes the only opening slot and its handshake is slow; vm2..vm6 wait and their budget runs out.
  const slow = await tunnelTo(vm(1, j), knownHosts, fake.opener)!({ connectTimeoutMs: 1000 });
  const cancelled = [2, 3, 4, 5, 6].map((i) => tunnelTo(vm(i, j), knownHosts, fake.opener)!({ connectTimeoutMs: 1000, signal: AbortSignal.timeout(50) }).catch((e: { code?: string }) => e.code));
  expect(await within(Promise.all(cancelled), 2000)).toEqual(['timeout', 'timeout', 'timeout', 'timeout', 'timeout']);
  // An already-cancelled VM does not queue for a slot at all.
  const aborted = AbortSignal.abort();
  expect(await within(tunnelTo(vm(7, j), knownHosts, fake.opener)!({ connectTimeoutMs: 1000, signal: aborted }).catch((e: { code?: string }) => e.code), 1000)).toBe('timeout');
  slow.opened();
  // Then 12 VMs in all-at-once: each opens in turn, every session stays open until the flip.
  const tunnels = await within(Promise.all(Array.from({ length: 12 }, (_, i) => i + 10).map(async (i) => {
    const t = await tunnelTo(vm(i, j), knownHosts, fake.opener)!({ connectTimeoutMs: 1000 });
    await tick(2);
    t.opened();
    return t;
  })), 5000);
  expect(tunnels).not.toBe('hang');
  for (const t of tunnels as Array<{ closed(): void }>) t.closed();
  slow.closed();
  await tick(400);
  expect(fake.opened).toBe(1);
  expect(fake.disposed).toBe(1);
});
