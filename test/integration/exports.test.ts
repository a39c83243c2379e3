import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ExportStore, type ExportSnapshot } from '../../src/git/exports.js';

/*
 * The runner host's kept exports (src/git/exports.ts): an export derived from
 * the last one must be byte-identical to a fresh `git archive` export of the
 * commit, for every kind of change, and must never change the export it was
 * derived from (they share files through hard links). Real git, real tar.
 */

let dir: string;
let repo: string;
const env = { ...process.env, GIT_AUTHOR_NAME: 't', GIT_AUTHOR_EMAIL: 't@t', GIT_COMMITTER_NAME: 't', GIT_COMMITTER_EMAIL: 't@t', LC_ALL: 'C' };
const git = (...args: string[]): string => execFileSync('git', args, { cwd: repo, env, encoding: 'utf8' }).trim();

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-exports-'));
  repo = path.join(dir, 'repo');
  fs.mkdirSync(repo);
  git('init', '-q', '-b', 'main');
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

type Entry = string | { content: string; exec: true } | { link: string } | null;

/** Applies the changes (null deletes; a path's old entry of another type goes first) and commits. */
function commit(changes: Record<string, Entry>, message: string): string {
  for (const [rel, entry] of Object.entries(changes)) {
    const full = path.join(repo, rel);
    fs.rmSync(full, { recursive: true, force: true });
    if (entry === null) continue;
    fs.mkdirSync(path.dirname(full), { recursive: true });
    if (typeof entry === 'string') fs.writeFileSync(full, entry);
    else if ('link' in entry) fs.symlinkSync(entry.link, full);
    else fs.writeFileSync(full, entry.content, { mode: 0o755 });
  }
  git('add', '-A');
  git('commit', '-q', '--allow-empty', '-m', message);
  return git('rev-parse', 'HEAD');
}

/** Every entry under `root`: type, mode, sha256 of bytes or link target (as bytes). */
function picture(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (abs: string, rel: string): void => {
    for (const name of fs.readdirSync(abs).sort()) {
      const full = path.join(abs, name);
      const r = rel ? `${rel}/${name}` : name;
      const st = fs.lstatSync(full);
      const mode = (st.mode & 0o7777).toString(8);
      if (st.isSymbolicLink()) out[r] = `link ${fs.readlinkSync(full, { encoding: 'buffer' }).toString('hex')}`;
      else if (st.isDirectory()) {
        out[r] = `dir ${mode}`;
        walk(full, r);
      } else out[r] = `file ${mode} ${crypto.createHash('sha256').update(fs.readFileSync(full)).digest('hex')}`;
    }
  };
  walk(root, '');
  return out;
}

/** A fresh export, as vm-sync made it before: git archive (umask 022) unpacked by tar. */
function fresh(sha: string): Record<string, string> {
  const out = fs.mkdtempSync(path.join(dir, 'fresh-'));
  execFileSync('sh', ['-c', 'git -c tar.umask=022 archive --format=tar "$1" | tar -x -f - -C "$2"', 'sh', sha, out], { cwd: repo, env });
  fs.chmodSync(out, 0o755);
  const result = picture(out);
  fs.rmSync(out, { recursive: true, force: true });
  return result;
}

