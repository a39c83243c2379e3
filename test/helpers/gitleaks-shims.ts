import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { RunnerRepo } from '../../src/git/repo.js';
import type { SecretScanningConfig } from '../../src/config/types.js';
import { runSecretScan } from '../../src/scan/gate.js';
import { planScan } from '../../src/scan/plan.js';
import { silentEvents } from '../../src/sync/types.js';
import { plantedSecrets } from './secrets.js';

/*
 * Version managers' shims in front of gitleaks, for the tests of "the commit
 * does not choose its scanner" (src/scan/identity.ts requireSameGitleaksIn).
 */

/** The real gitleaks on PATH (.ci/run builds it). */
export const realGitleaks = (): string => (process.env.PATH ?? '').split(':').map((d) => path.join(d, 'gitleaks')).find((f) => fs.existsSync(f)) as string;

/** git with a fixed identity, in `cwd`; its output trimmed. */
export const git = (cwd: string, args: string[]): string =>
  execFileSync('git', args, { cwd, encoding: 'utf8', env: { ...process.env, GIT_AUTHOR_NAME: 't', GIT_AUTHOR_EMAIL: 't@example.com', GIT_COMMITTER_NAME: 't', GIT_COMMITTER_EMAIL: 't@example.com' } }).trim();

/**
 * asdf's shim, reduced to what matters: the nearest .tool-versions (the start
 * directory, then its parents) names the version; "path:DIR" runs
 * DIR/bin/gitleaks (DIR relative to that file's directory); else the real one.
 */
export function asdfLikeShim(dir: string): string {
  const shim = path.join(dir, 'bin', 'gitleaks');
  fs.mkdirSync(path.dirname(shim), { recursive: true });
  fs.writeFileSync(
    shim,
    `#!/bin/sh
d=$(pwd)
while :; do
  if [ -f "$d/.tool-versions" ]; then
    v=$(sed -n 's/^gitleaks //p' "$d/.tool-versions" | head -n 1)
    case $v in path:/*) exec "\${v#path:}/bin/gitleaks" "$@" ;; path:*) exec "$d/\${v#path:}/bin/gitleaks" "$@" ;; esac
    break
  fi
  [ "$d" = / ] && break
  d=$(dirname "$d")
done
exec '${realGitleaks()}' "$@"
`,
    { mode: 0o755 },
  );
  return shim;
}

/**
 * A commit's own "gitleaks" at `file`: it answers `version` as the real one
 * does, writes an empty report for any scan, and leaves `ran` behind when it
 * was started at all.
 */
export function commitsOwnGitleaks(file: string, ran: string): void {
  const answer = execFileSync(realGitleaks(), ['version'], { encoding: 'utf8' }).trim();
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, `#!/bin/sh\n: > '${ran}'\nif [ "$1" = version ]; then echo '${answer}'; exit 0; fi\nr=""; p=""; for a in "$@"; do [ "$p" = --report-path ] && r=$a; p=$a; done\n[ -n "$r" ] && echo '[]' > "$r"\necho "3:04PM INF no leaks found" >&2\nexit 0\n`, { mode: 0o755 });
}

/** A repository whose first commit holds a token in `config.env`: only a scan of the tree sees it in a later range. */
export function repoWithOldToken(repoDir: string): { repo: RunnerRepo; base: string } {
  fs.mkdirSync(repoDir, { recursive: true });
  git(repoDir, ['init', '--quiet', '-b', 'main']);
  fs.writeFileSync(path.join(repoDir, 'README.md'), '# app\n');
  fs.writeFileSync(path.join(repoDir, 'config.env'), `GITHUB_TOKEN=${plantedSecrets().github}\n`);
  git(repoDir, ['add', '.']);
  git(repoDir, ['commit', '--quiet', '-m', 'base']);
  return { repo: new RunnerRepo(repoDir, 'origin', 'main', null), base: git(repoDir, ['rev-parse', 'HEAD']) };
}

/** The scan settings with `gitleaksPath`. */
export const shimSettings = (gitleaksPath: string): SecretScanningConfig => ({ enabled: true, tool: 'gitleaks', configPath: '.gitleaks.toml', blockOnSecrets: true, gitleaksPath, timeoutS: 300 });

/** Scans `base..tip` with the tree exported at `exportDir`: whether the old token was found, the scan passed, or it was refused (code and message). */
export async function scanOutcome(repo: RunnerRepo, settings: SecretScanningConfig, range: { base: string; tip: string }, exportDir: string, cacheDir: string | null): Promise<string> {
  const plan = await planScan(repo, { kind: 'range', range: `${range.base}..${range.tip}` });
  try {
    const report = await runSecretScan({ settings, plan, repoDir: repo.dir, countCommitsAddingText: (s) => repo.countCommitsAddingText(s), exportDir, cacheDir, events: silentEvents });
    return report.findings.some((f) => f.file === 'config.env') ? 'blocked: token found' : `passed (blocked=${report.blocked})`;
  } catch (error) {
    return `refused: ${(error as { code?: string }).code}: ${(error as Error).message}`;
  }
}
