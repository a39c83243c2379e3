import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { configure, destroyWorld, rows, snapshotAll } from '../helpers/hardening.js';
import type { FileChange } from '../../src/demo/workspace.js';
import { snapshotTree, World, type CliRun } from '../helpers/world.js';

/*
 * Adversary: does the stream transfer build the same release rsync builds?
 * Two VMs per run: "s1" takes the stream, "rs" has a tar that is not GNU tar,
 * so it takes the rsync path (`rsync -rlp --checksum --delete` of the export,
 * the documented reference) in the same run, from the same export. Any
 * difference between the two trees is a file the stream deployed that rsync
 * would not, or the other way round, while both rows report the same commit.
 */

let world: World;
let outside: string;
let bins: string;
const IDS = ['s1', 'rs'];

beforeAll(async () => {
  outside = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-advs-outside-'));
  fs.writeFileSync(path.join(outside, 'keep.txt'), 'not vm-sync\'s\n');
  bins = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-advs-bins-'));
  fs.writeFileSync(path.join(bins, 'tar'), '#!/bin/sh\nif [ "$1" = --version ]; then echo "tar (busybox) 1.36"; exit 0; fi\nexec /bin/tar "$@"\n', { mode: 0o755 });
  world = await World.create(IDS, { sshdExtra: { rs: [`SetEnv PATH=${bins}:/usr/bin:/bin`] } });
});
afterAll(() => {
  destroyWorld(world);
  fs.rmSync(outside, { recursive: true, force: true });
  fs.rmSync(bins, { recursive: true, force: true });
});

const streamed = (run: CliRun, id: string): boolean => new RegExp(`\\[${id}\\] staging [0-9a-f]{12} from .* stream`).test(run.stderr);

/** Commits a tree holding exactly `files`, plus files whose names are raw bytes (not UTF-8). */
function commitTree(files: Record<string, FileChange>, message: string, raw: Array<[Buffer, string]> = []): string {
  const work = world.ws.work;
  for (const name of fs.readdirSync(work)) if (name !== '.git') fs.rmSync(path.join(work, name), { recursive: true, force: true });
  for (const [name, content] of raw) fs.writeFileSync(Buffer.concat([Buffer.from(`${work}/`), name]), content);
  const sha = world.ws.commit(files, message);
  world.ws.push();
  return sha;
}

/** Deploys; both VMs succeed on `sha`, s1 through the stream (when `stream`; null: either), rs through rsync. */
async function deploy(sha: string, stream: boolean | null = true): Promise<CliRun> {
  const run = await world.cli(['sync']);
  const byId = rows(run);
  expect({ code: run.code, s1: [byId.s1?.result, byId.s1?.rev_after], rs: [byId.rs?.result, byId.rs?.rev_after] }).toEqual({ code: 0, s1: ['success', sha], rs: ['success', sha] });
  expect({ s1: stream === null ? null : streamed(run, 's1'), rs: streamed(run, 'rs') }).toEqual({ s1: stream, rs: false });
  return run;
}

/** Like snapshotTree, byte for byte: names are read as raw bytes (shown latin1), so a name that is not UTF-8 is compared too. */
function snapshotBytes(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (dir: Buffer, rel: string): void => {
    const names = (fs.readdirSync(dir, { encoding: 'buffer' }) as Buffer[]).sort(Buffer.compare);
    for (const name of names) {
      const full = Buffer.concat([dir, Buffer.from('/'), name]);
      const relPath = rel ? `${rel}/${name.toString('latin1')}` : name.toString('latin1');
      if (relPath === '.sync_rev') continue;
      const st = fs.lstatSync(full);
      const mode = (st.mode & 0o777).toString(8);
      if (st.isSymbolicLink()) out[relPath] = `link -> ${fs.readlinkSync(full, { encoding: 'buffer' }).toString('latin1')}`;
      else if (st.isDirectory()) {
        out[relPath] = `dir ${mode}`;
        walk(full, relPath);
      } else out[relPath] = `file ${mode} ${crypto.createHash('sha256').update(fs.readFileSync(full)).digest('hex')}`;
    }
  };
  walk(Buffer.from(root), '');
  return out;
}

/** The stream VM serves what the rsync VM serves. */
function expectSameAsRsync(label: string): void {
  expect([label, snapshotBytes(world.target('s1'))]).toEqual([label, snapshotBytes(world.target('rs'))]);
}

