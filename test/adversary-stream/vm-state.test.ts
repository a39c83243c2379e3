import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { configure, destroyWorld, killVmProcesses, liveRev, lockExists, rows, sleep, snapshotAll, stateDir, waitFor, waitNoVmProcesses } from '../helpers/hardening.js';
import { liveRelease } from '../helpers/fleet-release.js';
import { expectedTree, snapshotTree, World, type CliRun } from '../helpers/world.js';
import type { FileChange } from '../../src/demo/workspace.js';

/*
 * Adversary: what a VM holds (hand edits, planted links, a forged manifest)
 * and what happens to it (a deploy stopped mid-unpack) against the stream
 * transfer. What a user checks: the bytes the VM serves, files outside the
 * release untouched, `.sync_rev`, the row.
 */

let world: World;
let bins: string;
const IDS = ['s1', 'ab'];

beforeAll(async () => {
  bins = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-advs-gz-'));
  // VM "ab": the decompressor tar runs (`gzip -d` or `zstd -d`, whichever codec the stream has) stalls
  // after 256 KB while `stall` exists: tar has unpacked part of the stream.
  for (const [name, real] of [['gzip', '/bin/gzip'], ['zstd', '/usr/bin/zstd']]) {
    fs.writeFileSync(
      path.join(bins, name),
      [
        '#!/bin/sh',
        `d='${bins}'`,
        'case " $* " in *" -d "*) if [ -e "$d/stall" ]; then',
        `  ${real} "$@" | { head -c 262144; : > "$d/stalled"; sleep 60; cat; }`,
        '  exit 0',
        'fi ;; esac',
        `exec ${real} "$@"`,
        '',
      ].join('\n'),
      { mode: 0o755 },
    );
  }
  world = await World.create(IDS, { sshdExtra: { ab: [`SetEnv PATH=${bins}:/usr/bin:/bin`] } });
});
afterAll(() => {
  destroyWorld(world);
  fs.rmSync(bins, { recursive: true, force: true });
});
afterEach(() => {
  fs.rmSync(path.join(bins, 'stall'), { force: true });
  killVmProcesses(world);
});

const streamed = (run: CliRun, id: string): boolean => new RegExp(`\\[${id}\\] staging [0-9a-f]{12} from .* stream`).test(run.stderr);

function commit(files: Record<string, FileChange>, message: string): string {
  const work = world.ws.work;
  for (const name of fs.readdirSync(work)) if (name !== '.git') fs.rmSync(path.join(work, name), { recursive: true, force: true });
  const sha = world.ws.commit(files, message);
  world.ws.push();
  return sha;
}

function liveDir(id: string): string {
  return path.join(stateDir(world, id), 'releases', liveRelease(world, id) as string);
}

/** What a VM user would run to make the manifest match a release changed by hand (the agent's own stat_list). */
function forgeManifest(id: string): void {
  const name = liveRelease(world, id) as string;
  const listing = execFileSync('sh', ['-c', 'find "$1" -mindepth 1 -printf \'%y %m %s %T@ %i %P\\0\' | LC_ALL=C sort -z', 'sh', path.join(stateDir(world, id), 'releases', name)]);
  fs.writeFileSync(path.join(stateDir(world, id), 'manifests', name), listing);
}

test('known limit: an in-place edit that keeps size and mtime (touch -r) is carried into the next streamed release; verify --deep catches it', async () => {
  configure(world);
  const files = { 'app.txt': 'one\n', 'data.txt': 'GOOD-BYTES\n' };
  commit(files, 'limit 1');
  expect((await world.cli(['sync', '--vm', 's1'])).code).toBe(0);
  const live = path.join(world.target('s1'), 'data.txt');
  const ref = path.join(world.dir, 'mtime-ref');
  fs.writeFileSync(ref, '');
  execFileSync('touch', ['-r', live, ref]);
  const fd = fs.openSync(live, 'r+');
  fs.writeSync(fd, 'EVIL-BYTES\n', 0);
  fs.closeSync(fd);
  execFileSync('touch', ['-r', ref, live]);
  const b = commit({ ...files, 'app.txt': 'two\n' }, 'limit 2');
  const run = await world.cli(['sync', '--vm', 's1']);
  expect([run.code, rows(run).s1?.rev_after]).toEqual([0, b]);
  const served = fs.readFileSync(path.join(world.target('s1'), 'data.txt'), 'utf8');
  // Either the deploy repaired it, or `verify --deep` (what the README points to) names the file.
  if (served !== 'GOOD-BYTES\n') {
    const verify = await world.cli(['verify', '--deep', '--vm', 's1']);
    const row = rows(verify).s1 as unknown as { error?: { code: string }; drift?: { paths?: Array<string | { path: string }> } };
    expect([verify.code, row.error?.code, JSON.stringify(row.drift ?? {}).includes('data.txt')]).toEqual([1, 'release_drifted', true]);
  }
});

