import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { World } from '../helpers/world.js';
import { commitPush, head } from './helpers.js';

/*
 * Adversary (review of 096187e): attacks on the concurrent scan parts that
 * held (kept as regression tests). Each runs `vm-sync scan` on the runner
 * host (cache on) with a gitleaks wrapper, and checks the verdict, that the
 * scan cache was not written, and that nothing was left running.
 */

const real = (): string => execFileSync('sh', ['-c', 'command -v gitleaks'], { encoding: 'utf8' }).trim();
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const probe = (): string[] => fs.readdirSync(os.tmpdir()).filter((n) => /^vm-sync-(gitleaksprobe|gitleaks|scanview)-/.test(n) && n.includes(`-${process.pid}-`));
function children(): string[] {
  try {
    return execFileSync('ps', ['-o', 'args=', '--ppid', String(process.pid)], { encoding: 'utf8' }).split('\n').filter((l) => /gitleaks/.test(l));
  } catch {
    return [];
  }
}
/** Every file of the scan cache with its content hash. */
function cacheState(world: World): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (dir: string): void => {
    if (!fs.existsSync(dir)) return;
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, e.name);
      if (e.isDirectory()) walk(full);
      else if (full.includes('scan-cache')) out[full] = crypto.createHash('sha256').update(fs.readFileSync(full)).digest('hex');
    }
  };
  walk(path.join(world.dir, 'runner'));
  return out;
}

let world: World;
let n = 0;
beforeAll(async () => {
  world = await World.create(['h01']);
  commitPush(world, [['app.txt', 'v1\n']], 'base');
  expect((await world.cli(['sync'])).code).toBe(0);
  // Warm the cache with the real gitleaks.
  const base = head(world);
  const tip = commitPush(world, [['warm.txt', 'warm\n']], 'warm');
  expect((await world.cli(['scan', '--range', `${base}..${tip}`])).code).toBe(0);
}, 120_000);
afterAll(() => world?.destroy());

async function attempt(script: string, extra: string[] = [], signalAfterMs?: number, probeToo = false): Promise<{ code: number; error?: { code: string; message: string }; cacheChanged: boolean; left: string[] }> {
  const wrapper = path.join(world.dir, `gl-${++n}`);
  fs.writeFileSync(wrapper, `#!/bin/sh\nREAL="${real()}"\n${probeToo ? '' : 'case "$PWD" in *vm-sync-gitleaksprobe-*) exec "$REAL" "$@";; esac\n'}${script}\nexec "$REAL" "$@"\n`, { mode: 0o755 });
  world.writeConfig({ repository: [`secret_scanning: { gitleaks_path: ${wrapper}${extra.length ? `, ${extra.join(', ')}` : ''} }`] });
  const base = head(world);
  const tip = commitPush(world, [[`f${n}.txt`, `clean ${n}\n`], [`g${n}/h.txt`, `more ${n}\n`]], `change ${n}`);
  const before = cacheState(world);
  const controller = new AbortController();
  if (signalAfterMs !== undefined) setTimeout(() => controller.abort('SIGINT'), signalAfterMs);
  try {
    const run = await world.cli(['scan', '--range', `${base}..${tip}`], { signal: controller.signal });
    return { code: run.code, error: run.json.error, cacheChanged: JSON.stringify(cacheState(world)) !== JSON.stringify(before), left: [...probe(), ...children()] };
  } finally {
    world.writeConfig();
  }
}

test('the log check fails while both parts pass: blocked with its error, nothing cached', async () => {
  // Drops gitleaks' "skipping ..." lines (what the log check proves), keeps the rest ("N commits scanned").
  const out = await attempt(`T=$(mktemp); "$REAL" "$@" 2>"$T"; rc=$?; grep -v skipping "$T" >&2; rm -f "$T"; exit $rc`, [], undefined, true);
  expect(out).toMatchObject({ code: 1, error: { code: 'scan_failed' }, cacheChanged: false, left: [] });
  expect(out.error?.message).toMatch(/does not log what it skips/);
}, 60_000);

test('the tree part fails after the commit part passed: its error, nothing cached, nothing left', async () => {
  const out = await attempt('if [ "$1" = dir ]; then sleep 2; echo "ERR tree broke" >&2; exit 1; fi');
  expect(out).toMatchObject({ code: 1, error: { code: 'scan_failed' }, cacheChanged: false, left: [] });
  expect(out.error?.message).toMatch(/gitleaks dir scan failed/);
}, 60_000);

test('the commit part fails while the tree part runs: its error (not "cancelled"), the tree gitleaks stopped', async () => {
  const out = await attempt('if [ "$1" = git ]; then sleep 1; echo "ERR git broke" >&2; exit 1; fi\nif [ "$1" = dir ]; then exec sleep 30; fi');
  expect(out).toMatchObject({ code: 1, error: { code: 'scan_failed' }, cacheChanged: false, left: [] });
  expect(out.error?.message).toMatch(/gitleaks git scan failed/);
}, 60_000);

test('the timeout fires during one part: scan_timeout, nothing cached, nothing left', async () => {
  const out = await attempt('if [ "$1" = git ]; then exec sleep 30; fi', ['timeout_s: 3']);
  expect(out).toMatchObject({ error: { code: 'scan_timeout' }, cacheChanged: false, left: [] });
  expect(out.code).not.toBe(0);
}, 60_000);

test('a cancel during the scan is never a pass, caches nothing and leaves nothing', async () => {
  const out = await attempt('if [ "$1" = dir ]; then exec sleep 30; fi', [], 1500);
  expect(out.code).not.toBe(0);
  expect(out).toMatchObject({ cacheChanged: false, left: [] });
  await sleep(100);
}, 60_000);
