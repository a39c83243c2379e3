/*
 * The scan cache's memory of files it could not scan whole (src/scan/cache.ts):
 * only lasting reasons are kept, the file round-trips exactly, and a file that
 * is not exactly what vm-sync writes is dropped whole (those files are then
 * scanned again), never half-trusted.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ScanCache } from '../../src/scan/cache.js';

let dir: string;
/** The gitleaks build the cache is keyed by (see src/scan/identity.ts). */
let identity = { digest: 'd'.repeat(64), exact: true };
let settings: { configFile: string; ignoreDir: string };
const BLOB = 'a'.repeat(40);
const OTHER = 'b'.repeat(40);
/** The digest of the git attributes in force (gate.ts attributesOf). */
const ATTRS = 'c'.repeat(32);

beforeEach(() => {
  identity = { digest: 'd'.repeat(64), exact: true };
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-scan-cache-unit-'));
  fs.writeFileSync(path.join(dir, 'config.toml'), '[extend]\nuseDefault = true\n');
  settings = { configFile: path.join(dir, 'config.toml'), ignoreDir: dir };
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

async function open(said: string[] = []): Promise<ScanCache> {
  const cache = ScanCache.open(path.join(dir, 'cache'), identity, settings, (m) => said.push(m));
  if (!cache) throw new Error('no cache');
  return cache;
}

test('lasting unscanned parts are remembered per blob and path; a moment\'s failure (unreadable) is not', async () => {
  const cache = await open();
  cache.addUnscanned(
    [
    { blob: BLOB, path: 'assets/logo.pdf', parts: [{ suffix: '', reason: 'binary', detail: 'binary file (application/pdf)' }] },
    { blob: BLOB, path: 'dist/a.zip', parts: [{ suffix: '!inner.tgz', reason: 'archive', detail: 'an archive inside an archive' }] },
    { blob: OTHER, path: 'data/x.bin', parts: [{ suffix: '', reason: 'unreadable', detail: 'EACCES' }] },
    // An entry gitleaks cannot parse (a truncated tar member) fails the same way on every read of these bytes.
    { blob: OTHER, path: 'data/cut.tar', parts: [{ suffix: '!big.txt', reason: 'unreadable', detail: 'gitleaks could not open it (unexpected EOF)' }] },
    { blob: OTHER, path: 'data/y.bin', parts: [] },
  ], ATTRS);
  cache.save();
  const again = await open();
  expect(again.unscannedOf(BLOB, 'assets/logo.pdf', ATTRS)).toEqual([{ suffix: '', reason: 'binary', detail: 'binary file (application/pdf)' }]);
  expect(again.unscannedOf(BLOB, 'dist/a.zip', ATTRS)).toEqual([{ suffix: '!inner.tgz', reason: 'archive', detail: 'an archive inside an archive' }]);
  // The same bytes at another path are another entry (rules and allowlists match on paths).
  expect(again.unscannedOf(BLOB, 'assets/logo2.pdf', ATTRS)).toBeUndefined();
  expect(again.unscannedOf(OTHER, 'data/x.bin', ATTRS)).toBeUndefined();
  expect(again.unscannedOf(OTHER, 'data/cut.tar', ATTRS)).toEqual([{ suffix: '!big.txt', reason: 'unreadable', detail: 'gitleaks could not open it (unexpected EOF)' }]);
  expect(again.unscannedOf(OTHER, 'data/y.bin', ATTRS)).toBeUndefined();
  // Names never reach the file: paths are hashed.
  const text = fs.readdirSync(path.join(dir, 'cache')).map((f) => fs.readFileSync(path.join(dir, 'cache', f), 'utf8')).join('\n');
  expect(text).not.toContain('logo.pdf');
});

test.each([
  ['a line that is not JSON', (line: string) => `${line}\nnot json\n`],
  ['a reason vm-sync never remembers', (line: string) => line.replace('"binary"', '"unreadable"')],
  ['a suffix that is not an archive entry', (line: string) => line.replace('["",', '["x",')],
  ['an entry key of the wrong shape', (line: string) => line.replace(/"e":"[0-9a-f]{40}/, '"e":"zz')],
])('%s voids the whole file: nothing of it is trusted, and the scan says so', async (_what, tamper) => {
  const cache = await open();
  cache.addUnscanned(
    [
    { blob: BLOB, path: 'assets/logo.pdf', parts: [{ suffix: '', reason: 'binary', detail: 'binary file (application/pdf)' }] },
    { blob: OTHER, path: 'assets/two.pdf', parts: [{ suffix: '', reason: 'binary', detail: 'binary file (application/pdf)' }] },
  ], ATTRS);
  cache.save();
  const file = fs.readdirSync(path.join(dir, 'cache')).find((f) => f.endsWith('.unscanned')) as string;
  const full = path.join(dir, 'cache', file);
  const [first, ...rest] = fs.readFileSync(full, 'utf8').split('\n');
  fs.writeFileSync(full, [tamper(first), ...rest].join('\n'));
  const said: string[] = [];
  const again = await open(said);
  expect(again.unscannedOf(BLOB, 'assets/logo.pdf', ATTRS)).toBeUndefined();
  expect(again.unscannedOf(OTHER, 'assets/two.pdf', ATTRS)).toBeUndefined();
  expect(said.join('\n')).toMatch(/damaged or too large: it is ignored/);
});

test('other git attributes in force are other entries: nothing remembered under the old ones is used', async () => {
  const cache = await open();
  cache.addEntries([{ blob: BLOB, path: 'notes.txt' }], ATTRS);
  cache.addUnscanned([{ blob: OTHER, path: 'assets/logo.pdf', parts: [{ suffix: '', reason: 'binary', detail: 'binary file (application/pdf)' }] }], ATTRS);
  cache.save();
  const again = await open();
  expect([again.hasEntry(BLOB, 'notes.txt', ATTRS), again.unscannedOf(OTHER, 'assets/logo.pdf', ATTRS) !== undefined]).toEqual([true, true]);
  const changed = 'd'.repeat(32);
  expect([again.hasEntry(BLOB, 'notes.txt', changed), again.unscannedOf(OTHER, 'assets/logo.pdf', changed)]).toEqual([false, undefined]);
});

test('another gitleaks build is another key: nothing remembered under the old one is used', async () => {
  const cache = await open();
  cache.addEntries([{ blob: OTHER, path: 'notes.txt' }], ATTRS);
  cache.addUnscanned([{ blob: BLOB, path: 'assets/logo.pdf', parts: [{ suffix: '', reason: 'binary', detail: 'binary file (application/pdf)' }] }], ATTRS);
  cache.save();
  expect((await open()).hasEntry(OTHER, 'notes.txt', ATTRS)).toBe(true);
  identity = { digest: 'e'.repeat(64), exact: true };
  const again = await open();
  expect([again.hasEntry(OTHER, 'notes.txt', ATTRS), again.unscannedOf(BLOB, 'assets/logo.pdf', ATTRS)]).toEqual([false, undefined]);
});

test('a gitleaks that could not be identified opens no cache, and says why', async () => {
  const said: string[] = [];
  expect(ScanCache.open(path.join(dir, 'cache'), new Error('gitleaks version failed (exit 2)'), settings, (m) => said.push(m))).toBeNull();
  expect(said).toEqual([`secret scan: the scan cache in ${path.join(dir, 'cache')} cannot be used (gitleaks version failed (exit 2)): everything is scanned`]);
});
