import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { loadConfig } from '../config/load.js';
import { renderTable } from '../report/table.js';
import { runSync } from '../sync/fleet.js';
import type { EngineEvents } from '../sync/types.js';
import { locateGitleaks } from '../scan/gitleaks.js';
import { getErrorMessage, VmSyncError } from '../errors.js';
import { terminalLine } from '../report/escape.js';
import { claimDemoDir, inspectDemoDir } from './demo-dir.js';
import { createFleet, fleetConfigYaml, fleetDirProblem, startVm, stopFleet, stopVm, vmProcesses, type Fleet, type FleetVm, type VmStopResult } from './fleet.js';
import { GitWorkspace, seedDemoApp } from './workspace.js';

/** Where the demo keeps its fleet, repositories and config. */
export const DEFAULT_DEMO_DIR = '.vm-sync-demo';

/** A demo fleet with its sample repository and config, ready to sync. */
export interface DemoSetup {
  fleet: Fleet;
  /** The sample repository; null when the config deploys a repository of the user's (`--repo`). */
  ws: GitWorkspace | null;
  configPath: string;
  /** Set when the demo had to leave something out (no gitleaks). */
  warning: string | null;
  /** What `up` stopped first: the fleet an earlier `up` left running in the same directory. */
  previous: FleetStop | null;
  /** Entries of the directory the demo did not write: left as they were. */
  kept: string[];
}

/** The repository a demo config deploys instead of the sample app: its path and the branch checked out there. */
function userRepository(repo: string): { url: string; branch: string } {
  const git = (args: string[]) => spawnSync('git', ['-C', repo, ...args], { encoding: 'utf8' });
  const top = git(['rev-parse', '--show-toplevel']);
  if (top.status !== 0) throw new VmSyncError('config_invalid', `--repo ${terminalLine(repo, 300)} is not a git repository: give the path of a clone (for act: the clone you run act in, --repo .).`);
  const branch = git(['symbolic-ref', '--quiet', '--short', 'HEAD']);
  if (branch.status !== 0) throw new VmSyncError('config_invalid', `--repo ${terminalLine(repo, 300)} has no branch checked out (detached HEAD): check out the branch to deploy, then run demo up again.`);
  return { url: top.stdout.trim(), branch: branch.stdout.trim() };
}

/**
 * `vm-sync demo up`: starts `count` loopback VMs (vm01, vm02, ...) under `dir`,
 * creates the sample repository (the "GitHub" remote) and writes a config for
 * them. With `repo`, the config deploys that repository (its checked-out
 * branch) instead, and no sample is made. The fleet keeps running until
 * `vm-sync demo stop`.
 *
 * `dir` must be new, empty, or a directory an earlier `demo up` made (its
 * marker, see demo-dir.ts); anything else is refused before anything changes.
 * A fleet still running there is stopped first.
 */
export async function setupDemo(dir: string, count: number, options: { repo?: string } = {}): Promise<DemoSetup> {
  // Refuse before changing anything: a bad --dir or --repo leaves every file and process as it was.
  const state = inspectDemoDir(dir);
  const dirProblem = fleetDirProblem(dir);
  if (dirProblem) throw new VmSyncError('demo_dir_refused', `${terminalLine(dir, 300)}: ${dirProblem}. Give --dir a plainer path.`);
  const user = options.repo === undefined ? null : userRepository(options.repo);
  const previous = state.kind === 'demo' ? stopDemo(dir) : null;
  if (previous && previous.vms.some((vm) => vm.problems.length > 0)) {
    throw new VmSyncError('demo_dir_refused', `the fleet running in ${terminalLine(dir, 300)} could not be stopped (${describeStop(previous)}): stop those sshd processes, then run demo up again.`);
  }
  const { dir: absolute, kept } = claimDemoDir(dir);
  const ids = Array.from({ length: count }, (_, i) => `vm${String(i + 1).padStart(2, '0')}`);
  const fleet = await createFleet({ dir: absolute, ids });
  let ws: GitWorkspace | null = null;
  if (!user) {
    ws = new GitWorkspace(absolute);
    seedDemoApp(ws);
  }
  const configPath = path.join(absolute, 'vm-sync.yml');
  const repository: string[] = [];
  let warning: string | null = null;
  try {
    locateGitleaks(null);
  } catch {
    // The demo still shows the deploy; a real config keeps the gate on and fails without gitleaks.
    repository.push('secret_scanning: { enabled: false }');
    warning = 'gitleaks is not installed: this demo config runs WITHOUT the secret-scan gate (install gitleaks v8.30.x to see it).';
  }
  // The demo shows one VM down without holding back the others (the default, 0, halts the rollout on any failure).
  const source = user ? { url: user.url, branch: user.branch } : { url: (ws as GitWorkspace).origin, branch: 'main' };
  fs.writeFileSync(configPath, fleetConfigYaml(fleet, { mainRepoPath: path.join(absolute, 'runner', 'app'), url: source.url, branch: source.branch }, { sync: ['retries: 1'], repository, rollout: ['max_failed: 1'] }));
  return { fleet, ws, configPath, warning, previous, kept };
}

