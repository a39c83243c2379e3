import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { main } from '../../src/cli.js';
import { createFleet, fleetConfigYaml, stopFleet, type Fleet, type FleetVm } from '../../src/demo/fleet.js';
import { GitWorkspace } from '../../src/demo/workspace.js';
import type { RunReport } from '../../src/sync/types.js';

/** What one CLI invocation left: exit code, stdout, stderr and the parsed JSON document if any. */
export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
  json: RunReport & { error?: { code: string; message: string } };
}

/**
 * A test world: a loopback sshd fleet, a git origin with a working clone, and
 * a config file. Everything is real (sshd, rsync, git); only the directory is
 * temporary.
 */
export class World {
  readonly dir: string;
  readonly ws: GitWorkspace;
  readonly configPath: string;
  readonly runnerRepo: string;

  private constructor(
    dir: string,
    readonly fleet: Fleet,
  ) {
    this.dir = dir;
    this.ws = new GitWorkspace(dir);
    this.configPath = path.join(dir, 'vm-sync.yml');
    this.runnerRepo = path.join(dir, 'runner', 'app');
  }

  static async create(ids: string[], options: { sshdExtra?: Record<string, string[]> } = {}): Promise<World> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-it-'));
    const fleet = await createFleet({ dir, ids, sshdExtra: options.sshdExtra });
    const world = new World(dir, fleet);
    world.writeConfig();
    return world;
  }

  writeConfig(extra: { sync?: string[]; repository?: string[]; rollout?: string[] } = {}): void {
    const sync = ['retries: 1', ...(extra.sync ?? [])];
    fs.writeFileSync(this.configPath, fleetConfigYaml(this.fleet, { mainRepoPath: this.runnerRepo, url: this.ws.origin }, { ...extra, sync }));
  }

  vm(id: string): FleetVm {
    const vm = this.fleet.vms.find((v) => v.id === id);
    if (!vm) throw new Error(`no VM ${id}`);
    return vm;
  }

  /** The deploy target on a VM (`~/app` of its home). */
  target(id: string): string {
    return path.join(this.vm(id).home, 'app');
  }

  sentinel(id: string): string | null {
    try {
      return fs.readFileSync(path.join(this.target(id), '.sync_rev'), 'utf8');
    } catch {
      return null;
    }
  }

  /** Runs the CLI in-process with captured output; adds `--config` and `--json` unless told not to. */
  async cli(args: string[], options: { json?: boolean; config?: boolean; signal?: AbortSignal } = {}): Promise<CliRun> {
    let stdout = '';
    let stderr = '';
    const full = [...args, ...(options.config === false ? [] : ['--config', this.configPath]), ...(options.json === false ? [] : ['--json'])];
    const code = await main(full, { out: (t) => (stdout += t), err: (t) => (stderr += t) }, options.signal);
    let json = {} as CliRun['json'];
    if (options.json !== false) json = JSON.parse(stdout);
    return { code, stdout, stderr, json };
  }

  /** Stops every sshd and removes the world. */
  destroy(): void {
    stopFleet(this.fleet);
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** One entry of a tree snapshot: type, permission bits and content hash or link target. */
export type TreeEntry = string;

/**
 * A comparable picture of a directory tree: every path with its type, mode
 * and content (sha256) or symlink target. `.sync_rev` is left out (it is
 * vm-sync's, not the repository's).
 */
export function snapshotTree(root: string): Record<string, TreeEntry> {
  const out: Record<string, TreeEntry> = {};
  const walk = (dir: string, rel: string): void => {
    for (const name of fs.readdirSync(dir).sort()) {
      const full = path.join(dir, name);
      const relPath = rel ? `${rel}/${name}` : name;
      if (relPath === '.sync_rev') continue;
      const stat = fs.lstatSync(full);
      const mode = (stat.mode & 0o777).toString(8);
      if (stat.isSymbolicLink()) out[relPath] = `link -> ${fs.readlinkSync(full)}`;
      else if (stat.isDirectory()) {
        out[relPath] = `dir ${mode}`;
        walk(full, relPath);
      } else out[relPath] = `file ${mode} ${crypto.createHash('sha256').update(fs.readFileSync(full)).digest('hex')}`;
    }
  };
  walk(root, '');
  return out;
}

/**
 * The tree a commit should produce, read independently of vm-sync's export
 * path: `git ls-tree -r -t -z` for paths and modes, `git cat-file` for bytes.
 */
export function expectedTree(ws: GitWorkspace, sha: string): Record<string, TreeEntry> {
  const out: Record<string, TreeEntry> = {};
  const listing = execFileSync('git', ['-C', ws.origin, 'ls-tree', '-r', '-t', '-z', sha], { encoding: 'utf8' });
  for (const record of listing.split('\0').filter(Boolean)) {
    const [meta, name] = record.split('\t');
    const [mode, type, object] = meta.split(' ');
    if (type === 'tree') out[name] = 'dir 755';
    else if (mode === '120000') out[name] = `link -> ${execFileSync('git', ['-C', ws.origin, 'cat-file', 'blob', object], { encoding: 'utf8' })}`;
    else {
      const bytes = execFileSync('git', ['-C', ws.origin, 'cat-file', 'blob', object], { maxBuffer: 1 << 30 });
      out[name] = `file ${mode === '100755' ? '755' : '644'} ${crypto.createHash('sha256').update(bytes).digest('hex')}`;
    }
  }
  return Object.fromEntries(Object.entries(out).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

/** Runs `fn` with the runner-host clone wait (VM_SYNC_CLONE_WAIT_S) set to `seconds`. */
export async function withCloneWait<T>(seconds: string, fn: () => Promise<T>): Promise<T> {
  process.env.VM_SYNC_CLONE_WAIT_S = seconds;
  try {
    return await fn();
  } finally {
    delete process.env.VM_SYNC_CLONE_WAIT_S;
  }
}