test('every kind of change, forwards, backwards and sideways: identical to a fresh export, and the base is never touched', async () => {
  const store = new ExportStore({ stateDir: path.join(dir, 'state-a'), repoDir: repo });
  const steps: Array<[string, Record<string, Entry>]> = [
    ['start', { 'app.txt': 'v1\n', 'lib/deep/b.txt': 'b\n', 'lib/a.txt': 'a\n', 'mode.sh': 'm\n', 'f2d': 'file\n', 'd2f/x': 'x\n', 'f2l': 'file\n', 'l': { link: 'app.txt' }, 'out': { link: '/etc' }, 'sp ace.txt': 's\n', 'star*.txt': '*\n', ':(top)x': 'magic\n', 'win.bat': 'a\nb\n', '.gitattributes': '*.bat text eol=crlf\nsecret.txt export-ignore\n', 'secret.txt': 'not exported\n' }],
    ['changes', { 'app.txt': 'v2\n', 'lib/deep/b.txt': null, 'mode.sh': { content: 'm\n', exec: true }, 'f2d': null, 'f2d/inner': 'dir now\n', 'd2f/x': null, 'd2f': 'file now\n', 'f2l': { link: 'lib/a.txt' }, 'l': { link: 'mode.sh' }, 'out': null, 'out/in.txt': 'was a link out\n', 'sp ace.txt': null, 'renamed sp ace.txt': 's\n', 'star*.txt': '**\n', ':(top)x': 'magic 2\n', 'win.bat': 'a\nb\nc\n', 'secret.txt': 'still not exported\n', 'new\nline': 'n\n' }],
    ['more', { 'lib/a.txt': null, 'lib/z.txt': 'z\n', 'app.txt': 'v3\n' }],
  ];
  const shas = steps.map(([name, changes]) => commit(changes, name));
  const snapshots: ExportSnapshot[] = [];
  const order = [0, 1, 2, 0, 2, 1];
  for (const [i, which] of order.entries()) {
    const before = snapshots.length ? picture(snapshots.at(-1)?.dir as string) : null;
    const snap = await store.checkout(shas[which]);
    expect([i, picture(snap.dir)]).toEqual([i, fresh(shas[which])]);
    expect([i, snap.how]).toEqual([i, i === 0 ? 'fresh' : 'incremental']);
    // The export it came from is what it was (hard links were not written through).
    if (before) expect([i, picture(snapshots.at(-1)?.dir as string)]).toEqual([i, before]);
    snapshots.push(snap);
    store.retire(snap);
    snapshots[snapshots.length - 1] = { ...snap, dir: readyTree(path.join(dir, 'state-a'), shas[which]) };
  }
  // A branch that diverged from the first commit.
  git('checkout', '-q', '-b', 'side', shas[0]);
  const side = commit({ 'side.txt': 'side\n', 'app.txt': 'side\n' }, 'side');
  git('checkout', '-q', 'main');
  const snap = await store.checkout(side);
  expect([snap.how, picture(snap.dir)]).toEqual(['incremental', fresh(side)]);
  store.retire(snap);
});

/** The tree of the newest ready export of `sha`. */
function readyTree(stateDir: string, sha: string): string {
  const name = fs.readdirSync(path.join(stateDir, 'exports')).filter((n) => n.startsWith('ready-') && n.endsWith(sha)).sort().at(-1);
  return path.join(stateDir, 'exports', name as string, 'tree');
}

test('a changed .gitattributes or an export-subst anywhere means a full export, which is still exact', async () => {
  const store = new ExportStore({ stateDir: path.join(dir, 'state-b'), repoDir: repo });
  const a = commit({ 'x.bat': 'p\nq\n' }, 'x');
  store.retire(await store.checkout(a));
  const b = commit({ '.gitattributes': '*.bat text eol=lf\n' }, 'attributes');
  const sb = await store.checkout(b);
  expect([sb.how, sb.reason, picture(sb.dir)]).toEqual(['fresh', 'a .gitattributes changed', fresh(b)]);
  store.retire(sb);
  const c = commit({ 'sub/.gitattributes': 'version.txt export-subst\n', 'sub/version.txt': '$Format:%H$\n' }, 'subst');
  store.retire(await store.checkout(c));
  const d = commit({ 'other.txt': 'o\n' }, 'other');
  const sd = await store.checkout(d);
  expect([sd.how, sd.reason, picture(sd.dir)]).toEqual(['fresh', 'sub/.gitattributes uses export-subst', fresh(d)]);
  store.retire(sd);
});

test('retire keeps the newest `keep` exports; a failed checkout leaves nothing that could become a base', async () => {
  const stateDir = path.join(dir, 'state-c');
  const store = new ExportStore({ stateDir, repoDir: repo, keep: 2 });
  const shas = [commit({ 'k.txt': '1\n' }, 'k1'), commit({ 'k.txt': '2\n' }, 'k2'), commit({ 'k.txt': '3\n' }, 'k3')];
  for (const sha of shas) store.retire(await store.checkout(sha));
  const ready = (): string[] => fs.readdirSync(path.join(stateDir, 'exports')).filter((n) => n.startsWith('ready-')).map((n) => n.slice(-40));
  expect(ready().sort()).toEqual([shas[1], shas[2]].sort());
  await expect(store.checkout('e'.repeat(40))).rejects.toMatchObject({ code: 'git_failed' });
  expect(ready().sort()).toEqual([shas[1], shas[2]].sort());
  expect(fs.readdirSync(path.join(stateDir, 'exports')).filter((n) => n.startsWith('run-'))).toEqual([]);
});
