#!/usr/bin/env node
// The cost of scanning one pushed commit on a large repository, against the
// cost of scanning that commit alone (issue target: at most 2×, whatever the
// size of the tree). No VM is involved: `vm-sync scan` contacts none.
//
//   node scripts/bench-scan.mjs --repo PATH [--rounds 5] [--file README.md] [--cli dist/cli.js] [--out bench-scan.json] [--trace DIR]
//
// --trace DIR keeps each timed run's `-v --log-format json` lines (DIR/pushed-N.jsonl, DIR/alone-N.jsonl).
//
// pushed  The runner host holds the repository and has deployed (scanned) its
//         tip M: the scan cache and the kept export are those of M. Timed:
//         `vm-sync scan --range M..P`, where P = M + one change to --file (a
//         line appended). It scans P's commit and the blobs of P's tree not
//         scanned before with these settings.
// alone   The same change in a repository that holds nothing else: a commit E
//         (the settings only) and A = E + the file as P has it. Timed:
//         `vm-sync scan --range E..A`, from the state after E, as above.
//
// Both run the same bundle, the same way (fetch, export, cache, gitleaks), and
// each round starts from the same state (an untimed scan of the base puts the
// export back; the cache is restored to what it held after the base). The
// findings already in the repository's tip are waived first, as
// `bench.mjs --gitleaks-allow-existing` does (a `.gitleaksignore` in M), so
// that the files holding them are cached like any other.
import { execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    repo: { type: 'string' },
    rounds: { type: 'string', default: '5' },
    file: { type: 'string', default: 'README.md' },
    cli: { type: 'string' },
    out: { type: 'string', default: 'bench-scan.json' },
    trace: { type: 'string' },
  },
});
if (!values.repo) throw new Error('--repo PATH is required (a repository the size of git/git)');
const rounds = Number(values.rounds);
if (!(rounds >= 1)) throw new Error('--rounds: a number of rounds, at least 1 (3 or more for a median)');
const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-bench-scan-'));
// The bundle measured: copied at the start (a rebuild meanwhile cannot mix two versions).
const cliSource = path.resolve(values.cli ?? path.join(root, 'dist', 'cli.js'));
const cli = path.join(tmp, 'cli.js');
fs.copyFileSync(cliSource, cli);
const cliSha = crypto.createHash('sha256').update(fs.readFileSync(cli)).digest('hex').slice(0, 12);

const gitEnv = { ...process.env, GIT_AUTHOR_NAME: 'b', GIT_AUTHOR_EMAIL: 'b@x', GIT_COMMITTER_NAME: 'b', GIT_COMMITTER_EMAIL: 'b@x' };
const git = (cwd, args, input) => execFileSync('git', args, { cwd, encoding: 'utf8', env: gitEnv, input, maxBuffer: 1 << 28 }).trim();
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const fix = (x) => +x.toFixed(3);

/** One `vm-sync scan`: wall seconds (node start included), exit code, the JSON report, the log. */
function vmSync(args) {
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint();
    const child = spawn(process.execPath, [cli, 'scan', ...args, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('exit', (code) => {
      const s = Number(process.hrtime.bigint() - started) / 1e9;
      if (code !== 0 && code !== 3) return reject(new Error(`vm-sync scan ${args.join(' ')} exited ${code}\n${stderr.slice(-3000)}`));
      resolve({ s, code, report: JSON.parse(stdout), stderr });
    });
  });
}

