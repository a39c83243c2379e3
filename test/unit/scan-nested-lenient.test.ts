import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { scanTree } from '../../src/scan/coverage.js';
import { findNestedArchives, fromHeader } from '../../src/scan/nested.js';
import { tarOf, zipOf } from '../helpers/archives.js';
import { plantedSecrets, secretFragments } from '../helpers/secrets.js';

/*
 * From review 23 of 70f2197 (src/scan/nested.ts; the reviewer's tests are the
 * first ones below, as written). The nested-archive search reads a
 * tarball "the way GNU tar on a VM reads it", but its tarMembers() yields only
 * members of type '0', '\0' and '7' with a plain octal size. GNU tar also
 * extracts, as a regular file:
 *   - a member of an unknown type ("Unknown file type 'Q', extracted as normal file"),
 *   - a member whose size is given by a pax `size=` record (the ustar size field says 0),
 *   - a member whose checksum field is 8 octal digits with no terminator (from_header accepts a full field).
 * Behind a damaged member header (where Go's archive/tar, and so gitleaks, stops
 * silently) such a member holding a gzip stream is neither opened by gitleaks
 * nor found by vm-sync: the token in it is deployed, unscanned and unreported.
 */

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-review23-nested-'));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

const gitleaks = (process.env.PATH ?? '').split(':').map((d) => path.join(d, 'gitleaks')).find((f) => fs.existsSync(f)) as string;
const secrets = plantedSecrets();
const PROSE = Array.from({ length: 6000 }, (_, i) => 'etaoinshrdlu'[(i * 7919 + ((i * i) % 13)) % 12]).join('');

