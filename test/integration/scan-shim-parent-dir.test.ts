import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { RunnerRepo } from '../../src/git/repo.js';
import { asdfLikeShim, commitsOwnGitleaks, git, repoWithOldToken, scanOutcome, shimSettings } from '../helpers/gitleaks-shims.js';

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

test('a commit\'s .tool-versions in a parent of the export (main_repo_path inside its checkout) chooses the scanner: the scan must not pass', async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-scan-shim-parent-'));
  const shim = asdfLikeShim(dir);
  const repoDir = path.join(dir, 'origin');
  const { base } = repoWithOldToken(repoDir);
  // The commit: its own "gitleaks", named by .tool-versions; both kept out of the export.
  const ran = path.join(dir, 'commit-program-ran');
  commitsOwnGitleaks(path.join(repoDir, 'tools', 'gl', 'bin', 'gitleaks'), ran);
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

  expect(await scanOutcome(repo, shimSettings(shim), { base, tip }, exportDir, null)).toMatch(/^(blocked: token found|refused: scan_failed: .*ws\/\.tool-versions stands in the tree being scanned or above it)/);
  // And the commit's program never ran on the runner host.
  expect(fs.existsSync(ran)).toBe(false);
}, 240_000);
