import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { FleetVm } from '../../src/demo/fleet.js';
import type { FileChange } from '../../src/demo/workspace.js';
import type { VmReport } from '../../src/sync/types.js';
import type { CliRun, World } from './world.js';

/*
 * Helpers for the remote-hardening integration tests: processes a VM's sshd
 * started, wrapper programs that make one VM's `mv`/`mkdir`/`ln` slow on
 * demand, full snapshots of directories outside the deploy target.
 */

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `check` every 50 ms until it is truthy or `ms` pass; returns its last value. */
export async function waitFor<T>(check: () => T, ms: number): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = check();
    if (value || Date.now() > deadline) return value;
    await sleep(50);
  }
}

/** A process on this machine: pid and command line. */
export interface Proc {
  pid: number;
  cmd: string;
}

/**
 * Every process that runs on behalf of one loopback VM: the fleet's sshd sets
 * `HOME=<vm.home>` for SSH sessions, so the VM user's shell and everything it
 * starts (agent operations, rsync, post_sync_command, wrapper sleeps) carry it.
 */
export function vmProcesses(vm: FleetVm): Proc[] {
  const marker = `HOME=${vm.home}\0`;
  const found: Proc[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    if (pid === process.pid) continue;
    try {
      const environ = fs.readFileSync(`/proc/${pid}/environ`, 'latin1');
      if (!`${environ}\0`.includes(marker)) continue;
      const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'latin1').replace(/\0/g, ' ').replace(/\s+/g, ' ').trim().slice(0, 160);
      if (cmd === '') continue; // a zombie
      found.push({ pid, cmd });
    } catch {
      // gone meanwhile, or a kernel thread
    }
  }
  return found;
}

/** Waits up to `ms` for a VM to have no process left; returns what is still running. */
export async function waitNoVmProcesses(vm: FleetVm, ms: number): Promise<Proc[]> {
  const deadline = Date.now() + ms;
  for (;;) {
    const left = vmProcesses(vm);
    if (left.length === 0 || Date.now() > deadline) return left;
    await sleep(100);
  }
}

