import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { main } from '../../src/cli.js';

/*
 * `vm-sync demo` with real sshd: it never deletes or reuses a directory it did
 * not make, it stops the fleet it started (and says exactly what it stopped),
 * and `demo vm stop|start` takes one VM down and back. Processes are checked
 * by scanning /proc here, independently of the code under test.
 */
let tmp: string;
const sleepers: ChildProcess[] = [];

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-demo-'));
});
afterAll(async () => {
  for (const dir of fs.readdirSync(tmp)) await run(['demo', 'stop', '--dir', path.join(tmp, dir)]);
  for (const child of sleepers) child.kill('SIGKILL');
  fs.rmSync(tmp, { recursive: true, force: true });
});

async function run(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const code = await main(args, { out: (t) => (stdout += t), err: (t) => (stderr += t) });
  return { code, stdout, stderr };
}

/** Live sshd processes whose command line names a path under `dir` (zombies excluded). */
function sshdUnder(dir: string): number[] {
  const found: number[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const exe = fs.readlinkSync(`/proc/${name}/exe`);
      const cmdline = fs.readFileSync(`/proc/${name}/cmdline`, 'utf8');
      const state = fs.readFileSync(`/proc/${name}/stat`, 'utf8').split(') ')[1]?.[0];
      if (path.basename(exe).startsWith('sshd') && cmdline.includes(`${dir}/`) && state !== 'Z') found.push(Number(name));
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

/** The listening sshd under `dir`: not the children a listener forks for each connection (they copy its title). */
function listenersUnder(dir: string): number[] {
  const all = sshdUnder(dir);
  return all.filter((pid) => {
    try {
      const ppid = Number(fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')[1]);
      return !all.includes(ppid);
    } catch {
      return false;
    }
  });
}

/** Every file under `dir` with its bytes (symlinks as their target). */
function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (rel: string): void => {
    const full = path.join(dir, rel);
    const stat = fs.lstatSync(full);
    if (stat.isSymbolicLink()) out[rel] = `-> ${fs.readlinkSync(full)}`;
    else if (stat.isDirectory()) for (const name of fs.readdirSync(full)) walk(path.join(rel, name));
    else out[rel] = fs.readFileSync(full, 'utf8');
  };
  walk('');
  return out;
}

function userFiles(dir: string): void {
  fs.mkdirSync(path.join(dir, 'vms'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'thesis.tex'), 'chapter one\n');
  // A name the demo itself uses: still not the demo's without its marker.
  fs.writeFileSync(path.join(dir, 'vms', 'inventory.txt'), 'my real servers\n');
}

describe('--dir: only a directory the demo made (or found empty) is used', () => {
  test.each([
    ['a non-empty directory without the marker', (dir: string) => userFiles(dir), /is not empty and has no \.vm-sync-demo-dir marker/],
    [
      'a marker copied from a real demo directory into a directory with files',
      (dir: string) => {
        userFiles(dir);
        fs.copyFileSync(path.join(tmp, 'adopted', '.vm-sync-demo-dir'), path.join(dir, '.vm-sync-demo-dir'));
      },
      /marker written for another directory/,
    ],
    [
      'a marker file with other content',
      (dir: string) => {
        userFiles(dir);
        fs.writeFileSync(path.join(dir, '.vm-sync-demo-dir'), 'vm-sync demo\n');
      },
      /is not the demo's marker/,
    ],
    [
      'a marker that is a directory',
      (dir: string) => {
        userFiles(dir);
        fs.mkdirSync(path.join(dir, '.vm-sync-demo-dir'));
      },
      /not the demo's marker file/,
    ],
  ])('refused (exit 2, nothing touched): %s', async (_name, prepare, why) => {
    // The first case needs a real demo directory to copy a marker from.
    if (!fs.existsSync(path.join(tmp, 'adopted'))) {
      fs.mkdirSync(path.join(tmp, 'adopted'));
      expect((await run(['demo', 'up', '--dir', path.join(tmp, 'adopted'), '--vms', '1'])).code).toBe(0);
    }
    const dir = fs.mkdtempSync(path.join(tmp, 'user-'));
    prepare(dir);
    const before = snapshot(dir);

    for (const args of [['demo', 'up', '--dir', dir], ['demo', '--dir', dir]]) {
      const result = await run(args);
      expect(result.code).toBe(2);
      expect(result.stderr).toMatch(why);
      expect(result.stderr).toContain('demo_dir_refused');
      expect(result.stderr).toContain('never deletes or reuses a directory it did not create');
    }
    expect(snapshot(dir)).toEqual(before);
    expect(sshdUnder(dir)).toEqual([]);
  });

  test('a symbolic link as --dir is refused, whether it points at an empty directory or at a demo directory', async () => {
    const empty = fs.mkdtempSync(path.join(tmp, 'target-'));
    for (const target of [empty, path.join(tmp, 'adopted')]) {
      const link = path.join(tmp, `link-${path.basename(target)}`);
      fs.symlinkSync(target, link);
      const before = snapshot(target);
      const result = await run(['demo', 'up', '--dir', link, '--vms', '1']);
      expect(result.code).toBe(2);
      expect(result.stderr).toContain('is a symbolic link');
      expect(snapshot(target)).toEqual(before);
      expect(fs.readlinkSync(link)).toBe(target);
    }
  });

  test('a file as --dir is refused and kept', async () => {
    const file = path.join(tmp, 'notes.txt');
    fs.writeFileSync(file, 'keep me\n');
    const result = await run(['demo', 'up', '--dir', file]);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('is not a directory');
    expect(fs.readFileSync(file, 'utf8')).toBe('keep me\n');
  });

  test('an existing empty directory is adopted and marked; a new path is created and marked', async () => {
    const empty = fs.mkdtempSync(path.join(tmp, 'empty-'));
    const fresh = path.join(tmp, 'parent', 'fresh');
    for (const dir of [empty, fresh]) {
      const up = await run(['demo', 'up', '--dir', dir, '--vms', '2']);
      expect(up.code).toBe(0);
      expect(fs.readFileSync(path.join(dir, '.vm-sync-demo-dir'), 'utf8')).toMatch(/^vm-sync demo directory \(format 1\)\ndirectory: \d+:\d+\n/);
      expect(listenersUnder(dir)).toHaveLength(2);
      expect((await run(['demo', 'stop', '--dir', dir])).stdout).toContain('2 running, 2 stopped: vm01, vm02');
    }
  });

  test('a demo directory is reused: the demo replaces its own entries and leaves the files it did not write', async () => {
    const dir = path.join(tmp, 'reused');
    expect((await run(['demo', 'up', '--dir', dir, '--vms', '1'])).code).toBe(0);
    const pubName = 'id_ed25519_vm01.pub';
    const publicKeyFile = path.join(dir, 'keys', pubName);
    const firstFleet = fs.readFileSync(publicKeyFile, 'utf8');
    fs.writeFileSync(path.join(dir, 'my-notes.md'), 'what I tried\n');
    fs.mkdirSync(path.join(dir, 'experiments'));
    fs.writeFileSync(path.join(dir, 'experiments', 'run.sh'), 'echo hi\n');

    const again = await run(['demo', 'up', '--dir', dir, '--vms', '1']);

    expect(again.code).toBe(0);
    expect(again.stderr).toContain("left alone in");
    expect(again.stderr).toContain("(not the demo's): experiments, my-notes.md");
    expect(fs.readFileSync(path.join(dir, 'my-notes.md'), 'utf8')).toBe('what I tried\n');
    expect(fs.readFileSync(path.join(dir, 'experiments', 'run.sh'), 'utf8')).toBe('echo hi\n');
    // A new fleet: new client keys.
    expect(fs.readFileSync(publicKeyFile, 'utf8')).not.toBe(firstFleet);
    expect((await run(['demo', 'stop', '--dir', dir])).code).toBe(0);
  });
});

test('the walk-through (vm-sync demo): vm02 down fails alone, vm01 and vm03 move on, then vm02 catches up; exit 0, no sshd left', async () => {
  const dir = path.join(tmp, 'walk');
  let out = '';
  const code = await main(['demo', '--dir', dir], { out: (t) => (out += t), err: () => undefined });
  expect(code).toBe(0);
  const steps = out.split('\n== ').slice(1);
  expect(steps).toHaveLength(3);
  expect(steps[1]).toMatch(/: 2 deployed, 1 failed$/m);
  expect(steps[1]).toMatch(/^vm02 .* failed \(unreachable\)/m);
  expect(steps[2]).toMatch(/: 1 deployed, 2 up to date$/m);
  const head = fs.readFileSync(path.join(dir, 'origin.git', 'refs', 'heads', 'main'), 'utf8');
  for (const id of ['vm01', 'vm02', 'vm03']) expect(fs.readFileSync(path.join(dir, 'vms', id, 'home', 'app', '.sync_rev'), 'utf8')).toBe(head);
  expect(sshdUnder(dir)).toEqual([]);
});

describe('stop says what it stopped', () => {
  test('up, up, stop: the second up stops the first fleet; stop leaves no sshd of the directory; a second stop says 0 running', async () => {
    const dir = path.join(tmp, 'twice');
    expect((await run(['demo', 'up', '--dir', dir])).code).toBe(0);
    const first = listenersUnder(dir);
    expect(first).toHaveLength(3);

    const second = await run(['demo', 'up', '--dir', dir]);

    expect(second.code).toBe(0);
    expect(second.stderr).toContain('stopped the fleet an earlier demo up left running: 3 running, 3 stopped: vm01, vm02, vm03');
    const now = listenersUnder(dir);
    expect(now).toHaveLength(3);
    for (const pid of first) expect(now).not.toContain(pid);

    // One VM down by hand first: stop counts only what was running.
    expect((await run(['demo', 'vm', 'stop', 'vm02', '--dir', dir])).stdout).toMatch(/^vm02: stopped \(port \d+ now refuses connections\)\n$/);
    const stop = await run(['demo', 'stop', '--dir', dir]);
    expect(stop.code).toBe(0);
    expect(stop.stdout).toBe(`2 running, 2 stopped: vm01, vm03; already down: vm02 (${dir})\n`);
    expect(sshdUnder(dir)).toEqual([]);

    const again = await run(['demo', 'stop', '--dir', dir]);
    expect(again.code).toBe(0);
    expect(again.stdout).toBe(`0 running: vm01, vm02, vm03 were already down (${dir})\n`);
  });

  test('a recorded pid that now belongs to another process is never signalled', async () => {
    const dir = path.join(tmp, 'recycled');
    expect((await run(['demo', 'up', '--dir', dir, '--vms', '1'])).code).toBe(0);
    expect((await run(['demo', 'stop', '--dir', dir])).code).toBe(0);
    // The kernel handed the pid to another program: a sleep stands in for it, named by every record the demo reads.
    const sleeper = spawn('sleep', ['300'], { stdio: 'ignore' });
    sleepers.push(sleeper);
    const pid = sleeper.pid as number;
    const start = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')[19];
    const boot = fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    fs.writeFileSync(path.join(dir, 'vms', 'vm01', 'sshd.pid'), `${pid}\n`);
    for (const record of [{ pid, start: String(Number(start) - 1), boot }, { pid, start, boot }]) {
      fs.writeFileSync(path.join(dir, 'vms', 'vm01', 'sshd.process.json'), JSON.stringify(record));
      const stop = await run(['demo', 'stop', '--dir', dir]);
      expect(stop.stdout).toBe(`0 running: vm01 was already down (${dir})\n`);
      expect((await run(['demo', 'vm', 'stop', 'vm01', '--dir', dir])).stdout).toBe('vm01: already down (0 running)\n');
      expect(sleeper.exitCode).toBeNull();
      expect(fs.existsSync(`/proc/${pid}`)).toBe(true);
    }
    sleeper.kill('SIGKILL');
  });
});

describe('demo vm stop|start', () => {
  test('stop vm02: status shows vm02 unreachable and the others fine; start: every VM ok, with the same port and host key', async () => {
    const dir = path.join(tmp, 'one-down');
    expect((await run(['demo', 'up', '--dir', dir])).code).toBe(0);
    const config = path.join(dir, 'vm-sync.yml');
    expect((await run(['sync', '--config', config])).code).toBe(0);
    const port = /vm02: \{[^}]*ssh_port: (\d+)/.exec(fs.readFileSync(config, 'utf8'))?.[1];

    const down = await run(['demo', 'vm', 'stop', 'vm02', '--dir', dir]);
    expect(down).toMatchObject({ code: 0, stdout: `vm02: stopped (port ${port} now refuses connections)\n` });
    const status = await run(['status', '--config', config, '--json']);
    expect(status.code).toBe(1);
    const rows = JSON.parse(status.stdout).vms as Array<{ id: string; result: string; error: { code: string } | null }>;
    expect(rows.map((r) => [r.id, r.result, r.error?.code ?? null])).toEqual([
      ['vm01', 'success', null],
      ['vm02', 'failed', 'unreachable'],
      ['vm03', 'success', null],
    ]);

    const up = await run(['demo', 'vm', 'start', 'vm02', '--dir', dir]);
    expect(up).toMatchObject({ code: 0, stdout: `vm02: started on 127.0.0.1:${port} (same host key: known_hosts still matches)\n` });
    // Started twice: still one listening sshd for vm02 (connection children come and go).
    expect((await run(['demo', 'vm', 'start', 'vm02', '--dir', dir])).stdout).toBe(`vm02: already running on 127.0.0.1:${port}\n`);
    expect(listenersUnder(path.join(dir, 'vms', 'vm02'))).toHaveLength(1);
    const healed = await run(['status', '--config', config, '--json']);
    expect(healed.code).toBe(0);
    expect((JSON.parse(healed.stdout).vms as Array<{ result: string }>).map((r) => r.result)).toEqual(['success', 'success', 'success']);
  });

  test.each([
    [['demo', 'vm', 'stop', 'vm09'], /no VM 'vm09' in the demo fleet \(it has vm01, vm02, vm03\)/],
    [['demo', 'vm', 'reboot', 'vm01'], /usage: vm-sync demo vm stop\|start ID/],
    [['demo', 'vm', 'stop'], /usage: vm-sync demo vm stop\|start ID/],
  ])('%j: exit 2 with what to do', async (args, message) => {
    const result = await run([...args, '--dir', path.join(tmp, 'one-down')]);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(message);
  });

  test('demo vm on a directory without a fleet: exit 2', async () => {
    const result = await run(['demo', 'vm', 'start', 'vm01', '--dir', path.join(tmp, 'nothing-here')]);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('no demo fleet in');
  });
});
