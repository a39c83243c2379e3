import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { agentCommand, parseAgentOutput } from '../../src/remote/agent-script.js';
import { encodeLockOwner } from '../../src/remote/lock.js';

/*
 * Finding: encodeLockOwner() lets a record grow to ~7x200 characters, but the
 * agent reads a lock back with `readlink | head -c 400` and `deadline=` is the
 * LAST field. A record longer than 400 characters loses its deadline, is
 * judged "unreadable", and a second run takes the LIVE lock over after 60 s.
 */

function agent(home: string, op: string, ...args: string[]): ReturnType<typeof parseAgentOutput> {
  let out: string;
  try {
    out = execFileSync('sh', ['-c', agentCommand(op, '~/app', { nonce: 'n', budgetS: 30 }, ...args)], { encoding: 'utf8', env: { ...process.env, HOME: home } });
  } catch (error) {
    out = String((error as { stdout?: string }).stdout ?? '');
  }
  return parseAgentOutput(out, 'n');
}

// Realistic: a self-hosted runner with an FQDN host name, a GHES run URL of a long repository name.
const host = 'ci-runner-07.build.eu-central-1.internal.example-corp.com';
const runUrl = 'https://github.enterprise.example-corp.com/platform-infrastructure/payments-gateway-deployment-configuration-service-eu-production/actions/runs/12345678901';
const owner = (tag: string) => ({ token: `${host}:123456:${tag}`, host, pid: 123456, pidStart: '98765432', boot: '', pidns: '', commit: 'a'.repeat(40), run: runUrl });

test('a live lock whose record is longer than 400 characters is taken over as "unreadable" after 60 s', () => {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'adv-lock-'));
  const recordA = encodeLockOwner(owner('aaaaaaaaaaaa'));
  const a = agent(home, 'begin', recordA, '3600', 'b'.repeat(40), '0', '60', '3600', '');
  expect(a.get('lock')).toBe('acquired');
  const lock = path.join(home, '.app.vm-sync', 'lock');
  const stored = fs.readlinkSync(lock);
  const deadline = Number(/deadline=(\d+)/.exec(stored)![1]);
  // A holds the lock for another hour.
  expect(deadline - Date.now() / 1000).toBeGreaterThan(3000);
  expect(stored.length).toBeGreaterThan(400);

  // 61 s later (only the lock's mtime is consulted): run B arrives.
  const past = Math.floor(Date.now() / 1000) - 61;
  execFileSync('touch', ['-h', '-d', `@${past}`, lock]);
  const b = agent(home, 'begin', encodeLockOwner(owner('bbbbbbbbbbbb')), '3600', 'b'.repeat(40), '0', '60', '3600', '');
  // Must: lock=held (A's deadline is an hour away). Observed: B takes it over.
  expect({ lock: b.get('lock'), why: b.get('lock_why') ?? b.get('took_over_why') }).toEqual({ lock: 'held', why: 'deadline' });
  fs.rmSync(home, { recursive: true, force: true });
});
