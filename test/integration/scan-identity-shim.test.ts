import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { plantedSecrets } from '../helpers/secrets.js';
import { git, realGitleaks, repoWithOldToken, scanOutcome, shimSettings } from '../helpers/gitleaks-shims.js';
import { RunnerRepo } from '../../src/git/repo.js';
import { runSecretScan } from '../../src/scan/gate.js';
import { planScan } from '../../src/scan/plan.js';
import { silentEvents } from '../../src/sync/types.js';

/*
 * The adversary review of e28cb71 (gitleaks identified by the SHA-256 of its
 * executable) found this, and it is kept as the regression test of its fix.
 * End to end through runSecretScan, with real gitleaks: on a runner host where
 * `gitleaks` is a version manager's ELF shim (aqua: ~/.aqua/bin/gitleaks ->
 * aqua-proxy; mise: shims are symlinks to the mise binary), the shim's bytes
 * were taken for "the build". Switching the shim to a gitleaks that words its
 * skip messages otherwise was then not probed again (the shim's digest was
 * recorded), and a token under node_modules/ (skipped by gitleaks' default
 * allowlist, so only found by vm-sync's rescan) passed as clean. Now only an
 * executable whose Go build information names gitleaks' main module is exact;
 * a shim is asked its version and probed in each process.
 */

let dir: string;
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

const real = realGitleaks;

/** An ELF that execs the program named in `targetFile` (read at each start): what aqua-proxy / a mise shim do. */
function shim(targetFile: string): string {
  const source = path.join(dir, 'dispatch.c');
  const exe = path.join(dir, 'gitleaks');
  fs.writeFileSync(
    source,
    `#include <stdio.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
  static char target[4096];
  FILE *f = fopen(${JSON.stringify(targetFile)}, "r");
  if (!f) return 127;
  size_t n = fread(target, 1, sizeof target - 1, f);
  fclose(f);
  target[n] = 0;
  char *nl = strchr(target, '\\n');
  if (nl) *nl = 0;
  argv[0] = target;
  execv(target, argv);
  return 126;
}
`,
  );
  execFileSync('cc', ['-O0', '-o', exe, source]);
  return exe;
}

test('a gitleaks switched behind an ELF shim is probed again: a token in an allowlisted path is never deployed as clean', async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-scan-shim-'));
  const repoDir = path.join(dir, 'repo');
  fs.mkdirSync(repoDir);
  git(repoDir, ['init', '--quiet', '-b', 'main']);
  fs.writeFileSync(path.join(repoDir, 'README.md'), '# app\n');
  git(repoDir, ['add', '.']);
  git(repoDir, ['commit', '--quiet', '-m', 'base']);
  const base = git(repoDir, ['rev-parse', 'HEAD']);
  fs.mkdirSync(path.join(repoDir, 'node_modules', 'p'), { recursive: true });
  fs.writeFileSync(path.join(repoDir, 'node_modules', 'p', 'index.js'), `module.exports = { token: "${plantedSecrets().github}" };\n`);
  git(repoDir, ['add', '--force', '.']);
  git(repoDir, ['commit', '--quiet', '-m', 'vendor a package']);
  const tip = git(repoDir, ['rev-parse', 'HEAD']);

  const targetFile = path.join(dir, 'shim-target');
  fs.writeFileSync(targetFile, real());
  const gitleaks = shim(targetFile);
  // The same release, logging its skips in other words (as another release may): vm-sync's parser sees none.
  const reworded = path.join(dir, 'gitleaks-reworded');
  fs.writeFileSync(reworded, `#!/bin/sh\nerr=$(mktemp)\n'${real()}' "$@" 2>"$err"\nrc=$?\nsed 's/skipping/not scanning/' "$err" >&2\nrm -f "$err"\nexit $rc\n`, { mode: 0o755 });

  const repo = new RunnerRepo(repoDir, 'origin', 'main', null);
  const cacheDir = path.join(dir, 'scan-cache');
  const settings = { enabled: true, tool: 'gitleaks' as const, configPath: '.gitleaks.toml', blockOnSecrets: true, gitleaksPath: gitleaks, timeoutS: 300 };
  // Each run through its own path to the shim (a symlink, as ~/.aqua/bin/gitleaks is): checkGitleaksLogs keeps a
  // per-process memo by path, and each vm-sync run is a process of its own.
  const scan = async (run: string): Promise<unknown> => {
    const exportDir = fs.mkdtempSync(path.join(dir, 'export-'));
    await repo.exportTree(tip, exportDir);
    const plan = await planScan(repo, { kind: 'range', range: `${base}..${tip}` });
    const link = path.join(dir, `bin-${run}`, 'gitleaks');
    fs.mkdirSync(path.dirname(link));
    fs.symlinkSync(gitleaks, link);
    return runSecretScan({ settings: { ...settings, gitleaksPath: link }, plan, repoDir, countCommitsAddingText: (s) => repo.countCommitsAddingText(s), exportDir, cacheDir, events: silentEvents });
  };

  // Run 1: the shim starts gitleaks 8.30.1; the probe passes; the token is found (commits and tree) and blocks.
  const first = (await scan('1')) as { blocked: boolean; findings: Array<{ file: string }> };
  expect(first.blocked).toBe(true);
  expect(first.findings.map((f) => f.file)).toContain('node_modules/p/index.js');
  // A shim is not exact: nothing is recorded for it.
  expect(fs.existsSync(path.join(cacheDir, 'probed-1'))).toBe(false);

  // The shim is switched (`aqua.yaml`, `.tool-versions`, `mise use -g gitleaks@...`). Its bytes are unchanged.
  fs.writeFileSync(targetFile, reworded);
  // The rule: either that build is probed (and refused) or the tree scan still finds the token.
  let outcome: string;
  try {
    const second = (await scan('2')) as { blocked: boolean; findings: Array<{ file: string }> };
    outcome = second.findings.some((f) => f.file === 'node_modules/p/index.js') ? 'blocked: token found in the tree' : `tree reported clean (blocked=${second.blocked}, findings: ${JSON.stringify(second.findings.map((f) => f.file))})`;
  } catch (error) {
    outcome = `refused: ${(error as { code?: string }).code}`;
  }
  expect(outcome).toBe('refused: scan_failed');
}, 240_000);

