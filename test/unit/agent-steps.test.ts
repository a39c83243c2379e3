import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { AGENT_SCRIPT, encodeSessionArg } from '../../src/remote/agent-script.js';

/*
 * The agent's steps run under a real sh on a directory of this machine, as
 * they run on a VM: what a step answers and what it leaves on disk. The
 * shell does some reading and cutting itself (a release's name, a marker's
 * lines, a step's status) instead of starting a program for it; these
 * tests pin what it answers.
 */

const TOKEN = 'runner-host:4242:feedc0de';
const OWNER = `vm-sync-lock-v2 token=${TOKEN} host=runner-host pid=4242`;
const SHELLS = ['sh', 'bash'];

let root: string;
beforeEach(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-agent-steps-'));
});
afterEach(() => fs.rmSync(root, { recursive: true, force: true }));

interface Answer {
  code: number | null;
  /** Every framed value of each key, in order. */
  values: Map<string, string[]>;
  stdout: string;
  stderr: string;
}

function answer(stdout: string, stderr: string, code: number | null, nonce: string): Answer {
  const values = new Map<string, string[]>();
  for (const line of stdout.split('\n')) {
    if (!line.startsWith(`@${nonce} `)) continue;
    const body = line.slice(nonce.length + 2);
    const at = body.indexOf('=');
    const key = body.slice(0, at);
    values.set(key, [...(values.get(key) ?? []), body.slice(at + 1)]);
  }
  return { code, values, stdout, stderr };
}

function agent(op: string, args: string[], options: { env?: NodeJS.ProcessEnv; input?: Buffer; shell?: string; target?: string } = {}): Answer {
  const r = spawnSync(options.shell ?? 'sh', ['-c', AGENT_SCRIPT, 'vm-sync', 'n0', op, options.target ?? path.join(root, 'app'), ...args], { env: options.env ?? process.env, input: options.input, timeout: 30_000 });
  return answer(r.stdout.toString('latin1'), r.stderr.toString('utf8'), r.status, 'n0');
}

function one(a: Answer, key: string): string | undefined {
  return a.values.get(key)?.[0];
}

const S = (): string => path.join(root, '.app.vm-sync');

/** A release deployed the way a run deploys one (lock, stage, files, seal, flip, unlock); its name. */
function deploy(sha: string, files: Record<string, string>, env?: NodeJS.ProcessEnv): string {
  expect(one(agent('begin', [OWNER, '600', sha, '0', '30', '3600', '']), 'lock')).toBe('acquired');
  const staged = one(agent('stage', [TOKEN, sha]), 'stage') as string;
  for (const [rel, text] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(staged, rel)), { recursive: true });
    fs.writeFileSync(path.join(staged, rel), text);
  }
  const sealed = agent('seal', [TOKEN, sha, 'abc123'], { env });
  const name = one(sealed, 'release');
  expect([sealed.code, typeof name]).toEqual([0, 'string']);
  expect(one(agent('flip', [TOKEN, name as string]), 'release')).toBe(name);
  expect(one(agent('unlock', [TOKEN]), 'lock')).toBe('released');
  return name as string;
}

describe('seal: the release name', () => {
  test('is <UTC time to the millisecond>Z-<the first 12 characters of the commit>, for a SHA-1 and a SHA-256 commit', () => {
    const sha1 = '0123456789abcdef0123456789abcdef01234567';
    const first = deploy(sha1, { 'a.txt': 'one\n' });
    expect(first).toMatch(/^\d{8}T\d{9}Z-0123456789ab$/);
    const sha256 = 'fedcba9876543210'.repeat(4);
    const second = deploy(sha256, { 'a.txt': 'two\n' });
    expect(second).toMatch(/^\d{8}T\d{9}Z-fedcba987654$/);
    // The time is now, in UTC (the name sorts releases in the order they were made).
    const at = Date.UTC(+second.slice(0, 4), +second.slice(4, 6) - 1, +second.slice(6, 8), +second.slice(9, 11), +second.slice(11, 13), +second.slice(13, 15), +second.slice(15, 18));
    expect(Math.abs(Date.now() - at)).toBeLessThan(60_000);
    expect(second > first).toBe(true);
    // What the name says is what the release holds.
    expect(fs.readFileSync(path.join(S(), 'releases', second, '.sync_rev'), 'utf8')).toBe(`${sha256}\n`);
  });

  test('has no milliseconds under a date that does not expand %N', () => {
    const bin = path.join(root, 'bin');
    fs.mkdirSync(bin);
    const realDate = execFileSync('sh', ['-c', 'command -v date'], { encoding: 'utf8' }).trim();
    // A date that prints %N as it is (as BSD and busybox dates do).
    fs.writeFileSync(path.join(bin, 'date'), `#!/bin/sh\nfor a; do case $a in +*%N*) shift; set -- "$@" "$(printf '%s' "$a" | sed 's/%N/N/')"; continue ;; esac; shift; set -- "$@" "$a"; done\nexec '${realDate}' "$@"\n`, { mode: 0o755 });
    const name = deploy('ab'.repeat(20), { 'a.txt': 'x\n' }, { ...process.env, PATH: `${bin}:${process.env.PATH ?? ''}` });
    expect(name).toMatch(/^\d{8}T\d{6}Z-abababababab$/);
  });
});

