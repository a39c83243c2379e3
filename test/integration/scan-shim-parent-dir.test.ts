import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { plantedSecrets } from '../helpers/secrets.js';
import { RunnerRepo } from '../../src/git/repo.js';
import { runSecretScan } from '../../src/scan/gate.js';
import { planScan } from '../../src/scan/plan.js';
import { silentEvents } from '../../src/sync/types.js';

/*
 * Review of d66804e (requireSameGitleaksIn). A gitleaks_path that is not gitleaks itself is
 * refused only when the *top* of the scanned tree holds a version manager's file. asdf, mise,
 * aqua and proto read those files from the directory they start in *and every parent*. The
 * export gitleaks dir runs in lives in the state directory beside main_repo_path
 * (<parent>/.<name>.vm-sync/exports/run-N/tree). With main_repo_path inside a checkout of the
 * commit (a relative main_repo_path in the Action's workspace, which actions/checkout filled
 * with the commit), the commit's `.tool-versions` (export-ignored, so the export's top has none)
 * is in a parent of the export: asdf's shim runs the commit's own program, which answers the
 * version as gitleaks does (the private directory's answer is the real one's) and reports
 * nothing. The same holds for the scratch view under a shared /tmp (any local user's
 * /tmp/.tool-versions: not testable here, jest's process.env does not reach os.tmpdir()).
 */

let dir: string;
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

const real = (): string => (process.env.PATH ?? '').split(':').map((d) => path.join(d, 'gitleaks')).find((f) => fs.existsSync(f)) as string;
const git = (cwd: string, args: string[]): string => execFileSync('git', args, { cwd, encoding: 'utf8', env: { ...process.env, GIT_AUTHOR_NAME: 't', GIT_AUTHOR_EMAIL: 't@example.com', GIT_COMMITTER_NAME: 't', GIT_COMMITTER_EMAIL: 't@example.com' } }).trim();

test('a commit\'s .tool-versions in a parent of the export (main_repo_path inside its checkout) chooses the scanner: the scan must not pass', async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-review23b-parent-'));
  // asdf's shim, reduced to what matters (as in scan-shim-path-version.test.ts).
  const shimmed = path.join(dir, 'bin', 'gitleaks');
  fs.mkdirSync(path.dirname(shimmed));
  fs.writeFileSync(
    shimmed,
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
exec '${real()}' "$@"
`,
    { mode: 0o755 },
  );

  const repoDir = path.join(dir, 'origin');
  fs.mkdirSync(repoDir);
  git(repoDir, ['init', '--quiet', '-b', 'main']);
  fs.writeFileSync(path.join(repoDir, 'README.md'), '# app\n');
  // A token committed before the range scanned: only the tree scan (which runs inside the export) can see it.
  fs.writeFileSync(path.join(repoDir, 'config.env'), `GITHUB_TOKEN=${plantedSecrets().github}\n`);
  git(repoDir, ['add', '.']);
  git(repoDir, ['commit', '--quiet', '-m', 'base']);
  const base = git(repoDir, ['rev-parse', 'HEAD']);
  // The commit: its own "gitleaks", named by .tool-versions; both kept out of the export.
  const answer = execFileSync(real(), ['version'], { encoding: 'utf8' }).trim();
  const ran = path.join(dir, 'commit-program-ran');
  fs.mkdirSync(path.join(repoDir, 'tools', 'gl', 'bin'), { recursive: true });
  fs.writeFileSync(path.join(repoDir, 'tools', 'gl', 'bin', 'gitleaks'), `#!/bin/sh\n: > '${ran}'\nif [ "$1" = version ]; then echo '${answer}'; exit 0; fi\nr=""; p=""; for a in "$@"; do [ "$p" = --report-path ] && r=$a; p=$a; done\n[ -n "$r" ] && echo '[]' > "$r"\necho "3:04PM INF no leaks found" >&2\nexit 0\n`, { mode: 0o755 });
  fs.writeFileSync(path.join(repoDir, '.tool-versions'), 'gitleaks path:./tools/gl\n');
  fs.writeFileSync(path.join(repoDir, '.gitattributes'), '.tool-versions export-ignore\ntools/ export-ignore\n');
  git(repoDir, ['add', '.']);
  git(repoDir, ['commit', '--quiet', '-m', 'tools']);
  const tip = git(repoDir, ['rev-parse', 'HEAD']);

  // The workflow's checkout of the commit, and main_repo_path inside it (vm-sync's clone and its state directory).
  const ws = path.join(dir, 'ws');
  git(dir, ['clone', '--quiet', repoDir, ws]);
  const clone = path.join(ws, 'clone');
  git(ws, ['clone', '--quiet', repoDir, clone]);
  const repo = new RunnerRepo(clone, 'origin', 'main', null);
  const exportDir = path.join(ws, '.clone.vm-sync', 'exports', 'run-1', 'tree');
  fs.mkdirSync(exportDir, { recursive: true });
  await repo.exportTree(tip, exportDir);
  expect(fs.existsSync(path.join(exportDir, '.tool-versions'))).toBe(false);
  expect(fs.existsSync(path.join(exportDir, 'config.env'))).toBe(true);

  const settings = { enabled: true, tool: 'gitleaks' as const, configPath: '.gitleaks.toml', blockOnSecrets: true, gitleaksPath: shimmed, timeoutS: 300 };
  const plan = await planScan(repo, { kind: 'range', range: `${base}..${tip}` });
  let outcome: string;
  try {
    const report = await runSecretScan({ settings, plan, repoDir: clone, countCommitsAddingText: (s) => repo.countCommitsAddingText(s), exportDir, cacheDir: null, events: silentEvents });
    outcome = report.findings.some((f) => f.file === 'config.env') ? 'blocked: token found' : `passed (blocked=${report.blocked})`;
  } catch (error) {
    outcome = `refused: ${(error as { code?: string }).code}`;
  }
  expect(outcome).toMatch(/^(blocked: token found|refused: )/);
  // And the commit's program never ran on the runner host.
  expect(fs.existsSync(ran)).toBe(false);
}, 240_000);
