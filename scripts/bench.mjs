#!/usr/bin/env node
// vm-sync benchmark: measures the properties the product promises, on a
// loopback fleet of real sshd VMs, with the committed bundle (dist/cli.js).
//
//   node scripts/bench.mjs [--vms 12] [--files 2000] [--mb 20]
//
// Reports, per scenario: wall time, SSH handshakes per VM (counted from each
// sshd's log), files changed and bytes sent per VM. Scenarios:
//   fresh        first deploy of the whole tree to every VM
//   one-file     one file changed: only it should travel
//   no-op        every VM already on the commit: nothing should travel
//   serial       the one-file change again with concurrency 1 (shows the fan-out)
//   openssh-ref  plain `rsync -e ssh` of the same tree to one VM (a reference peer)
// and the secret scan's cost for one pushed commit on a long vs a short history.
// It prints a markdown table and writes bench-results.json. It is a measurement,
// not a test: nothing here fails on a number.
import { execFileSync, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

const { values } = parseArgs({ options: { vms: { type: 'string', default: '12' }, files: { type: 'string', default: '2000' }, mb: { type: 'string', default: '20' } } });
const vmCount = Number(values.vms);
const fileCount = Number(values.files);
const megabytes = Number(values.mb);
const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const cli = path.join(root, 'dist', 'cli.js');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-bench-'));

const vmSync = (...args) => {
  const started = process.hrtime.bigint();
  const result = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', maxBuffer: 1 << 28 });
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  return { ms, code: result.status, stdout: result.stdout, stderr: result.stderr };
};
const git = (cwd, ...args) => execFileSync('git', args, { cwd, encoding: 'utf8', env: { ...process.env, GIT_AUTHOR_NAME: 'b', GIT_AUTHOR_EMAIL: 'b@x', GIT_COMMITTER_NAME: 'b', GIT_COMMITTER_EMAIL: 'b@x' } });

try {
  const up = vmSync('demo', 'up', '--dir', dir, '--vms', String(vmCount));
  if (up.code !== 0) throw new Error(`demo up failed: ${up.stderr}`);
  const fleet = JSON.parse(fs.readFileSync(path.join(dir, 'fleet.json'), 'utf8'));
  const config = path.join(dir, 'vm-sync.yml');
  const work = path.join(dir, 'work');
  const handshakes = () => fleet.vms.map((vm) => (fs.readFileSync(vm.log, 'utf8').match(/Accepted publickey for /g) ?? []).length);

  // A tree of `fileCount` files totalling about `megabytes` MB of incompressible data.
  const perFile = Math.floor((megabytes * 1024 * 1024) / fileCount);
  for (let i = 0; i < fileCount; i++) {
    const sub = path.join(work, 'data', String(i % 50));
    fs.mkdirSync(sub, { recursive: true });
    fs.writeFileSync(path.join(sub, `f${i}.bin`), crypto.randomBytes(perFile));
  }
  git(work, 'add', '-A');
  git(work, 'commit', '-qm', 'bench tree');
  git(work, 'push', '-q', 'origin', 'HEAD:main');

  const rows = [];
  const scenario = (name, args, configFile = config) => {
    const before = handshakes();
    const run = vmSync('sync', '--config', configFile, '--json', ...args);
    if (run.code !== 0) throw new Error(`${name}: exit ${run.code}\n${run.stderr.slice(-2000)}`);
    const report = JSON.parse(run.stdout);
    const after = handshakes();
    const perVm = after.map((n, i) => n - before[i]);
    const vms = report.vms;
    rows.push({
      scenario: name,
      wall_s: +(run.ms / 1000).toFixed(2),
      vms: vms.length,
      handshakes_per_vm: `${Math.min(...perVm)}-${Math.max(...perVm)}`,
      files_changed_per_vm: Math.max(...vms.map((v) => v.files_changed)),
      bytes_sent_per_vm: Math.max(...vms.map((v) => v.bytes_sent)),
      slowest_vm_s: +(Math.max(...vms.map((v) => v.duration_ms)) / 1000).toFixed(2),
    });
  };

  scenario('fresh', []);
  fs.writeFileSync(path.join(work, 'data', '0', 'f0.bin'), crypto.randomBytes(perFile));
  git(work, 'commit', '-qam', 'one file');
  git(work, 'push', '-q', 'origin', 'HEAD:main');
  scenario('one-file', []);
  scenario('no-op', []);

  fs.writeFileSync(path.join(work, 'data', '1', 'f1.bin'), crypto.randomBytes(perFile));
  git(work, 'commit', '-qam', 'one more file');
  git(work, 'push', '-q', 'origin', 'HEAD:main');
  const serialConfig = path.join(dir, 'serial.yml');
  fs.writeFileSync(serialConfig, fs.readFileSync(config, 'utf8').replace('concurrency: 8', 'concurrency: 1'));
  scenario('one-file, concurrency 1', [], serialConfig);

  // Reference: OpenSSH + rsync of the same export to one fresh directory on vm01.
  const exportDir = path.join(dir, 'export');
  fs.mkdirSync(exportDir);
  execFileSync('sh', ['-c', 'git -C "$1" archive HEAD | tar -x -C "$2"', 'sh', work, exportDir]);
  const vm = fleet.vms[0];
  const key = path.join(fleet.keyDir, `id_ed25519_${vm.id}`);
  const rsh = `ssh -i ${key} -p ${vm.port} -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile=${fleet.knownHosts} -o IdentitiesOnly=yes`;
  const started = process.hrtime.bigint();
  execFileSync('rsync', ['-rlp', '--checksum', '-e', rsh, `${exportDir}/`, `${fleet.user}@127.0.0.1:${path.join(vm.home, 'openssh-ref')}/`]);
  rows.push({ scenario: 'openssh-ref (1 VM, fresh, plain rsync -e ssh)', wall_s: +(Number(process.hrtime.bigint() - started) / 1e9).toFixed(2), vms: 1, handshakes_per_vm: '1', files_changed_per_vm: fileCount, bytes_sent_per_vm: null, slowest_vm_s: null });

  // Secret-scan cost: one pushed commit must cost about the same on a long
  // history as on a short one (the scan covers the pushed range, not history).
  const scanRows = [];
  if (spawnSync('sh', ['-c', 'command -v gitleaks']).status === 0) {
    const makeHistory = (name, commits) => {
      const repo = path.join(dir, name);
      git(dir, 'init', '-q', '-b', 'main', repo);
      let stream = '';
      for (let i = 1; i <= commits; i++) {
        const content = `module ${i}\nvalue = ${crypto.randomBytes(16).toString('hex')}\n`;
        stream += `commit refs/heads/main\nmark :${i}\ncommitter b <b@x> ${1700000000 + i} +0000\ndata 9\ncommit ${String(i % 10)}\n`;
        if (i > 1) stream += `from :${i - 1}\n`;
        stream += `M 100644 inline src/m${i % 500}.py\ndata ${Buffer.byteLength(content)}\n${content}\n`;
      }
      execFileSync('git', ['-C', repo, 'fast-import', '--quiet'], { input: stream });
      git(repo, 'reset', '-q', '--hard', 'main');
      return repo;
    };
    const timeScan = (label, args) => {
      const run = vmSync('scan', '--config', config, '--json', ...args);
      if (run.code !== 0) throw new Error(`${label}: exit ${run.code}\n${run.stderr.slice(-1000)}`);
      const scan = JSON.parse(run.stdout).scan;
      scanRows.push({ scenario: label, wall_s: +(run.ms / 1000).toFixed(2), commits_scanned: scan.commits_scanned, tree_scanned: scan.tree_scanned });
    };
    const long = makeHistory('long-history', 5000);
    const short = makeHistory('short-history', 2);
    timeScan('1 pushed commit, 5000-commit history', ['--repo', long, '--range', 'HEAD~1..HEAD']);
    timeScan('1 pushed commit, 2-commit history', ['--repo', short, '--range', 'HEAD~1..HEAD']);
    timeScan('whole 5000-commit history (reference)', ['--repo', long, '--range', `${git(long, 'rev-list', '--max-parents=0', 'HEAD').trim()}..HEAD`]);
  }

  const header = Object.keys(rows[0]);
  console.log(`vm-sync benchmark: ${vmCount} VMs, ${fileCount} files, ${megabytes} MB, ${os.cpus().length} cores, node ${process.version}\n`);
  console.log(`| ${header.join(' | ')} |\n|${header.map(() => '---').join('|')}|`);
  for (const row of rows) console.log(`| ${header.map((h) => row[h] ?? '-').join(' | ')} |`);
  if (scanRows.length) {
    const scanHeader = Object.keys(scanRows[0]);
    console.log(`\nsecret scan (gitleaks)\n\n| ${scanHeader.join(' | ')} |\n|${scanHeader.map(() => '---').join('|')}|`);
    for (const row of scanRows) console.log(`| ${scanHeader.map((h) => row[h]).join(' | ')} |`);
  } else {
    console.log('\nsecret scan: skipped (gitleaks not on PATH)');
  }
  fs.writeFileSync(path.join(root, 'bench-results.json'), JSON.stringify({ vmCount, fileCount, megabytes, rows, scanRows }, null, 2));
} finally {
  spawnSync(process.execPath, [cli, 'demo', 'stop', '--dir', dir], { stdio: 'ignore' });
  fs.rmSync(dir, { recursive: true, force: true });
}
