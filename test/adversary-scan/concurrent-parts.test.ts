import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { RunnerRepo } from '../../src/git/repo.js';
import { runSecretScan } from '../../src/scan/gate.js';
import { planScan } from '../../src/scan/plan.js';
import { silentEvents } from '../../src/sync/types.js';
import { World } from '../helpers/world.js';
import { commitPush, head } from './helpers.js';

/*
 * Adversary (review of 096187e: the commit and tree parts, gitleaks' log
 * check and the commit count run at once).
 *
 * 1. The log check (the canary scan) is started before everything and only
 *    awaited after scanWith succeeded. When anything before that throws
 *    (a part fails, config_invalid, vetNewConfig), runSecretScan returns its
 *    error while the canary's gitleaks is still running and its scratch
 *    directories (vm-sync-gitleaksprobe-*, vm-sync-gitleaks-*) still exist.
 *    Before, the canary was awaited first: nothing outlived the scan.
 * 2. Both the canary and the scan fail (a gitleaks whose log vm-sync cannot
 *    read at all): before, the canary's error ("does not log what it skips
 *    ... use gitleaks 8.30.x") was reported; now the scan's own symptom
 *    (scan_range_unresolved: "an unknown number of commits") is.
 * 3. countCommitsAddingText starts beside gitleaks git mode and is never
 *    awaited (nor cancellable) when gitleaks fails, times out or is
 *    cancelled: its git process outlives the scan (before: it only ran
 *    after gitleaks succeeded).
 */

const real = (): string => execFileSync('sh', ['-c', 'command -v gitleaks'], { encoding: 'utf8' }).trim();
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** This process's scratch directories of `kind` (the owner stamp holds the pid). */
function ownScratch(kind: string): string[] {
  return fs.readdirSync(os.tmpdir()).filter((n) => n.startsWith(`vm-sync-${kind}-`) && n.includes(`-${process.pid}-`));
}

/** Command lines of this process's direct children. */
function children(): string[] {
  try {
    return execFileSync('ps', ['-o', 'args=', '--ppid', String(process.pid)], { encoding: 'utf8' }).split('\n').filter(Boolean);
  } catch {
    return [];
  }
}

async function settle(wrapper: string): Promise<void> {
  for (let i = 0; i < 100 && (ownScratch('gitleaksprobe').length > 0 || children().some((c) => c.includes(wrapper))); i++) await sleep(200);
}

let world: World;
beforeAll(async () => {
  world = await World.create(['c01']);
  commitPush(world, [['app.txt', 'v1\n']], 'base');
  expect((await world.cli(['sync'])).code).toBe(0);
}, 120_000);
afterAll(() => world?.destroy());

test('a scan that fails leaves no gitleaks running and no scratch directory behind (the log check included)', async () => {
  const wrapper = path.join(world.dir, 'gitleaks-slow-probe');
  // The log check (run in vm-sync's gitleaksprobe scratch dir) is slow; git mode fails at once.
  fs.writeFileSync(
    wrapper,
    `#!/bin/sh
case "$PWD" in *vm-sync-gitleaksprobe-*) sleep 6; exec "${real()}" "$@";; esac
if [ "$1" = git ]; then echo "ERR git log failed" >&2; exit 1; fi
exec "${real()}" "$@"
`,
    { mode: 0o755 },
  );
  world.writeConfig({ repository: [`secret_scanning: { gitleaks_path: ${wrapper} }`] });
  const base = head(world);
  const tip = commitPush(world, [['note.txt', 'clean\n']], 'a clean change');
  try {
    const run = await world.cli(['scan', '--range', `${base}..${tip}`]);
    const left = { probeDirs: ownScratch('gitleaksprobe'), gitleaks: children().filter((c) => c.includes(wrapper)) };
    expect(run.code).not.toBe(0);
    expect(run.json.error?.code).toBe('scan_failed');
    // The scan has returned: nothing it started may still run or hold a scratch directory.
    expect(left).toEqual({ probeDirs: [], gitleaks: [] });
  } finally {
    await settle(wrapper);
    world.writeConfig();
  }
}, 120_000);

test("a gitleaks whose log vm-sync cannot read fails with the log check's error (as before), not a symptom of it", async () => {
  const wrapper = path.join(world.dir, 'gitleaks-no-log');
  // Scans and reports like gitleaks, but its log never reaches vm-sync (another log format, a shim that drops it).
  fs.writeFileSync(wrapper, `#!/bin/sh\nexec "${real()}" "$@" 2>/dev/null\n`, { mode: 0o755 });
  world.writeConfig({ repository: [`secret_scanning: { gitleaks_path: ${wrapper} }`] });
  const base = head(world);
  const tip = commitPush(world, [['note2.txt', 'clean\n']], 'another clean change');
  try {
    const run = await world.cli(['scan', '--range', `${base}..${tip}`]);
    expect(run.code).not.toBe(0);
    expect({ code: run.json.error?.code, says: /does not log what it skips/.test(run.json.error?.message ?? '') }).toEqual({ code: 'scan_failed', says: true });
  } finally {
    await settle(wrapper);
    world.writeConfig();
  }
}, 120_000);

test('gitleaks git mode failing: the commit count is not left running after the scan returned', async () => {
  const wrapper = path.join(world.dir, 'gitleaks-git-fails');
  fs.writeFileSync(wrapper, `#!/bin/sh\nif [ "$1" = git ]; then echo "ERR git log failed" >&2; exit 1; fi\nexec "${real()}" "$@"\n`, { mode: 0o755 });
  const base = head(world);
  const tip = commitPush(world, [['note3.txt', 'clean\n']], 'a third clean change');
  world.ws.git(world.runnerRepo, ['fetch', '--quiet', 'origin', '+refs/heads/*:refs/remotes/origin/*']);
  const repo = new RunnerRepo(world.runnerRepo, 'origin', 'main', null);
  const plan = await planScan(repo, { kind: 'range', range: `${base}..${tip}` });
  // A count that takes a while (`git log --numstat` over a long history does).
  let counting: { started: number; finished: number | null } | null = null;
  const countCommitsAddingText = async (selection: string[]): Promise<number | null> => {
    const mine = (counting = { started: Date.now(), finished: null as number | null });
    await sleep(3000);
    const n = await repo.countCommitsAddingText(selection);
    mine.finished = Date.now();
    return n;
  };
  const settings = { enabled: true, tool: 'gitleaks' as const, configPath: '.gitleaks.toml', blockOnSecrets: true, gitleaksPath: wrapper, timeoutS: 600 };
  const error = await runSecretScan({ settings, plan, repoDir: world.runnerRepo, countCommitsAddingText, exportDir: null, events: silentEvents }).then(
    () => null,
    (e: unknown) => e as { code?: string },
  );
  const returned = Date.now();
  expect(error?.code).toBe('scan_failed');
  // Either never started (gitleaks failed first) or done before the scan returned.
  const c = counting as { started: number; finished: number | null } | null;
  expect(c === null || (c.finished !== null && c.finished <= returned)).toBe(true);
  await sleep(3500);
}, 60_000);
