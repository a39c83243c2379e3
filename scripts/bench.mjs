#!/usr/bin/env node
// vm-sync benchmark: vm-sync against parallel raw rsync, on a fleet of real sshd
// "VMs" (the demo fleet), with the committed bundle (dist/cli.js).
//
//   node scripts/bench.mjs [--vms 10] [--rounds 3] [--rate-mbit 100] [--incremental 40]
//                          [--repo PATH | --files 2000 --mb 20] [--out bench-results.json]
//                          [--scenarios full,no-op,incremental]
//                          [--contenders scan-on,scan-off,parallel,sequential]
//                          [--gitleaks-allow-existing] [--cli dist/cli.js]
//                          [--vm-disk shared|ext4|tmpfs] [--trace DIR]
//   node scripts/bench.mjs --footprint --vms 100     vm-sync only: time and runner-side peak RSS
//
// Scenarios, each timed as wall time (median of --rounds, at least 3 for a median):
//   full         fresh VMs: the whole tree travels
//   no-op        every VM already on the commit
//   incremental  every VM on HEAD~N (--incremental), deploy HEAD
// and in each, four ways (contenders) of getting the commit onto every VM:
//   scan-on     vm-sync, secret scan on: the default config
//   scan-off    vm-sync, the same config with `secret_scanning: { enabled: false }`
//   parallel    parallel raw rsync: `git archive` export of the commit, then
//               `rsync -a --delete` to every VM at once (plain OpenSSH, pinned host keys)
//   sequential  sequential raw rsync: the same rsync, one VM after the other
// The raw runs need the tree too, so their export time is measured separately
// and counted in their total. Ratios are vm-sync ÷ parallel raw rsync.
// --scenarios and --contenders pick a subset (a shorter run).
//
// --footprint: the large-fleet run. Only vm-sync (scan on and off unless
// --contenders says otherwise), full and no-op, on uncapped loopback unless
// --rate-mbit is given, and the demo's own sample repository unless --repo or
// --files is given. It prints wall time and the runner-side peak RSS.
//
// vm-sync runs under `node --max-semi-space-size=2`, as the installed `vm-sync`
// command (scripts/vm-sync-wrapper.sh) runs it, unless NODE_OPTIONS sets a size.
//
// Memory on the runner host, per vm-sync run:
//   node peak RSS       the vm-sync node process's own peak (getrusage ru_maxrss,
//                       RUSAGE_SELF, read by a preload at exit: exact, from the kernel)
//   process-tree peak   the largest sum of VmRSS over the vm-sync process and all
//                       its descendants (git, gitleaks, rsync, ssh), sampled from
//                       /proc every 50 ms: a lower bound (a spike shorter than that
//                       can be missed) that counts shared pages once per process
//   largest process     /usr/bin/time's %M: ru_maxrss of the largest single process
// The demo VMs' sshd and shells are not descendants of vm-sync and not counted.
//
// Work, per run of every contender: the busy CPU-seconds of the whole machine
// (/proc/stat; every process, the VMs' included, and the kernel's work for
// them). The VMs share this machine's cores, so this says whether a contender
// is slower or does more work.
//
// Secret scan and existing findings: a repository whose history or tree
// already has gitleaks findings (git/git: its test fixtures) blocks every
// scan-on deploy. --gitleaks-allow-existing then waives exactly those, the
// supported way (README, "Secret scanning"): a `.gitleaksignore` in a trusted
// commit. It scans the benchmarked range with vm-sync itself first (`vm-sync
// scan`, history of HEAD~N..HEAD, trees of HEAD and HEAD~N), writes the
// fingerprints found into `.gitleaksignore`, and builds
//   I = HEAD~N + .gitleaksignore            (the incremental starting point)
//   M = merge of HEAD and I = HEAD's tree + .gitleaksignore   (the deployed commit)
// so I..M changes exactly what HEAD~N..HEAD changes. The scan still runs in
// full, with I's (or M's) settings: incremental deploys trust I as the commit
// the VMs hold; full deploys pass `--scan-base M` (the documented way in on a
// runner host with no deploy recorded), which scans M's whole tree. History
// findings are also listed commit-less (`file:rule:line`), as gitleaks matches
// them, since M re-adds HEAD~N..HEAD's lines against I. The output says so.
//
// Scan cache: an untimed warm-up deploy scans HEAD's tree, as a runner host
// that deployed HEAD before would have (full and no-op). Each incremental
// scan-on round starts from the cache as it was after a deploy of HEAD~N only,
// so the N new commits and the changed files are scanned as on a real push.
//
// Rate cap: as root, each VM's sshd is moved into its own network namespace
// behind a veth pair shaped by tbf at --rate-mbit per direction (see
// scripts/bench-netns.sh). Otherwise (or with --rate-mbit 0) the VMs stay on
// uncapped loopback, and the output says so.
//
// VM disks (--vm-disk): `shared` (the default) keeps every VM's home on this
// machine's one disk, so the fleet shares one filesystem journal and one
// writeback, and a VM's `sync -f` before its flip waits for every VM's
// writes; no real fleet works that way. `ext4` (root) loop-mounts an ext4
// image of its own (no `discard`) on each VM's home: a filesystem, journal and
// flush per VM, as on real VMs, though the images share this machine's disk.
// `tmpfs` (root) mounts a tmpfs of its own on each VM's home: a VM with a disk
// to itself, faster than a real one. Either is mounted before the VMs' sshd
// move into their namespaces. Both contenders write to the same homes.
//
// --trace DIR keeps each vm-sync run's `-v --log-format json` lines (one file
// per run): where the time of a run went, VM by VM and phase by phase.
//
// The tree: --repo PATH deploys that git repository's HEAD (its history is
// fetched into the demo's origin; a bare repository or mirror works too); by
// default a synthetic tree of --files random files (--mb MB in all) plus N
// commits that each rewrite two files.
//
// It prints markdown tables and writes --out (JSON). It is a measurement, not a
// test: nothing here fails on a number.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { clearInterval, setInterval } from 'node:timers';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    vms: { type: 'string', default: '10' },
    rounds: { type: 'string', default: '3' },
    'rate-mbit': { type: 'string' },
    incremental: { type: 'string', default: '40' },
    repo: { type: 'string' },
    files: { type: 'string' },
    mb: { type: 'string', default: '20' },
    out: { type: 'string', default: 'bench-results.json' },
    scenarios: { type: 'string' },
    contenders: { type: 'string' },
    footprint: { type: 'boolean', default: false },
    'gitleaks-allow-existing': { type: 'boolean', default: false },
    cli: { type: 'string' },
    trace: { type: 'string' },
    'vm-disk': { type: 'string', default: 'shared' },
  },
});
const footprint = values.footprint;
const vmCount = Number(values.vms);
const rounds = Number(values.rounds);
// --footprint measures vm-sync itself: uncapped loopback unless a cap is asked for.
const rateMbit = Number(values['rate-mbit'] ?? (footprint ? 0 : 100));
const incremental = Number(values.incremental);
const allowExisting = values['gitleaks-allow-existing'];
/** A comma-separated selection out of `known` (aliases map to their canonical name). */
const pick = (flag, given, known, aliases) => {
  const names = given.split(',').map((n) => n.trim()).filter(Boolean).map((n) => aliases[n] ?? n);
  const unknown = names.filter((n) => !known.includes(n));
  if (unknown.length || names.length === 0) throw new Error(`--${flag}: expected some of ${known.join(',')}, got '${given}'`);
  return known.filter((n) => names.includes(n)); // canonical order: full before no-op (which relies on it)
};
const scenarioNames = pick('scenarios', values.scenarios ?? (footprint ? 'full,no-op' : 'full,no-op,incremental'), ['full', 'no-op', 'incremental'], { noop: 'no-op' });
// Internally: on / off (vm-sync with the scan on / off), parallel / sequential (raw rsync).
const variants = pick('contenders', values.contenders ?? (footprint ? 'scan-on,scan-off' : 'scan-on,scan-off,parallel,sequential'), ['on', 'off', 'parallel', 'sequential'], {
  'scan-on': 'on',
  'scan-off': 'off',
  'vm-sync': 'on',
  'parallel-rsync': 'parallel',
  'sequential-rsync': 'sequential',
});
if (!(rounds >= 1)) throw new Error('--rounds must be at least 1');
// Footprint mode keeps the demo's sample repository unless a tree is asked for.
const synthetic = !values.repo && !(footprint && values.files === undefined);
const fileCount = Number(values.files ?? 2000);
const megabytes = Number(values.mb);
const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const outFile = path.resolve(values.out);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-bench-'));
// The bundle measured: a copy of dist/cli.js (or --cli) taken at the start, so
// that a rebuild of dist/ during a long run cannot mix two versions.
const cliSource = path.resolve(values.cli ?? path.join(root, 'dist', 'cli.js'));
const cli = path.join(tmp, 'cli.js');
fs.copyFileSync(cliSource, cli);
const cliSha = crypto.createHash('sha256').update(fs.readFileSync(cli)).digest('hex').slice(0, 12);
const dir = path.join(tmp, 'fleet'); // a new path for `demo up` (it only reuses a directory it made): our own files live beside it
const SSHD = ['/usr/sbin/sshd', '/usr/bin/sshd', '/usr/local/sbin/sshd'].find((p) => fs.existsSync(p));
const netnsScript = path.join(root, 'scripts', 'bench-netns.sh');
const netnsTag = process.pid.toString(36); // keeps namespace and interface names unique per run
const netnsUp = []; // indexes of the namespaces to delete at the end
const children = new Set(); // vm-sync and raw rsync runs under way, stopped on a signal

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

