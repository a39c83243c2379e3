import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { scanTree } from '../../src/scan/coverage.js';
import { findNestedArchives } from '../../src/scan/nested.js';
import { tarOf, zipOf } from '../helpers/archives.js';
import { plantedSecrets, secretFragments } from '../helpers/secrets.js';

/*
 * From the review of the inflate change: gitleaks opens an archive inside an
 * archive (a `bundle.tar.zst` in a zip) and reads a tarball in it through Go's
 * archive/tar, which stops at the first member header it rejects and says
 * nothing; vm-sync inflated and rescanned only files of the tree itself. A
 * token after the damaged header was deployed unscanned and unreported (GNU
 * tar on a VM unpacks it). vm-sync now extracts the archives inside archives
 * and scans them as it scans a file of the tree.
 */

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-nested-'));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

const gitleaks = (process.env.PATH ?? '').split(':').map((d) => path.join(d, 'gitleaks')).find((f) => fs.existsSync(f)) as string;
const secrets = plantedSecrets();

/** Text zstd (and gzip, xz, deflate) Huffman-codes: a token next to it does not stand in the compressed bytes as plain text. */
const PROSE = Array.from({ length: 6000 }, (_, i) => 'etaoinshrdlu'[(i * 7919 + ((i * i) % 13)) % 12]).join('');

/** A tarball whose second member's header checksum is wrong, and whose third member holds a token. */
function damagedTar(token = `GITHUB_TOKEN=${secrets.github}`): Buffer {
  const tar = Buffer.from(tarOf({ 'a.txt': 'hello\n', 'b.txt': 'x\n', 'c.txt': `${PROSE}\n${token}\n${PROSE}\n` }));
  const at = tar.indexOf(Buffer.from('b.txt')) - (tar.indexOf(Buffer.from('b.txt')) % 512);
  tar.write('0000000\0', at + 148, 'latin1');
  return tar;
}

const compress = (tool: string, bytes: Buffer): Buffer => (tool === 'none' ? bytes : execFileSync(tool, ['-c'], { input: bytes }));

async function scan(root: string): Promise<Awaited<ReturnType<typeof scanTree>>> {
  fs.writeFileSync(path.join(dir, 'config.toml'), '[extend]\nuseDefault = true\n');
  return scanTree(gitleaks, root, { configFile: path.join(dir, 'config.toml'), ignoreDir: dir }, new Set(), { deadline: Date.now() + 120_000, timeoutS: 120 });
}

/** A tree of one file `assets/<name>`. */
function tree(name: string, bytes: Buffer): string {
  const root = path.join(dir, 'export');
  fs.mkdirSync(path.join(root, 'assets'), { recursive: true });
  fs.writeFileSync(path.join(root, 'assets', name), bytes);
  // The token is nowhere in the deployed bytes as plain text: only reading inside the archives finds it.
  expect(bytes.includes(Buffer.from(secrets.github))).toBe(false);
  return root;
}

/** The member names GNU tar (what a VM runs) lists in `bytes`. */
function gnuTarLists(bytes: Buffer, tool: string): string[] {
  const file = path.join(dir, 'listed');
  fs.writeFileSync(file, bytes);
  try {
    return execFileSync('tar', ['-tf', file, ...(tool === 'none' ? [] : [`--use-compress-program=${tool}`])], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).split('\n');
  } catch (error) {
    return String((error as { stdout?: string }).stdout).split('\n');
  }
}

function expectNoSecret(result: unknown): void {
  for (const fragment of secretFragments(secrets)) expect(JSON.stringify(result)).not.toContain(fragment);
}

// The reviewer's test (scan-inflate-bypass.test.ts in review-survey), as it was written.
test('a .tar.zst inside a .zip: the zip entry is not inflated, and nothing is reported', async () => {
  const root = path.join(dir, 'export');
  fs.mkdirSync(path.join(root, 'assets'), { recursive: true });
  const inner = execFileSync('zstd', ['-c'], { input: damagedTar() });
  fs.writeFileSync(path.join(root, 'assets', 'bundle.zip'), zipOf({ 'bundle.tar.zst': inner }));

  const result = await scan(root);
  // Either the token is found, or the entry is at least reported as not scanned: never a silent pass.
  const found = result.findings.some((f) => f.file.startsWith('assets/bundle.zip') && f.rule === 'github-pat');
  const reported = result.unscanned.some((u) => u.path.startsWith('assets/bundle.zip'));
  expect({ found, reported, unscanned: result.unscanned }).not.toMatchObject({ found: false, reported: false });
}, 120_000);