describe("begin's survey reads vm-sync's own records", () => {
  test("the live release's build key (the marker's second line) and a kept complete release of the commit (its first line, with or without a final newline)", () => {
    const old = 'c'.repeat(40);
    const kept = deploy(old, { 'a.txt': 'old\n' });
    const live = deploy('d'.repeat(40), { 'a.txt': 'new\n' });
    // A marker written without its final newline still names its commit.
    fs.writeFileSync(path.join(S(), 'complete', kept), old);
    const survey = agent('begin', [OWNER, '600', old, '0', '30', '3600', '', '1']);
    expect(one(survey, 'complete')).toBe(kept);
    expect(one(survey, 'base_key')).toBe('abc123');
    expect(one(survey, 'base_state')).toBe('intact');
    expect(one(survey, 'link_dest')).toBe(path.join(S(), 'releases', live));
    agent('unlock', [TOKEN]);

    // A marker whose first line only starts with the commit names another one; an overlong key is no key.
    fs.writeFileSync(path.join(S(), 'complete', kept), `${old}0\nkey=abc123\n`);
    fs.writeFileSync(path.join(S(), 'complete', live), `${'d'.repeat(40)}\nkey=${'e'.repeat(200)}\n`);
    const again = agent('begin', [OWNER, '600', old, '0', '30', '3600', '', '1']);
    expect(one(again, 'complete')).toBe('');
    expect(one(again, 'base_key')).toBe('');
    agent('unlock', [TOKEN]);
  });
});

describe.each(SHELLS)('%s: an answer is one line per value', (shell) => {
  test('a carriage return or a newline in a value is answered as "?"; a tab and other bytes pass', () => {
    fs.mkdirSync(path.join(root, 'app'));
    fs.writeFileSync(path.join(root, 'app', '.sync_rev'), 'ab\rcd\tef\n');
    const probe = agent('probe', [], { shell });
    expect(probe.code).toBe(0);
    expect(one(probe, 'rev')).toBe('ab?cd\tef');
    expect(one(probe, 'kind')).toBe('dir');
    // A lock record with a newline in it (a symlink's target may hold one).
    fs.mkdirSync(S(), { recursive: true });
    fs.symlinkSync('vm-sync-lock-v2 token=x\nforged=1', path.join(S(), 'lock'));
    const locked = agent('probe', [], { shell });
    expect(one(locked, 'lock_record')).toBe('vm-sync-lock-v2 token=x?forged=1');
    expect(locked.values.has('forged')).toBe(false);
  });
});

describe.each(SHELLS)('%s: serve', (shell) => {
  const request = (nonce: string, op: string, ...args: string[]): string => `${nonce} 30 ${op}${args.map((a) => ` ${encodeSessionArg(a)}`).join('')}\n`;
  const input = Buffer.from(
    request('aa01', 'probe') +
      request('aa02', 'nosuchstep') +
      // A step that fails on its own: flip without the lock.
      request('aa03', 'flip', TOKEN, 'x') +
      request('aa04', 'probe'),
  );

  // A full or missing /tmp (often a small tmpfs on a VM) changes nothing: the session keeps no file.
  test.each([
    ['an empty', (tmp: string) => fs.mkdirSync(tmp)],
    ['a missing', () => undefined],
    ['a file as', (tmp: string) => fs.writeFileSync(tmp, 'not a directory\n')],
  ])("each request's exit status and stderr are framed after it, with %s TMPDIR, and the session leaves no file there", (_kind, make) => {
    const tmp = path.join(root, 'tmp');
    make(tmp);
    fs.mkdirSync(path.join(root, 'app'));
    const target = path.join(root, 'app');
    const r = spawnSync(shell, ['-c', AGENT_SCRIPT, 'vm-sync', 'se55', 'serve', target, AGENT_SCRIPT], { input, env: { ...process.env, TMPDIR: tmp }, timeout: 30_000 });
    const out = r.stdout.toString('utf8');
    expect([r.status, r.stderr.toString('utf8')]).toEqual([0, '']);
    const done = (nonce: string): string | undefined => answer(out, '', 0, nonce).values.get('done')?.[0];
    expect([done('aa01'), done('aa02'), done('aa03'), done('aa04')]).toEqual(['0', '3', '3', '0']);
    expect(answer(out, '', 0, 'aa02').values.get('stderr')).toEqual(['vm-sync: unknown operation nosuchstep']);
    expect(answer(out, '', 0, 'aa03').values.get('error')).toEqual(['lock_lost']);
    expect(answer(out, '', 0, 'aa03').values.get('stderr')).toEqual(['vm-sync: this run no longer holds the lock ' + path.join(root, '.app.vm-sync', 'lock') + ' (another run broke it): nothing was changed by this step']);
    expect(answer(out, '', 0, 'aa04').values.get('kind')).toEqual(['dir']);
    expect(answer(out, '', 0, 'aa04').values.get('stderr')).toBeUndefined();
    if (fs.existsSync(tmp) && fs.statSync(tmp).isDirectory()) expect(fs.readdirSync(tmp)).toEqual([]);
  });
});

