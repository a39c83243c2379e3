/*
 * Which gitleaks scans (src/scan/identity.ts), and the runner host's record
 * of the builds that passed the log probe (ProbeRecord in src/scan/cache.ts,
 * used by checkGitleaksLogs): an executable is known by its bytes, never run
 * to ask its version; a wrapper script also by its `version` answer, and is
 * never recorded; a recorded build is not probed again, anything else is.
 */
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ProbeRecord, ScanCache } from '../../src/scan/cache.js';
import { checkGitleaksLogs } from '../../src/scan/gitleaks.js';
import { identifyGitleaks, unchangedSince, type GitleaksIdentity } from '../../src/scan/identity.js';
import { plantedSecrets } from '../helpers/secrets.js';
import { transpileClosure } from '../helpers/transpile.js';

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-scan-identity-'));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

const sha256 = (bytes: Buffer | string): string => crypto.createHash('sha256').update(bytes).digest('hex');
const LIMITS = { deadline: Date.now() + 60_000, timeoutS: 60 };

/** A length-prefixed string as Go's build information holds it (uvarint length). */
function goString(text: string): Buffer {
  const bytes = Buffer.from(text, 'latin1');
  const length: number[] = [];
  for (let n = bytes.length; ; n >>= 7) {
    if (n < 0x80) {
      length.push(n);
      break;
    }
    length.push((n & 0x7f) | 0x80);
  }
  return Buffer.concat([Buffer.from(length), bytes]);
}

/**
 * A file laid out like a Go executable whose main package is `main` (ELF
 * magic, `filler`, then Go's build information at a 16-byte boundary), but
 * that would fail if it were ever run (not executable, no code).
 */
function fakeGoBinary(name: string, main: string, filler: string): string {
  const head = Buffer.concat([Buffer.from([0x7f, 0x45, 0x4c, 0x46]), Buffer.from(filler)]);
  const pad = Buffer.alloc((16 - (head.length % 16)) % 16);
  const header = Buffer.concat([Buffer.from('\xff Go buildinf:', 'latin1'), Buffer.from([8, 2]), Buffer.alloc(16)]);
  const sentinel = Buffer.from('3077af0c9274080241e1c107e6d618e6', 'hex');
  const modinfo = `${sentinel.toString('latin1')}path\t${main}\nmod\t${main}\tv8.30.1\th1:x=\n`;
  const file = path.join(dir, name);
  fs.writeFileSync(file, Buffer.concat([head, pad, header, goString('go1.26.8'), goString(modinfo), Buffer.from('tail')]), { mode: 0o644 });
  return file;
}
const GITLEAKS = 'github.com/zricethezav/gitleaks/v8';

