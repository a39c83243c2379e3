import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { encodeStreamPath, excludeMatcher, parseRawDiff, PREFETCH_STREAMS, ReleaseStreams } from '../../src/sync/stream.js';

describe('excludeMatcher: rsync meaning for the patterns it understands, null for the rest', () => {
  test('a bare name matches that entry at any depth, and only whole components', () => {
    const m = excludeMatcher(['.git', '__pycache__']);
    if (!m) throw new Error('expected a matcher');
    expect([m('.git', true), m('a/b/.git', true), m('a/.git/x', false), m('__pycache__/m.pyc', false)]).toEqual([true, true, true, true]);
    expect([m('.gitignore', false), m('x.git', false), m('a/__pycache__x/y', false)]).toEqual([false, false, false]);
  });
  test('a trailing slash matches directories only; a leading slash anchors at the root', () => {
    const m = excludeMatcher(['build/', '/tmp', '/a/b']);
    if (!m) throw new Error('expected a matcher');
    expect([m('build', true), m('build', false), m('x/build/y', false), m('x/build', false)]).toEqual([true, false, true, false]);
    expect([m('tmp', false), m('tmp/x', false), m('x/tmp', false), m('a/b', false), m('a/b/c', false), m('a/bc', false), m('x/a/b', false)]).toEqual([true, true, false, true, true, false, false]);
  });
  test('wildcards, ** and unanchored paths are rsync\'s alone: null', () => {
    for (const p of ['*.log', 'a?', '[ab]', '**/x', 'a/b', 'a\\b', '', '/', '/a/../b']) expect([p, excludeMatcher([p])]).toEqual([p, null]);
    expect(excludeMatcher([])).not.toBeNull();
  });
});

describe('parseRawDiff', () => {
  test('reads status and byte-exact path from -z records', () => {
    const raw = Buffer.concat([
      Buffer.from(':100644 100755 aaaa bbbb M\0mode.sh\0:000000 100644 0000 cccc A\0'),
      Buffer.from([0x6e, 0xff, 0x0a, 0x78]), // "n\xff\nx": not UTF-8, with a newline
      Buffer.from('\0:120000 000000 dddd 0000 D\0link\0'),
    ]);
    const entries = parseRawDiff(raw);
    expect(entries.map((e) => e.status)).toEqual(['M', 'A', 'D']);
    expect(Buffer.from(entries[1].path, 'latin1')).toEqual(Buffer.from([0x6e, 0xff, 0x0a, 0x78]));
  });
  test('a record that is not git\'s raw format is an error, never skipped', () => {
    expect(() => parseRawDiff(Buffer.from('garbage\0path\0'))).toThrow(/unexpected git diff record/);
  });
});

test('encodeStreamPath round-trips every byte but NUL through dash printf %b, and never yields a newline', () => {
  const bytes = Buffer.from(Array.from({ length: 255 }, (_, i) => i + 1));
  const rel = bytes.toString('latin1');
  const encoded = encodeStreamPath(rel);
  expect(encoded).not.toMatch(/[\n\r\s]/);
  // As agent.sh decodes it: rel=$(printf '%bx' "$line"); rel=${rel%x}
  const decoded = execFileSync('dash', ['-c', 'rel=$(printf \'%bx\' "$1"); printf %s "${rel%x}"', 'sh', encoded]);
  expect(decoded).toEqual(bytes);
});

