import { parseArgs } from 'node:util';
import { ConfigError, jumpHostsOf, loadConfig } from './config/load.js';
import { DEFAULT_DEMO_DIR, demoVm, describeStop, runDemo, setupDemo, stopDemo } from './demo/run-demo.js';
import { renderDoctor, runDoctor } from './doctor/doctor.js';
import { getErrorMessage, VmSyncError } from './errors.js';
import { terminalLine } from './report/escape.js';
import { renderTable } from './report/table.js';
import fs from 'node:fs';
import { renderSarif } from './scan/findings.js';
import { execute, mergeShards, type Command } from './execute.js';
import { exitCodeFor } from './sync/fleet.js';
import { MAX_SHARDS, parseShard } from './config/shard.js';
import { renderSummary } from './report/summary.js';
import { runLocks } from './sync/locks.js';
import { runUnlock } from './sync/unlock.js';
import type { EngineEvents, RunReport } from './sync/types.js';

const USAGE = `vm-sync: deploy a git repository to a fleet of VMs over rsync/SSH

Usage:
  vm-sync sync   --config FILE [--commit SHA] [--vm vm01,vm02] [--force] [--dry-run] [--no-fetch] [--scan-base REV] [--lock-wait SECONDS] [--json]
  vm-sync rollback --config FILE [--vm ...] [--to SHA] [--lock-wait SECONDS] [--json]
                 flip back to the previous kept release (or to the kept release of SHA): no transfer, no scan
  vm-sync verify --config FILE [--commit SHA] [--vm ...] [--deep] [--json]
                 every VM on the commit? --deep: also compare every file each VM serves with its commit's tree
  vm-sync status --config FILE [--vm ...] [--json]
  vm-sync doctor --config FILE [--vm ...] [--json]   prove every VM is ready before the first deploy
  vm-sync locks  --config FILE [--vm ...] [--json]      every VM's deploy lock and who holds it
  vm-sync unlock --config FILE --vm ID[,ID...] [--force]   break a VM's deploy lock (--force: even a live holder's)
  vm-sync inventory --config FILE              the VMs, key files and known_hosts path, as JSON
  vm-sync report --merge FILE_OR_DIR... [--shards N] [--config FILE] [--json] [--summary FILE]
                 merge the --json results of the shards of one deploy into one report (exit 1 when a shard is missing)
  vm-sync scan   --config FILE [--range BASE..HEAD | --commit SHA] [--repo DIR] [--no-fetch] [--sarif FILE] [--json]
  vm-sync demo   [--dir DIR] [--keep]       three loopback sshd VMs, a sample repo, three syncs
  vm-sync demo up [--dir DIR] [--vms N] [--repo PATH]
                 start N loopback VMs + sample repo (or PATH's checked-out branch) + config, leave them running
  vm-sync demo stop [--dir DIR]             stop that fleet (says what was running and what it stopped)
  vm-sync demo vm stop|start ID [--dir DIR] take one demo VM down, or bring it back (same port and host key)

sync also takes --sarif FILE (the secret-scan findings, for code scanning).
sync, rollback, verify and status take --shard K/N: only the VMs of shard K of N (a stable hash of
each VM id; every VM is in exactly one shard), for a fleet spread over N runner hosts.

Exit codes: 0 all VMs ok; 1 a VM failed, was refused or did not verify, or the run failed;
2 usage or config error; 3 secrets found: the deploy was blocked and no VM was contacted.
`;

/** How known_hosts names a host: `host` on port 22, `[host]:port` otherwise. */
function knownHostsName(host: { host: string; port: number }): string {
  return host.port === 22 ? host.host : `[${host.host}]:${host.port}`;
}

/** Where the CLI writes: injectable so tests can capture everything it prints. */
export interface CliIO {
  out(text: string): void;
  err(text: string): void;
}

const processIO: CliIO = { out: (t) => process.stdout.write(t), err: (t) => process.stderr.write(t) };

class UsageError extends Error {}

/** Log and progress lines on stderr (stdout is reserved for the table or the JSON document). */
function stderrEvents(io: CliIO): EngineEvents {
  const lastProgress = new Map<string, number>();
  return {
    // Engine lines quote VM and repository text: one clean line each on the terminal.
    info: (vm, message) => io.err(`${terminalLine(`${vm ? `[${vm}] ` : ''}${message}`)}\n`),
    progress: (vm, percent, rate) => {
      const now = Date.now();
      // A line every 2 s per VM is enough to show a long transfer is alive.
      if (now - (lastProgress.get(vm) ?? 0) < 2000 && percent < 100) return;
      lastProgress.set(vm, now);
      io.err(`[${vm}] transfer ${percent}% at ${rate}\n`);
    },
  };
}