/**
 * `vm-sync demo`: a complete local walk-through on three loopback sshd VMs.
 * 1. starts the fleet and a sample repository (the "GitHub" remote);
 * 2. syncs it to all three VMs and prints the table;
 * 3. pushes a new commit, stops vm02's sshd, syncs again: vm02 fails with a
 *    clear error while vm01 and vm03 move to the new commit;
 * 4. brings vm02 back and syncs once more: it catches up, the others have nothing to do.
 * With `keep`, the fleet stays up for experiments (`vm-sync demo stop` ends it).
 */
export async function runDemo(dir: string, keep: boolean, events: EngineEvents, print: (text: string) => void): Promise<number> {
  const { fleet, ws: sample, configPath, warning, previous, kept } = await setupDemo(dir, 3);
  const ws = sample as GitWorkspace;
  if (warning) events.info(null, `WARNING: ${warning}`);
  if (previous?.vms.some((vm) => vm.running > 0)) events.info(null, `the fleet an earlier demo left in ${fleet.dir}: ${describeStop(previous)}`);
  if (kept.length > 0) events.info(null, `left alone in ${fleet.dir} (not the demo's): ${kept.join(', ')}`);
  try {
    const config = loadConfig(configPath);
    const step = async (title: string): Promise<number> => {
      print(`\n== ${title}\n`);
      const report = await runSync(config, { events, retryBaseMs: 200 });
      print(renderTable(report));
      return report.vms.filter((vm) => vm.result !== 'success').length;
    };

    print(`Loopback fleet: ${fleet.vms.map((vm) => `${vm.id} on 127.0.0.1:${vm.port}`).join(', ')}\nConfig: ${configPath}\n`);
    await step('1. first deploy of the demo app to three VMs');

    ws.commit({ 'app/server.py': 'print("hello from version 2")\n', 'app/settings.json': '{ "version": 2 }\n' }, 'demo app v2');
    ws.push();
    stopVm(fleet.vms[1]);
    const failures = await step('2. vm02 is down (its sshd stopped); deploy v2 anyway');

    await startVm(fleet.vms[1]);
    await step('3. vm02 is back; the same sync catches it up');

    print(
      `\nThe deployed tree of vm01 is ${path.join(fleet.vms[0].home, 'app')} (a symlink to the live release).\n` +
        (keep
          ? `The fleet is still running. Try:\n  node dist/cli.js status --config ${configPath}\n  node dist/cli.js demo stop --dir ${dir}\n`
          : 'Run with --keep to leave the fleet running and try the commands yourself.\n'),
    );
    return failures === 1 ? 0 : 1;
  } finally {
    if (!keep) stopFleet(fleet);
  }
}

/** What stopping a demo fleet did, VM by VM. */
export interface FleetStop {
  dir: string;
  vms: VmStopResult[];
}