/**
 * The resident set of a process and all its descendants, in kB: the sum of
 * VmRSS over every process whose parent chain leads to `rootPid` (from
 * /proc/<pid>/stat and /proc/<pid>/status; processes that exit meanwhile are skipped).
 */
function treeRssKb(rootPid, skip) {
  const parent = new Map();
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
      parent.set(Number(name), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    } catch {
      // gone
    }
  }
  const inTree = (pid) => {
    for (let p = pid, hops = 0; p > 1 && hops < 64; p = parent.get(p) ?? 0, hops++) if (p === rootPid) return true;
    return false;
  };
  let kb = 0;
  for (const pid of parent.keys()) {
    if (pid === skip || !inTree(pid)) continue;
    try {
      kb += Number(/^VmRSS:\s+(\d+)/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
    } catch {
      // gone
    }
  }
  return kb;
}
const SAMPLE_MS = 50;

// CPU time of the whole machine: every process, the VMs' sshd, tar and cp
// included. Here the VMs share the runner host's cores, so a contender that
// does more work anywhere pays for it in wall time; this column says how much.
// From the first line of /proc/stat (user, nice, system, idle, iowait, irq,
// softirq, steal, ...): busy = user + nice + system + irq + softirq, in
// clock ticks (steal is the hypervisor's, not ours).
const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();
const machineBusyS = () => {
  try {
    const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    return (f[0] + f[1] + f[2] + f[5] + f[6]) / CLK_TCK;
  } catch {
    return null;
  }
};
const busySince = (start) => {
  const end = machineBusyS();
  return start === null || end === null ? null : end - start;
};