describe.each(SHELLS)('%s: serve, a step whose status never came', (shell) => {
  test('is no success even when its stderr starts with a number', () => {
    fs.mkdirSync(path.join(root, 'app'));
    // A `timeout` whose step prints "0" on stderr and fails, while the shell
    // that would write the step's status (its parent) is killed, as an
    // out-of-memory kill would.
    const bin = path.join(root, 'bin');
    fs.mkdirSync(bin);
    fs.writeFileSync(path.join(bin, 'timeout'), '#!/bin/sh\necho 0 >&2\nkill -9 $PPID\nsleep 1\nexit 1\n', { mode: 0o755 });
    const input = Buffer.from(`bb01 30 probe\n`);
    const r = spawnSync(shell, ['-c', AGENT_SCRIPT, 'vm-sync', 'se66', 'serve', path.join(root, 'app'), AGENT_SCRIPT], { input, timeout: 30_000, env: { ...process.env, PATH: `${bin}:${process.env.PATH ?? ''}` } });
    const out = r.stdout.toString('utf8');
    expect(r.status).toBe(0);
    // What the step printed on stderr is framed as such; its status is empty, which vm-sync reads as a failure.
    expect(answer(out, '', 0, 'bb01').values.get('stderr')).toEqual(['0']);
    expect(answer(out, '', 0, 'bb01').values.get('done')).toEqual(['']);
  });
});

describe('a target under ~/', () => {
  test('with HOME unset is refused with a message that says why, not run against /', () => {
    const env = { ...process.env };
    delete env.HOME;
    const probe = agent('probe', [], { env, target: '~/app' });
    expect(probe.code).toBe(3);
    expect(one(probe, 'message')).toBe('the target ~/app starts with ~/ and HOME is not set on this VM: give an absolute path');
    expect(one(probe, 'target')).toBeUndefined();
  });
});

describe('link and apply on a base changed after the survey', () => {
  test('link copies it; apply refuses to build on it (release_drifted); unlock removes the copy, and the live release is untouched', () => {
    const baseSha = '1'.repeat(40);
    const sha = '2'.repeat(40);
    const base = deploy(baseSha, { 'a.txt': 'a\n', 'lib/b.txt': 'b\n' });
    expect(one(agent('begin', [OWNER, '600', sha, '0', '30', '3600', '', '1']), 'base_state')).toBe('intact');
    // Changed by hand in place, after begin's survey said intact.
    const liveFile = path.join(S(), 'releases', base, 'lib', 'b.txt');
    fs.appendFileSync(liveFile, 'edited\n');
    const partial = path.join(S(), 'releases', `${sha}.partial`);
    expect(one(agent('link', [TOKEN, sha, base]), 'linked')).toBe(partial);
    // apply: nothing to remove, one new file, from the copy link made.
    const tree = path.join(root, 'tree');
    fs.mkdirSync(tree);
    fs.writeFileSync(path.join(tree, 'c.txt'), 'c\n');
    const stream = Buffer.concat([Buffer.from('.\n'), execFileSync('tar', ['-cz', '-C', tree, 'c.txt'])]);
    const applied = agent('apply', [TOKEN, sha, base, 'gzip', '1'], { input: stream });
    expect([applied.code, one(applied, 'error')]).toEqual([3, 'release_drifted']);
    expect(one(applied, 'message')).toMatch(/changed on this VM after vm-sync sealed it/);
    expect(fs.existsSync(path.join(partial, 'c.txt'))).toBe(false);
    // The run ends: the copy goes, the live release is as the user left it.
    expect(one(agent('unlock', [TOKEN]), 'lock')).toBe('released');
    expect(fs.existsSync(partial)).toBe(false);
    expect(fs.readFileSync(liveFile, 'utf8')).toBe('b\nedited\n');
    expect(fs.readlinkSync(path.join(root, 'app'))).toBe(`.app.vm-sync/releases/${base}`);
  });
});

