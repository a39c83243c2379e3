import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { asdfLikeShim, commitsOwnGitleaks, git, repoWithOldToken, scanOutcome, shimSettings } from '../helpers/gitleaks-shims.js';

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

test('a committed .tool-versions "gitleaks path:./tools/gl" runs a program of the commit that answers the same version: the scan must not pass', async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-scan-shim-path-'));
  const shim = asdfLikeShim(dir);
  const repoDir = path.join(dir, 'repo');
  const { repo, base } = repoWithOldToken(repoDir);
  const scanTip = async (): Promise<string> => {
    git(repoDir, ['add', '.']);
    git(repoDir, ['commit', '--quiet', '--allow-empty', '-m', 'next']);
    const tip = git(repoDir, ['rev-parse', 'HEAD']);
    const exportDir = fs.mkdtempSync(path.join(dir, 'export-'));
    await repo.exportTree(tip, exportDir);
    return scanOutcome(repo, shimSettings(shim), { base, tip }, exportDir, null);
  };

  // Without the commit's choice: the real gitleaks, the token found.
  expect(await scanTip()).toBe('blocked: token found');
  // The commit ships its own "gitleaks", answering `version` as the real one does, and names it.
  const ran = path.join(dir, 'commit-program-ran');
  commitsOwnGitleaks(path.join(repoDir, 'tools', 'gl', 'bin', 'gitleaks'), ran);
  fs.writeFileSync(path.join(repoDir, '.tool-versions'), 'gitleaks path:./tools/gl\n');
  expect(await scanTip()).toMatch(/^(blocked: token found|refused: )/);
  // And the commit's program never ran on the runner host (not even to be asked its version).
  expect(fs.existsSync(ran)).toBe(false);
}, 240_000);
