import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { VmSyncError } from '../../src/errors.js';
import { classifyConnectError, classifyRsyncFailure, codeFromStderr, remedyFor, stderrSummary } from '../../src/remote/classify.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-classify-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/**
 * Runs the real rsync through a remote shell that prints `banner` before
 * starting the remote rsync: what a chatty ~/.bashrc does to every SSH session.
 */
function rsyncThroughChattyShell(banner: string): { code: number | null; stderr: string } {
  const rsh = path.join(dir, 'chatty-rsh');
  fs.writeFileSync(rsh, '#!/bin/sh\nshift\nprintf "%s\\n" "$BANNER"\nexec "$@"\n', { mode: 0o755 });
  fs.mkdirSync(path.join(dir, 'src'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'src', 'a.txt'), 'a\n');
  const result = spawnSync('rsync', ['-r', `--rsh=${rsh}`, `${dir}/src/`, `vm:${dir}/dest/`], { encoding: 'utf8', env: { ...process.env, BANNER: banner, LC_ALL: 'C' } });
  return { code: result.status, stderr: result.stderr };
}

describe('a login shell that is not clean', () => {
  test.each([
    ['a one-word greeting', 'hi'],
    ['a motd line', 'Welcome to Ubuntu 24.04 LTS (GNU/Linux 6.8.0-31-generic x86_64)'],
    ['a blank line', ''],
    ['a long banner', 'x'.repeat(5000)],
  ])('%s: remote_shell_unclean, rsync\'s hint kept, not retried', (_what, banner) => {
    const { code, stderr } = rsyncThroughChattyShell(banner);
    expect(code).not.toBe(0);
    const failure = classifyRsyncFailure(code, stderr);
    expect(failure).toBe('remote_shell_unclean');
    expect(new VmSyncError(failure, 'x').retryable).toBe(false);
    expect(stderrSummary(stderr)).toMatch(/^protocol version mismatch -- is your shell clean\? \| rsync error: /);
    expect(remedyFor(failure)).toContain("shell start-up files print text in non-interactive sessions");
  });
});

describe('an I/O error on the VM is storage_full', () => {
  test.each([
    [23, 'rsync: [receiver] write failed on "/srv/app/big.bin": Input/output error (5)\nrsync error: some files/attrs were not transferred (see previous errors) (code 23) at main.c(1338) [sender=3.2.7]'],
    [11, 'rsync: [receiver] mkstemp "/srv/.app.vm-sync/releases/x.partial/.a.txt.Qx2" failed: Input/output error (5)'],
    [1, "cannot create the lock /srv/.app.vm-sync/lock: ln: failed to create symbolic link '/srv/.app.vm-sync/lock': Input/output error"],
    [1, 'mkdir: cannot create directory /home/deploy/.app.vm-sync: Input/output error'],
    [1, 'EXT4-fs error: I/O error while writing superblock'],
  ])('exit %i: %s', (code, stderr) => {
    expect(classifyRsyncFailure(code, stderr)).toBe('storage_full');
    expect(codeFromStderr(stderr)).toBe('storage_full');
  });

  test.each([
    [10, 'rsync error: error in socket IO (code 10) at io.c(848) [sender=3.2.7]', 'unreachable'],
    [23, 'IO error encountered -- skipping file deletion\nrsync error: some files/attrs were not transferred (code 23)', 'rsync_failed'],
  ])('but rsync\'s socket and deletion "IO" errors are not: exit %i %j -> %s', (code, stderr, expected) => {
    expect(classifyRsyncFailure(code, stderr)).toBe(expected);
  });
});

describe('host key algorithm mismatch', () => {
  test('ssh2\'s handshake failure is host_key_mismatch, never retried', () => {
    // The error ssh2 raises when the VM offers no host key of a pinned type (reproduced against sshd).
    const error = Object.assign(new Error('Handshake failed: no matching host key format'), { level: 'handshake', fatal: true });
    const code = classifyConnectError(error, false);
    expect(code).toBe('host_key_mismatch');
    expect(new VmSyncError(code, 'x').retryable).toBe(false);
  });

  test('OpenSSH\'s wording of it too', () => {
    expect(codeFromStderr('Unable to negotiate with 10.0.0.1 port 22: no matching host key type found. Their offer: ssh-ed25519')).toBe('host_key_mismatch');
  });
});

test('stderrSummary cleans and bounds what the VM wrote', () => {
  const summary = stderrSummary(`\u001b[2J\u001b]0;pwned\u0007${'z'.repeat(100_000)}: No space left on device\nrsync error: ${'q'.repeat(50_000)}\n`);
  expect(summary.length).toBeLessThan(800);
  // eslint-disable-next-line no-control-regex
  expect(/[\u0000-\u001f\u007f-\u009f]/.test(summary)).toBe(false);
  expect(summary).toMatch(/^\?\[2J\?\]0;pwned\?z+… \(\d+ more characters cut\) \| rsync error: q+… \(\d+ more characters cut\)$/);
});
