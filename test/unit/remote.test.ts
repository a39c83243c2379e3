import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { AGENT_SCRIPT, agentCommand, parseAgentOutput, shellQuote } from '../../src/remote/agent-script.js';
import { classifyConnectError, classifyRsyncFailure } from '../../src/remote/classify.js';
import { parseProgress, parseRsyncOutput, rsyncArgs, type RsyncPlan } from '../../src/remote/rsync.js';


/** Homes made by these tests, removed after them. */
const homes: string[] = [];
function tempHome(): string {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-home-'));
  homes.push(home);
  return home;
}
afterAll(() => {
  for (const home of homes) fs.rmSync(home, { recursive: true, force: true });
});

describe('shellQuote', () => {
  const tricky = ["it's", '$(touch /tmp/pwned)', '`id`', 'a b\tc', '"; rm -rf / #', '~/app', '\\n', '', "''", 'ünïcødé 日本'];
  test.each(tricky)('a real sh receives %j unchanged', (word) => {
    // The quoted word goes through sh exactly as it would through the VM's login shell.
    const out = execFileSync('sh', ['-c', `printf '%s' ${shellQuote(word)}`], { encoding: 'utf8' });
    expect(out).toBe(word);
  });
});

describe('agent script', () => {
  test('its source file is clean under shellcheck as POSIX sh', () => {
    // The embedded text is this file without comments (its shellcheck directives go too).
    const result = spawnSync('shellcheck', ['-s', 'sh', 'src/remote/agent.sh'], { encoding: 'utf8' });
    expect(result.stdout).toBe('');
    expect(result.status).toBe(0);
  });

  test('the bundle carries exactly src/remote/agent.sh (the generated module is not stale)', () => {
    const result = spawnSync(process.execPath, ['scripts/embed-agent.mjs', '--check'], { encoding: 'utf8' });
    expect([result.status, result.stderr]).toEqual([0, '']);
    // Every operation of the source is in the embedded text.
    const source = fs.readFileSync('src/remote/agent.sh', 'utf8');
    const ops = [...source.matchAll(/^([a-z-]+)\)$/gm)].map((m) => m[1]);
    expect(ops).toEqual(expect.arrayContaining(['probe', 'begin', 'stage', 'seal', 'flip', 'releases', 'renew', 'health', 'prune', 'serve']));
    for (const op of ops) expect(AGENT_SCRIPT).toContain(`\n${op})\n`);
  });

  test('config values reach the script as positional arguments, not as script text', () => {
    const evil = "/srv/app'; touch /tmp/x; '";
    const command = agentCommand('probe', evil, { nonce: 'n0', budgetS: 30 });
    expect(command.startsWith(`'timeout' '-k' '3' '30' 'sh' '-c' `)).toBe(true);
    expect(command).toContain(shellQuote(evil));
    expect(AGENT_SCRIPT).not.toContain('/srv/app');
  });

  test('probe runs under a real sh and expands ~/ against $HOME', () => {
    const home = tempHome();
    fs.mkdirSync(path.join(home, 'app'));
    fs.writeFileSync(path.join(home, 'app', '.sync_rev'), `${'a'.repeat(40)}\n`);
    const out = execFileSync('sh', ['-c', agentCommand('probe', '~/app', { nonce: 'n1', budgetS: 30 })], { encoding: 'utf8', env: { ...process.env, HOME: home } });
    const values = parseAgentOutput(out, 'n1');
    expect(values.complete).toBe(true);
    expect(values.get('target')).toBe(`${home}/app`);
    expect(values.oneOf('kind', ['dir'])).toBe('dir');
    expect(values.get('rev_state')).toBe('regular');
    expect(values.get('rev')).toBe('a'.repeat(40));
  });

  test.each([
    ['a symlink to a file elsewhere', (f: string) => fs.symlinkSync('/etc/hostname', f), 'symlink'],
    ['a FIFO', (f: string) => execFileSync('mkfifo', [f]), 'special'],
    ['a directory', (f: string) => fs.mkdirSync(f), 'directory'],
  ])('probe never reads or follows a .sync_rev that is %s', (_what, plant, state) => {
    const home = tempHome();
    fs.mkdirSync(path.join(home, 'app'));
    plant(path.join(home, 'app', '.sync_rev'));
    const out = execFileSync('sh', ['-c', agentCommand('probe', '~/app', { nonce: 'n2', budgetS: 5 })], { encoding: 'utf8', env: { ...process.env, HOME: home }, timeout: 10_000 });
    const values = parseAgentOutput(out, 'n2');
    expect(values.get('rev_state')).toBe(state);
    expect(values.get('rev')).toBeNull();
  });

  test('only lines framed with the nonce count; a forged or foreign line is ignored', () => {
    const stdout = ['rev=0000000000000000000000000000000000000000', '@other kind=dir', '@n3 kind=release', '@n3 pruned=a', '@n3 pruned=b', '@n3 x=1=2', '@n3 end=ok', ''].join('\n');
    const values = parseAgentOutput(stdout, 'n3');
    expect(values.get('rev')).toBeNull();
    expect(values.get('kind')).toBe('release');
    expect(values.all('pruned')).toEqual(['a', 'b']);
    expect(values.get('x')).toBe('1=2');
    expect(values.complete).toBe(true);
  });

  test('a response missing a required field or holding an unknown enum value is rejected', () => {
    const values = parseAgentOutput('@n4 kind=teapot\n@n4 end=ok\n', 'n4');
    expect(() => values.require('stage')).toThrow(/lacks stage=/);
    expect(() => values.oneOf('kind', ['dir', 'release'])).toThrow(/kind="teapot"/);
    expect(parseAgentOutput('@n5 kind=dir\n', 'n5').complete).toBe(false);
  });
});

