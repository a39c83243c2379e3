/*
 * Which gitleaks scans (src/scan/identity.ts), and the runner host's record
 * of the builds that passed the log probe (ProbeRecord in src/scan/cache.ts,
 * used by checkGitleaksLogs): an executable is known by its bytes, never run
 * to ask its version; a wrapper script also by its `version` answer, and is
 * never recorded; a recorded build is not probed again, anything else is.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ProbeRecord, ScanCache } from '../../src/scan/cache.js';
import { checkGitleaksLogs } from '../../src/scan/gitleaks.js';
import { identifyGitleaks } from '../../src/scan/identity.js';

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-scan-identity-'));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

const sha256 = (bytes: Buffer | string): string => crypto.createHash('sha256').update(bytes).digest('hex');
const LIMITS = { deadline: Date.now() + 60_000, timeoutS: 60 };

/** A file that starts like an executable but would fail if it were ever run (not executable, no code). */
function fakeElf(name: string, tail: string): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, Buffer.concat([Buffer.from([0x7f, 0x45, 0x4c, 0x46]), Buffer.from(tail)]), { mode: 0o644 });
  return file;
}

/** A gitleaks stand-in that appends its arguments to `calls` and answers `version` with the text of `versionFile`. */
function script(name: string, body = ''): { file: string; calls: string; versionFile: string } {
  const file = path.join(dir, name);
  const calls = path.join(dir, `${name}.calls`);
  const versionFile = path.join(dir, `${name}.version`);
  fs.writeFileSync(versionFile, '8.30.1\n');
  fs.writeFileSync(file, `#!/bin/sh\necho "$*" >> '${calls}'\nif [ "$1" = version ]; then cat '${versionFile}'; exit 0; fi\n${body}exit 1\n`, { mode: 0o755 });
  return { file, calls, versionFile };
}
const callsOf = (calls: string): string[] => (fs.existsSync(calls) ? fs.readFileSync(calls, 'utf8').split('\n').filter(Boolean) : []);

test('an executable is known by the SHA-256 of its bytes, without being run; two builds of one version differ', async () => {
  const a = fakeElf('gitleaks-a', 'build one, version 8.30.1');
  const b = fakeElf('gitleaks-b', 'build two, version 8.30.1');
  const idA = await identifyGitleaks(a);
  expect(idA).toEqual({ digest: sha256(fs.readFileSync(a)), exact: true });
  expect((await identifyGitleaks(b)).digest).not.toBe(idA.digest);
  // Larger than one read (1 MiB): the digest is still of the whole file.
  const big = fakeElf('gitleaks-big', 'x'.repeat(3 * 1024 * 1024 + 17));
  expect((await identifyGitleaks(big)).digest).toBe(sha256(fs.readFileSync(big)));
});

test('a script is known by its bytes and its version answer, and is not exact', async () => {
  const s = script('wrapper');
  const first = await identifyGitleaks(s.file);
  expect(first.exact).toBe(false);
  expect(callsOf(s.calls)).toEqual(['version']);
  // What the wrapper starts changed (another version answer), its bytes did not: another identity.
  fs.writeFileSync(s.versionFile, '8.31.0\n');
  expect((await identifyGitleaks(s.file)).digest).not.toBe(first.digest);
});

test('a script whose version fails: rejected, saying only how it ended', async () => {
  const file = path.join(dir, 'broken');
  fs.writeFileSync(file, '#!/bin/sh\necho "panic near ghp_PLANTEDplantedPLANTEDplanted0123456789"; echo "ERR near AKIAPLANTEDPLANTED" >&2; exit 2\n', { mode: 0o755 });
  await expect(identifyGitleaks(file)).rejects.toThrow(new Error('gitleaks version failed (exit 2)'));
});

test('a gitleaks that cannot be read is rejected', async () => {
  await expect(identifyGitleaks(path.join(dir, 'absent'))).rejects.toThrow(/ENOENT/);
});