describe('ReleaseStreams (real git, real tar)', () => {
  let dir: string;
  let repo: string;
  let exportDir: string;
  const git = (...args: string[]): string => execFileSync('git', args, { cwd: repo, encoding: 'utf8', env: { ...process.env, GIT_AUTHOR_NAME: 't', GIT_AUTHOR_EMAIL: 't@t', GIT_COMMITTER_NAME: 't', GIT_COMMITTER_EMAIL: 't@t' } }).trim();
  let c1: string;
  let c2: string;

  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-stream-unit-'));
    repo = path.join(dir, 'repo');
    fs.mkdirSync(repo);
    git('init', '-q', '-b', 'main');
    const write = (rel: string, text: string): void => {
      fs.mkdirSync(path.dirname(path.join(repo, rel)), { recursive: true });
      fs.writeFileSync(path.join(repo, rel), text);
    };
    write('keep.txt', 'same\n');
    write('gone/only.txt', 'deleted later\n');
    write('change.txt', 'v1\n');
    write('shared/data/x', 'shared\n');
    write('.vscode/s.json', '{}\n');
    git('add', '-A');
    git('commit', '-q', '-m', 'c1');
    c1 = git('rev-parse', 'HEAD');
    fs.rmSync(path.join(repo, 'gone'), { recursive: true });
    write('change.txt', 'v2\n');
    write('new/dir/file.txt', 'new\n');
    write('shared/data/y', 'shared 2\n');
    write('.vscode/t.json', '{}\n');
    git('add', '-A');
    git('commit', '-q', '-m', 'c2');
    c2 = git('rev-parse', 'HEAD');
    exportDir = path.join(dir, 'export');
    fs.mkdirSync(exportDir);
    execFileSync('sh', ['-c', 'git -C "$1" archive "$2" | tar -x -C "$3"', 'sh', repo, c2, exportDir]);
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  /** The header's paths and the tar's member names of a stream file. */
  function read(file: string): { removals: string[]; members: string[]; format: 'zstd' | 'gzip' } {
    const bytes = fs.readFileSync(file);
    const end = bytes.indexOf('\n.\n') >= 0 && !bytes.subarray(0, 2).equals(Buffer.from('.\n')) ? bytes.indexOf('\n.\n') + 3 : 2;
    const header = bytes.subarray(0, end).toString('latin1').split('\n').filter((l) => l && l !== '.');
    const body = bytes.subarray(end);
    // zstd frames start with 28 b5 2f fd; gzip with 1f 8b.
    const format = body[0] === 0x28 && body[1] === 0xb5 ? 'zstd' : 'gzip';
    const tar = format === 'zstd' ? execFileSync('zstd', ['-d', '-q', '-c'], { input: body }) : zlib.gunzipSync(body);
    const list = path.join(dir, 'member.tar');
    fs.writeFileSync(list, tar);
    const members = execFileSync('tar', ['-t', '-f', list], { encoding: 'utf8' }).split('\n').filter(Boolean).map((m) => m.replace(/\/$/, ''));
    return { removals: header, members, format };
  }

  function streams(scratch: string, extra: { excludes?: string[]; shared?: string[] } = {}): { streams: ReleaseStreams; exports: () => number } {
    let exports = 0;
    const s = new ReleaseStreams({
      repoDir: repo,
      commit: c2,
      tree: async () => {
        exports++;
        return { dir: exportDir };
      },
      excludes: extra.excludes ?? ['.git', '.vscode'],
      sharedPaths: extra.shared ?? ['shared/data'],
      scratchDir: scratch,
    });
    return { streams: s, exports: () => exports };
  }

  test('from a base: removes what went (a modified file is replaced by tar, not removed first), carries what changed with its parents, skips shared and excluded paths', async () => {
    const scratch = fs.mkdtempSync(path.join(dir, 's-'));
    const { streams: s } = streams(scratch);
    const outcome = await s.for(c1);
    if (!outcome.ok) throw new Error(outcome.reason);
    const { removals, members } = read(outcome.stream.file);
    expect(removals.sort()).toEqual(['gone/only.txt']);
    expect(members).toEqual(['change.txt', 'new', 'new/dir', 'new/dir/file.txt']);
    expect([outcome.stream.files, outcome.stream.removals]).toEqual([2, 1]);
  });

  test('from nothing: the whole tree but excluded paths (shared paths travel: the seal seeds or drops them)', async () => {
    const scratch = fs.mkdtempSync(path.join(dir, 's-'));
    const { streams: s } = streams(scratch);
    const outcome = await s.for(null);
    if (!outcome.ok) throw new Error(outcome.reason);
    const { removals, members } = read(outcome.stream.file);
    expect(removals).toEqual([]);
    expect(members.sort()).toEqual(['change.txt', 'keep.txt', 'new', 'new/dir', 'new/dir/file.txt', 'shared', 'shared/data', 'shared/data/x', 'shared/data/y'].sort());
  });

  test('made once per base, whatever the number of VMs asking', async () => {
    const scratch = fs.mkdtempSync(path.join(dir, 's-'));
    const { streams: s, exports } = streams(scratch);
    const all = await Promise.all([s.for(c1), s.for(c1), s.for(c1), s.for(null)]);
    expect(new Set(all.map((o) => (o.ok ? o.stream.file : o.reason))).size).toBe(2);
    expect(fs.readdirSync(scratch).sort()).toEqual([`stream-${c1}.gzip`, 'stream-full.gzip']);
    expect(exports()).toBe(2);
  });

  test('prefetch makes the likely streams ahead (zstd, each base once); a VM asking later gets them without a second make', async () => {
    const scratch = fs.mkdtempSync(path.join(dir, 's-'));
    const { streams: s, exports } = streams(scratch);
    s.prefetch([c1, null, c1, null]);
    await s.settled();
    expect(fs.readdirSync(scratch).sort()).toEqual([`stream-${c1}.zstd`, 'stream-full.zstd']);
    const before = fs.statSync(path.join(scratch, 'stream-full.zstd')).mtimeMs;
    const later = await s.for(null, true);
    if (!later.ok) throw new Error(later.reason);
    expect([path.basename(later.stream.file), fs.statSync(later.stream.file).mtimeMs, exports()]).toEqual(['stream-full.zstd', before, 2]);
    // A VM without zstd still gets its own gzip stream.
    const gzip = await s.for(null, false);
    expect(gzip.ok && gzip.stream.codec).toBe('gzip');
  });

  test('prefetch makes only the most common starting points ahead (a fleet spread over many commits is not made all at once)', async () => {
    const scratch = fs.mkdtempSync(path.join(dir, 's-'));
    const { streams: s } = streams(scratch);
    // Three distinct bases: c1 on three VMs, nothing on two, c2 (the commit itself: an empty diff) on one.
    s.prefetch([c2, null, c1, c1, null, c1]);
    await s.settled();
    expect(PREFETCH_STREAMS).toBe(2);
    expect(fs.readdirSync(scratch).sort()).toEqual([`stream-${c1}.zstd`, 'stream-full.zstd']);
  });

  test('zstd for a VM that runs it (the runner host runs it too): the same header and members, smaller; made once per codec', async () => {
    const scratch = fs.mkdtempSync(path.join(dir, 's-'));
    const { streams: s } = streams(scratch);
    const [zstd, again, gzip] = await Promise.all([s.for(c1, true), s.for(c1, true), s.for(c1, false)]);
    if (!zstd.ok || !again.ok || !gzip.ok) throw new Error('no stream');
    expect([zstd.stream.codec, again.stream.file, gzip.stream.codec]).toEqual(['zstd', zstd.stream.file, 'gzip']);
    expect(read(zstd.stream.file)).toEqual({ ...read(gzip.stream.file), format: 'zstd' });
    expect(read(gzip.stream.file).format).toBe('gzip');
    expect(fs.readdirSync(scratch).sort()).toEqual([`stream-${c1}.gzip`, `stream-${c1}.zstd`]);
  });

  test('no stream where rsync must decide: a wildcard exclude, a change to a parent of a shared path, a base git cannot diff', async () => {
    const scratch = fs.mkdtempSync(path.join(dir, 's-'));
    const wild = await streams(scratch, { excludes: ['*.log'] }).streams.for(c1);
    expect(wild.ok ? 'stream' : wild.reason).toMatch(/rsync_excludes has patterns only rsync understands/);
    const parent = await streams(scratch, { shared: ['new/dir/file.txt/under'] }).streams.for(c1);
    expect(parent.ok ? 'stream' : parent.reason).toMatch(/a parent of a shared path/);
    const unknown = await streams(scratch).streams.for('f'.repeat(40));
    expect(unknown.ok ? 'stream' : unknown.reason).toMatch(/cannot diff/);
  });
});