/** The VMs of the demo fleet in `dir`, from the layout on disk (each `vms/<id>/sshd_config`), in id order. */
function vmsOnDisk(dir: string): FleetVm[] {
  const absolute = path.resolve(dir);
  const vmsDir = path.join(absolute, 'vms');
  let ids: string[];
  try {
    ids = fs.readdirSync(vmsDir).filter((id) => /^[A-Za-z0-9._-]{1,64}$/.test(id) && fs.existsSync(path.join(vmsDir, id, 'sshd_config')));
  } catch {
    return [];
  }
  return ids.sort().map((id) => {
    const vmDir = path.join(vmsDir, id);
    const port = Number(/^Port (\d+)$/m.exec(fs.readFileSync(path.join(vmDir, 'sshd_config'), 'utf8'))?.[1] ?? 0);
    return { id, port, dir: vmDir, home: path.join(vmDir, 'home'), log: path.join(vmDir, 'sshd.log'), pidFile: path.join(vmDir, 'sshd.pid') };
  });
}

/**
 * `vm-sync demo stop`: stops the fleet in `dir` and says what was stopped.
 * Only sshd processes of this fleet that were running and are gone afterwards
 * count (see stopVm); a VM already down is reported as such.
 */
export function stopDemo(dir: string): FleetStop {
  return { dir: path.resolve(dir), vms: vmsOnDisk(dir).map(stopVm) };
}

/** One line for a {@link FleetStop}: "2 running, 2 stopped: vm01, vm03; already down: vm02". */
export function describeStop(stop: FleetStop): string {
  const running = stop.vms.filter((vm) => vm.running > 0);
  const stopped = running.filter((vm) => vm.stopped === vm.running);
  const down = stop.vms.filter((vm) => vm.running === 0);
  const failed = running.filter((vm) => vm.problems.length > 0);
  const parts: string[] = [];
  // "running" and "stopped" count VMs: a VM counts as stopped when every sshd process of it that ran is gone
  // (its listener, and any connection child or stray sshd started with its config).
  if (stop.vms.length === 0) return '0 running: no demo fleet there';
  if (running.length === 0) return `0 running: ${down.map((vm) => vm.id).join(', ')} ${down.length === 1 ? 'was' : 'were'} already down`;
  parts.push(`${running.length} running, ${stopped.length} stopped${stopped.length ? `: ${stopped.map((vm) => vm.id).join(', ')}` : ''}`);
  if (down.length) parts.push(`already down: ${down.map((vm) => vm.id).join(', ')}`);
  for (const vm of failed) parts.push(`could not stop ${vm.id}: ${vm.problems.join('; ')}`);
  return parts.join('; ');
}

/** What `demo vm start|stop ID` did, in one line. */
export interface DemoVmResult {
  ok: boolean;
  message: string;
}

/**
 * `vm-sync demo vm stop|start ID`: takes one VM of the fleet in `dir` down by
 * stopping its sshd, or brings it back with the same config: the same port and
 * host key, so the pinned known_hosts still matches.
 */
export async function demoVm(dir: string, action: 'stop' | 'start', id: string): Promise<DemoVmResult> {
  const vms = vmsOnDisk(dir);
  if (vms.length === 0) throw new VmSyncError('config_invalid', `no demo fleet in ${terminalLine(path.resolve(dir), 300)}: start one with vm-sync demo up${dir === DEFAULT_DEMO_DIR ? '' : ' --dir DIR'}.`);
  const vm = vms.find((v) => v.id === id);
  if (!vm) throw new VmSyncError('config_invalid', `no VM '${terminalLine(id, 64)}' in the demo fleet (it has ${vms.map((v) => v.id).join(', ')}).`);
  if (action === 'stop') {
    const result = stopVm(vm);
    if (result.problems.length > 0) return { ok: false, message: `${vm.id}: could not stop it: ${result.problems.join('; ')}` };
    return { ok: true, message: result.running === 0 ? `${vm.id}: already down (0 running)` : `${vm.id}: stopped (port ${vm.port} now refuses connections)` };
  }
  if (vmProcesses(vm).length > 0) return { ok: true, message: `${vm.id}: already running on 127.0.0.1:${vm.port}` };
  try {
    await startVm(vm);
  } catch (error) {
    throw new VmSyncError('unreachable', `${vm.id} did not start on 127.0.0.1:${vm.port}: ${getErrorMessage(error)}. If another program took the port, stop it, or run demo up again for a new fleet.`);
  }
  return { ok: true, message: `${vm.id}: started on 127.0.0.1:${vm.port} (same host key: known_hosts still matches)` };
}