/** Kills (SIGKILL, by pid) whatever still runs for the world's VMs: the tests' own leftovers. */
export function killVmProcesses(world: World): void {
  for (const vm of world.fleet.vms) {
    for (const proc of vmProcesses(vm)) {
      try {
        process.kill(proc.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
}

/** A readers-free FIFO blocks nothing once a writer opens and closes it: frees a reader stuck on it. */
export function releaseFifo(fifo: string): void {
  try {
    const fd = fs.openSync(fifo, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
    fs.closeSync(fd);
  } catch {
    // no reader (ENXIO) or gone
  }
}

/** Tears a world down: its VMs' leftover processes, then sshd and the directory. */
export function destroyWorld(world: World | undefined): void {
  if (!world) return;
  killVmProcesses(world);
  world.destroy();
}

/**
 * A PATH directory for one VM whose `programs` (mv, mkdir, ln) are wrappers:
 * normally they exec the real program; when the flag file is armed
 * ({@link armSlow}) the first call that matches takes it (with an atomic
 * rename, so exactly one call does) and first sleeps, or waits for a gate.
 * Every sleep runs as `<dir>/slowsleep`, a link to sleep(1).
 */
export function slowBin(parent: string, programs: string[]): string {
  const dir = path.join(parent, `slowbin-${crypto.randomBytes(3).toString('hex')}`);
  fs.mkdirSync(dir, { recursive: true });
  const real = (name: string): string => {
    for (const d of ['/usr/bin', '/bin']) if (fs.existsSync(path.join(d, name))) return path.join(d, name);
    throw new Error(`no ${name}`);
  };
  fs.symlinkSync(real('sleep'), path.join(dir, 'slowsleep'));
  const mv = real('mv');
  const sed = real('sed');
  const touch = real('touch');
  for (const program of programs) {
    fs.writeFileSync(
      path.join(dir, program),
      [
        '#!/bin/sh',
        `d='${dir}'`,
        'if [ -e "$d/slow" ]; then',
        `  match=$(${sed} -n 2p "$d/slow" 2>/dev/null)`,
        '  ok=1',
        '  if [ -n "$match" ]; then ok=0; for a in "$@"; do [ "$a" = "$match" ] && ok=1; done; fi',
        `  if [ "$ok" = 1 ] && ${mv} "$d/slow" "$d/taken.$$" 2>/dev/null; then`,
        `    how=$(${sed} -n 1p "$d/taken.$$")`,
        `    printf '%s %s\\n' "${program}" "$*" > "$d/fired"`,
        '    case $how in',
        '      gate\\ *)',
        '        i=0',
        '        while [ ! -e "$d/go" ] && [ "$i" -lt "${how#gate }" ]; do "$d/slowsleep" 0.1; i=$((i + 1)); done ;;',
        '      *) "$d/slowsleep" "$how" ;;',
        '    esac',
        `    ${touch} "$d/woke"`,
        '  fi',
        'fi',
        `exec ${real(program)} "$@"`,
        '',
      ].join('\n'),
      { mode: 0o755 },
    );
  }
  return dir;
}

/**
 * Arms a {@link slowBin}: the next wrapped call (whose arguments include
 * `match`, when given) sleeps `how` seconds (`'8'`) or waits for {@link openGate}
 * up to N tenths of a second (`'gate 200'`).
 */
export function armSlow(dir: string, how: string, match = ''): void {
  closeGate(dir);
  fs.writeFileSync(path.join(dir, 'slow.new'), `${how}\n${match}\n`);
  fs.renameSync(path.join(dir, 'slow.new'), path.join(dir, 'slow'));
}

/** Forgets an earlier firing and closes the gate, for a wrapper armed by other means than armSlow. */
export function closeGate(dir: string): void {
  for (const f of ['fired', 'woke', 'go']) fs.rmSync(path.join(dir, f), { force: true });
}

export function openGate(dir: string): void {
  fs.writeFileSync(path.join(dir, 'go'), '');
}

/** What the armed wrapper was called with, once it fired; null before. */
export function slowFired(dir: string): string | null {
  try {
    return fs.readFileSync(path.join(dir, 'fired'), 'utf8').trim();
  } catch {
    return null;
  }
}

export function disarm(dir: string): void {
  fs.rmSync(path.join(dir, 'slow'), { force: true });
  openGate(dir);
}

/**
 * Everything under `root` without following any symlink: type, mode, owner
 * and content hash or link target. Used on directories vm-sync must not touch.
 */
export function snapshotAll(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  const describe = (full: string): string => {
    const st = fs.lstatSync(full);
    const meta = `${(st.mode & 0o7777).toString(8)} ${st.uid}:${st.gid}`;
    if (st.isSymbolicLink()) return `link -> ${fs.readlinkSync(full)}`;
    if (st.isDirectory()) return `dir ${meta}`;
    if (st.isFile()) return `file ${meta} ${crypto.createHash('sha256').update(fs.readFileSync(full)).digest('hex')}`;
    return `special ${meta}`;
  };
  const walk = (dir: string, rel: string): void => {
    for (const name of fs.readdirSync(dir).sort()) {
      const full = path.join(dir, name);
      const relPath = rel ? `${rel}/${name}` : name;
      out[relPath] = describe(full);
      if (out[relPath].startsWith('dir ')) walk(full, relPath);
    }
  };
  out['.'] = describe(root);
  if (out['.'].startsWith('dir ')) walk(root, '');
  return out;
}

/**
 * The live sentinel as a user checks it: `lstat` of `<target>/.sync_rev`
 * (through the target symlink of an atomic layout, never through a symlink at
 * `.sync_rev` itself). `kind` is file/symlink/dir/other/absent.
 */
export function liveSentinel(world: World, id: string): { kind: string; text: string | null } {
  const file = path.join(world.target(id), '.sync_rev');
  let st: fs.Stats;
  try {
    st = fs.lstatSync(file);
  } catch {
    return { kind: 'absent', text: null };
  }
  if (st.isSymbolicLink()) return { kind: 'symlink', text: null };
  if (st.isDirectory()) return { kind: 'dir', text: null };
  if (!st.isFile()) return { kind: 'other', text: null };
  return { kind: 'file', text: fs.readFileSync(file, 'utf8') };
}

/** The commit a VM serves: the 40-hex first line of a regular live `.sync_rev`, else null. */
export function liveRev(world: World, id: string): string | null {
  const { kind, text } = liveSentinel(world, id);
  if (kind !== 'file' || text === null) return null;
  const m = /^([0-9a-f]{40})\n$/.exec(text);
  return m ? m[1] : null;
}

export function rows(run: CliRun): Record<string, VmReport> {
  return Object.fromEntries((run.json.vms ?? []).map((vm) => [vm.id, vm]));
}

/** The state directory vm-sync keeps beside `~/app` on a VM. */
export function stateDir(world: World, id: string): string {
  return path.join(world.vm(id).home, '.app.vm-sync');
}

export function lockPath(world: World, id: string): string {
  return path.join(stateDir(world, id), 'lock');
}

export function lockExists(world: World, id: string): boolean {
  try {
    fs.lstatSync(lockPath(world, id));
    return true;
  } catch {
    return false;
  }
}

/** Every rev a report row carries is a 40-hex sha or null. */
export function expectRevShapes(row: VmReport): void {
  for (const rev of [row.rev_before, row.rev_after]) {
    if (rev !== null && !/^[0-9a-f]{40}$/.test(rev)) throw new Error(`${row.id}: rev ${JSON.stringify(rev).slice(0, 80)} is neither a 40-hex sha nor null`);
  }
}

/** The text-escape character; it must never reach what vm-sync prints. */
export const ESC = '\u001b';

/** The lock module of the new code (src/remote/lock.ts), loaded at run time so a file using it still compiles on older code. */
export interface LockModule {
  encodeLockOwner(owner: { token: string; host: string; pid: number; pidStart: string; boot?: string; pidns?: string; commit: string; run: string; deadline?: number }): string;
  runnerHostId(): string;
  processStart(pid: number): string;
  /** Since 0f2c8df: a record names the runner's boot and pid namespace too. */
  bootId?(): string;
  pidNamespace?(): string;
}

export async function loadLockModule(): Promise<LockModule> {
  const specifier = ['..', '..', 'src', 'remote', 'lock.js'].join('/');
  return (await import(specifier)) as LockModule;
}

/** Commits a tree that holds exactly `files` (everything else in the work tree removed), pushes it, returns the sha. */
export function commitExactly(world: World, files: Record<string, FileChange>, message: string): string {
  for (const name of fs.readdirSync(world.ws.work)) {
    if (name !== '.git') fs.rmSync(path.join(world.ws.work, name), { recursive: true, force: true });
  }
  const sha = world.ws.commit(files, message);
  world.ws.push();
  return sha;
}

/**
 * The rollout of the hardening tests: each VM's fault is its own, and the
 * healthy VMs flip whatever the others do. (By default, max_failed: 0, one
 * failed VM holds the flip back for the fleet: fleet-rollout.test.ts.)
 */
export const ISOLATED_ROLLOUT = ['max_failed: "100%"'];

/** Writes the world's config; `timeoutS` replaces the fleet default `sync.timeout_s` (a second key would be a YAML error). */
export function configure(world: World, extra: { sync?: string[]; repository?: string[]; rollout?: string[]; timeoutS?: number } = {}): void {
  world.writeConfig({ sync: extra.sync, repository: extra.repository, rollout: extra.rollout ?? ISOLATED_ROLLOUT });
  if (extra.timeoutS !== undefined) {
    const text = fs.readFileSync(world.configPath, 'utf8');
    if (!/^ {2}timeout_s: \d+$/m.test(text)) throw new Error('config has no sync.timeout_s line to replace');
    fs.writeFileSync(world.configPath, text.replace(/^ {2}timeout_s: \d+$/m, `  timeout_s: ${extra.timeoutS}`));
  }
}

/** When the armed wrapper started its wait (epoch ms), or null before it fired. */
export function slowFiredAt(dir: string): number | null {
  try {
    return fs.statSync(path.join(dir, 'fired')).mtimeMs;
  } catch {
    return null;
  }
}