describe('rsync arguments', () => {
  const plan: RsyncPlan = {
    source: '/tmp/export/tree',
    dest: '/home/deploy/.app.vm-sync/releases/abc.partial',
    rsh: "'/usr/bin/node' '/tmp/rsh/rsh.cjs' '/tmp/rsh/s'",
    linkDest: '/home/deploy/.app.vm-sync/releases/20260101T000000Z-abc',
    excludes: ['.git', '__pycache__'],
    dryRun: false,
    ioTimeoutS: 30,
  };

  test('a staged release: checksum, link-dest, delete, excludes, never -t, never follows links', () => {
    expect(rsyncArgs(plan)).toEqual([
      '-rlp',
      '--checksum',
      '--delete',
      '--numeric-ids',
      '--timeout=30',
      '-e',
      plan.rsh,
      `--link-dest=${plan.linkDest}`,
      '--exclude=.git',
      '--exclude=__pycache__',
      '--exclude=/.sync_rev',
      '--stats',
      '--info=progress2',
      '--no-human-readable',
      '/tmp/export/tree/',
      'vm:/home/deploy/.app.vm-sync/releases/abc.partial/',
    ]);
    for (const dangerous of ['-L', '--copy-links', '--copy-unsafe-links', '-t', '-a', '--times']) {
      expect(rsyncArgs(plan)).not.toContain(dangerous);
    }
  });

  test('a dry run itemises and sends no stats flags', () => {
    const args = rsyncArgs({ ...plan, dryRun: true, linkDest: null });
    expect(args).toEqual(expect.arrayContaining(['--dry-run', '--itemize-changes']));
    expect(args.some((a) => a.startsWith('--link-dest'))).toBe(false);
    expect(args).not.toContain('--info=progress2');
  });

  test('stats and progress parsing', () => {
    const stats = 'Number of files: 9 (reg: 6, dir: 3)\nNumber of regular files transferred: 2\nTotal bytes sent: 1234567\n';
    expect(parseRsyncOutput(stats, false)).toEqual({ filesChanged: 2, bytesSent: 1234567, changes: [] });
    expect(parseRsyncOutput('Number of regular files transferred: 1,024\nTotal bytes sent: 9,999\n', false).bytesSent).toBe(9999);
    expect(parseProgress('\r     32768  12%   10.00MB/s    0:00:02 (xfr#1, to-chk=3/9)\r   262144 100%  11.50MB/s    0:00:00')).toEqual({
      bytes: 262144,
      percent: 100,
      rate: '11.50MB/s',
    });
    expect(parseProgress('sending incremental file list\n')).toBeNull();
  });

  test('a dry run counts files, not directories, as add, change and delete', () => {
    const out = [
      'created directory /srv/.app.vm-sync/releases/x.dry-run-1',
      'cd+++++++++ ./',
      '>f+++++++++ new.txt',
      '>fcs.p..... changed.txt',
      '.f...p..... mode-only.sh',
      '.d..t...... olddir/',
      'cL+++++++++ link',
      'cLc.T...... relinked',
      '*deleting   old.txt',
      '*deleting   gone/',
      'cd+++++++++ newdir/',
      '>f+++++++++ name -> with arrow',
      '',
    ].join('\n');
    const stats = parseRsyncOutput(out, true);
    expect(stats.counts).toEqual({ add: 3, change: 3, delete: 1 });
    expect(stats.filesChanged).toBe(7);
    // Files first, in rsync's order; directories after them; the root and attribute-only directories not at all.
    expect(stats.changes).toEqual([
      { kind: 'add', path: 'new.txt', dir: false },
      { kind: 'change', path: 'changed.txt', dir: false },
      { kind: 'change', path: 'mode-only.sh', dir: false },
      { kind: 'add', path: 'link', dir: false },
      { kind: 'change', path: 'relinked', dir: false },
      { kind: 'delete', path: 'old.txt', dir: false },
      { kind: 'add', path: 'name -> with arrow', dir: false },
      { kind: 'delete', path: 'gone/', dir: true },
      { kind: 'add', path: 'newdir/', dir: true },
    ]);
    expect(rsyncArgs({ ...plan, dryRun: true, linkDest: null })).toContain('--out-format=%i %n');
  });
});

