#!/usr/bin/env node
// vm-sync benchmark: vm-sync against parallel raw rsync, on a fleet of real sshd
// "VMs" (the demo fleet), with the committed bundle (dist/cli.js).
//
//   node scripts/bench.mjs [--vms 10] [--rounds 3] [--rate-mbit 100] [--incremental 40]
//                          [--repo PATH | --files 2000 --mb 20] [--out bench-results.json]
//
// Scenarios, each timed as wall time (median of --rounds):
//   full         fresh VMs: the whole tree travels
//   no-op        every VM already on the commit
//   incremental  every VM on HEAD~N (--incremental), deploy HEAD
// and in each, four ways of getting the commit onto every VM:
//   vm-sync, secret scan on    the default config
//   vm-sync, secret scan off   the same config with `secret_scanning: { enabled: false }`
//   parallel raw rsync         `git archive` export of the commit, then `rsync -a --delete`
//                              to every VM at once (plain OpenSSH, pinned host keys)
//   sequential raw rsync       the same rsync, one VM after the other
// The raw runs need the tree too, so their export time is measured separately
// and counted in their total. Ratios are vm-sync ÷ parallel raw rsync.
//
// Rate cap: as root, each VM's sshd is moved into its own network namespace
// behind a veth pair shaped by tbf at --rate-mbit per direction (see
// scripts/bench-netns.sh). Otherwise (or with --rate-mbit 0) the VMs stay on
// uncapped loopback, and the output says so.
//
// The tree: --repo PATH deploys that git repository's HEAD (its history is
// fetched into the demo's origin); by default a synthetic tree of --files
// random files (--mb MB in all) plus N commits that each rewrite two files.
//
// It prints markdown tables and writes --out (JSON). It is a measurement, not a
// test: nothing here fails on a number.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    vms: { type: 'string', default: '10' },
    rounds: { type: 'string', default: '3' },
    'rate-mbit': { type: 'string', default: '100' },
    incremental: { type: 'string', default: '40' },
    repo: { type: 'string' },
    files: { type: 'string', default: '2000' },
    mb: { type: 'string', default: '20' },
    out: { type: 'string', default: 'bench-results.json' },
  },
});
const vmCount = Number(values.vms);
const rounds = Number(values.rounds);
const rateMbit = Number(values['rate-mbit']);
const incremental = Number(values.incremental);
const fileCount = Number(values.files);
const megabytes = Number(values.mb);
const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const cli = path.join(root, 'dist', 'cli.js');
const outFile = path.resolve(values.out);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-bench-'));
const dir = path.join(tmp, 'fleet'); // `demo up` empties its --dir first: keep our own files beside it
const SSHD = ['/usr/sbin/sshd', '/usr/bin/sshd', '/usr/local/sbin/sshd'].find((p) => fs.existsSync(p));
const netnsScript = path.join(root, 'scripts', 'bench-netns.sh');
const netnsTag = process.pid.toString(36); // keeps namespace and interface names unique per run
const netnsUp = []; // indexes of the namespaces to delete at the end

const gitEnv = { ...process.env, GIT_AUTHOR_NAME: 'b', GIT_AUTHOR_EMAIL: 'b@x', GIT_COMMITTER_NAME: 'b', GIT_COMMITTER_EMAIL: 'b@x' };
const git = (cwd, ...args) => execFileSync('git', args, { cwd, encoding: 'utf8', env: gitEnv, maxBuffer: 1 << 28 }).trim();
const now = () => process.hrtime.bigint();
const secondsSince = (start) => Number(process.hrtime.bigint() - start) / 1e9;
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const fix = (x, digits = 2) => (x === null || x === undefined || Number.isNaN(x) ? null : +x.toFixed(digits));