test('a .gitattributes change (export-ignore, eol) applies to files the diff does not list: the stream keeps the old bytes', async () => {
  configure(world);
  const body = 'line one\nline two\n';
  commitTree({ 'app.txt': body, 'notes.txt': body, 'secret.env': 'TOKEN=only-for-ci\n' }, 'attrs 1');
  await deploy(world.ws.git(world.ws.work, ['rev-parse', 'HEAD']), null);
  // The same files; only .gitattributes is new: secret.env leaves every export, *.txt gets CRLF in every export.
  const b = commitTree({ 'app.txt': body, 'notes.txt': body, 'secret.env': 'TOKEN=only-for-ci\n', '.gitattributes': 'secret.env export-ignore\n*.txt eol=crlf\n' }, 'attrs 2');
  await deploy(b, null); // streamed or not: what counts is what s1 serves
  expect(fs.existsSync(path.join(world.target('rs'), 'secret.env'))).toBe(false);
  expect(fs.readFileSync(path.join(world.target('rs'), 'app.txt'), 'utf8')).toBe('line one\r\nline two\r\n');
  expectSameAsRsync('after .gitattributes');
  // With the attributes unchanged since, the stream applies again, and still matches.
  const c = commitTree({ 'app.txt': `${body}three\n`, 'notes.txt': body, 'secret.env': 'TOKEN=only-for-ci\n', '.gitattributes': 'secret.env export-ignore\n*.txt eol=crlf\n' }, 'attrs 3');
  await deploy(c, true);
  expectSameAsRsync('attributes unchanged');
});

test('export-subst: a file whose content is unchanged in git but expands to the commit in every export', async () => {
  configure(world);
  const files = { 'version.txt': 'commit $Format:%H$\n', '.gitattributes': 'version.txt export-subst\n', 'app.txt': 'v1\n' };
  commitTree(files, 'subst 1');
  await deploy(world.ws.git(world.ws.work, ['rev-parse', 'HEAD']), null);
  const b = commitTree({ ...files, 'app.txt': 'v2\n' }, 'subst 2');
  await deploy(b, null);
  expect(fs.readFileSync(path.join(world.target('rs'), 'version.txt'), 'utf8')).toBe(`commit ${b}\n`);
  // What the stream VM serves names the commit it reports.
  expect(fs.readFileSync(path.join(world.target('s1'), 'version.txt'), 'utf8')).toBe(`commit ${b}\n`);
  expectSameAsRsync('export-subst');
});

test('export-subst set by one of several .gitattributes files, the deepest: the stream is not used, and says which file', async () => {
  configure(world);
  const files = {
    '.gitattributes': '*.txt text\n',
    'a/.gitattributes': '*.sh text eol=lf\n',
    'deep/er/.gitattributes': 'version.txt export-subst\n',
    'deep/er/version.txt': 'commit $Format:%H$\n',
    'app.txt': 'v1\n',
  };
  commitTree(files, 'nested subst 1');
  await deploy(world.ws.git(world.ws.work, ['rev-parse', 'HEAD']), null);
  const b = commitTree({ ...files, 'app.txt': 'v2\n' }, 'nested subst 2');
  const run = await deploy(b, false);
  expect(run.stderr).toContain('[s1] stream transfer not possible (deep/er/.gitattributes uses export-subst (its files name the commit)): using rsync');
  expect(fs.readFileSync(path.join(world.target('s1'), 'deep/er/version.txt'), 'utf8')).toBe(`commit ${b}\n`);
  expectSameAsRsync('nested export-subst');
  // Without export-subst anywhere (the same several attribute files otherwise), the stream is used again.
  const c = commitTree({ ...files, 'deep/er/.gitattributes': 'version.txt text\n', 'app.txt': 'v3\n' }, 'nested subst 3');
  await deploy(c, null);
  const d = commitTree({ ...files, 'deep/er/.gitattributes': 'version.txt text\n', 'app.txt': 'v4\n' }, 'nested subst 4');
  await deploy(d, true);
  expectSameAsRsync('no export-subst');
});

test('a directory left holding only excluded entries is kept, as rsync keeps it', async () => {
  configure(world);
  commitTree({ 'app.txt': 'e1\n', 'sub/keep.txt': 'k\n', 'sub/__pycache__/m.pyc': 'x\n', 'link': { symlink: 'nowhere' } }, 'empty 1');
  await deploy(world.ws.git(world.ws.work, ['rev-parse', 'HEAD']), null);
  // sub/keep.txt goes: sub still has content in the commit (excluded), so rsync keeps an empty sub/.
  // `link` becomes a directory whose only content is excluded.
  const b = commitTree({ 'app.txt': 'e2\n', 'sub/__pycache__/m.pyc': 'x\n', 'link/.vscode/s.json': '{}\n' }, 'empty 2');
  await deploy(b);
  expect(snapshotTree(world.target('rs'))).toMatchObject({ sub: 'dir 755', link: 'dir 755' });
  expectSameAsRsync('emptied directories');
});

