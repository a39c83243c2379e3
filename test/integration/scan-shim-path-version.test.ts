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
 * From the adversary review of c6dda87 (requireSameGitleaksIn). The guard compares the text of
 * `gitleaks version` asked from a private directory and from inside the tree.
 * The answer is printed by whatever program the shim picked, so a commit that
 * makes the shim pick a program *of its own* can answer the same text. asdf
 * (and mise) accept `path:` versions in .tool-versions ("path:DIR": run
 * DIR/bin/<tool>); with a relative DIR that is the tree itself. The program
 * below answers `version` exactly as the real gitleaks does (it asks it) and
 * reports every scan clean: a token committed before the scanned range, in a
 * plain file of the deployed tree, passes the gate.
 */

let dir: string;
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

const real = (): string => (process.env.PATH ?? '').split(':').map((d) => path.join(d, 'gitleaks')).find((f) => fs.existsSync(f)) as string;
const git = (cwd: string, args: string[]): string => execFileSync('git', args, { cwd, encoding: 'utf8', env: { ...process.env, GIT_AUTHOR_NAME: 't', GIT_AUTHOR_EMAIL: 't@example.com', GIT_COMMITTER_NAME: 't', GIT_COMMITTER_EMAIL: 't@example.com' } }).trim();

test('a committed .tool-versions "gitleaks path:./tools/gl" runs a program of the commit that answers the same version: the scan must not pass', async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-review23-shim-'));
  // asdf's shim, reduced to what matters: the nearest .tool-versions (the start directory, then its parents)
  // names the version; "path:DIR" runs DIR/bin/gitleaks (DIR relative to that file's directory); else the installed one.
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

  const repoDir = path.join(dir, 'repo');
  fs.mkdirSync(repoDir);
  git(repoDir, ['init', '--quiet', '-b', 'main']);
  fs.writeFileSync(path.join(repoDir, 'README.md'), '# app\n');
  // A token committed before the range scanned: only the tree scan (which runs inside the tree) can see it.
  fs.writeFileSync(path.join(repoDir, 'config.env'), `GITHUB_TOKEN=${plantedSecrets().github}\n`);
  git(repoDir, ['add', '.']);
  git(repoDir, ['commit', '--quiet', '-m', 'base']);
  const base = git(repoDir, ['rev-parse', 'HEAD']);
  const repo = new RunnerRepo(repoDir, 'origin', 'main', null);
  const settings = { enabled: true, tool: 'gitleaks' as const, configPath: '.gitleaks.toml', blockOnSecrets: true, gitleaksPath: shimmed, timeoutS: 300 };
  const scanTip = async (): Promise<string> => {
    git(repoDir, ['add', '.']);
    git(repoDir, ['commit', '--quiet', '--allow-empty', '-m', 'next']);
    const tip = git(repoDir, ['rev-parse', 'HEAD']);
    const exportDir = fs.mkdtempSync(path.join(dir, 'export-'));
    await repo.exportTree(tip, exportDir);
    const plan = await planScan(repo, { kind: 'range', range: `${base}..${tip}` });
    try {
      const report = await runSecretScan({ settings, plan, repoDir, countCommitsAddingText: (s) => repo.countCommitsAddingText(s), exportDir, cacheDir: null, events: silentEvents });
      return report.findings.some((f) => f.file === 'config.env') ? 'blocked: token found' : `passed (blocked=${report.blocked})`;
    } catch (error) {
      return `refused: ${(error as { code?: string }).code}`;
    }
  };

  // Without the commit's choice: the real gitleaks, the token found.
  expect(await scanTip()).toBe('blocked: token found');

  // The commit ships its own "gitleaks": `version` is the real one's answer (any release's text would do);
  // any scan writes an empty report and says "no leaks found".
  const own = path.join(repoDir, 'tools', 'gl', 'bin', 'gitleaks');
  fs.mkdirSync(path.dirname(own), { recursive: true });
  const answer = execFileSync(real(), ['version'], { encoding: 'utf8' }).trim();
  const ran = path.join(dir, 'commit-program-ran');
  fs.writeFileSync(own, `#!/bin/sh\n: > '${ran}'\nif [ "$1" = version ]; then echo '${answer}'; exit 0; fi\nr=""; p=""; for a in "$@"; do [ "$p" = --report-path ] && r=$a; p=$a; done\necho '[]' > "$r"\necho "3:04PM INF no leaks found" >&2\nexit 0\n`, { mode: 0o755 });
  fs.writeFileSync(path.join(repoDir, '.tool-versions'), 'gitleaks path:./tools/gl\n');
  expect(await scanTip()).toMatch(/^(blocked: token found|refused: )/);
  // And the commit's program never ran on the runner host (not even to be asked its version).
  expect(fs.existsSync(ran)).toBe(false);
}, 240_000);