/*
 * gitleaks' dir mode runs inside the tree being scanned (the paths it reports,
 * and so the config's path rules and .gitleaksignore, are relative to it). A
 * version manager's shim picks the program by files of the directory it starts
 * in: the commit could choose the gitleaks that scans it. A shim whose
 * `version` answers otherwise inside the tree than outside it fails the scan.
 */
test('a shim that a committed .tool-versions points at another gitleaks: the scan fails, never a pass by the commit\'s choice', async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-scan-shim-cwd-'));
  // A "gitleaks" that finds nothing: what a commit would choose.
  const blind = path.join(dir, 'gitleaks-0.0.1');
  fs.writeFileSync(blind, `#!/bin/sh\nif [ "$1" = version ]; then echo 0.0.1; exit 0; fi\nr=""; p=""; for a in "$@"; do [ "$p" = --report-path ] && r=$a; p=$a; done\necho '[]' > "$r"\necho "2:51PM INF no leaks found" >&2\nexit 0\n`, { mode: 0o755 });
  // As asdf's and mise's shims do: the version named in .tool-versions of the directory it starts in.
  const shimmed = path.join(dir, 'bin', 'gitleaks');
  fs.mkdirSync(path.dirname(shimmed));
  fs.writeFileSync(shimmed, `#!/bin/sh\nif [ -f .tool-versions ] && grep -q '^gitleaks 0.0.1' .tool-versions; then exec '${blind}' "$@"; fi\nexec '${real()}' "$@"\n`, { mode: 0o755 });

  const repoDir = path.join(dir, 'repo');
  const { repo, base } = repoWithOldToken(repoDir);
  const scanTip = async (cacheDir: string | null): Promise<string> => {
    git(repoDir, ['add', '.']);
    git(repoDir, ['commit', '--quiet', '--allow-empty', '-m', 'next']);
    const tip = git(repoDir, ['rev-parse', 'HEAD']);
    const exportDir = fs.mkdtempSync(path.join(dir, 'export-'));
    await repo.exportTree(tip, exportDir);
    return scanOutcome(repo, shimSettings(shimmed), { base, tip }, exportDir, cacheDir);
  };

  // The shim without a .tool-versions in the tree: the real gitleaks, the token found.
  expect(await scanTip(null)).toBe('blocked: token found');
  // The commit adds .tool-versions naming the blind one: with and without the scan cache, refused, and the
  // shim is not started inside the tree at all.
  fs.writeFileSync(path.join(repoDir, '.tool-versions'), 'gitleaks 0.0.1\n');
  for (const cacheDir of [null, path.join(dir, 'scan-cache')]) {
    const outcome = await scanTip(cacheDir);
    expect(outcome).toMatch(/^refused: scan_failed: .*\/\.tool-versions stands in the tree being scanned or above it, where a version manager reads it.*gitleaks_path/);
  }
  // A shim steered by a file vm-sync does not know by name: told apart by its answer inside the tree.
  fs.rmSync(path.join(repoDir, '.tool-versions'));
  fs.writeFileSync(shimmed, `#!/bin/sh\nif [ -f .gitleaks-version ]; then exec '${blind}' "$@"; fi\nexec '${real()}' "$@"\n`, { mode: 0o755 });
  fs.writeFileSync(path.join(repoDir, '.gitleaks-version'), '0.0.1\n');
  expect(await scanTip(null)).toMatch(/^refused: scan_failed: .*not the same program inside the tree being scanned.*gitleaks_path/);
}, 240_000);