test.each([
  ['zstd', 'bundle.tar.zst', 'store'],
  ['gzip', 'bundle.tar.gz', 'store'],
  ['xz', 'bundle.tar.xz', 'store'],
  ['bzip2', 'bundle.tar.bz2', 'store'],
  // A plain tar, deflated in the zip (stored, its bytes would stand in the zip as text).
  ['none', 'bundle.tar', 'deflate'],
  ['none', 'bundle.tar', 'zstd'],
  // Names that say nothing: gitleaks does not open them, vm-sync finds them by their first bytes.
  ['zstd', 'bundle', 'store'],
  ['none', 'payload.bin', 'deflate'],
] as const)('a %s tarball (%s) in a zip (%s), a token after a damaged member header: found, never printed', async (tool, name, method) => {
  const inner = compress(tool, damagedTar());
  expect(gnuTarLists(inner, tool)).toContain('c.txt');
  const result = await scan(tree('bundle.zip', zipOf({ 'readme.txt': 'hello\n', [`dist/${name}`]: inner }, method)));
  expect(result.findings.map((f) => [f.file, f.rule])).toContainEqual([`assets/bundle.zip!dist/${name}`, 'github-pat']);
  expectNoSecret(result);
}, 120_000);

test.each([
  ['a .tar.gz in a plain .tar', 'outer.tar', (inner: Buffer) => tarOf({ 'x/readme.txt': 'hi\n', 'x/bundle.tar.gz': inner }), 'gzip', 'outer.tar!x/bundle.tar.gz'],
  ['a .tar.zst in a .tar.gz', 'outer.tar.gz', (inner: Buffer) => zlib.gzipSync(tarOf({ 'bundle.tar.zst': inner })), 'zstd', 'outer.tar.gz!bundle.tar.zst'],
  ['a damaged .tar in a .tar.xz', 'outer.tar.xz', (inner: Buffer) => execFileSync('xz', ['-c'], { input: tarOf({ 'bundle.tar': inner }) }), 'none', 'outer.tar.xz!bundle.tar'],
  // Three archives deep, the outer one under a name gitleaks does not open.
  ['a .tar.xz in a zip in a zip named .bin', 'outer.bin', (inner: Buffer) => zipOf({ 'lib/inner.zip': zipOf({ 'bundle.tar.xz': inner }, 'deflate') }, 'deflate'), 'xz', 'outer.bin!lib/inner.zip!bundle.tar.xz'],
])('%s, a token after a damaged member header: found', async (_what, name, outer, tool, shown) => {
  const inner = compress(tool, damagedTar());
  const result = await scan(tree(name, outer(inner)));
  expect(result.findings.map((f) => [f.file, f.rule])).toContainEqual([`assets/${shown}`, 'github-pat']);
  expectNoSecret(result);
}, 120_000);

test('clean archives inside archives are scanned and not reported; an intact one with a token is found', async () => {
  const root = path.join(dir, 'export');
  fs.mkdirSync(path.join(root, 'assets'), { recursive: true });
  const clean = tarOf({ 'a.txt': 'hello\n', 'b.txt': 'world\n' });
  fs.writeFileSync(path.join(root, 'assets', 'clean.zip'), zipOf({ 'a.tar.gz': zlib.gzipSync(clean), 'b.tar.zst': zlib.zstdCompressSync(clean), 'c.tar': clean, 'd.zip': zipOf({ 'x.txt': 'x\n' }) }, 'deflate'));
  fs.writeFileSync(path.join(root, 'assets', 'clean.tar.gz'), zlib.gzipSync(tarOf({ 'inner.tar.xz': execFileSync('xz', ['-c'], { input: clean }) })));
  fs.writeFileSync(path.join(root, 'assets', 'leak.zip'), zipOf({ 'ok.tar.gz': zlib.gzipSync(tarOf({ 'c.txt': `${PROSE}\nGITHUB_TOKEN=${secrets.github}\n` })) }));
  const result = await scan(root);
  expect(result.unscanned).toEqual([]);
  expect(result.findings.every((f) => f.file.startsWith('assets/leak.zip!ok.tar.gz'))).toBe(true);
  expect(result.findings.map((f) => f.rule)).toContain('github-pat');
  expectNoSecret(result);
}, 120_000);