describe('failure classification', () => {
  test.each([
    [255, 'Host key verification failed.', 'host_key_mismatch'],
    [255, 'root@10.0.0.1: Permission denied (publickey).', 'auth_failed'],
    [255, 'ssh: connect to host 10.0.0.1 port 22: Connection refused', 'unreachable'],
    [255, 'ssh: connect to host 10.0.0.1 port 22: Connection timed out', 'timeout'],
    [12, 'bash: line 1: rsync: command not found\nrsync: connection unexpectedly closed (0 bytes received so far) [sender]', 'remote_rsync_missing'],
    [12, 'rsync: connection unexpectedly closed (0 bytes received so far) [sender]', 'unreachable'],
    [11, 'rsync: write failed on "/srv/app/big": No space left on device (28)', 'storage_full'],
    [23, 'rsync: mkstemp "/srv/app/.x" failed: Permission denied (13)', 'permission_denied'],
    [23, 'rsync error: some files/attrs were not transferred', 'rsync_failed'],
    [30, 'rsync error: timeout in data send/receive', 'timeout'],
    [10, '', 'unreachable'],
  ])('rsync exit %i with %j -> %s', (code, stderr, expected) => {
    expect(classifyRsyncFailure(code, stderr)).toBe(expected);
  });

  test('a host key that was rejected is a mismatch, whatever the error says', () => {
    expect(classifyConnectError(new Error('Handshake failed'), true)).toBe('host_key_mismatch');
  });

  test.each([
    [{ level: 'client-authentication', message: 'All configured authentication methods failed' }, 'auth_failed'],
    [{ code: 'ECONNREFUSED', message: 'connect ECONNREFUSED' }, 'unreachable'],
    [{ code: 'EHOSTUNREACH', message: 'connect EHOSTUNREACH' }, 'unreachable'],
    [{ level: 'client-timeout', message: 'Timed out while waiting for handshake' }, 'timeout'],
    [{ message: 'Encrypted private OpenSSH key detected, but no passphrase given' }, 'auth_failed'],
  ])('ssh2 error %j -> %s', (error, expected) => {
    expect(classifyConnectError(Object.assign(new Error(error.message), error), false)).toBe(expected);
  });
});

describe('stderrSummary', () => {
  test('leads with the line that explains the failure, then the last line', async () => {
    const { stderrSummary } = await import('../../src/remote/classify.js');
    const stderr = 'rsync: [receiver] write failed on "/a/b": No space left on device (28)\nrsync error: error in file IO (code 11) at receiver.c(381)\nrsync: [sender] write error: Broken pipe (32)\nrsync error: error in file IO (code 11) at io.c(848) [sender=3.2.7]\n';
    expect(stderrSummary(stderr)).toBe('rsync: [receiver] write failed on "/a/b": No space left on device (28) | rsync error: error in file IO (code 11) at io.c(848) [sender=3.2.7]');
    expect(stderrSummary('')).toBe('');
  });
});