/** A runner host of its own: a bare origin, the config naming it, and the paths vm-sync keeps its state in. */
function runnerHost(name) {
  const dir = path.join(tmp, name);
  const origin = path.join(dir, 'origin.git');
  fs.mkdirSync(dir);
  git(dir, ['init', '-q', '--bare', origin]);
  const config = path.join(dir, 'vm-sync.yml');
  const keys = path.join(dir, 'keys');
  fs.mkdirSync(keys, { mode: 0o700 });
  fs.writeFileSync(path.join(dir, 'known_hosts'), '');
  // One VM, never contacted by a scan: the config needs one.
  fs.writeFileSync(
    config,
    [
      'vms:',
      '  vm01: { ip: 192.0.2.10, ssh_user: bench }',
      'repository:',
      `  main_repo_path: ${path.join(dir, 'runner', 'app')}`,
      `  url: ${origin}`,
      '  default_branch: main',
      '  vm_repo_paths: { default: ~/app }',
      'remote_execution:',
      `  key_storage_path: ${keys}`,
      `  known_hosts: ${path.join(dir, 'known_hosts')}`,
      '',
    ].join('\n'),
  );
  return { dir, origin, config, cache: path.join(dir, 'runner', '.app.vm-sync', 'scan-cache') };
}

/** A commit of `tree` with `parents`, made in `repo` (the bench's own commits). */
const commitTree = (repo, tree, parents, message) => git(repo, ['commit-tree', tree, ...parents.flatMap((p) => ['-p', p]), '-m', message]);
/** The tree of `commit` with `files` (path -> content) written into it. */
function treeWith(repo, commit, files) {
  const index = path.join(tmp, `index-${crypto.randomBytes(4).toString('hex')}`);
  const env = { ...gitEnv, GIT_INDEX_FILE: index };
  if (commit) execFileSync('git', ['read-tree', commit], { cwd: repo, env });
  for (const [file, content] of Object.entries(files)) {
    const blob = git(repo, ['hash-object', '-w', '--stdin'], content);
    execFileSync('git', ['update-index', '--add', '--cacheinfo', `100644,${blob},${file}`], { cwd: repo, env });
  }
  const tree = execFileSync('git', ['write-tree'], { cwd: repo, env, encoding: 'utf8' }).trim();
  fs.rmSync(index, { force: true });
  return tree;
}

/**
 * The timed scan of `base..head` on a runner host, `rounds` times, each from
 * the state after `base` (export kept, cache as after the base's scan).
 */
async function measure(host, base, head) {
  const warm = await vmSync(['--config', host.config, '--range', `${base}..${base}`]);
  if (warm.code !== 0) throw new Error(`the scan of ${base.slice(0, 12)} found secrets: ${warm.report.scan?.findings.length} (waive them first)`);
  const snapshot = path.join(host.dir, 'cache-after-base');
  execFileSync('cp', ['-a', host.cache, snapshot]);
  const runs = [];
  for (let r = 0; r < rounds; r++) {
    if (r > 0) await vmSync(['--config', host.config, '--range', `${base}..${base}`]); // the export back to the base's
    fs.rmSync(host.cache, { recursive: true, force: true });
    execFileSync('cp', ['-a', snapshot, host.cache]);
    execFileSync('sync');
    const name = host === hosts.pushed ? 'pushed' : 'alone';
    const run = await vmSync(['--config', host.config, '--range', `${base}..${head}`, ...(values.trace ? ['-v', '--log-format', 'json'] : [])]);
    if (values.trace) {
      fs.mkdirSync(values.trace, { recursive: true });
      fs.writeFileSync(path.join(values.trace, `${name}-${r + 1}.jsonl`), run.stderr);
    }
    const messages = run.stderr.split('\n').map((l) => (l.startsWith('{') ? (JSON.parse(l).message ?? '') : l));
    const line = (re) => messages.find((l) => re.test(l))?.replace(/^.*?secret scan: /, '') ?? null;
    runs.push({ s: fix(run.s), code: run.code, commits_scanned: run.report.scan?.commits_scanned, files: line(/not scanned before/), cache: run.report.scan?.cache ?? null });
    console.error(`${name} round ${r + 1}: ${run.s.toFixed(2)} s (exit ${run.code}; ${runs.at(-1).files ?? 'no tree line'})`);
  }
  return runs;
}