function parse(argv: string[]) {
  try {
    return parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        config: { type: 'string', short: 'c' },
        commit: { type: 'string' },
        vm: { type: 'string' },
        force: { type: 'boolean', default: false },
        'dry-run': { type: 'boolean', default: false },
        'no-fetch': { type: 'boolean', default: false },
        json: { type: 'boolean', default: false },
        dir: { type: 'string', default: DEFAULT_DEMO_DIR },
        keep: { type: 'boolean', default: false },
        vms: { type: 'string' },
        range: { type: 'string' },
        repo: { type: 'string' },
        sarif: { type: 'string' },
        'scan-base': { type: 'string' },
        to: { type: 'string' },
        'lock-wait': { type: 'string' },
        deep: { type: 'boolean', default: false },
        shard: { type: 'string' },
        merge: { type: 'boolean', default: false },
        shards: { type: 'string' },
        summary: { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
  } catch (error) {
    throw new UsageError(getErrorMessage(error));
  }
}

/**
 * Runs the CLI with `argv` (without `node` and the script) and returns the exit
 * code. Every failure becomes a message and an exit code; nothing throws out.
 */
export async function main(argv: string[], io: CliIO = processIO, signal?: AbortSignal): Promise<number> {
  let json = false;
  try {
    const { values, positionals } = parse(argv);
    json = values.json;
    const [command, sub] = positionals;
    if (values.help || !command) {
      io.out(USAGE);
      return command || values.help ? 0 : 2;
    }
    const events = stderrEvents(io);
    if (command === 'demo') {
      if (sub === 'up') {
        const count = Number(values.vms ?? '3');
        if (!Number.isInteger(count) || count < 1 || count > 200) throw new UsageError('--vms must be a whole number from 1 to 200');
        const demo = await setupDemo(values.dir, count, { repo: values.repo });
        if (demo.warning) io.err(`WARNING: ${demo.warning}\n`);
        if (demo.previous?.vms.some((vm) => vm.running > 0)) io.err(`${terminalLine(`stopped the fleet an earlier demo up left running: ${describeStop(demo.previous)}`)}\n`);
        if (demo.kept.length) io.err(`${terminalLine(`left alone in ${demo.fleet.dir} (not the demo's): ${demo.kept.join(', ')}`)}\n`);
        io.out(`${terminalLine(`started ${count} loopback VM(s) under ${demo.fleet.dir}${values.repo ? `, deploying ${values.repo}` : ''}`)}\n${terminalLine(`config: ${demo.configPath}`)}\n${terminalLine(`stop with: vm-sync demo stop --dir ${values.dir}`)}\n`);
        return 0;
      }
      if (values.repo !== undefined) throw new UsageError('--repo only applies to demo up and scan');
      if (sub === 'vm') {
        const [action, id, extra] = positionals.slice(2);
        if ((action !== 'stop' && action !== 'start') || !id || extra !== undefined) throw new UsageError('usage: vm-sync demo vm stop|start ID [--dir DIR]');
        const result = await demoVm(values.dir, action, id);
        io.out(`${terminalLine(result.message)}\n`);
        return result.ok ? 0 : 1;
      }
      if (sub !== undefined && sub !== 'stop') throw new UsageError(`unknown demo command '${sub}' (up, stop, vm)`);
      if (sub === 'stop') {
        const stop = stopDemo(values.dir);
        io.out(`${terminalLine(`${describeStop(stop)} (${stop.dir})`)}\n`);
        return stop.vms.every((vm) => vm.problems.length === 0) ? 0 : 1;
      }
      return await runDemo(values.dir, values.keep, events, io.out);
    }
    if (command === 'report') return reportCommand(values, positionals.slice(1), io);
    if (values.merge || values.shards !== undefined || values.summary !== undefined) throw new UsageError('--merge, --shards and --summary only apply to report');
    if (!['sync', 'rollback', 'verify', 'status', 'scan', 'doctor', 'inventory', 'unlock', 'locks'].includes(command)) throw new UsageError(`unknown command '${command}'`);
    if (values.shard !== undefined && !['sync', 'rollback', 'verify', 'status'].includes(command)) throw new UsageError('--shard only applies to sync, rollback, verify and status');
    const shard = values.shard === undefined ? undefined : parseShard(values.shard, '--shard');
    if (values.to !== undefined && command !== 'rollback') throw new UsageError('--to only applies to rollback (sync takes --commit)');
    if (values['lock-wait'] !== undefined && command !== 'sync' && command !== 'rollback') throw new UsageError('--lock-wait only applies to sync and rollback');
    const lockWait = values['lock-wait'] === undefined ? 0 : Number(values['lock-wait']);
    if (!Number.isInteger(lockWait) || lockWait < 0 || lockWait > 86400) throw new UsageError(`--lock-wait must be a whole number of seconds from 0 to 86400, not '${values['lock-wait']}'`);
    if (values.to !== undefined && !/^[0-9A-Za-z._/-]{1,200}$/.test(values.to)) throw new UsageError(`--to must be a commit hash or a ref, not '${values.to}'`);
    if (command === 'rollback' && values.commit) throw new UsageError('rollback takes --to SHA, not --commit');
    if (command !== 'scan' && (values.range || values.repo)) throw new UsageError('--range and --repo only apply to scan');
    if (values.sarif && command !== 'scan' && command !== 'sync') throw new UsageError('--sarif only applies to scan and sync');
    if (values['scan-base'] && command !== 'sync') throw new UsageError('--scan-base only applies to sync (scan takes --range BASE..HEAD)');
    if (values.range && values.commit) throw new UsageError('give --range or --commit, not both');
    if (positionals.length > 1) throw new UsageError(`unexpected argument '${positionals[1]}'`);
    if (!values.config) throw new UsageError('--config FILE is required');
    if (command !== 'sync' && command !== 'unlock' && values.force) throw new UsageError('--force only applies to sync and unlock');
    if (command !== 'sync' && values['dry-run']) throw new UsageError('--dry-run only applies to sync');
    if (values['no-fetch'] && command !== 'sync' && command !== 'scan') throw new UsageError('--no-fetch only applies to sync and scan');
    if (values.deep && command !== 'verify') throw new UsageError('--deep only applies to verify');
    if (command === 'status' && values.commit) throw new UsageError('status compares against the runner-host HEAD; use verify --commit');

    // scan never reaches a VM, so it does not need (or check) the SSH keys;
    // doctor reports a missing key or known_hosts per VM, with the fix.
    const config = loadConfig(values.config, { checkFiles: !['scan', 'doctor', 'inventory', 'locks'].includes(command) });
    if (command === 'inventory') {
      // For scripts (the runner bootstrap): everything needed to provision keys and pin host keys.
      const inventory = {
        key_storage_path: config.keyStoragePath,
        known_hosts: config.knownHostsPath,
        vms: config.vms.map((vm) => ({ id: vm.id, host: vm.host, port: vm.port, user: vm.user, key_path: vm.keyPath, known_hosts_name: knownHostsName(vm), jump: vm.jump?.name ?? null })),
        jump_hosts: jumpHostsOf(config).map((jump) => ({
          name: jump.name,
          host: jump.host,
          port: jump.port,
          user: jump.user,
          key_path: jump.keyPath,
          known_hosts_name: knownHostsName(jump),
          max_sessions: jump.maxSessions,
        })),
      };
      io.out(`${JSON.stringify(inventory, null, 2)}\n`);
      return 0;
    }
    const vms = values.vm?.split(',').map((s) => s.trim()).filter(Boolean);
    if (command === 'locks') {
      if (values.commit) throw new UsageError('locks takes no --commit');
      const rows = await runLocks(config, { vms });
      if (json) io.out(`${JSON.stringify({ command: 'locks', vms: rows }, null, 2)}\n`);
      else for (const row of rows) io.out(`${terminalLine(`${row.id}: ${row.detail}`)}\n`);
      return rows.every((row) => row.error === null) ? 0 : 1;
    }
    if (command === 'doctor') {
      if (values.commit) throw new UsageError('doctor takes no --commit');
      const doctor = await runDoctor(config, { vms });
      io.out(json ? `${JSON.stringify(doctor, null, 2)}\n` : renderDoctor(doctor));
      return doctor.vms.every((vm) => vm.ready) ? 0 : 1;
    }
    if (command === 'unlock') {
      if (values.commit) throw new UsageError('unlock takes no --commit');
      const rows = await runUnlock(config, { vms: vms ?? [], force: values.force });
      if (json) io.out(`${JSON.stringify({ command: 'unlock', vms: rows }, null, 2)}\n`);
      else for (const row of rows) io.out(`${row.id}: ${row.detail}\n`);
      return rows.every((row) => row.outcome === 'not-locked' || row.outcome === 'broken') ? 0 : 1;
    }
    const options = { commit: values.commit, vms, shard, events, signal };
    let request: Command;
    if (command === 'sync') {
      request = { name: 'sync', options: { ...options, force: values.force, dryRun: values['dry-run'], fetch: !values['no-fetch'], scanBase: values['scan-base'], lockWaitS: lockWait } };
    } else if (command === 'rollback') {
      request = { name: 'rollback', options: { vms, shard, events, signal, to: values.to, lockWaitS: lockWait } };
    } else if (command === 'scan') {
      request = { name: 'scan', options: { ...options, range: values.range, repoDir: values.repo, fetch: !values['no-fetch'] } };
    } else if (command === 'verify') {
      request = { name: 'verify', options: { ...options, deep: values.deep } };
    } else {
      request = { name: command as 'status', options };
    }
    const report: RunReport = await execute(config, request);
    if (values.sarif) fs.writeFileSync(values.sarif, renderSarif(report.scan?.findings ?? []));
    io.out(json ? `${JSON.stringify(report, null, 2)}\n` : renderTable(report));
    if (report.scan?.blocked) {
      io.err(`vm-sync: secrets_found: ${report.scan.findings.length} possible secret(s) in what would be deployed; ${command !== 'sync' ? 'a sync of it would be blocked' : report.vms.length === 0 ? 'the deploy was blocked and no VM was contacted' : 'the deploy was blocked and no VM was sent it'}.\n`);
    }
    return exitCodeFor(report);
  } catch (error) {
    const usage = error instanceof UsageError || error instanceof ConfigError || (error instanceof VmSyncError && (error.code === 'config_invalid' || error.code === 'demo_dir_refused'));
    const code = error instanceof VmSyncError ? error.code : usage ? 'usage' : 'internal';
    const message = getErrorMessage(error);
    if (json) io.out(`${JSON.stringify({ commit: null, vms: [], error: { code, message } }, null, 2)}\n`);
    io.err(`vm-sync: ${code === 'usage' || code === 'config_invalid' ? '' : `${code}: `}${message}\n`);
    if (error instanceof UsageError) io.err('Run vm-sync --help for usage.\n');
    return usage ? 2 : 1;
  }
}

/**
 * `vm-sync report --merge PATH...`: one report from the results of every
 * shard of a deploy. With `--config`, each VM of a missing shard gets its own
 * failed row; `--shards N` says how many shards there were (else the results say).
 */
function reportCommand(values: ReturnType<typeof parse>['values'], paths: string[], io: CliIO): number {
  if (!values.merge) throw new UsageError('report needs --merge FILE_OR_DIR... (the --json results of each shard)');
  if (paths.length === 0) throw new UsageError('report --merge needs at least one results file or directory');
  for (const flag of ['commit', 'vm', 'shard', 'to', 'range', 'repo', 'sarif', 'scan-base', 'lock-wait'] as const) {
    if (values[flag] !== undefined) throw new UsageError(`--${flag} does not apply to report`);
  }
  const expected = values.shards === undefined ? undefined : Number(values.shards);
  if (expected !== undefined && !(Number.isInteger(expected) && expected >= 1 && expected <= MAX_SHARDS)) throw new UsageError(`--shards must be a whole number from 1 to ${MAX_SHARDS}, not '${values.shards}'`);
  const config = values.config ? loadConfig(values.config, { checkFiles: false }) : null;
  const report = mergeShards(config, paths, { expected });
  if (values.summary) fs.writeFileSync(values.summary, renderSummary(report, { runUrl: '', failure: null }));
  io.out(values.json ? `${JSON.stringify(report, null, 2)}\n` : renderTable(report));
  return exitCodeFor(report);
}

/** Entry point when run as a program: wires Ctrl-C / SIGTERM to a clean stop. */
export async function runCli(): Promise<void> {
  const controller = new AbortController();
  const onSignal = (name: string): void => {
    if (controller.signal.aborted) process.exit(130);
    process.stderr.write(`vm-sync: ${name}: stopping; every VM stays on its last complete release (again to force)\n`);
    controller.abort();
  };
  process.on('SIGINT', () => onSignal('SIGINT'));
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  let finished = false;
  // If the event loop ever drains while a step still awaits (a bug), Node would
  // exit 0 silently; a deploy tool must never report success it did not reach.
  process.on('exit', () => {
    if (!finished) {
      process.stderr.write('vm-sync: internal error: stopped before the run finished\n');
      process.exitCode = 70;
    }
  });
  process.exitCode = await main(process.argv.slice(2), processIO, controller.signal);
  finished = true;
}