describe('program starts', () => {
  /*
   * On a fleet that shares a host's cores (and on every small VM), a program
   * start costs about a millisecond of CPU: the agent's own starts were the
   * largest part of a VM's work on an incremental deploy. This bounds them
   * for one deploy's steps, counted through logging wrappers on PATH. A new
   * program per step, or per file or release in a loop, shows here: raise the
   * bound only for a start that is needed, and say why.
   */
  const WRAPPED = ['find', 'tar', 'head', 'rm', 'readlink', 'date', 'ln', 'mv', 'sync', 'sort', 'cmp', 'cp', 'mkdir', 'zstd', 'gzip', 'rsync', 'od', 'tr', 'stat', 'wc', 'mktemp', 'tac', 'ls', 'cut', 'grep', 'tail', 'cat', 'chmod', 'id', 'sha256sum', 'rmdir', 'df', 'awk', 'sed', 'sleep'];

  test('an incremental deploy of a release with kept older ones starts at most 100 programs on the VM (144 before they were cut)', () => {
    deploy('3'.repeat(40), { 'a.txt': 'a\n', 'lib/b.txt': 'b\n' });
    deploy('4'.repeat(40), { 'a.txt': 'a2\n', 'lib/b.txt': 'b\n' });
    const base = deploy('5'.repeat(40), { 'a.txt': 'a3\n', 'lib/b.txt': 'b\n' });
    const bin = path.join(root, 'bin');
    fs.mkdirSync(bin);
    const log = path.join(root, 'started.log');
    for (const name of WRAPPED) {
      const real = spawnSync('sh', ['-c', 'command -v "$1"', 'sh', name], { encoding: 'utf8' }).stdout.trim();
      if (!real) continue;
      fs.writeFileSync(path.join(bin, name), `#!/bin/sh\necho ${name} >> '${log}'\nexec '${real}' "$@"\n`, { mode: 0o755 });
    }
    const env = { ...process.env, PATH: `${bin}:${process.env.PATH ?? ''}` };
    const sha = '6'.repeat(40);
    const tree = path.join(root, 'tree');
    fs.mkdirSync(tree);
    fs.writeFileSync(path.join(tree, 'c.txt'), 'c\n');
    const stream = Buffer.concat([Buffer.from('a.txt\n.\n'), execFileSync('tar', ['-cz', '-C', tree, 'c.txt'])]);
    fs.writeFileSync(log, '');
    const steps: Array<[string, string[], Buffer?]> = [
      ['begin', [OWNER, '600', sha, '0', '30', '3600', '', '1']],
      ['link', [TOKEN, sha, base]],
      ['apply', [TOKEN, sha, base, 'gzip', '1'], stream],
      ['seal', [TOKEN, sha, 'abc123']],
    ];
    const perStep: Record<string, number> = {};
    let release = '';
    for (const [op, args, input] of steps) {
      const before = fs.readFileSync(log, 'utf8').split('\n').length;
      const a = agent(op, args, { env, input });
      expect([op, a.code]).toEqual([op, 0]);
      if (op === 'seal') release = one(a, 'release') as string;
      perStep[op] = fs.readFileSync(log, 'utf8').split('\n').length - before;
    }
    for (const [op, args] of [
      ['flip', [TOKEN, release]],
      ['probe', []],
      ['prune', [TOKEN, '3']],
      ['unlock', [TOKEN]],
    ] as Array<[string, string[]]>) {
      const before = fs.readFileSync(log, 'utf8').split('\n').length;
      expect([op, agent(op, args, { env }).code]).toEqual([op, 0]);
      perStep[op] = fs.readFileSync(log, 'utf8').split('\n').length - before;
    }
    // The deploy happened: the new release is live, with the change applied.
    expect(fs.readFileSync(path.join(root, 'app', '.sync_rev'), 'utf8')).toBe(`${sha}\n`);
    expect(fs.readFileSync(path.join(root, 'app', 'c.txt'), 'utf8')).toBe('c\n');
    expect(fs.existsSync(path.join(root, 'app', 'a.txt'))).toBe(false);
    const total = Object.values(perStep).reduce((a, b) => a + b, 0);
    // 92 when this was written: begin 22, link 9, apply 12, seal 17, flip 11, probe 10, prune 9, unlock 2.
    expect({ total, perStep }).toEqual({ total: Math.min(total, 100), perStep });
  });
});
