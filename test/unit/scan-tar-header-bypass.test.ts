import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { scanTree } from '../../src/scan/coverage.js';
import { tarOf } from '../helpers/archives.js';
import { plantedSecrets, secretFragments } from '../helpers/secrets.js';

/*
 * Found by the adversary review of b68d93f; the gap was older. gitleaks
 * (mholt/archives over Go's archive/tar) stops reading a tar at the first
 * member header it rejects and logs nothing: the members after it were
 * neither scanned nor reported. GNU tar on a VM skips the bad header ("Skipping
 * to next header") and unpacks the rest. A plain .tar was covered by vm-sync's
 * byte-level rescan and a .tar.gz by its gunzip rescan; .tar.zst, .tar.xz and
 * .tar.bz2 by nothing. vm-sync now inflates each of them and scans the stream.
 */

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-tar-header-'));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

/** Found once, before a test takes tools off PATH. */
const gitleaks = (process.env.PATH ?? '').split(':').map((d) => path.join(d, 'gitleaks')).find((f) => fs.existsSync(f)) as string;
const secrets = plantedSecrets();

/** A tarball whose second member's header checksum is wrong, and whose third member holds a token. */
function damagedTar(): Buffer {
  const tar = Buffer.from(tarOf({ 'a.txt': 'hello\n', 'b.txt': 'x\n', 'c.txt': `GITHUB_TOKEN=${secrets.github}\n` }));
  const at = tar.indexOf(Buffer.from('b.txt')) - (tar.indexOf(Buffer.from('b.txt')) % 512);
  tar.write('0000000\0', at + 148, 'latin1');
  return tar;
}

async function scan(root: string): Promise<Awaited<ReturnType<typeof scanTree>>> {
  fs.writeFileSync(path.join(dir, 'config.toml'), '[extend]\nuseDefault = true\n');
  return scanTree(gitleaks, root, { configFile: path.join(dir, 'config.toml'), ignoreDir: dir }, new Set(), { deadline: Date.now() + 120_000, timeoutS: 120 });
}

