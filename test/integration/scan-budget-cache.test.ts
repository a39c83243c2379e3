import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { RunnerRepo } from '../../src/git/repo.js';
import { runSecretScan } from '../../src/scan/gate.js';
import { planScan } from '../../src/scan/plan.js';
import { silentEvents } from '../../src/sync/types.js';
import { git } from '../helpers/gitleaks-shims.js';

/*
 * A file left unscanned because the scan's budget for inflated streams was
 * used up by other files is a fact of that scan, not of the file: the scan
 * cache never remembers it, and the next scan (with room) reads it.
 */
let dir: string;
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

test('a compressed file past the inflate budget is reported, not remembered, and scanned by the next scan', async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-scan-budget-'));
  const repoDir = path.join(dir, 'repo');
  fs.mkdirSync(path.join(repoDir, 'logs'), { recursive: true });
  git(repoDir, ['init', '--quiet', '-b', 'main']);
  const filler = 'nothing to see here\n'.repeat(5000);
  for (const n of [1, 2, 3]) fs.writeFileSync(path.join(repoDir, 'logs', `day${n}.log.gz`), zlib.gzipSync(`${filler}day ${n}\n`));
  git(repoDir, ['add', '.']);
  git(repoDir, ['commit', '--quiet', '-m', 'logs']);
  const tip = git(repoDir, ['rev-parse', 'HEAD']);
  const repo = new RunnerRepo(repoDir, 'origin', 'main', null);
  const exportDir = path.join(dir, 'export');
  fs.mkdirSync(exportDir);
  await repo.exportTree(tip, exportDir);
  const cacheDir = path.join(dir, 'cache');
  const settings = { enabled: true, tool: 'gitleaks' as const, configPath: '.gitleaks.toml', blockOnSecrets: true, gitleaksPath: null, timeoutS: 300 };
  const scan = async (inflatedMax?: number) =>
    runSecretScan({ settings, plan: await planScan(repo, { kind: 'resync', head: tip, deployed: [] }), repoDir, countCommitsAddingText: (s) => repo.countCommitsAddingText(s), exportDir, cacheDir, events: silentEvents, ...(inflatedMax ? { inflatedMax } : {}) });

  const tight = await scan(150_000);
  const over = (tight.unscanned ?? []).filter((u) => /for inflated streams is used up/.test(u.detail));
  expect(over).toHaveLength(2);
  // As the report shows it: path, reason, detail (nothing internal).
  expect(Object.keys(over[0]).sort()).toEqual(['detail', 'path', 'reason']);
  // The next scan, with room: those two are read (not recalled as unscanned), the one that fit is cached clean.
  const roomy = await scan();
  expect((roomy.unscanned ?? []).filter((u) => u.path.startsWith('logs/'))).toEqual([]);
  expect(roomy.cache).toMatchObject({ files_scanned: 2, files_cached: 1 });
}, 120_000);