/** Runs the vm-sync CLI: wall time, exit code, output, and its cost on the runner host. */
async function vmSync(...args) {
  const usageFile = path.join(tmp, 'usage.out');
  const timeFile = path.join(tmp, 'time.out');
  fs.rmSync(usageFile, { force: true });
  fs.rmSync(timeFile, { force: true });
  // As the installed `vm-sync` command runs it (scripts/vm-sync-wrapper.sh): V8's young generation capped.
  const heapFlag = /--max-semi-space-size/.test(process.env.NODE_OPTIONS ?? '') ? [] : ['--max-semi-space-size=2'];
  const command = [process.execPath, ...heapFlag, '--require', preload, cli, ...args];
  const [exe, ...argv] = TIME ? [TIME, '-f', '%M %U %S', '-o', timeFile, ...command] : command;
  const busy = machineBusyS();
  const started = now();
  const child = spawn(exe, argv, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, BENCH_USAGE_OUT: usageFile } });
  children.add(child);
  child.on('close', () => children.delete(child));
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d) => (stderr += d));
  let treePeakKb = 0;
  const sample = () => {
    treePeakKb = Math.max(treePeakKb, treeRssKb(child.pid, TIME ? child.pid : null)); // not /usr/bin/time itself
  };
  const sampler = setInterval(sample, SAMPLE_MS);
  const code = await new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (c) => resolve(c));
  });
  clearInterval(sampler);
  const s = secondsSince(started);
  const machineCpuS = busySince(busy);
  const own = JSON.parse(readLastLine(usageFile) ?? '{}');
  const [largestKb, user, system] = (readLastLine(timeFile) ?? '').split(' ').map(Number);
  return {
    s,
    code,
    stdout,
    stderr,
    rssMb: own.maxRssKb ? own.maxRssKb / 1024 : null,
    cpuS: own.cpuS ?? null,
    treePeakMb: treePeakKb ? treePeakKb / 1024 : null,
    largestRssMb: largestKb ? largestKb / 1024 : null,
    treeCpuS: TIME && !Number.isNaN(user + system) ? user + system : null,
    machineCpuS,
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
// wipe, a setup deploy) left dirty, and wait until the disk is idle, so that
// its writeback is not billed to the next timed step. `sync` alone is not
// enough where the filesystem discards freed blocks online: a wipe of ten
// trees goes on discarding for seconds after it, and slowed whichever run
// came next (full rounds after the first took two to three times as long).
const diskActivity = () => {
  try {
    // Per device: writes completed (field 8), I/Os in flight (12), discards completed (15, kernel 4.18+).
    return fs.readFileSync('/proc/diskstats', 'utf8').split('\n').filter((l) => l.trim() && !/ (loop|ram|zram)\d/.test(l)).map((l) => { const f = l.trim().split(/\s+/); return `${f[7]}/${f[11]}/${f[14] ?? ''}`; }).join(' ');
  } catch {
    return null;
  }
};
const settle = () => {
  execFileSync('sync');
  let last = diskActivity();
  if (last === null) return;
  const until = Date.now() + 120_000;
  for (let quiet = 0; quiet < 2 && Date.now() < until; ) {
    execFileSync('sleep', ['0.5']);
    const now = diskActivity();
    quiet = now === last ? quiet + 1 : 0;
    last = now;
  }
};
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

const mounted = []; // VM disk mounts to remove at the end
/**
 * --vm-disk: where the VMs' files live. `shared` (the default): every VM's
 * home is a directory on this machine's disk, so ten VMs share one disk,
 * one journal and one writeback, which no real fleet does. `ext4` (root):
 * each VM's home is an ext4 filesystem of its own (a loop-mounted image,
 * mounted without `discard`), so a VM's flush waits for its own writes only,
 * as on a VM with a disk to itself; the images still sit on this machine's
 * one disk. `tmpfs` (root): each VM's home is a tmpfs of its own, faster
 * than any real disk (and whose flush costs nothing).
 */
function mountVmDisks(fleet) {
  const kind = values['vm-disk'];
  if (kind === 'shared') return "shared: every VM's home on this machine's one disk";
  if (kind !== 'tmpfs' && kind !== 'ext4') throw new Error(`--vm-disk: expected shared, ext4 or tmpfs, got '${kind}'`);
  if (process.getuid?.() !== 0) throw new Error(`--vm-disk ${kind} needs root (mount)`);
  for (const vm of fleet.vms) {
    if (kind === 'tmpfs') {
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4g,mode=0755', 'tmpfs', vm.home]);
    } else {
      // Sparse: the image takes only what the VM writes. nodiscard: mkfs would
      // otherwise discard the whole image first.
      const image = path.join(tmp, `disk-${vm.id}.img`);
      execFileSync('truncate', ['-s', '4G', image]);
      execFileSync('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard', '-m', '0', image]);
      execFileSync('mount', ['-o', 'loop', image, vm.home]);
    }
    mounted.push(vm.home);
  }
  return kind === 'tmpfs'
    ? "tmpfs: each VM's home on a tmpfs of its own"
    : "ext4: each VM's home on an ext4 filesystem of its own (loop-mounted image on this machine's disk, no discard)";
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
  if (!synthetic) return "the demo's sample repository";
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

const table = (header, body) => [`| ${header.join(' | ')} |`, `|${header.map(() => '---').join('|')}|`, ...body.map((cells) => `| ${cells.map((c) => c ?? '-').join(' | ')} |`)].join('\n');
/** "median (min–max)" of some numbers; the median needs at least 3 of them. */
const cell = (xs, digits = 2) => {
  const ok = xs.filter((x) => typeof x === 'number' && !Number.isNaN(x));
  if (ok.length === 0) return null;
  const m = fix(median(ok), digits);
  return ok.length < 3 ? `${m} (n=${ok.length}, no median)` : `${m} (${fix(Math.min(...ok), digits)}–${fix(Math.max(...ok), digits)})`;
};

/**
 * Stops the fleet and removes what the run set up: VM disk mounts, network
 * namespaces, the scratch directory. Runs once, from `finally` or from a
 * signal: an interrupted benchmark must not leave sshd, loop mounts or
 * namespaces behind (a `finally` does not run when SIGINT ends the process).
 */
let cleanedUp = false;
function cleanUp() {
  if (cleanedUp) return;
  cleanedUp = true;
  for (const child of children) child.kill('SIGTERM');
  // Synchronously (a signal handler cannot await): give them up to 10 s to finish their own cleanup first.
  // Not yet reaped (the event loop does not run here), an exited child is a zombie: that counts as gone.
  const alive = (pid) => {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
    } catch {
      return false;
    }
  };
  const pause = new Int32Array(new SharedArrayBuffer(4));
  for (let waited = 0; waited < 10_000 && [...children].some((c) => c.pid && alive(c.pid)); waited += 100) Atomics.wait(pause, 0, 0, 100);
  spawnSync(process.execPath, [cli, 'demo', 'stop', '--dir', dir], { stdio: 'ignore' });
  // A VM session still closing can keep a mount busy for a moment: detach it then (lazy), so nothing stays mounted.
  for (const mount of mounted) if (spawnSync('umount', [mount], { stdio: 'ignore' }).status !== 0) spawnSync('umount', ['-l', mount], { stdio: 'ignore' });
  for (const index of netnsUp) spawnSync('sh', [netnsScript, 'down', netnsTag, String(index)], { stdio: 'ignore' });
  // Retried: a run stopped by the signal may still be writing into it for a moment.
  fs.rmSync(tmp, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
}
for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143], ['SIGHUP', 129]]) {
  process.on(signal, () => {
    console.error(`\n${signal}: stopping the fleet and removing the benchmark's mounts, namespaces and files`);
    cleanUp();
    process.exit(code);
  });
}