// What the vm-sync run costs on the runner host. The node process's own peak
// RSS and CPU time come from a preload that asks the kernel (getrusage,
// RUSAGE_SELF) at exit. /usr/bin/time adds the whole run's CPU time (node and
// its children: git, gitleaks, the local rsync and ssh bridges; not the VMs'
// sshd) and the peak RSS of its largest process. The preload removes its
// variable at once so that children of vm-sync never see it.
const preload = path.join(tmp, 'usage-preload.cjs');
fs.writeFileSync(
  preload,
  "const out = process.env.BENCH_USAGE_OUT; delete process.env.BENCH_USAGE_OUT;\n" +
    "if (out) process.on('exit', () => { const u = process.resourceUsage();\n" +
    "  require('node:fs').writeFileSync(out, JSON.stringify({ maxRssKb: u.maxRSS, cpuS: (u.userCPUTime + u.systemCPUTime) / 1e6 })); });\n",
);
const TIME = fs.existsSync('/usr/bin/time') ? '/usr/bin/time' : null;
const readLastLine = (file) => {
  try {
    // GNU time prefixes "Command exited with non-zero status N" when it does.
    return fs.readFileSync(file, 'utf8').trim().split('\n').pop();
  } catch {
    return null;
  }
};

/** Runs the vm-sync CLI: wall time, exit code, output, and its cost on the runner host. */
function vmSync(...args) {
  const usageFile = path.join(tmp, 'usage.out');
  const timeFile = path.join(tmp, 'time.out');
  fs.rmSync(usageFile, { force: true });
  fs.rmSync(timeFile, { force: true });
  const command = [process.execPath, '--require', preload, cli, ...args];
  const [exe, ...argv] = TIME ? [TIME, '-f', '%M %U %S', '-o', timeFile, ...command] : command;
  const started = now();
  const result = spawnSync(exe, argv, { encoding: 'utf8', maxBuffer: 1 << 28, env: { ...process.env, BENCH_USAGE_OUT: usageFile } });
  const s = secondsSince(started);
  const own = JSON.parse(readLastLine(usageFile) ?? '{}');
  const [treeKb, user, system] = (readLastLine(timeFile) ?? '').split(' ').map(Number);
  return {
    s,
    code: result.status,
    stdout: result.stdout,
    stderr: result.stderr,
    rssMb: own.maxRssKb ? own.maxRssKb / 1024 : null,
    cpuS: own.cpuS ?? null,
    treeRssMb: treeKb ? treeKb / 1024 : null,
    treeCpuS: TIME && !Number.isNaN(user + system) ? user + system : null,
  };
}