const hosts = { pushed: runnerHost('pushed'), alone: runnerHost('alone') };
try {
  const repo = path.resolve(values.repo);
  git(repo, ['rev-parse', '--git-dir']);
  const { origin } = hosts.pushed;
  git(origin, ['fetch', '--quiet', '--no-tags', repo, '+HEAD:refs/heads/main']);
  const tip = git(origin, ['rev-parse', 'main']);
  const file = values.file;
  let content;
  try {
    content = git(origin, ['show', `${tip}:${file}`]) + '\n';
  } catch {
    content = '';
  }

  // Waive what the tip already holds (findings are never cached: every scan would read those files again).
  const found = await vmSync(['--config', hosts.pushed.config, '--commit', tip]);
  const fingerprints = [...new Set((found.report.scan?.findings ?? []).map((f) => f.fingerprint))].sort();
  const ignore = `# Written by scripts/bench-scan.mjs: findings already in the repository\n${fingerprints.join('\n')}\n`;
  const m = commitTree(origin, treeWith(origin, tip, { '.gitleaksignore': ignore }), [tip], 'bench: the findings already in the repository, waived');
  const changed = `${content}vm-sync bench: one pushed change ${crypto.randomBytes(4).toString('hex')}\n`;
  const p = commitTree(origin, treeWith(origin, m, { [file]: changed }), [m], `bench: one change to ${file}`);
  git(origin, ['update-ref', 'refs/heads/main', p]);

  // The same change alone: E holds the same settings (the .gitleaksignore), A adds the file as P has it.
  const other = hosts.alone.origin;
  const e = commitTree(other, treeWith(other, null, { '.gitleaksignore': ignore }), [], 'bench: the settings');
  const a = commitTree(other, treeWith(other, e, { [file]: changed }), [e], `bench: ${file} alone`);
  git(other, ['update-ref', 'refs/heads/main', a]);

  const files = git(origin, ['ls-tree', '-r', '--name-only', p]).split('\n').length;
  console.error(`tree of P: ${files} files; ${fingerprints.length} finding(s) of the tip waived; change: one line appended to ${file} (${changed.length} bytes)`);
  const pushed = await measure(hosts.pushed, m, p);
  const alone = await measure(hosts.alone, e, a);
  const med = { pushed: median(pushed.map((r) => r.s)), alone: median(alone.map((r) => r.s)) };
  const ratio = fix(med.pushed / med.alone);
  const range = (runs) => `${fix(median(runs.map((r) => r.s)))} (${fix(Math.min(...runs.map((r) => r.s)))}–${fix(Math.max(...runs.map((r) => r.s)))})`;
  console.log(
    `vm-sync scan of one pushed commit: ${rounds} round(s), wall seconds as median (min–max)${rounds < 3 ? ' — fewer than 3 rounds: not a median' : ''}\n` +
      `bundle: ${path.relative(root, cliSource) || cliSource} (sha256 ${cliSha}); machine: ${os.cpus().length} CPUs, node ${process.version}, load ${os.loadavg()[0].toFixed(2)}\n` +
      `repository: ${repo} (${files} files at P); the change: one line appended to ${file}\n\n` +
      `| scan | seconds | what was scanned (last round) |\n|---|---|---|\n` +
      `| pushed: M..P on the repository | ${range(pushed)} | ${pushed.at(-1).commits_scanned} commit(s); ${pushed.at(-1).files} |\n` +
      `| alone: E..A, the change by itself | ${range(alone)} | ${alone.at(-1).commits_scanned} commit(s); ${alone.at(-1).files} |\n\n` +
      `ratio pushed ÷ alone: ${ratio} (target ≤ 2)`,
  );
  fs.writeFileSync(path.resolve(values.out), JSON.stringify({ date: new Date().toISOString(), cli: { path: cliSource, sha256: cliSha }, repo, file, files, rounds, pushed, alone, median: med, ratio }, null, 2) + '\n');
} finally {
  fs.rmSync(tmp, { recursive: true, force: true });
}
