import fs from 'node:fs';
import path from 'node:path';
import { loadConfig } from '../config/load.js';
import { renderTable } from '../report/table.js';
import { runSync } from '../sync/fleet.js';
import type { EngineEvents } from '../sync/types.js';
import { locateGitleaks } from '../scan/gitleaks.js';
import { createFleet, fleetConfigYaml, readFleet, startVm, stopFleet, stopVm, type Fleet } from './fleet.js';
import { GitWorkspace, seedDemoApp } from './workspace.js';

/** Where the demo keeps its fleet, repositories and config. */
export const DEFAULT_DEMO_DIR = '.vm-sync-demo';

/**
 * `vm-sync demo`: a complete local walk-through on three loopback sshd VMs.
 * 1. starts the fleet and a sample repository (the "GitHub" remote);
 * 2. syncs it to all three VMs and prints the table;
 * 3. pushes a new commit, stops vm02's sshd, syncs again: vm02 fails with a
 *    clear error while vm01 and vm03 move to the new commit;
 * 4. brings vm02 back and syncs once more: it catches up, the others have nothing to do.
 * With `keep`, the fleet stays up for experiments (`vm-sync demo stop` ends it).
 */
/** A demo fleet with its sample repository and config, ready to sync. */
export interface DemoSetup {
  fleet: Fleet;
  ws: GitWorkspace;
  configPath: string;
  /** Set when the demo had to leave something out (no gitleaks). */
  warning: string | null;
}

/**
 * `vm-sync demo up`: starts `count` loopback VMs (vm01, vm02, ...) under `dir`,
 * creates the sample repository (the "GitHub" remote) and writes a config for
 * them. The fleet keeps running until `vm-sync demo stop`.
 */
export async function setupDemo(dir: string, count: number): Promise<DemoSetup> {
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  const absolute = path.resolve(dir);
  const ids = Array.from({ length: count }, (_, i) => `vm${String(i + 1).padStart(2, '0')}`);
  const fleet = await createFleet({ dir: absolute, ids });
  const ws = new GitWorkspace(absolute);
  seedDemoApp(ws);
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
  fs.writeFileSync(configPath, fleetConfigYaml(fleet, { mainRepoPath: path.join(absolute, 'runner', 'app'), url: ws.origin }, { sync: ['retries: 1'], repository }));
  return { fleet, ws, configPath, warning };
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
  const { fleet, ws, configPath, warning } = await setupDemo(dir, 3);
  if (warning) events.info(null, `WARNING: ${warning}`);
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

/** `vm-sync demo stop`: stops a fleet left running with `--keep`. */
export function stopDemo(dir: string): Fleet {
  const fleet = readFleet(path.resolve(dir));
  stopFleet(fleet);
  return fleet;
}