describe('finding archives inside archives (no gitleaks)', () => {
  const find = async (bytes: Buffer, name = 'outer.zip'): Promise<Awaited<ReturnType<typeof findNestedArchives>> & { scratch: string }> => {
    const file = path.join(dir, 'in', name);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, bytes);
    const scratch = path.join(dir, 'scratch');
    fs.mkdirSync(scratch);
    return { ...(await findNestedArchives([{ shown: `assets/${name}`, file }], scratch)), scratch };
  };

  test('entry names never become paths: a zip-slip name is extracted under a counter in the scratch directory', async () => {
    const evil = '../../../escaped.tar.gz';
    const found = await find(zipOf({ [evil]: zlib.gzipSync(tarOf({ 'x.txt': 'x\n' })), '/abs/a.tar': tarOf({ 'y.txt': 'y\n' }) }));
    expect(found.archives.map((a) => [a.path, path.relative(found.scratch, a.file)])).toEqual([
      ['assets/outer.zip!../../../escaped.tar.gz', '0'],
      ['assets/outer.zip!/abs/a.tar', '1'],
    ]);
    expect(fs.readdirSync(dir).sort()).toEqual(['in', 'scratch']);
    expect(fs.existsSync(path.join(dir, '..', 'escaped.tar.gz'))).toBe(false);
  });

  test('a tar is read past a damaged header, as GNU tar reads it', async () => {
    const tar = Buffer.from(tarOf({ 'a.txt': 'a\n', 'b.txt': 'b\n', 'c.tar.gz': zlib.gzipSync(tarOf({ 'z.txt': 'z\n' })) }));
    tar.write('0000000\0', 512 * 2 + 148, 'latin1'); // b.txt's header
    expect((await find(tar, 'outer.tar')).archives.map((a) => [a.path, a.magic])).toEqual([['assets/outer.tar!c.tar.gz', 'gz']]);
  });

  test('no deeper than gitleaks opens archives (MAX_ARCHIVE_DEPTH)', async () => {
    let bytes: Buffer = zlib.gzipSync(tarOf({ 'x.txt': 'x\n' }));
    for (let i = 0; i < 8; i++) bytes = zipOf({ [`z${i}.zip`]: bytes });
    const found = await find(bytes);
    // outer.zip is depth 0; entries at depth 1..5 are opened by gitleaks and extracted here.
    expect(found.archives.map((a) => a.path.split('!').length - 1)).toEqual([1, 2, 3, 4, 5]);
  });

  test('what vm-sync cannot look into is reported: 7z, rar, a tarball in brotli or lz4, an encrypted entry', async () => {
    const encrypted = zipOf({ 'secret.tar': tarOf({ 'x.txt': 'x\n' }) });
    encrypted.writeUInt16LE(1, encrypted.indexOf(Buffer.from([0x50, 0x4b, 0x01, 0x02])) + 8);
    const found = await find(
      zipOf({
        'a.7z': Buffer.from([0x37, 0x7a, 0xbc, 0xaf, 0x27, 0x1c, 0, 4]),
        'b.rar': Buffer.from([0x52, 0x61, 0x72, 0x21, 0x1a, 0x07, 1, 0]),
        'c.tar.br': zlib.brotliCompressSync(tarOf({ 'x.txt': 'x\n' })),
        'd.tar.lz4': Buffer.from('not really lz4'),
        'e.zip': encrypted,
        'readme.txt': 'plain\n',
      }),
    );
    expect(found.unscanned.map((u) => [u.path, u.reason])).toEqual([
      ['assets/outer.zip!a.7z', 'archive'],
      ['assets/outer.zip!b.rar', 'archive'],
      ['assets/outer.zip!c.tar.br', 'archive'],
      ['assets/outer.zip!d.tar.lz4', 'archive'],
      ['assets/outer.zip!e.zip!secret.tar', 'archive'],
    ]);
    expect(found.unscanned[0].detail).toMatch(/may be only partly scanned/);
  });

  test('a zip bomb costs nothing: an entry that is no archive is never inflated past its first bytes', async () => {
    const bomb = zipOf({ 'zeros.txt': Buffer.alloc(100 * 1024 * 1024) }, 'deflate');
    const started = Date.now();
    const found = await find(bomb);
    expect(found.archives).toEqual([]);
    expect(Date.now() - started).toBeLessThan(2000);
  });
});