const waitForPort = async (host, port) => {
  const deadline = Date.now() + 5000;
  for (;;) {
    const ok = await new Promise((resolve) => {
      const socket = net.connect(port, host);
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`sshd on ${host}:${port} did not start`);
    await sleep(50);
  }
};
// The fleet's disks are this machine's disk: flush what a previous step (a
// wipe, a setup deploy) left dirty, so that its writeback is not billed to the
// next timed step.
const settle = () => execFileSync('sync');
const alive = (pid) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/**
 * Moves every VM's sshd into its own rate-capped namespace (see
 * scripts/bench-netns.sh). Returns the address to reach each VM at and a
 * description of the cap; when it cannot cap, the VMs stay on loopback and the
 * description says why.
 */
async function capFleet(fleet) {
  const loopback = (why) => ({ hosts: fleet.vms.map(() => '127.0.0.1'), cap: `none: uncapped loopback (${why})` });
  if (!(rateMbit > 0)) return loopback('--rate-mbit 0');
  if (process.getuid?.() !== 0) return loopback('not root: network namespaces need root');
  if (spawnSync('sh', ['-c', 'command -v ip && command -v tc'], { stdio: 'ignore' }).status !== 0) return loopback('no ip/tc');
  if (vmCount > 250) return loopback('more than 250 VMs');
  const hosts = [];
  const pinned = [];
  for (const [i, vm] of fleet.vms.entries()) {
    const index = i + 1;
    netnsUp.push(index);
    const host = execFileSync('sh', [netnsScript, 'up', netnsTag, String(index), String(rateMbit)], { encoding: 'utf8' }).trim();
    // The same sshd (config, host key, log, pid file) now listening on the namespace's address.
    const config = path.join(vm.dir, 'sshd_config');
    fs.writeFileSync(config, fs.readFileSync(config, 'utf8').replace(/^ListenAddress .*$/m, `ListenAddress ${host}`));
    // Stop the loopback sshd and let it exit before its successor writes the same pid file.
    const oldPid = Number(fs.readFileSync(vm.pidFile, 'utf8').trim());
    process.kill(oldPid, 'SIGTERM');
    while (alive(oldPid)) await sleep(20);
    execFileSync('ip', ['netns', 'exec', `vm-sync-bench-${netnsTag}-${index}`, SSHD, '-f', config, '-E', vm.log]);
    await waitForPort(host, vm.port);
    const [type, blob] = fs.readFileSync(path.join(vm.dir, 'ssh_host_ed25519_key.pub'), 'utf8').trim().split(/\s+/);
    pinned.push(`[${host}]:${vm.port} ${type} ${blob}`);
    hosts.push(host);
  }
  fs.appendFileSync(fleet.knownHosts, pinned.join('\n') + '\n');
  return { hosts, cap: `${rateMbit} Mbit/s per VM and direction (tbf on a veth pair into one network namespace per VM)` };
}

/** The vm-sync config for the fleet (as src/demo/fleet.ts writes it), every VM at once like the raw runs. */
function configYaml(fleet, hosts, scan) {
  return [
    'vms:',
    ...fleet.vms.map((vm, i) => `  ${vm.id}: { ip: ${hosts[i]}, ssh_user: ${fleet.user}, ssh_port: ${vm.port} }`),
    'repository:',
    `  main_repo_path: ${path.join(dir, 'runner', 'app')}`,
    `  url: ${path.join(dir, 'origin.git')}`,
    '  default_branch: main',
    '  vm_repo_paths: { default: ~/app }',
    ...(scan ? [] : ['  secret_scanning: { enabled: false }']),
    'remote_execution:',
    `  key_storage_path: ${fleet.keyDir}`,
    `  known_hosts: ${fleet.knownHosts}`,
    'sync:',
    `  concurrency: ${Math.max(1, vmCount)}`,
    '  connect_timeout_s: 10',
    '  timeout_s: 600',
    '',
  ].join('\n');
}

/** Fills the demo's origin (branch main): the given repository's history, or the synthetic tree. */
function populateOrigin(origin, work) {
  if (values.repo) {
    const repo = path.resolve(values.repo);
    git(repo, 'rev-parse', '--git-dir'); // fails clearly when it is not a repository
    git(origin, 'fetch', '--quiet', '--no-tags', repo, '+HEAD:refs/heads/main');
    return `repository ${repo}`;
  }
  // A tree of `fileCount` files totalling about `megabytes` MB of incompressible data...
  const perFile = Math.floor((megabytes * 1024 * 1024) / fileCount);
  const file = (i) => path.join(work, 'data', String(i % 50), `f${i}.bin`);
  for (let i = 0; i < fileCount; i++) {
    fs.mkdirSync(path.dirname(file(i)), { recursive: true });
    fs.writeFileSync(file(i), crypto.randomBytes(perFile));
  }
  git(work, 'add', '-A');
  git(work, 'commit', '-qm', 'bench tree');
  // ...then the history the incremental scenario deploys: each commit rewrites two files.
  for (let c = 0; c < incremental; c++) {
    for (const i of [(2 * c) % fileCount, (2 * c + 1) % fileCount]) fs.writeFileSync(file(i), crypto.randomBytes(perFile));
    git(work, 'commit', '-qam', `change ${c + 1}`);
  }
  git(work, 'push', '-q', 'origin', 'HEAD:main');
  return `synthetic: ${fileCount} random files, ${megabytes} MB; ${incremental} commits of 2 rewritten files each`;
}

try {
  const up = vmSync('demo', 'up', '--dir', dir, '--vms', String(vmCount));
  if (up.code !== 0) throw new Error(`demo up failed: ${up.stderr}`);
  const fleet = JSON.parse(fs.readFileSync(path.join(dir, 'fleet.json'), 'utf8'));
  const origin = path.join(dir, 'origin.git');
  const runnerClone = path.join(dir, 'runner', 'app');
  const treeSource = populateOrigin(origin, path.join(dir, 'work'));
  const head = git(origin, 'rev-parse', 'main');
  let base;
  try {
    base = git(origin, 'rev-parse', '--verify', '--quiet', `main~${incremental}`);
  } catch {
    throw new Error(`the repository has fewer than ${incremental} first-parent commits before HEAD: pass a smaller --incremental`);
  }
  const treeFiles = git(origin, 'ls-tree', '-r', '-l', head).split('\n').filter(Boolean);
  const treeMb = treeFiles.reduce((sum, line) => sum + (Number(line.split(/\s+/)[3]) || 0), 0) / 1e6;
  const changedFiles = git(origin, 'diff', '--name-only', base, head).split('\n').filter(Boolean).length;

  const { hosts, cap } = await capFleet(fleet);
  const configs = { on: path.join(dir, 'scan-on.yml'), off: path.join(dir, 'scan-off.yml') };
  fs.writeFileSync(configs.on, configYaml(fleet, hosts, true));
  fs.writeFileSync(configs.off, configYaml(fleet, hosts, false));

  const handshakes = () => fleet.vms.map((vm) => (fs.readFileSync(vm.log, 'utf8').match(/Accepted publickey for /g) ?? []).length);
  /** One timed vm-sync deploy; a run the secret scan blocks (exit 3) is recorded as such, not as a failure. */
  const deploy = (config, commit) => {
    settle();
    const before = handshakes();
    const run = vmSync('sync', '--config', config, '--commit', commit, '--json');
    if (run.code !== 0 && run.code !== 3) throw new Error(`vm-sync sync exited ${run.code}\n${run.stderr.slice(-3000)}`);
    const report = JSON.parse(run.stdout);
    const perVm = handshakes().map((n, i) => n - before[i]);
    return {
      s: run.s,
      blocked: run.code === 3,
      rss_mb: fix(run.rssMb, 0),
      largest_process_rss_mb: fix(run.treeRssMb, 0),
      cpu_s: fix(run.cpuS),
      runner_cpu_s: fix(run.treeCpuS),
      handshakes_per_vm: `${Math.min(...perVm)}-${Math.max(...perVm)}`,
      files_changed_per_vm: report.vms.length ? Math.max(...report.vms.map((v) => v.files_changed)) : null,
      bytes_sent_per_vm: report.vms.length ? Math.max(...report.vms.map((v) => v.bytes_sent)) : null,
      slowest_vm_s: report.vms.length ? fix(Math.max(...report.vms.map((v) => v.duration_ms)) / 1000) : null,
      commits_scanned: report.scan?.commits_scanned ?? null,
      findings: report.scan?.findings.length ?? null,
      scan: report.scan?.description ?? null,
    };
  };
  /** Fresh VMs: empty homes, and no record on the runner host of what they hold. */
  const wipeVms = () => {
    for (const vm of fleet.vms) {
      fs.rmSync(vm.home, { recursive: true, force: true });
      fs.mkdirSync(vm.home);
    }
    if (fs.existsSync(runnerClone)) {
      for (const ref of git(runnerClone, 'for-each-ref', '--format=%(refname)', 'refs/vm-sync/deployed/').split('\n').filter(Boolean)) git(runnerClone, 'update-ref', '-d', ref);
    }
  };

  // Raw rsync: each VM's copy goes to <home>/raw/, apart from vm-sync's ~/app.
  const exportDir = path.join(dir, 'export');
  const baseExport = path.join(dir, 'export-base');
  const exportTree = (commit, dest) => {
    fs.rmSync(dest, { recursive: true, force: true });
    fs.mkdirSync(dest);
    const started = now();
    execFileSync('sh', ['-c', 'git --git-dir="$1" archive "$2" | tar -x -C "$3"', 'sh', origin, commit, dest]);
    return secondsSince(started);
  };
  const rsyncTo = (vm, i, src) =>
    new Promise((resolve, reject) => {
      const key = path.join(fleet.keyDir, `id_ed25519_${vm.id}`);
      const rsh = `ssh -i ${key} -p ${vm.port} -o UserKnownHostsFile=${fleet.knownHosts} -o StrictHostKeyChecking=yes -o BatchMode=yes -o IdentitiesOnly=yes`;
      const child = spawn('rsync', ['-a', '--delete', '-e', rsh, `${src}/`, `${fleet.user}@${hosts[i]}:${path.join(vm.home, 'raw')}/`], { stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (d) => (stderr += d));
      child.on('error', reject);
      child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`raw rsync to ${vm.id} exited ${code}: ${stderr}`))));
    });
  /** Export + rsync to every VM, all at once or one after the other. */
  const raw = async (commit, parallel) => {
    settle();
    const export_s = exportTree(commit, exportDir);
    const started = now();
    if (parallel) await Promise.all(fleet.vms.map((vm, i) => rsyncTo(vm, i, exportDir)));
    else for (const [i, vm] of fleet.vms.entries()) await rsyncTo(vm, i, exportDir);
    const rsync_s = secondsSince(started);
    return { s: export_s + rsync_s, export_s, rsync_s };
  };
  // `git archive` stamps every file with the commit's time, so the raw copy of
  // HEAD~N differs from HEAD's export in mtime everywhere: rsync's quick check
  // then compares every file by checksum, as a naive export-and-rsync job would.
  const resetRaw = (src) => {
    for (const vm of fleet.vms) {
      fs.rmSync(path.join(vm.home, 'raw'), { recursive: true, force: true });
      if (src) execFileSync('cp', ['-a', src, path.join(vm.home, 'raw')]);
    }
  };

  const variants = ['on', 'off', 'parallel', 'sequential'];
  const results = {};
  const scenarios = {
    // Fresh VMs for every run.
    full: async (variant) => {
      if (variant === 'on' || variant === 'off') {
        wipeVms();
        return deploy(configs[variant], head);
      }
      resetRaw(null);
      return raw(head, variant === 'parallel');
    },
    // Relies on the state the full scenario leaves: every VM on HEAD, both ways.
    'no-op': async (variant) => (variant === 'on' || variant === 'off' ? deploy(configs[variant], head) : raw(head, variant === 'parallel')),
    // Every VM on HEAD~N first (that deploy is not timed, and runs without the scan).
    incremental: async (variant) => {
      if (variant === 'on' || variant === 'off') {
        wipeVms();
        const setup = deploy(configs.off, base);
        if (setup.blocked) throw new Error('setup deploy blocked');
        return deploy(configs[variant], head);
      }
      resetRaw(baseExport);
      return raw(head, variant === 'parallel');
    },
  };

  const load = os.loadavg()[0].toFixed(2);
  console.error(`bench dir ${dir}; cap: ${cap}; load ${load}`);
  // Untimed warm-up: clones the runner-host repository and warms the page cache and sshd.
  deploy(configs.off, head);
  exportTree(base, baseExport);
  for (const [name, run] of Object.entries(scenarios)) {
    results[name] = Object.fromEntries(variants.map((v) => [v, []]));
    for (let r = 0; r < rounds; r++) {
      // Variants interleaved within a round, so that drift in machine speed hits them alike.
      for (const variant of variants) {
        const result = await run(variant);
        results[name][variant].push(result);
        console.error(`${name} round ${r + 1} ${variant}: ${result.s.toFixed(2)} s${result.blocked ? ' (blocked by the secret scan)' : ''}`);
      }
    }
  }

  // Summary: medians, ratios against parallel raw rsync.
  const rows = Object.entries(results).map(([scenario, byVariant]) => {
    const med = (variant, key = 's') => median(byVariant[variant].map((r) => r[key]));
    const blocked = byVariant.on.some((r) => r.blocked);
    const parallel = med('parallel');
    return {
      scenario,
      vm_sync_scan_on_s: fix(med('on')),
      scan_on_blocked: blocked,
      vm_sync_scan_off_s: fix(med('off')),
      export_s: fix(median([...byVariant.parallel, ...byVariant.sequential].map((r) => r.export_s))),
      parallel_raw_rsync_s: fix(parallel),
      sequential_raw_rsync_s: fix(med('sequential')),
      ratio_scan_on: blocked ? null : fix(med('on') / parallel),
      ratio_scan_off: fix(med('off') / parallel),
      rss_mb_scan_on: Math.max(...byVariant.on.map((r) => r.rss_mb)),
      rss_mb_scan_off: Math.max(...byVariant.off.map((r) => r.rss_mb)),
    };
  });

  const table = (header, body) => [`| ${header.join(' | ')} |`, `|${header.map(() => '---').join('|')}|`, ...body.map((cells) => `| ${cells.map((c) => c ?? '-').join(' | ')} |`)].join('\n');
  const cpu = (os.cpus()[0]?.model ?? 'unknown CPU').replace(/\s+/g, ' ');
  const setting = `${vmCount} VMs, ${rounds} round(s), median wall seconds; tree: ${treeSource} (HEAD ${head.slice(0, 12)}: ${treeFiles.length} files, ${treeMb.toFixed(1)} MB; HEAD~${incremental}..HEAD changes ${changedFiles} files)`;
  console.log(`vm-sync benchmark: ${setting}\nmachine: ${os.cpus().length} × ${cpu}, node ${process.version}, load at start ${load}\nrate cap: ${cap}\nvm-sync concurrency ${vmCount} (all VMs at once, like the parallel raw rsync)\n`);
  console.log(
    table(
      ['scenario', 'vm-sync, scan on', 'vm-sync, scan off', 'export (part of raw)', 'parallel raw rsync', 'sequential raw rsync', 'ratio on ÷ parallel', 'ratio off ÷ parallel', 'vm-sync peak RSS MB (on / off)'],
      rows.map((r) => [r.scenario, r.scan_on_blocked ? `${r.vm_sync_scan_on_s} (blocked: secrets found)` : r.vm_sync_scan_on_s, r.vm_sync_scan_off_s, r.export_s, r.parallel_raw_rsync_s, r.sequential_raw_rsync_s, r.ratio_scan_on, r.ratio_scan_off, `${r.rss_mb_scan_on} / ${r.rss_mb_scan_off}`]),
    ),
  );
  // What each vm-sync run did (last round): sanity checks behind the times.
  const details = Object.entries(results).flatMap(([scenario, byVariant]) =>
    ['on', 'off'].map((v) => {
      const r = byVariant[v].at(-1);
      return [`${scenario}, scan ${v}`, r.handshakes_per_vm, r.files_changed_per_vm, r.bytes_sent_per_vm?.toLocaleString('en-US'), r.slowest_vm_s, r.commits_scanned, r.findings, r.cpu_s, r.runner_cpu_s, r.largest_process_rss_mb];
    }),
  );
  console.log(`\nvm-sync runs in detail (last round)\n`);
  console.log(table(['run', 'handshakes per VM', 'files changed per VM', 'bytes sent per VM', 'slowest VM s', 'commits scanned', 'findings', 'vm-sync node CPU s', 'runner-host CPU s (all processes)', 'largest process RSS MB'], details));

  fs.writeFileSync(
    outFile,
    JSON.stringify({ date: new Date().toISOString(), vmCount, rounds, incremental, treeSource, head, base, treeFiles: treeFiles.length, treeMb: fix(treeMb), changedFiles, cap, cpus: os.cpus().length, cpu, node: process.version, loadAtStart: Number(load), rows, runs: results }, null, 2) + '\n',
  );
  console.error(`\nwrote ${outFile}`);
} finally {
  spawnSync(process.execPath, [cli, 'demo', 'stop', '--dir', dir], { stdio: 'ignore' });
  for (const index of netnsUp) spawnSync('sh', [netnsScript, 'down', netnsTag, String(index)], { stdio: 'ignore' });
  fs.rmSync(tmp, { recursive: true, force: true });
}
