import fs from 'node:fs';
import path from 'node:path';
import { main } from '../../src/cli.js';
import { fleetConfigYaml } from '../../src/demo/fleet.js';
import type { LockRow } from '../../src/sync/locks.js';
import type { RunReport, VmReport } from '../../src/sync/types.js';
import { stateDir } from './hardening.js';
import type { CliRun, World } from './world.js';

/*
 * Helpers for the fleet-release integration tests (contract 9: phases,
 * rolling/all-at-once rollout, health gate, rollback, shared paths, locks).
 */

/** One `vms[]` row of a run's JSON document. */
export type FleetRow = VmReport;

/** The run's `--json` document (with the error of a run that failed before the VMs). */
export type FleetDoc = RunReport & { error?: { code: string; message: string } };

/** `vm-sync locks --json`. */
export interface LocksDoc {
  command: 'locks';
  vms: LockRow[];
  error?: { code: string; message: string };
}

export function doc(run: CliRun): FleetDoc {
  return run.json as unknown as FleetDoc;
}

export function fleetRows(run: CliRun): Record<string, FleetRow> {
  return Object.fromEntries((doc(run).vms ?? []).map((vm) => [vm.id, vm]));
}

/**
 * The run really ran (no usage/config error), so a later assertion on a row
 * fails with what went wrong instead of "cannot read properties of undefined".
 */
export function expectRan(run: CliRun, ids: string[]): void {
  expect({ error: doc(run).error ?? null, vms: (doc(run).vms ?? []).map((vm) => vm.id).sort(), stderr: doc(run).error ? run.stderr : '' }).toEqual({ error: null, vms: [...ids].sort(), stderr: '' });
}

/** Epoch ms of an ISO timestamp with milliseconds, NaN for anything else (null, no ms, no Z). */
export function ms(iso: string | null | undefined): number {
  if (typeof iso !== 'string' || !/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/.test(iso)) return NaN;
  return Date.parse(iso);
}

export type RolloutSettings = Partial<Record<'strategy' | 'batch_size' | 'max_failed' | 'health_command' | 'health_timeout_s' | 'revert_unhealthy', string | number | boolean | null>>;

/**
 * Writes the world's config from scratch (the fleet's base config with
 * `sync`/`repository` lines, `sync.timeout_s` replaced by `timeoutS`), then
 * exactly the `rollout:` section given, or none: the contract's defaults,
 * whatever default other helpers (e.g. `configure`) choose. Strings are written
 * as YAML double-quoted scalars (JSON strings are valid ones), so shell
 * commands keep their quotes and `"50%"` stays a string.
 */
export function configureFleet(world: World, extra: { sync?: string[]; repository?: string[]; timeoutS?: number; rollout?: RolloutSettings } = {}): void {
  world.writeConfig({ sync: extra.sync, repository: extra.repository });
  let text = fs.readFileSync(world.configPath, 'utf8');
  // Drop any top-level rollout section the base config may carry: this config's is the one below.
  text = text.replace(/^rollout:.*\n(?:[ \t]+.*\n|\n)*/m, '');
  if (extra.timeoutS !== undefined) {
    if (!/^ {2}timeout_s: \d+$/m.test(text)) throw new Error('config has no sync.timeout_s line to replace');
    text = text.replace(/^ {2}timeout_s: \d+$/m, `  timeout_s: ${extra.timeoutS}`);
  }
  if (extra.rollout) {
    const lines = Object.entries(extra.rollout).map(([key, value]) => `  ${key}: ${typeof value === 'string' ? JSON.stringify(value) : String(value)}`);
    if (!text.endsWith('\n')) text += '\n';
    text += ['rollout:', ...lines, ''].join('\n');
  }
  fs.writeFileSync(world.configPath, text);
}

/** The release directory the live symlink `~/app` names (its basename), or null. */
export function liveRelease(world: World, id: string): string | null {
  try {
    return path.basename(fs.readlinkSync(world.target(id)));
  } catch {
    return null;
  }
}

/** Complete releases on a VM (directories of `releases/` not named `*.partial`) and the commit each one's `.sync_rev` names. */
export function releases(world: World, id: string): { name: string; rev: string | null }[] {
  const dir = path.join(stateDir(world, id), 'releases');
  let names: string[];
  try {
    names = fs.readdirSync(dir).sort();
  } catch {
    return [];
  }
  return names
    .filter((name) => !name.endsWith('.partial') && fs.lstatSync(path.join(dir, name)).isDirectory())
    .map((name) => {
      let rev: string | null = null;
      try {
        rev = fs.readFileSync(path.join(dir, name, '.sync_rev'), 'utf8').trim();
      } catch {
        // no sentinel
      }
      return { name, rev };
    });
}

/** The inode of a file as a user sees it through the live path `~/app/<rel>`. */
export function liveIno(world: World, id: string, rel: string): number {
  return fs.statSync(path.join(world.target(id), rel)).ino;
}

/** One look at the fleet: the live commits, read first, then the time (so a sample showing a flip is never dated before it). */
export interface LiveSample {
  at: number;
  revs: Record<string, string | null>;
}

/**
 * Samples the live commits of `ids` every `everyMs` while a run goes on;
 * `stop()` returns every sample. Uses the live `.sync_rev` exactly as a user
 * reads it (through `~/app`).
 */
export function watchLive(world: World, ids: string[], read: (world: World, id: string) => string | null, everyMs = 25): { stop(): LiveSample[] } {
  const samples: LiveSample[] = [];
  const sample = (): void => {
    const revs = Object.fromEntries(ids.map((id) => [id, read(world, id)]));
    samples.push({ at: Date.now(), revs });
  };
  const timer = setInterval(sample, everyMs);
  sample();
  return {
    stop: () => {
      clearInterval(timer);
      sample();
      return samples;
    },
  };
}

/** Writes a config for the same fleet with its own runner-host clone (two concurrent runs must not share one clone). */
export function secondConfig(world: World, name: string, extra: { sync?: string[]; repository?: string[] } = {}): string {
  const file = path.join(world.dir, `vm-sync-${name}.yml`);
  fs.writeFileSync(file, fleetConfigYaml(world.fleet, { mainRepoPath: path.join(world.dir, `runner-${name}`, 'app'), url: world.ws.origin }, { ...extra, sync: ['retries: 1', ...(extra.sync ?? [])] }));
  return file;
}

/** Runs the CLI in-process against `configPath` with `--json`; the document is parsed when stdout holds one. */
export async function cliWith(configPath: string, args: string[], signal?: AbortSignal): Promise<CliRun> {
  let stdout = '';
  let stderr = '';
  const code = await main([...args, '--config', configPath, '--json'], { out: (t) => (stdout += t), err: (t) => (stderr += t) }, signal);
  let json = {} as CliRun['json'];
  try {
    json = JSON.parse(stdout);
  } catch {
    // not a JSON document: the test sees an empty one
  }
  return { code, stdout, stderr, json };
}

/** A pending promise plus whether it has settled yet, and when. */
export function track<T>(promise: Promise<T>): { promise: Promise<T>; settledAt: () => number | null } {
  let at: number | null = null;
  const p = promise.finally(() => {
    at = Date.now();
  });
  return { promise: p, settledAt: () => at };
}

/** The 1-based line of the first line of the config that contains `text`. */
export function configLineOf(world: World, text: string): number {
  const index = fs.readFileSync(world.configPath, 'utf8').split('\n').findIndex((l) => l.includes(text));
  if (index < 0) throw new Error(`config has no line with ${text}`);
  return index + 1;
}