test('planted state with a forged manifest: hard links and a symlink to files outside are never written through', async () => {
  configure(world);
  const home = world.vm('s1').home;
  const victimDir = path.join(home, 'victim');
  fs.mkdirSync(victimDir, { recursive: true });
  fs.writeFileSync(path.join(victimDir, 'authorized_keys'), 'ssh-ed25519 AAAA original\n');
  fs.writeFileSync(path.join(victimDir, 'other'), 'other original\n');
  const files = { 'app.txt': 'p1\n', 'data.txt': 'data 1\n', 'lib/a.txt': 'a\n', 'keep.txt': 'keep\n' };
  commit(files, 'planted 1');
  expect((await world.cli(['sync', '--vm', 's1'])).code).toBe(0);
  // By the VM's user: data.txt becomes a hard link to a file outside, an extra hard link is planted where
  // the next commit adds a file, lib becomes a symlink to a directory outside; the manifest is rewritten to match.
  const rel = liveDir('s1');
  fs.rmSync(path.join(rel, 'data.txt'));
  fs.linkSync(path.join(victimDir, 'authorized_keys'), path.join(rel, 'data.txt'));
  fs.linkSync(path.join(victimDir, 'other'), path.join(rel, 'added.txt'));
  fs.rmSync(path.join(rel, 'lib'), { recursive: true });
  fs.symlinkSync(victimDir, path.join(rel, 'lib'));
  forgeManifest('s1');
  const before = snapshotAll(victimDir);
  const b = commit({ ...files, 'data.txt': 'data 2\n', 'added.txt': 'added\n', 'lib/new.txt': 'new\n' }, 'planted 2');
  const run = await world.cli(['sync', '--vm', 's1']);
  expect([run.code, rows(run).s1?.result]).toEqual([0, 'success']);
  expect(snapshotAll(victimDir)).toEqual(before);
  // The files the commit changed are the commit's (what it did not change was the user's own doing).
  const served = snapshotTree(world.target('s1'));
  const want = expectedTree(world.ws, b);
  for (const p of ['data.txt', 'added.txt', 'lib/new.txt', 'app.txt']) expect([p, served[p]]).toEqual([p, want[p]]);
});

test('a deploy stopped mid-unpack: the VM serves the old release untouched, nothing is left running, the next deploy streams and is exact', async () => {
  configure(world);
  const big = (seed: string): string => crypto.createHash('sha512').update(seed).digest('hex').repeat(800); // ~100 KB, poorly compressible
  const a = commit({ 'app.txt': 'old\n', ...Object.fromEntries([0, 1, 2, 3].map((i) => [`f${i}.bin`, big(`a${i}`)])) }, 'abort 1');
  expect((await world.cli(['sync', '--vm', 'ab'])).code).toBe(0);
  const oldRelease = liveRelease(world, 'ab');
  const oldTree = snapshotTree(world.target('ab'));
  const files = { 'app.txt': 'new\n', ...Object.fromEntries([0, 1, 2, 3, 4, 5, 6, 7].map((i) => [`f${i}.bin`, big(`b${i}`)])) };
  const b = commit(files, 'abort 2');
  fs.rmSync(path.join(bins, 'stalled'), { force: true });
  fs.writeFileSync(path.join(bins, 'stall'), '');
  const controller = new AbortController();
  const pending = world.cli(['sync', '--vm', 'ab'], { signal: controller.signal });
  const stalled = await waitFor(() => fs.existsSync(path.join(bins, 'stalled')), 30_000);
  // Part of the new tree is unpacked in the partial release by now.
  const partial = path.join(stateDir(world, 'ab'), 'releases', `${b}.partial`);
  const unpacked = fs.existsSync(partial) ? fs.readdirSync(partial).filter((n) => /^f\d\.bin$/.test(n)).length : 0;
  await sleep(200);
  controller.abort();
  const run = await pending;
  fs.rmSync(path.join(bins, 'stall'), { force: true });
  const left = await waitNoVmProcesses(world.vm('ab'), 8000);
  expect({ stalled, unpacked: unpacked > 0, code: run.code, error: rows(run).ab?.error?.code, revAfter: rows(run).ab?.rev_after, left }).toEqual({ stalled: true, unpacked: true, code: 1, error: 'interrupted', revAfter: a, left: [] });
  expect({ rev: liveRev(world, 'ab'), release: liveRelease(world, 'ab'), tree: snapshotTree(world.target('ab')), locked: lockExists(world, 'ab') }).toEqual({ rev: a, release: oldRelease, tree: oldTree, locked: false });
  const again = await world.cli(['sync', '--vm', 'ab']);
  expect([again.code, rows(again).ab?.rev_after, streamed(again, 'ab')]).toEqual([0, b, true]);
  expect(snapshotTree(world.target('ab'))).toEqual(expectedTree(world.ws, b));
});