test.each([
  ['zstd', 'bundle.tar.zst', 'zstd'],
  ['xz', 'bundle.tar.xz', 'xz'],
  ['bzip2', 'bundle.tar.bz2', 'bzip2'],
  ['gzip', 'bundle.tar.gz', 'gzip'],
  // A name that says nothing: gitleaks skips it as binary, vm-sync sniffs it.
  ['zstd', 'bundle.dat', 'zstd'],
])('a token in a %s tarball (%s) after a member header Go rejects is found', async (_what, name, tool) => {
  const root = path.join(dir, 'export');
  fs.mkdirSync(path.join(root, 'assets'), { recursive: true });
  fs.writeFileSync(path.join(root, 'assets', name), execFileSync(tool, ['-c'], { input: damagedTar() }));
  // What a VM's GNU tar unpacks: the token file too.
  const listed = (() => {
    try {
      return execFileSync('tar', ['-tf', path.join(root, 'assets', name), '--auto-compress', `--use-compress-program=${tool}`], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    } catch (error) {
      return String((error as { stdout?: string }).stdout);
    }
  })();
  expect(listed.split('\n')).toContain('c.txt');

  const result = await scan(root);
  expect(result.findings.map((f) => [f.file, f.rule])).toContainEqual([`assets/${name}`, 'github-pat']);
  for (const fragment of secretFragments(secrets)) expect(JSON.stringify(result)).not.toContain(fragment);
}, 120_000);

test('a compressed tarball that cannot be inflated here is reported as not scanned, never passed as scanned', async () => {
  const root = path.join(dir, 'export');
  fs.mkdirSync(path.join(root, 'assets'), { recursive: true });
  fs.writeFileSync(path.join(root, 'assets', 'bundle.tar.xz'), execFileSync('xz', ['-c'], { input: damagedTar() }));
  // A damaged stream (cut short) and, below, no xz at all.
  fs.writeFileSync(path.join(root, 'assets', 'cut.tar.bz2'), execFileSync('bzip2', ['-c'], { input: damagedTar() }).subarray(0, 60));
  const pathBefore = process.env.PATH;
  const empty = path.join(dir, 'no-tools');
  fs.mkdirSync(empty);
  process.env.PATH = empty;
  let result: Awaited<ReturnType<typeof scanTree>>;
  try {
    result = await scan(root);
  } finally {
    process.env.PATH = pathBefore;
  }
  expect(result.unscanned).toEqual(
    expect.arrayContaining([
      { path: 'assets/bundle.tar.xz', reason: 'archive', detail: 'xz is not installed on the runner host, so its content is only scanned as far as gitleaks reads it' },
      expect.objectContaining({ path: 'assets/cut.tar.bz2', reason: 'archive' }),
    ]),
  );
}, 120_000);

/*
 * From the review of the first version (which inflated zstd with Node's zlib
 * and dropped whatever a failing tool had inflated).
 */
/** Text zstd Huffman-codes, so that a token next to it does not stand in the compressed bytes as plain text. */
const PROSE = Array.from({ length: 6000 }, (_, i) => 'etaoinshrdlu'[(i * 7919 + ((i * i) % 13)) % 12]).join('');
function hiddenTokenTar(): Buffer {
  const tar = Buffer.from(tarOf({ 'a.txt': 'hello\n', 'b.txt': 'x\n', 'c.txt': `${PROSE}\nGITHUB_TOKEN=${secrets.github}\n${PROSE}\n` }));
  const at = tar.indexOf(Buffer.from('b.txt')) - (tar.indexOf(Buffer.from('b.txt')) % 512);
  tar.write('0000000\0', at + 148, 'latin1');
  return tar;
}

test('a .tar.zst of two zstd frames is inflated whole (Node reads only the first frame; a VM reads both)', async () => {
  const tar = hiddenTokenTar();
  const bytes = Buffer.concat([zlib.zstdCompressSync(tar.subarray(0, 512)), zlib.zstdCompressSync(tar.subarray(512))]);
  expect(bytes.includes(Buffer.from(secrets.github))).toBe(false);
  const root = path.join(dir, 'export');
  fs.mkdirSync(path.join(root, 'assets'), { recursive: true });
  fs.writeFileSync(path.join(root, 'assets', 'bundle.tar.zst'), bytes);
  const result = await scan(root);
  expect(result.findings.map((f) => [f.file, f.rule])).toContainEqual(['assets/bundle.tar.zst', 'github-pat']);
}, 120_000);

test.each([
  ['xz', 'bundle.tar.xz', true],
  ['gzip', 'bundle.tar.gz', true],
  ['zstd', 'bundle.tar.zst', true],
  // bzip2 ignores what follows its stream and exits 0: nothing to report (the junk itself is scanned byte for byte).
  ['bzip2', 'bundle.tar.bz2', false],
])('a %s tarball followed by junk: what inflates is scanned (the token is found), and a failing tool is reported', async (tool, name, reported) => {
  const root = path.join(dir, 'export');
  fs.mkdirSync(path.join(root, 'assets'), { recursive: true });
  const compressed = execFileSync(tool, ['-c'], { input: hiddenTokenTar() });
  expect(compressed.includes(Buffer.from(secrets.github))).toBe(false);
  fs.writeFileSync(path.join(root, 'assets', name), Buffer.concat([compressed, Buffer.from('JUNKJUNK')]));
  const result = await scan(root);
  expect(result.findings.map((f) => [f.file, f.rule])).toContainEqual([`assets/${name}`, 'github-pat']);
  expect(result.unscanned.some((u) => u.path === `assets/${name}` && u.reason === 'archive')).toBe(reported);
}, 120_000);

test('inflated streams share one budget per scan: past it, a compressed file is reported as not scanned, never written or passed silently', async () => {
  const root = path.join(dir, 'export');
  fs.mkdirSync(path.join(root, 'logs'), { recursive: true });
  // Four gzip files of about 100 KB of text each (they compress to little: what a gzip bomb is, in small).
  const filler = `${'nothing to see here\n'.repeat(5000)}`;
  for (const n of [1, 2, 3]) fs.writeFileSync(path.join(root, 'logs', `day${n}.log.gz`), zlib.gzipSync(filler));
  fs.writeFileSync(path.join(root, 'logs', 'day4.log.gz'), zlib.gzipSync(`${filler}GITHUB_TOKEN=${secrets.github}\n`));
  fs.writeFileSync(path.join(dir, 'config.toml'), '[extend]\nuseDefault = true\n');
  const result = await scanTree(gitleaks, root, { configFile: path.join(dir, 'config.toml'), ignoreDir: dir }, new Set(), { deadline: Date.now() + 120_000, timeoutS: 120 }, 250_000);
  const over = result.unscanned.filter((u) => u.reason === 'too_large' && /for inflated streams is used up/.test(u.detail));
  // Two fit in 250 KB; the other two are reported, each by its path.
  expect(over.map((u) => u.path).sort()).toHaveLength(2);
  for (const u of over) expect(u.path).toMatch(/^logs\/day\d\.log\.gz$/);
  // The token's file is scanned (found) or reported: never a silent pass.
  const found = result.findings.some((f) => f.file === 'logs/day4.log.gz' && f.rule === 'github-pat');
  expect(found || over.some((u) => u.path === 'logs/day4.log.gz')).toBe(true);
  for (const fragment of secretFragments(secrets)) expect(JSON.stringify(result)).not.toContain(fragment);
}, 120_000);