try {
  const up = await vmSync('demo', 'up', '--dir', dir, '--vms', String(vmCount));
  if (up.code !== 0) throw new Error(`demo up failed: ${up.stderr}`);
  const fleet = JSON.parse(fs.readFileSync(path.join(dir, 'fleet.json'), 'utf8'));
  const origin = path.join(dir, 'origin.git');
  const runnerClone = path.join(dir, 'runner', 'app');
  const scanCache = path.join(dir, 'runner', '.app.vm-sync', 'scan-cache'); // vm-sync's state dir beside the clone
  const treeSource = populateOrigin(origin, path.join(dir, 'work'));
  const needBase = scenarioNames.includes('incremental');
  let head = git(origin, 'rev-parse', 'main');
  let base = null;
  if (needBase) {
    try {
      base = git(origin, 'rev-parse', '--verify', '--quiet', `main~${incremental}`);
    } catch {
      throw new Error(`the repository has fewer than ${incremental} first-parent commits before HEAD: pass a smaller --incremental`);
    }
  }
  const repoHead = head;

  // Before the VMs' sshd move into their namespaces: `ip netns exec` gives each a copy of the mounts as they are then.
  const disk = mountVmDisks(fleet);
  const { hosts, cap } = await capFleet(fleet);
  const configs = { on: path.join(dir, 'scan-on.yml'), off: path.join(dir, 'scan-off.yml') };
  fs.writeFileSync(configs.on, configYaml(fleet, hosts, true));
  fs.writeFileSync(configs.off, configYaml(fleet, hosts, false));

  // --gitleaks-allow-existing: waive the findings already in the repository (see the header).
  let allowNote = null;
  let scanBase = null; // --scan-base for scan-on deploys onto VMs with no record
  if (allowExisting && variants.includes('on')) {
    const findings = [];
    const scanJson = async (...args) => {
      const run = await vmSync('scan', '--config', configs.on, ...args, '--json');
      if (run.code !== 0 && run.code !== 3) throw new Error(`vm-sync scan ${args.join(' ')} exited ${run.code}\n${run.stderr.slice(-3000)}`);
      const report = JSON.parse(run.stdout);
      findings.push(...(report.scan?.findings ?? []));
    };
    if (base) {
      await scanJson('--range', `${base}..${head}`); // HEAD~N..HEAD's commits and HEAD's tree
      await scanJson('--commit', base); // HEAD~N's tree (nothing is recorded yet: the tree alone)
    } else {
      await scanJson('--commit', head);
    }
    const entries = new Set();
    for (const f of findings) {
      entries.add(f.fingerprint);
      if (/^[0-9a-f]{40}:/.test(f.fingerprint)) entries.add(f.fingerprint.replace(/^[0-9a-f]{40}:/, ''));
    }
    const text = `# Written by scripts/bench.mjs --gitleaks-allow-existing: findings already in the repository\n${[...entries].sort().join('\n')}\n`;
    const blob = execFileSync('git', ['hash-object', '-w', '--stdin'], { cwd: origin, input: text, encoding: 'utf8' }).trim();
    const withIgnore = (commit) => {
      const env = { ...gitEnv, GIT_INDEX_FILE: path.join(tmp, 'bench.index') };
      fs.rmSync(env.GIT_INDEX_FILE, { force: true });
      execFileSync('git', ['read-tree', commit], { cwd: origin, env });
      execFileSync('git', ['update-index', '--add', '--cacheinfo', `100644,${blob},.gitleaksignore`], { cwd: origin, env });
      return execFileSync('git', ['write-tree'], { cwd: origin, env, encoding: 'utf8' }).trim();
    };
    // Each new commit keeps the dates of the one it stands for: `git archive`
    // stamps files with the commit time, and the raw rsync's quick check must
    // see the same mtimes as without the waiver (I and M made in the same
    // second would otherwise let rsync skip every unchanged-size file).
    const commitTree = (tree, like, ...rest) => {
      const date = git(origin, 'log', '-1', '--format=%cI', like);
      return execFileSync('git', ['commit-tree', tree, ...rest], { cwd: origin, encoding: 'utf8', env: { ...gitEnv, GIT_AUTHOR_DATE: date, GIT_COMMITTER_DATE: date } }).trim();
    };
    const ignoreBase = base ? commitTree(withIgnore(base), base, '-p', base, '-m', 'bench: .gitleaksignore for the findings already in the repository') : null;
    const merged = commitTree(withIgnore(head), head, '-p', head, ...(ignoreBase ? ['-p', ignoreBase] : []), '-m', 'bench: HEAD with the .gitleaksignore');
    git(origin, 'update-ref', 'refs/heads/main', merged);
    const distinct = new Set(findings.map((f) => f.fingerprint)).size;
    allowNote =
      `--gitleaks-allow-existing: ${distinct} finding(s) already in the repository (vm-sync scan of ${base ? `${base.slice(0, 12)}..${head.slice(0, 12)} and the tree of ${base.slice(0, 12)}` : `the tree of ${head.slice(0, 12)}`}) ` +
      `written as ${entries.size} .gitleaksignore entries; deployed ${merged.slice(0, 12)} = ${head.slice(0, 12)} + that file` +
      (ignoreBase ? `, incremental from ${ignoreBase.slice(0, 12)} = ${base.slice(0, 12)} + that file (same diff)` : '') +
      `; the scan runs in full with those settings; full deploys pass --scan-base ${merged.slice(0, 12)}`;
    head = merged;
    base = ignoreBase;
    scanBase = merged;
  } else if (allowExisting) {
    allowNote = '--gitleaks-allow-existing: ignored (no scan-on contender)';
  }

  const treeFiles = git(origin, 'ls-tree', '-r', '-l', head).split('\n').filter(Boolean);
  const treeMb = treeFiles.reduce((sum, line) => sum + (Number(line.split(/\s+/)[3]) || 0), 0) / 1e6;
  const changedFiles = base ? git(origin, 'diff', '--name-only', base, head).split('\n').filter(Boolean).length : null;

  let traceCount = 0;
  const handshakes = () => fleet.vms.map((vm) => (fs.readFileSync(vm.log, 'utf8').match(/Accepted publickey for /g) ?? []).length);
  /** One timed vm-sync deploy; a run the secret scan blocks (exit 3) is recorded as such, not as a failure. */
  const deploy = async (config, commit, extra = []) => {
    settle();
    const before = handshakes();
    const traced = values.trace ? ['-v', '--log-format', 'json'] : [];
    const run = await vmSync('sync', '--config', config, '--commit', commit, ...extra, ...traced, '--json');
    if (values.trace) {
      fs.mkdirSync(values.trace, { recursive: true });
      fs.writeFileSync(path.join(values.trace, `run-${++traceCount}.jsonl`), run.stderr);
    }
    if (run.code !== 0 && run.code !== 3) throw new Error(`vm-sync sync exited ${run.code}\n${run.stderr.slice(-3000)}`);
    const report = JSON.parse(run.stdout);
    const perVm = handshakes().map((n, i) => n - before[i]);
    return {
      s: run.s,
      blocked: run.code === 3,
      rss_mb: fix(run.rssMb, 0),
      tree_peak_rss_mb: fix(run.treePeakMb, 0),
      largest_process_rss_mb: fix(run.largestRssMb, 0),
      cpu_s: fix(run.cpuS),
      runner_cpu_s: fix(run.treeCpuS),
      machine_cpu_s: fix(run.machineCpuS),
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
      // Empties the home (a tmpfs mount point stays).
      for (const name of fs.readdirSync(vm.home)) fs.rmSync(path.join(vm.home, name), { recursive: true, force: true });
    }
    if (fs.existsSync(runnerClone)) {
      for (const ref of git(runnerClone, 'for-each-ref', '--format=%(refname)', 'refs/vm-sync/deployed/').split('\n').filter(Boolean)) git(runnerClone, 'update-ref', '-d', ref);
    }
  };
  const scanOnExtra = scanBase ? ['--scan-base', scanBase] : [];
  // The scan cache as it was after a deploy of HEAD~N only (see the header).
  const cacheAtBase = path.join(tmp, 'scan-cache-at-base');
  const restoreCacheAtBase = () => {
    fs.rmSync(scanCache, { recursive: true, force: true });
    if (fs.existsSync(cacheAtBase)) execFileSync('cp', ['-a', cacheAtBase, scanCache]);
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
      children.add(child);
      child.on('close', () => children.delete(child));
      let stderr = '';
      child.stderr.on('data', (d) => (stderr += d));
      child.on('error', reject);
      child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`raw rsync to ${vm.id} exited ${code}: ${stderr}`))));
    });
  /** Export + rsync to every VM, all at once or one after the other. */
  const raw = async (commit, parallel) => {
    settle();
    const busy = machineBusyS();
    const export_s = exportTree(commit, exportDir);
    const started = now();
    if (parallel) await Promise.all(fleet.vms.map((vm, i) => rsyncTo(vm, i, exportDir)));
    else for (const [i, vm] of fleet.vms.entries()) await rsyncTo(vm, i, exportDir);
    const rsync_s = secondsSince(started);
    return { s: export_s + rsync_s, export_s, rsync_s, machine_cpu_s: fix(busySince(busy)) };
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
  const isVmSync = (variant) => variant === 'on' || variant === 'off';
  const rawVariants = variants.filter((v) => !isVmSync(v));

  const results = {};
  const scenarios = {
    // Fresh VMs for every run.
    full: async (variant) => {
      if (isVmSync(variant)) {
        wipeVms();
        return deploy(configs[variant], head, variant === 'on' ? scanOnExtra : []);
      }
      resetRaw(null);
      return raw(head, variant === 'parallel');
    },
    // Every VM already on HEAD, both ways (what the full scenario or the warm-up leaves).
    'no-op': async (variant) => (isVmSync(variant) ? deploy(configs[variant], head) : raw(head, variant === 'parallel')),
    // Every VM on HEAD~N first (that deploy is not timed, and runs without the scan).
    incremental: async (variant) => {
      if (isVmSync(variant)) {
        wipeVms();
        const setup = await deploy(configs.off, base);
        if (setup.blocked) throw new Error('setup deploy blocked');
        if (variant === 'on') restoreCacheAtBase();
        return deploy(configs[variant], head);
      }
      resetRaw(baseExport);
      return raw(head, variant === 'parallel');
    },
  };
  const prepare = {
    // The state no-op relies on: vm-sync's VMs on HEAD with a record, the raw copies of HEAD.
    'no-op': async () => {
      wipeVms();
      await deploy(configs.off, head);
      if (rawVariants.length) {
        resetRaw(null);
        await raw(head, true);
      }
    },
  };

  const load = os.loadavg()[0].toFixed(2);
  console.error(`bench dir ${dir}; cap: ${cap}; load ${load}; scenarios ${scenarioNames.join(',')}; contenders ${variants.join(',')}`);
  if (allowNote) console.error(allowNote);
  // Untimed warm-up: clones the runner-host repository, warms the page cache
  // and sshd, and fills the scan cache (see the header).
  if (variants.includes('on') && base) {
    wipeVms();
    fs.rmSync(scanCache, { recursive: true, force: true });
    const atBase = await deploy(configs.on, base, scanBase ? ['--scan-base', base] : []);
    if (atBase.blocked) console.error('warm-up: the scan of HEAD~N was blocked (the incremental scan-on rounds start from its partial cache)');
    if (fs.existsSync(scanCache)) execFileSync('cp', ['-a', scanCache, cacheAtBase]);
  }
  wipeVms();
  await deploy(variants.includes('on') ? configs.on : configs.off, head, variants.includes('on') ? scanOnExtra : []);
  if (base && rawVariants.length) exportTree(base, baseExport);
  let last = null;
  for (const name of scenarioNames) {
    if (prepare[name] && last !== 'full') await prepare[name]();
    results[name] = Object.fromEntries(variants.map((v) => [v, []]));
    for (let r = 0; r < rounds; r++) {
      // Variants interleaved within a round, so that drift in machine speed hits them alike.
      for (const variant of variants) {
        const result = await scenarios[name](variant);
        results[name][variant].push(result);
        const mem = isVmSync(variant) ? `, node RSS ${result.rss_mb} MB, tree RSS ${result.tree_peak_rss_mb} MB` : '';
        const busy = result.machine_cpu_s === null ? '' : `, machine CPU ${result.machine_cpu_s} s`;
        console.error(`${name} round ${r + 1} ${variant}: ${result.s.toFixed(2)} s${busy}${mem}${result.blocked ? ' (blocked by the secret scan)' : ''}`);
      }
    }
    last = name;
  }

  // Summary: medians (with the range), ratios against parallel raw rsync.
  const rows = Object.entries(results).map(([scenario, byVariant]) => {
    const times = (variant) => (byVariant[variant] ?? []).map((r) => r.s);
    const med = (variant) => (byVariant[variant]?.length ? median(times(variant)) : null);
    const blocked = (byVariant.on ?? []).some((r) => r.blocked);
    const parallel = med('parallel');
    const ratio = (variant) => (med(variant) !== null && parallel ? fix(med(variant) / parallel) : null);
    const peak = (variant, key) => (byVariant[variant]?.length ? Math.max(...byVariant[variant].map((r) => r[key] ?? 0)) : null);
    const exports = [...(byVariant.parallel ?? []), ...(byVariant.sequential ?? [])].map((r) => r.export_s);
    return {
      scenario,
      rounds: Math.max(...Object.values(byVariant).map((runs) => runs.length)),
      vm_sync_scan_on_s: fix(med('on')),
      scan_on_blocked: blocked,
      vm_sync_scan_off_s: fix(med('off')),
      export_s: exports.length ? fix(median(exports)) : null,
      parallel_raw_rsync_s: fix(parallel),
      sequential_raw_rsync_s: fix(med('sequential')),
      ratio_scan_on: blocked ? null : ratio('on'),
      ratio_scan_off: ratio('off'),
      rss_mb_scan_on: peak('on', 'rss_mb'),
      rss_mb_scan_off: peak('off', 'rss_mb'),
      tree_rss_mb_scan_on: peak('on', 'tree_peak_rss_mb'),
      tree_rss_mb_scan_off: peak('off', 'tree_peak_rss_mb'),
      machine_cpu_s: Object.fromEntries(variants.map((v) => {
        const busy = (byVariant[v] ?? []).map((r) => r.machine_cpu_s).filter((x) => x !== null && x !== undefined);
        return [v, busy.length ? fix(median(busy), 1) : null];
      })),
      cells: {
        on: cell(times('on')),
        off: cell(times('off')),
        parallel: cell(times('parallel')),
        sequential: cell(times('sequential')),
      },
    };
  });

  const cpu = (os.cpus()[0]?.model ?? 'unknown CPU').replace(/\s+/g, ' ');
  const setting =
    `${vmCount} VMs, ${rounds} round(s) per cell, wall seconds as median (min–max)${rounds < 3 ? ' — fewer than 3 rounds: not a median' : ''}; ` +
    `tree: ${treeSource} (HEAD ${head.slice(0, 12)}: ${treeFiles.length} files, ${treeMb.toFixed(1)} MB` +
    (base ? `; HEAD~${incremental}..HEAD changes ${changedFiles} files)` : ')');
  console.log(
    `vm-sync benchmark${footprint ? ' (--footprint: vm-sync only)' : ''}: ${setting}\n` +
      `bundle: ${path.relative(root, cliSource) || cliSource} (sha256 ${cliSha}, copied at the start)\n` +
      `machine: ${os.cpus().length} × ${cpu}, ${Math.round(os.totalmem() / 2 ** 30)} GB, node ${process.version}, load at start ${load}\n` +
      `rate cap: ${cap}\nVM disks: ${disk}\nvm-sync concurrency ${vmCount} (all VMs at once, like the parallel raw rsync)\n` +
      (variants.includes('on') ? `secret scan: ${allowNote ?? 'no waiver (any finding blocks a scan-on deploy)'}; scan cache warm for full and no-op${base ? ', at HEAD~N for incremental' : ''}\n` : '') +
      `machine CPU: busy CPU-seconds of the whole machine during the run (every process, the VMs' included; /proc/stat), median over the rounds\n` +
      `peak RSS: node = vm-sync's node process (getrusage ru_maxrss); tree = sum of VmRSS over vm-sync and its children, sampled every ${SAMPLE_MS} ms; max over the rounds\n`,
  );
  const vmSyncVariants = variants.filter(isVmSync);
  const label = { on: 'vm-sync, scan on', off: 'vm-sync, scan off', parallel: 'parallel raw rsync', sequential: 'sequential raw rsync' };
  const header = ['scenario', ...variants.map((v) => label[v])];
  if (rawVariants.length) header.push('export (part of raw)');
  if (variants.includes('parallel')) header.push(...vmSyncVariants.map((v) => `ratio ${v} ÷ parallel`));
  header.push(...vmSyncVariants.map((v) => `peak RSS MB ${v} (node / tree)`));
  header.push(`machine CPU s (${variants.join(' / ')})`);
  console.log(
    table(
      header,
      rows.map((r) => {
        const ratios = { on: r.ratio_scan_on, off: r.ratio_scan_off };
        const rss = { on: `${r.rss_mb_scan_on} / ${r.tree_rss_mb_scan_on}`, off: `${r.rss_mb_scan_off} / ${r.tree_rss_mb_scan_off}` };
        return [
          r.scenario,
          ...variants.map((v) => (v === 'on' && r.scan_on_blocked ? `${r.cells.on} (blocked: secrets found)` : r.cells[v])),
          ...(rawVariants.length ? [r.export_s] : []),
          ...(variants.includes('parallel') ? vmSyncVariants.map((v) => ratios[v]) : []),
          ...vmSyncVariants.map((v) => rss[v]),
          variants.map((v) => r.machine_cpu_s[v] ?? '-').join(' / '),
        ];
      }),
    ),
  );
  // What each vm-sync run did (last round): sanity checks behind the times.
  const details = Object.entries(results).flatMap(([scenario, byVariant]) =>
    vmSyncVariants.map((v) => {
      const r = byVariant[v].at(-1);
      return [`${scenario}, scan ${v}`, r.handshakes_per_vm, r.files_changed_per_vm, r.bytes_sent_per_vm?.toLocaleString('en-US'), r.slowest_vm_s, r.commits_scanned, r.findings, r.cpu_s, r.runner_cpu_s, r.largest_process_rss_mb];
    }),
  );
  if (details.length) {
    console.log(`\nvm-sync runs in detail (last round)\n`);
    console.log(table(['run', 'handshakes per VM', 'files changed per VM', 'bytes sent per VM', 'slowest VM s', 'commits scanned', 'findings', 'vm-sync node CPU s', 'runner-host CPU s (all processes)', 'largest process RSS MB'], details));
  }

  fs.writeFileSync(
    outFile,
    JSON.stringify(
      { date: new Date().toISOString(), cli: { path: cliSource, sha256: cliSha }, footprint, vmCount, rounds, scenarios: scenarioNames, contenders: variants, incremental, treeSource, repoHead, head, base, allowExisting: allowNote, treeFiles: treeFiles.length, treeMb: fix(treeMb), changedFiles, cap, cpus: os.cpus().length, cpu, node: process.version, loadAtStart: Number(load), rows, runs: results },
      null,
      2,
    ) + '\n',
  );
  console.error(`\nwrote ${outFile}`);
} finally {
  cleanUp();
}