/** What a build is identified by, for a file that is there (see identity.ts FileStamp). */
function identityOf(file: string, digest: string, exact = true): GitleaksIdentity {
  const stat = fs.statSync(file, { bigint: true });
  return { digest, exact, file: { dev: Number(stat.dev), ino: Number(stat.ino), size: Number(stat.size), mtimeNs: stat.mtimeNs, ctimeNs: stat.ctimeNs } };
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

test('a gitleaks executable is known by the SHA-256 of its bytes, without being run; two builds of one version differ', async () => {
  const a = fakeGoBinary('gitleaks-a', GITLEAKS, 'build one, version 8.30.1');
  const b = fakeGoBinary('gitleaks-b', GITLEAKS, 'build two, version 8.30.1');
  const idA = await identifyGitleaks(a);
  expect(idA).toMatchObject({ digest: sha256(fs.readFileSync(a)), exact: true });
  expect((await identifyGitleaks(b)).digest).not.toBe(idA.digest);
  // Larger than one read (1 MiB), its build information past the first: the digest is of the whole file.
  const big = fakeGoBinary('gitleaks-big', GITLEAKS, 'x'.repeat(3 * 1024 * 1024 + 17));
  expect(await identifyGitleaks(big)).toMatchObject({ digest: sha256(fs.readFileSync(big)), exact: true });
});

test("an executable that is not gitleaks (a version manager's shim: another Go main, or no Go build information) is asked its version", async () => {
  // Not executable: asking means failing, so the rejection shows it was asked.
  for (const file of [fakeGoBinary('aqua-proxy', 'github.com/aquaproj/aqua-proxy', 'a shim'), fakeGoBinary('fork', 'github.com/someone/gitleaks/v8', 'a fork')]) {
    await expect(identifyGitleaks(file)).rejects.toThrow(/^gitleaks version failed \(/);
  }
  const plain = path.join(dir, 'not-go');
  fs.writeFileSync(plain, Buffer.concat([Buffer.from([0x7f, 0x45, 0x4c, 0x46]), Buffer.from('a C program')]), { mode: 0o644 });
  await expect(identifyGitleaks(plain)).rejects.toThrow(/^gitleaks version failed \(/);
  // The magic off its 16-byte alignment is not build information either.
  const misaligned = path.join(dir, 'misaligned');
  fs.writeFileSync(misaligned, Buffer.concat([Buffer.from([0x7f, 0x45, 0x4c, 0x46, 0]), fs.readFileSync(fakeGoBinary('x', GITLEAKS, '')).subarray(4)]), { mode: 0o644 });
  await expect(identifyGitleaks(misaligned)).rejects.toThrow(/^gitleaks version failed \(/);
});

test('the real gitleaks on PATH is exact; a shell wrapper that starts it is not', async () => {
  const real = (process.env.PATH ?? '').split(':').map((d) => path.join(d, 'gitleaks')).find((f) => fs.existsSync(f)) as string;
  expect(await identifyGitleaks(real)).toMatchObject({ digest: sha256(fs.readFileSync(real)), exact: true });
  const wrapper = path.join(dir, 'wrapper');
  fs.writeFileSync(wrapper, `#!/bin/sh\nexec '${real}' "$@"\n`, { mode: 0o755 });
  expect((await identifyGitleaks(wrapper)).exact).toBe(false);
});

test('a file replaced after it was identified is not the identified one', async () => {
  const file = fakeGoBinary('gitleaks', GITLEAKS, 'one');
  const identity = await identifyGitleaks(file);
  expect(unchangedSince(file, identity)).toBe(true);
  fs.renameSync(fakeGoBinary('other', GITLEAKS, 'two'), file);
  expect(unchangedSince(file, identity)).toBe(false);
  fs.rmSync(file);
  expect(unchangedSince(file, identity)).toBe(false);
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
  // Tokens made at run time: a literal one in this file would be found by the project's own secret scan.
  const planted = plantedSecrets();
  fs.writeFileSync(file, `#!/bin/sh\necho "panic near ${planted.github}"; echo "ERR near ${planted.awsKeyId}" >&2; exit 2\n`, { mode: 0o755 });
  await expect(identifyGitleaks(file)).rejects.toThrow(new Error('gitleaks version failed (exit 2)'));
});

test('a gitleaks that cannot be read is rejected', async () => {
  await expect(identifyGitleaks(path.join(dir, 'absent'))).rejects.toThrow(/ENOENT/);
});

test('a recorded build is not probed again; an unrecorded one is, and one that fails is not recorded', async () => {
  // A stand-in that fails the probe (it logs nothing of what it skips): running it means probing.
  const failing = script('failing');
  const identity = identityOf(failing.file, sha256('a build'));
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
  await expect(checkGitleaksLogs(failing.file, LIMITS, identityOf(failing.file, sha256('another build')), reopened)).rejects.toMatchObject({ code: 'scan_failed' });
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
  expect(fs.readFileSync(path.join(cacheDir, 'probed-1'), 'utf8').split('\n').filter(Boolean)).toHaveLength(8);

  fs.appendFileSync(path.join(cacheDir, 'probed-1'), 'not a digest\n');
  const damaged = ProbeRecord.open(cacheDir, () => undefined);
  expect(builds.some((b) => damaged?.has(b))).toBe(false);
});

test('the scan cache keeps the probe record when it drops the caches of other keys', () => {
  const cacheDir = path.join(dir, 'cache');
  const build = { digest: sha256('a build'), exact: true };
  ProbeRecord.open(cacheDir, () => undefined)?.add(build);
  fs.writeFileSync(path.join(dir, 'config.toml'), '[extend]\nuseDefault = true\n');
  fs.writeFileSync(path.join(cacheDir, 'f'.repeat(32) + '.entries'), '');
  const cache = ScanCache.open(cacheDir, build, { configFile: path.join(dir, 'config.toml'), ignoreDir: dir }, () => undefined);
  // Only a completed scan (its save) drops what other keys left.
  expect(fs.readdirSync(cacheDir).sort()).toEqual(['f'.repeat(32) + '.entries', 'probed-1']);
  cache?.save();
  expect(fs.readdirSync(cacheDir)).toEqual(['probed-1']);
  expect(ProbeRecord.open(cacheDir, () => undefined)?.has(build)).toBe(true);
});

test('no record where the cache directory is not this user\'s own directory', () => {
  const file = path.join(dir, 'a-file');
  fs.writeFileSync(file, '');
  const said: string[] = [];
  expect(ProbeRecord.open(file, (m) => said.push(m))).toBeNull();
  expect(ProbeRecord.open(null, (m) => said.push(m))).toBeNull();
});

test('a probe passed by a gitleaks replaced meanwhile records nothing (the bytes identified are not the bytes that ran)', async () => {
  const real = (process.env.PATH ?? '').split(':').map((d) => path.join(d, 'gitleaks')).find((f) => fs.existsSync(f)) as string;
  const binary = path.join(dir, 'gitleaks');
  fs.copyFileSync(real, binary);
  fs.chmodSync(binary, 0o755);
  const identity = await identifyGitleaks(binary);
  // Replaced (an upgrade) between the identification and the probe.
  const next = path.join(dir, 'gitleaks.next');
  fs.copyFileSync(real, next);
  fs.appendFileSync(next, Buffer.from([0]));
  fs.chmodSync(next, 0o755);
  fs.renameSync(next, binary);
  const record = ProbeRecord.open(path.join(dir, 'cache'), () => undefined);
  await checkGitleaksLogs(binary, LIMITS, identity, record);
  expect(ProbeRecord.open(path.join(dir, 'cache'), () => undefined)?.has(identity)).toBe(false);
});

test("the record and the cache: only vm-sync's own files are kept, a huge record is not read, a directory others can write is not used", () => {
  const cacheDir = path.join(dir, 'cache');
  const build = { digest: sha256('a build'), exact: true };
  ProbeRecord.open(cacheDir, () => undefined)?.add(build);
  // A temporary file a killed run left behind, and an older probe's record.
  fs.writeFileSync(path.join(cacheDir, 'probed-1.999999.0badf00d'), `${build.digest}\n`);
  fs.writeFileSync(path.join(cacheDir, 'probed'), `${build.digest}\n`);
  fs.writeFileSync(path.join(dir, 'config.toml'), '[extend]\nuseDefault = true\n');
  ScanCache.open(cacheDir, build, { configFile: path.join(dir, 'config.toml'), ignoreDir: dir }, () => undefined)?.save();
  expect(fs.readdirSync(cacheDir)).toEqual(['probed-1']);

  // Far larger than eight digests (a file of newlines would not even fit in memory split): not read, not trusted.
  fs.writeFileSync(path.join(cacheDir, 'probed-1'), `${build.digest}\n${'\n'.repeat(64 * 1024)}`);
  expect(ProbeRecord.open(cacheDir, () => undefined)?.has(build)).toBe(false);

  ProbeRecord.open(cacheDir, () => undefined)?.add(build);
  fs.chmodSync(cacheDir, 0o777);
  const said: string[] = [];
  expect(ProbeRecord.open(cacheDir, (m) => said.push(m))).toBeNull();
  expect(ScanCache.open(cacheDir, build, { configFile: path.join(dir, 'config.toml'), ignoreDir: dir }, (m) => said.push(m))).toBeNull();
  expect(said[0]).toBe(`secret scan: ${cacheDir} can be written by other users: no scan cache (everything is scanned); chmod go-w ${cacheDir}`);
});

test('identifying gitleaks reads it through one reused buffer: memory does not grow with its size', () => {
  // Run in a process of its own, so that nothing else moves its memory (the reviewer's measure, adapted).
  const entry = transpileClosure(path.resolve('src/scan/identity.ts'), path.resolve('src'), path.join(dir, 'js'));
  // 64 MB (gitleaks is 20-30 MB; the size only makes the measure plain), its build information at the end.
  const exe = fakeGoBinary('gitleaks', GITLEAKS, crypto.randomBytes(64 * 1024 * 1024).toString('latin1'));
  const script = `import { identifyGitleaks } from ${JSON.stringify(entry)};
const base = process.memoryUsage().rss;
let peak = base;
const sample = setInterval(() => { peak = Math.max(peak, process.memoryUsage().rss); }, 1);
const id = await identifyGitleaks(${JSON.stringify(exe)});
peak = Math.max(peak, process.memoryUsage().rss);
clearInterval(sample);
console.log(JSON.stringify({ exact: id.exact, growthMB: Math.round((peak - base) / 1e6) }));
`;
  const child = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000 });
  const measured = JSON.parse(child.stdout) as { exact: boolean; growthMB: number };
  expect(measured.exact).toBe(true);
  // One read buffer (1 MiB) and the hash: a few MB, not the file.
  expect(measured.growthMB).toBeLessThan(16);
}, 90_000);