test('a recorded build is not probed again; an unrecorded one is, and one that fails is not recorded', async () => {
  // A stand-in that fails the probe (it logs nothing of what it skips): running it means probing.
  const failing = script('failing');
  const identity = { digest: sha256('a build'), exact: true };
  const record = ProbeRecord.open(path.join(dir, 'cache'), () => undefined);
  if (!record) throw new Error('no record');

  await expect(checkGitleaksLogs(failing.file, LIMITS, identity, record)).rejects.toMatchObject({ code: 'scan_failed' });
  expect(callsOf(failing.calls)).toHaveLength(1);
  expect(ProbeRecord.open(path.join(dir, 'cache'), () => undefined)?.has(identity)).toBe(false);

  // Once the record holds the build, nothing is run: the same failing stand-in is trusted by its digest.
  record.add(identity);
  const reopened = ProbeRecord.open(path.join(dir, 'cache'), () => undefined);
  await expect(checkGitleaksLogs(failing.file, LIMITS, identity, reopened)).resolves.toBeUndefined();
  expect(callsOf(failing.calls)).toHaveLength(1);
  // Another digest, or the same one inexact (a wrapper), is probed.
  await expect(checkGitleaksLogs(failing.file, LIMITS, { digest: sha256('another build'), exact: true }, reopened)).rejects.toMatchObject({ code: 'scan_failed' });
  await expect(checkGitleaksLogs(failing.file, LIMITS, { ...identity, exact: false }, reopened)).rejects.toMatchObject({ code: 'scan_failed' });
  expect(callsOf(failing.calls)).toHaveLength(3);
});

test('the record keeps exact builds only, the newest eight, and a damaged record trusts nothing', () => {
  const cacheDir = path.join(dir, 'cache');
  const record = ProbeRecord.open(cacheDir, () => undefined);
  if (!record) throw new Error('no record');
  record.add({ digest: sha256('wrapper'), exact: false });
  const builds = Array.from({ length: 9 }, (_, i) => ({ digest: sha256(`build ${i}`), exact: true }));
  for (const build of builds) record.add(build);
  const again = ProbeRecord.open(cacheDir, () => undefined);
  expect(builds.map((b) => again?.has(b))).toEqual([false, true, true, true, true, true, true, true, true]);
  expect(again?.has({ digest: sha256('wrapper'), exact: true })).toBe(false);
  expect(fs.readFileSync(path.join(cacheDir, 'probed'), 'utf8').split('\n').filter(Boolean)).toHaveLength(8);

  fs.appendFileSync(path.join(cacheDir, 'probed'), 'not a digest\n');
  const damaged = ProbeRecord.open(cacheDir, () => undefined);
  expect(builds.some((b) => damaged?.has(b))).toBe(false);
});

test('the scan cache keeps the probe record when it drops the caches of other keys', () => {
  const cacheDir = path.join(dir, 'cache');
  const build = { digest: sha256('a build'), exact: true };
  ProbeRecord.open(cacheDir, () => undefined)?.add(build);
  fs.writeFileSync(path.join(dir, 'config.toml'), '[extend]\nuseDefault = true\n');
  fs.writeFileSync(path.join(cacheDir, 'f'.repeat(32) + '.entries'), '');
  expect(ScanCache.open(cacheDir, build, { configFile: path.join(dir, 'config.toml'), ignoreDir: dir }, () => undefined)).not.toBeNull();
  expect(fs.readdirSync(cacheDir)).toEqual(['probed']);
  expect(ProbeRecord.open(cacheDir, () => undefined)?.has(build)).toBe(true);
});

test('no record where the cache directory is not this user\'s own directory', () => {
  const file = path.join(dir, 'a-file');
  fs.writeFileSync(file, '');
  const said: string[] = [];
  expect(ProbeRecord.open(file, (m) => said.push(m))).toBeNull();
  expect(ProbeRecord.open(null, (m) => said.push(m))).toBeNull();
});