/** One tar header block. `chksum`: how the checksum field is written ('ustar': "%06o\0 ", 'full': "%08o"). */
function header(name: string, size: number, type: string, chksum: 'ustar' | 'full' = 'ustar', sizeField?: string): Buffer {
  const h = Buffer.alloc(512);
  h.write(name, 0, 100, 'latin1');
  h.write('0000644\0', 100, 'latin1');
  h.write('0000000\0', 108, 'latin1');
  h.write('0000000\0', 116, 'latin1');
  h.write(sizeField ?? `${size.toString(8).padStart(11, '0')}\0`, 124, 'latin1');
  h.write('00000000000\0', 136, 'latin1');
  h.write('        ', 148, 'latin1');
  h.write(type, 156, 'latin1');
  h.write('ustar\0', 257, 'latin1');
  h.write('00', 263, 'latin1');
  let sum = 0;
  for (const byte of h) sum += byte;
  h.write(chksum === 'full' ? sum.toString(8).padStart(8, '0') : `${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return h;
}
const pad = (data: Buffer): Buffer => Buffer.concat([data, Buffer.alloc((512 - (data.length % 512)) % 512)]);
const member = (name: string, data: Buffer, type = '0', chksum: 'ustar' | 'full' = 'ustar'): Buffer => Buffer.concat([header(name, data.length, type, chksum), pad(data)]);
/** A member of a header whose checksum is wrong (Go's archive/tar stops there; GNU tar skips it). */
const damaged = (name: string, data: Buffer): Buffer => {
  const m = member(name, data);
  m.write('0000000\0', 148, 'latin1');
  return m;
};

/** The payload: a gzip stream whose text holds a token that is nowhere in the compressed bytes. */
const payload = (): Buffer => {
  const gz = zlib.gzipSync(`${PROSE}\nGITHUB_TOKEN=${secrets.github}\n${PROSE}\n`);
  expect(gz.includes(Buffer.from(secrets.github))).toBe(false);
  return gz;
};

const variants: Array<[string, () => Buffer]> = [
  ['a member of an unknown type (Q)', () => member('secret.gz', payload(), 'Q')],
  ['a member of GNU sparse type (S) with one segment covering it', () => {
    // old GNU sparse: the map is in the header (offset 386: 4 entries of 12+12 octal bytes; 482: isextended; 483: realsize).
    const data = payload();
    const h = header('secret.gz', data.length, 'S');
    h.write('        ', 148, 'latin1');
    h.write(`${(0).toString(8).padStart(11, '0')}\0`, 386, 'latin1');
    h.write(`${data.length.toString(8).padStart(11, '0')}\0`, 398, 'latin1');
    h.write(`${data.length.toString(8).padStart(11, '0')}\0`, 483, 'latin1');
    h.fill(0, 257, 265);
    h.write('ustar  \0', 257, 'latin1'); // old GNU magic
    let sum = 0;
    for (const byte of h) sum += byte;
    h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
    return Buffer.concat([h, pad(data)]);
  }],
  ['a member whose size is a pax size= record (its ustar size field says 0)', () => {
    const data = payload();
    const rec = (body: string): string => {
      let n = body.length + 3;
      while (`${n} ${body}\n`.length !== n) n = `${n} ${body}\n`.length;
      return `${n} ${body}\n`;
    };
    const pax = Buffer.from(rec(`size=${data.length}`));
    return Buffer.concat([member('PaxHeaders/secret.gz', pax, 'x'), header('secret.gz', 0, '0'), pad(data)]);
  }],
  ['a member whose checksum field is 8 octal digits (no terminator)', () => member('secret.gz', payload(), '0', 'full')],
];

/** What GNU tar (what a VM runs) extracts from `tar`, and whether the token is in what it unpacks. */
function gnuTarUnpacksToken(tar: Buffer): { names: string[]; token: boolean } {
  const file = path.join(dir, 'gnu.tar');
  const out = path.join(dir, 'gnu-out');
  fs.mkdirSync(out);
  fs.writeFileSync(file, tar);
  // GNU tar skips the damaged header (and exits 2 for it), and unpacks the members after it.
  spawnSync('tar', ['-xf', file, '-C', out], { stdio: 'ignore' });
  const names = fs.readdirSync(out).sort();
  let token = false;
  if (names.includes('secret.gz')) token = zlib.gunzipSync(fs.readFileSync(path.join(out, 'secret.gz'))).includes(Buffer.from(secrets.github));
  fs.rmSync(out, { recursive: true, force: true });
  return { names, token };
}

async function scan(root: string): Promise<Awaited<ReturnType<typeof scanTree>>> {
  fs.writeFileSync(path.join(dir, 'config.toml'), '[extend]\nuseDefault = true\n');
  return scanTree(gitleaks, root, { configFile: path.join(dir, 'config.toml'), ignoreDir: dir }, new Set(), { deadline: Date.now() + 120_000, timeoutS: 120 });
}

/** The token under `at` is found or `at` is reported as not scanned (never a silent pass), and no fragment of it is shown. */
function expectFoundOrReported(result: Awaited<ReturnType<typeof scanTree>>, at: string): void {
  const found = result.findings.some((f) => f.file.startsWith(at) && f.rule === 'github-pat');
  const reported = result.unscanned.some((u) => u.path.startsWith(at));
  for (const fragment of secretFragments(secrets)) expect(JSON.stringify(result)).not.toContain(fragment);
  expect({ found, reported, unscanned: result.unscanned }).not.toMatchObject({ found: false, reported: false });
}

describe.each([
  ['a plain .tar of the tree', 'assets/bundle.tar', (tar: Buffer) => tar],
  ['a .tar deflated in a zip', 'assets/bundle.zip', (tar: Buffer) => zipOf({ 'readme.txt': 'hi\n', 'dist/bundle.tar': tar }, 'deflate')],
] as const)('%s', (_where, at, wrap) => {
  test.each(variants)('behind a damaged header, %s holding a gzip stream with a token: found or reported (never a silent pass)', async (_what, make) => {
    const tar = Buffer.concat([member('a.txt', Buffer.from('hello\n')), damaged('b.txt', Buffer.from('x\n')), make(), Buffer.alloc(1024)]);
    // The VM's GNU tar unpacks secret.gz, and the token is in it.
    expect(gnuTarUnpacksToken(tar)).toEqual({ names: ['a.txt', 'secret.gz'], token: true });

    const root = path.join(dir, 'export');
    fs.mkdirSync(path.join(root, path.dirname(at)), { recursive: true });
    const bytes = wrap(tar);
    expect(bytes.includes(Buffer.from(secrets.github))).toBe(false);
    fs.writeFileSync(path.join(root, at), bytes);

    const result = await scan(root);
    expectFoundOrReported(result, at);
  }, 120_000);
});

test('control: the same tar with a regular (type 0) member is found', async () => {
  const tar = Buffer.concat([member('a.txt', Buffer.from('hello\n')), damaged('b.txt', Buffer.from('x\n')), member('secret.gz', payload()), Buffer.alloc(1024)]);
  const root = path.join(dir, 'export');
  fs.mkdirSync(path.join(root, 'assets'), { recursive: true });
  fs.writeFileSync(path.join(root, 'assets', 'bundle.tar'), tar);
  const result = await scan(root);
  expect(result.findings.some((f) => f.file.startsWith('assets/bundle.tar') && f.rule === 'github-pat')).toBe(true);
}, 120_000);

/*
 * A zip that does not start with a local file header: a self-extracting
 * stub (a shell script, an .exe) before the archive, as installers ship.
 * gitleaks opens it by its name (Go's archive/zip reads from the central
 * directory at the end, and allows the prefix), reads the .tar.gz in it and
 * stops silently at the damaged member header; vm-sync's search starts only
 * from files whose *first bytes* say zip (magicOf), so it never looks inside.
 * Info-ZIP unzip on a VM extracts it ("extra bytes at beginning"), then GNU tar
 * unpacks the members after the damaged header.
 */
test.each([
  ['a file of the tree', (zip: Buffer) => ({ at: 'assets/installer.zip', bytes: zip })],
  ['a zip inside a zip', (zip: Buffer) => ({ at: 'assets/outer.zip', bytes: zipOf({ 'lib/installer.zip': zip }, 'deflate') })],
] as const)('a zip with a self-extracting stub before it (%s), holding a damaged .tar.gz: found or reported', async (_what, place) => {
  const inner = Buffer.concat([member('a.txt', Buffer.from('hello\n')), damaged('b.txt', Buffer.from('x\n')), member('c.txt', Buffer.from(`${PROSE}\nGITHUB_TOKEN=${secrets.github}\n${PROSE}\n`)), Buffer.alloc(1024)]);
  const file = path.join(dir, 'gnu.tar');
  fs.writeFileSync(file, inner);
  const listed = spawnSync('tar', ['-tf', file], { encoding: 'utf8' }).stdout.split('\n');
  expect(listed).toContain('c.txt');
  const stub = Buffer.from('#!/bin/sh\n# self-extracting installer\nexec unzip -o "$0" -d /opt/app\nexit 0\n');
  const zip = Buffer.concat([stub, zipOf({ 'bundle.tar.gz': zlib.gzipSync(inner) })]);
  // Info-ZIP unzip (what a VM runs) extracts bundle.tar.gz from it, and GNU tar lists c.txt in that.
  const zfile = path.join(dir, 'sfx.zip');
  fs.writeFileSync(zfile, zip);
  spawnSync('unzip', ['-o', zfile, '-d', path.join(dir, 'unzipped')], { stdio: 'ignore' });
  expect(spawnSync('tar', ['-tzf', path.join(dir, 'unzipped', 'bundle.tar.gz')], { encoding: 'utf8' }).stdout.split('\n')).toContain('c.txt');
  fs.rmSync(path.join(dir, 'unzipped'), { recursive: true, force: true });
  const { at, bytes } = place(zip);
  expect(bytes.includes(Buffer.from(secrets.github))).toBe(false);
  const root = path.join(dir, 'export');
  fs.mkdirSync(path.join(root, path.dirname(at)), { recursive: true });
  fs.writeFileSync(path.join(root, at), bytes);
  const result = await scan(root);
  expectFoundOrReported(result, at);
}, 120_000);

/*
 * A tarball whose *first* block is not a header (GNU tar: "This does not look
 * like a tar archive", "Skipping to next header", then it unpacks the rest).
 * magicOf() recognises a tar only by a first block with "ustar" or a valid
 * checksum, so a file of the tree like this is never searched for the members
 * after it, whatever its name.
 */
test.each([
  ['a .tar of the tree', 'assets/bundle.tar', (tar: Buffer) => tar],
  ['a .tar deflated in a zip', 'assets/bundle.zip', (tar: Buffer) => zipOf({ 'dist/bundle.tar': tar }, 'deflate')],
] as const)('a tarball whose first block is garbage (%s), then a gzip member with a token: found or reported', async (_what, at, wrap) => {
  const garbage = Buffer.alloc(512, 0x41);
  const tar = Buffer.concat([garbage, member('secret.gz', payload()), Buffer.alloc(1024)]);
  expect(gnuTarUnpacksToken(tar)).toEqual({ names: ['secret.gz'], token: true });
  const root = path.join(dir, 'export');
  fs.mkdirSync(path.join(root, 'assets'), { recursive: true });
  fs.writeFileSync(path.join(root, at), wrap(tar));
  const result = await scan(root);
  const found = result.findings.some((f) => f.file.startsWith(at) && f.rule === 'github-pat');
  const reported = result.unscanned.some((u) => u.path.startsWith(at));
  expect({ found, reported, unscanned: result.unscanned }).not.toMatchObject({ found: false, reported: false });
}, 120_000);

/*
 * What the fix covers besides the reviewer's cases, checked against GNU tar
 * itself where it matters, and read without gitleaks (findNestedArchives).
 */
describe('reading tars and zips the way a VM does (no gitleaks)', () => {
  const find = async (bytes: Buffer, name: string): Promise<Awaited<ReturnType<typeof findNestedArchives>>> => {
    const file = path.join(dir, 'in', name);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, bytes);
    const scratch = path.join(dir, 'scratch');
    fs.mkdirSync(scratch, { recursive: true });
    return findNestedArchives([{ shown: `assets/${name}`, file }], scratch);
  };
  const found = async (bytes: Buffer, name: string): Promise<string[]> => (await find(bytes, name)).archives.map((a) => a.path);
  /** What GNU tar extracts from a tar, as a VM extracts it (members after a damaged header too). */
  const gnuLists = (tar: Buffer): string[] => {
    const file = path.join(dir, 'listed.tar');
    const out = path.join(dir, 'extracted');
    fs.rmSync(out, { recursive: true, force: true });
    fs.mkdirSync(out);
    fs.writeFileSync(file, tar);
    spawnSync('tar', ['-xf', file, '-C', out], { stdio: 'ignore' });
    return fs.readdirSync(out, { recursive: true, encoding: 'utf8' }).filter((f) => fs.statSync(path.join(out, f)).isFile()).sort();
  };
  /** A .tar.gz: what vm-sync extracts from the archive holding it. */
  const inner = (): Buffer => zlib.gzipSync(tarOf({ 'p.txt': `${PROSE}\n` }));
  /** A header whose size field is `sizeField` (12 bytes), its checksum written as GNU tar writes it. */
  const withSize = (name: string, sizeField: Buffer, type = '0'): Buffer => {
    const h = header(name, 0, type);
    sizeField.copy(h, 124);
    h.write('        ', 148, 'latin1');
    let sum = 0;
    for (const byte of h) sum += byte;
    h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
    return h;
  };

  test.each([
    ['a directory', '5'],
    ['a symbolic link', '2'],
    ['a hard link', '1'],
    ['a fifo', '6'],
  ])('%s (type %s) carries no data: GNU tar reads a header inside its size, and so does vm-sync', async (_what, type) => {
    const hidden = member('x.tar.gz', inner());
    const tar = Buffer.concat([member('a.txt', Buffer.from('a\n')), header(type === '5' ? 'd/' : 'l', hidden.length, type), hidden, Buffer.alloc(1024)]);
    expect(gnuLists(tar)).toEqual(['a.txt', 'x.tar.gz']);
    expect(await found(tar, 'outer.tar')).toEqual(['assets/outer.tar!x.tar.gz']);
  });

  test.each([
    ['a leading NUL', (n: number) => Buffer.from(`\0${n.toString(8).padStart(10, '0')}\0`, 'latin1')],
    ['leading blanks, a blank terminator', (n: number) => Buffer.from(`${n.toString(8).padStart(11, ' ')} `, 'latin1')],
    ['twelve octal digits, no terminator', (n: number) => Buffer.from(n.toString(8).padStart(12, '0'), 'latin1')],
    ['base-256', (n: number) => Buffer.concat([Buffer.from([0x80, 0, 0, 0, 0, 0]), Buffer.from(n.toString(16).padStart(12, '0'), 'hex')])],
  ])('a size field with %s is a size, as GNU tar reads it', async (_what, field) => {
    const data = inner();
    const sizeField = field(data.length);
    expect(sizeField).toHaveLength(12);
    expect(fromHeader(sizeField, false)).toBe(data.length);
    const tar = Buffer.concat([member('a.txt', Buffer.from('a\n')), withSize('x.tar.gz', sizeField), pad(data), member('after.tar.gz', inner()), Buffer.alloc(1024)]);
    expect(gnuLists(tar)).toEqual(['a.txt', 'after.tar.gz', 'x.tar.gz']);
    expect(await found(tar, 'outer.tar')).toEqual(['assets/outer.tar!x.tar.gz', 'assets/outer.tar!after.tar.gz']);
  });

  test('numeric fields GNU tar rejects are rejected (blanks only, junk after the digits, a negative base-256 number)', () => {
    expect(fromHeader(Buffer.from('        '), true)).toBeNull();
    expect(fromHeader(Buffer.from('0001234x\0'), false)).toBeNull();
    expect(fromHeader(Buffer.from([0xff, 0xff, 0xff, 0xff]), false)).toBeNull();
    expect(fromHeader(Buffer.from([0x80, 1, 2]), true)).toBeNull();
    expect(fromHeader(Buffer.from('  0123 \0'), true)).toBe(0o123);
    expect(fromHeader(Buffer.from('\0\0\0\0'), true)).toBe(0);
  });

  test('a checksum that is the signed sum of the header (old Sun tars) makes a header', async () => {
    // 'café' in UTF-8: bytes above 127, which the signed sum counts negative.
    const h = header('caf\xc3\xa9.tar.gz', inner().length, '0');
    h.write('        ', 148, 'latin1');
    let signed = 0;
    for (const byte of h) signed += byte > 127 ? byte - 256 : byte;
    h.write(`${signed.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
    const tar = Buffer.concat([member('a.txt', Buffer.from('a\n')), h, pad(inner()), Buffer.alloc(1024)]);
    expect(gnuLists(tar)).toHaveLength(2);
    expect(await found(tar, 'outer.tar')).toHaveLength(1);
  });

  /** A tar made by GNU tar itself of a sparse file `inner.tar`: a .tar.gz after 16 KiB of zeros (a hole). */
  const sparseTar = (args: string[]): Buffer => {
    const src = path.join(dir, 'src');
    fs.mkdirSync(src, { recursive: true });
    const innerTar = tarOf({ 'pad.bin': Buffer.alloc(16384), 'y.tar.gz': inner() });
    const fd = fs.openSync(path.join(src, 'inner.tar'), 'w');
    fs.ftruncateSync(fd, innerTar.length);
    fs.writeSync(fd, innerTar, 0, 512, 0);
    fs.writeSync(fd, innerTar, 512 + 16384, innerTar.length - 512 - 16384 - 1024, 512 + 16384);
    fs.closeSync(fd);
    const out = path.join(dir, 'sparse.tar');
    execFileSync('tar', ['--sparse', ...args, '-cf', out, '-C', src, 'inner.tar']);
    return fs.readFileSync(out);
  };

  test.each([
    ['old GNU (type S)', ['--format=gnu']],
    ['pax 0.0', ['--format=pax', '--sparse-version=0.0']],
    ['pax 0.1', ['--format=pax', '--sparse-version=0.1']],
    ['pax 1.0', ['--format=pax', '--sparse-version=1.0']],
  ])('a sparse member (%s) is rebuilt from its map: the tarball after its hole is found', async (_what, args) => {
    const tar = sparseTar(args);
    // GNU tar really wrote it sparse: its stored bytes are far fewer than the file's.
    expect(tar.length).toBeLessThan(16384);
    const result = await find(tar, 'outer.tar');
    expect(result.archives.map((a) => a.path)).toEqual(['assets/outer.tar!inner.tar', 'assets/outer.tar!inner.tar!y.tar.gz']);
    expect(result.unscanned).toEqual([]);
  });

  test('a sparse member whose map does not fit its data is reported, its stored bytes searched all the same', async () => {
    const tar = Buffer.from(sparseTar(['--format=gnu']));
    const at = tar.indexOf(Buffer.from('inner.tar'));
    // Its real size: smaller than its map says.
    tar.write('00000000001\0', at + 483, 'latin1');
    tar.write('        ', at + 148, 'latin1');
    let sum = 0;
    for (const byte of tar.subarray(at, at + 512)) sum += byte;
    tar.write(`${sum.toString(8).padStart(6, '0')}\0 `, at + 148, 'latin1');
    const result = await find(tar, 'outer.tar');
    expect(result.unscanned).toContainEqual({ path: 'assets/outer.tar!inner.tar', reason: 'archive', detail: expect.stringMatching(/sparse.*deploy it as a regular file/) });
  });

  test('a damaged region that no member header follows is reported; clean tars, and junk after the end blocks, are not', async () => {
    const junk = Buffer.alloc(2048, 0x41);
    const clean = tarOf({ 'a.txt': 'a\n', 'x.tar.gz': inner() });
    expect((await find(Buffer.concat([member('a.txt', Buffer.from('a\n')), junk]), 'damaged.tar')).unscanned.map((u) => [u.path, u.reason, /tar -tvf/.test(u.detail)])).toEqual([
      ['assets/damaged.tar', 'archive', true],
    ]);
    expect((await find(Buffer.concat([member('a.txt', Buffer.from('a\n')), Buffer.alloc(512), junk]), 'lone-zero.tar')).unscanned).toHaveLength(1);
    expect((await find(clean, 'clean.tar')).unscanned).toEqual([]);
    expect((await find(Buffer.concat([clean, junk]), 'trailer.tar')).unscanned).toEqual([]);
    // Inside a zip too.
    expect((await find(zipOf({ 'd.tar': Buffer.concat([member('a.txt', Buffer.from('a\n')), junk]) }, 'deflate'), 'outer.zip')).unscanned.map((u) => u.path)).toEqual(['assets/outer.zip!d.tar']);
    // A file that only has a header somewhere in its first blocks may be anything: not reported.
    expect((await find(Buffer.concat([junk, member('a.txt', Buffer.from('a\n')), junk]), 'data.bin')).unscanned).toEqual([]);
  });

  test('a tar under no tar name, its first block garbage (a size of whole blocks): its members are searched', async () => {
    const tar = Buffer.concat([Buffer.alloc(1024, 0x41), member('x.tar.gz', inner()), Buffer.alloc(1024)]);
    expect(gnuLists(tar)).toEqual(['x.tar.gz']);
    expect(await found(tar, 'payload.bin')).toEqual(['assets/payload.bin!x.tar.gz']);
    expect(await found(zipOf({ 'payload.bin': tar }, 'deflate'), 'outer.zip')).toEqual(['assets/outer.zip!payload.bin', 'assets/outer.zip!payload.bin!x.tar.gz']);
  });

  test('a tar by its name, however much garbage leads it (past the first blocks searched for a header in a file of no tar name)', async () => {
    const tar = Buffer.concat([Buffer.alloc(40 * 1024, 0x41), member('x.tar.gz', inner()), Buffer.alloc(1024)]);
    expect(gnuLists(tar)).toEqual(['x.tar.gz']);
    expect(await found(tar, 'bundle.tar')).toEqual(['assets/bundle.tar!x.tar.gz']);
    expect(await found(zipOf({ 'bundle.tar': tar }, 'deflate'), 'outer.zip')).toEqual(['assets/outer.zip!bundle.tar', 'assets/outer.zip!bundle.tar!x.tar.gz']);
    // A compressed tarball's stream, by the compressed file's name.
    expect(await found(zlib.gzipSync(tar), 'bundle.tgz')).toEqual(['assets/bundle.tgz!x.tar.gz']);
    expect(await found(zlib.gzipSync(tar), 'bundle.tar.gz')).toEqual(['assets/bundle.tar.gz!x.tar.gz']);
    // Named as compressed, and not: GNU tar reads it as the plain tar it is.
    expect(gnuLists(tar)).toEqual(['x.tar.gz']);
    expect(await found(tar, 'plain.tar.gz')).toEqual(['assets/plain.tar.gz!x.tar.gz']);
    // The bound: under a name that says nothing, only the first blocks are searched.
    expect(await found(tar, 'bundle.bin')).toEqual([]);
  });

  test.each([['Q'], ['N'], ['A'], ['7']])('a member of type %s is a file to GNU tar, and searched', async (type) => {
    const tar = Buffer.concat([member('x.tar.gz', inner(), type), Buffer.alloc(1024)]);
    expect(gnuLists(tar)).toEqual(['x.tar.gz']);
    expect(await found(tar, 'outer.tar')).toEqual(['assets/outer.tar!x.tar.gz']);
  });

  test('a pax size= record sets where the next header is', async () => {
    const data = inner();
    const rec = `size=${data.length}`;
    let n = rec.length + 3;
    while (`${n} ${rec}\n`.length !== n) n = `${n} ${rec}\n`.length;
    const line = `${n} ${rec}\n`;
    // Its ustar size says 0: read by it, the data would be taken for headers (none valid), and the member after it still found.
    const tar = Buffer.concat([member('PaxHeaders/x.tar.gz', Buffer.from(line), 'x'), header('x.tar.gz', 0, '0'), pad(data), member('after.tar.gz', inner()), Buffer.alloc(1024)]);
    expect(gnuLists(tar)).toEqual(['after.tar.gz', 'x.tar.gz']);
    const result = await find(tar, 'outer.tar');
    expect(result.archives.map((a) => [a.path, a.magic])).toEqual([
      ['assets/outer.tar!x.tar.gz', 'gz'],
      ['assets/outer.tar!after.tar.gz', 'gz'],
    ]);
    expect(result.unscanned).toEqual([]);
  });

  test('a pax size= record is the next file header\'s, not the next pax header\'s', async () => {
    // Blocks long: read by that size, the second pax header would swallow the file's header.
    const data = Buffer.concat([inner(), Buffer.alloc(3000, 0x41)]);
    const rec = (body: string): Buffer => {
      let n = body.length + 3;
      while (`${n} ${body}\n`.length !== n) n = `${n} ${body}\n`.length;
      return Buffer.from(`${n} ${body}\n`);
    };
    const tar = Buffer.concat([member('PaxHeaders/1', rec(`size=${data.length}`), 'x'), member('PaxHeaders/2', rec('path=x.tar.gz'), 'x'), header('ignored', 0, '0'), pad(data), Buffer.alloc(1024)]);
    expect(gnuLists(tar)).toEqual(['x.tar.gz']);
    expect(await found(tar, 'outer.tar')).toEqual(['assets/outer.tar!x.tar.gz']);
  });

  test('a checksum field of eight octal digits and no terminator makes a header', async () => {
    const tar = Buffer.concat([member('a.txt', Buffer.from('a\n')), member('x.tar.gz', inner(), '0', 'full'), Buffer.alloc(1024)]);
    expect(tar.toString('latin1', 1024 + 148, 1024 + 156)).toMatch(/^[0-7]{8}$/);
    expect(gnuLists(tar)).toEqual(['a.txt', 'x.tar.gz']);
    expect(await found(tar, 'outer.tar')).toEqual(['assets/outer.tar!x.tar.gz']);
  });

  test('a zip after a stub, under a name that says nothing (found by its end record), in the tree and stored in a zip', async () => {
    const sfx = Buffer.concat([Buffer.from('#!/bin/sh\nexec unzip -o "$0"\n'), zipOf({ 'x.tar.gz': inner() })]);
    expect(await found(sfx, 'setup.run')).toEqual(['assets/setup.run!x.tar.gz']);
    expect(await found(zipOf({ 'lib/setup.run': sfx }), 'outer.zip')).toEqual(['assets/outer.zip!lib/setup.run', 'assets/outer.zip!lib/setup.run!x.tar.gz']);
  });
});