test('rsync_excludes with rsync\'s "- " and "+ " rule prefixes: the stream must drop and keep what rsync does', async () => {
  // rsync reads `--exclude='- secret.txt'` as an exclude of secret.txt, and `--exclude='+ keep.txt'` as an include.
  configure(world, { repository: ['rsync_excludes: [".git", "- secret.txt", "+ keep.txt", "keep.txt"]'] });
  const tree = { 'app.txt': 'p1\n', 'secret.txt': 'TOKEN=1\n', 'keep.txt': 'kept\n', 'sub/secret.txt': 'TOKEN=2\n' };
  commitTree(tree, 'prefix 1');
  await deploy(world.ws.git(world.ws.work, ['rev-parse', 'HEAD']), null);
  const b = commitTree({ ...tree, 'app.txt': 'p2\n', 'secret.txt': 'TOKEN=3\n' }, 'prefix 2');
  await deploy(b, null);
  expect(Object.keys(snapshotTree(world.target('rs'))).sort()).toEqual(['app.txt', 'keep.txt', 'sub']);
  expectSameAsRsync('rule prefixes');
});

test('holds: names, dir/, /anchored excludes; type changes; symlinks out of the tree; hostile names', async () => {
  configure(world, { repository: ['rsync_excludes: [".git", "cache", "build/", "/top.log"]'] });
  const before = snapshotAll(outside);
  const hostile: Record<string, FileChange> = {
    'nl\nname.txt': 'n\n',
    'back\\slash\\101.txt': 'b\n',
    '-rf': 'dash\n',
    '%s%n%b.txt': 'pct\n',
    '\\0101': 'looks like an escape\n',
    'sub/.sync_rev': 'not the sentinel\n',
    [`long/${'d'.repeat(200)}/${'e'.repeat(200)}/${'f'.repeat(200)}.txt`]: 'long\n',
  };
  const raw: Array<[Buffer, string]> = [[Buffer.from([0x6c, 0x61, 0x74, 0x69, 0x6e, 0xe9, 0xff, 0x2e, 0x74]), 'latin1 name\n']];
  commitTree(
    {
      'app.txt': 'h1\n',
      'cache/c.bin': 'excluded\n', // name, at any depth
      'lib/cache': 'excluded file too\n',
      'build': 'a file named build: kept (build/ is for directories)\n',
      'x/build/o.o': 'excluded\n',
      'dirlink/build': { symlink: '../lib' }, // a symlink is no directory for rsync -l: kept
      'top.log': 'excluded at the root\n',
      'sub/top.log': 'kept below the root\n',
      'd/f.txt': 'will be under a symlink\n',
      'd/g.txt': 'g\n',
      'l': { symlink: outside },
      'fd': 'file, then directory\n',
      ...hostile,
    },
    'hold 1',
    raw,
  );
  await deploy(world.ws.git(world.ws.work, ['rev-parse', 'HEAD']), null);
  // d becomes a symlink out of the tree while its files change; l (out of the tree) becomes a directory; fd a directory.
  const b = commitTree(
    {
      'app.txt': 'h2\n',
      'cache/c.bin': 'excluded 2\n',
      'build': 'kept 2\n',
      'x/build/o.o': 'excluded 2\n',
      'dirlink/build': { symlink: '../lib' },
      'top.log': 'excluded 2\n',
      'sub/top.log': 'kept 2\n',
      'd': { symlink: outside },
      'l/keep.txt': 'inside the release\n',
      'fd/inner.txt': 'now a directory\n',
      ...Object.fromEntries(Object.keys(hostile).map((k) => [k, `${String(hostile[k])}changed\n`])),
    },
    'hold 2',
    [[raw[0][0], 'latin1 name, changed\n']],
  );
  await deploy(b);
  expectSameAsRsync('hold 2');
  // And back: d a directory again (under the old name), fd a file.
  const c = commitTree({ 'app.txt': 'h3\n', 'd/f.txt': 'back\n', 'fd': 'a file again\n', 'l': { symlink: '../..' }, ...hostile }, 'hold 3');
  await deploy(c);
  expectSameAsRsync('hold 3');
  expect(snapshotAll(outside)).toEqual(before);
  expect(fs.readFileSync(path.join(world.target('s1'), '.sync_rev'), 'utf8')).toBe(`${c}\n`);
});
