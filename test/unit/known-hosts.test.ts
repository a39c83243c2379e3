import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fingerprint, isPinned, KnownHosts } from '../../src/remote/known-hosts.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-kh-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** A real key pair from ssh-keygen: [type, base64 blob, blob]. */
function hostKey(name: string, type = 'ed25519'): { line: string; blob: Buffer; file: string } {
  const file = path.join(dir, name);
  execFileSync('ssh-keygen', ['-q', '-t', type, '-N', '', '-f', file]);
  const [keyType, b64] = fs.readFileSync(`${file}.pub`, 'utf8').split(' ');
  return { line: `${keyType} ${b64}`, blob: Buffer.from(b64, 'base64'), file };
}

const a = hostKey('a');
const b = hostKey('b');
const rsa = hostKey('r', 'rsa');

test('fingerprint matches ssh-keygen -lf', () => {
  const expected = execFileSync('ssh-keygen', ['-l', '-E', 'sha256', '-f', `${a.file}.pub`], { encoding: 'utf8' }).split(' ')[1];
  expect(fingerprint(a.blob)).toBe(expected);
});

test('plain host on port 22, [host]:port otherwise', () => {
  const kh = new KnownHosts(`10.0.0.1 ${a.line}\n[10.0.0.1]:2222 ${b.line}\n`);
  expect(kh.pinned('10.0.0.1', 22).keys).toEqual([a.blob]);
  expect(kh.pinned('10.0.0.1', 2222).keys).toEqual([b.blob]);
  expect(kh.pinned('10.0.0.2', 22).keys).toEqual([]);
  expect(isPinned(kh.pinned('10.0.0.1', 2222), a.blob)).toBe(false);
});

test('hashed host names (ssh-keygen -H) match', () => {
  const file = path.join(dir, 'hashed');
  fs.writeFileSync(file, `[127.0.0.1]:2201 ${a.line}\n`);
  execFileSync('ssh-keygen', ['-H', '-f', file], { stdio: 'ignore' });
  const text = fs.readFileSync(file, 'utf8');
  expect(text).toMatch(/^\|1\|/);
  expect(new KnownHosts(text).pinned('127.0.0.1', 2201).keys).toEqual([a.blob]);
  expect(new KnownHosts(text).pinned('127.0.0.1', 2202).keys).toEqual([]);
});

test('comma lists, wildcards and negation', () => {
  const kh = new KnownHosts(`web-*.internal,!web-9.internal,10.0.0.5 ${a.line}\n`);
  expect(kh.pinned('web-1.internal', 22).keys).toHaveLength(1);
  expect(kh.pinned('10.0.0.5', 22).keys).toHaveLength(1);
  expect(kh.pinned('web-9.internal', 22).keys).toHaveLength(0);
});

test('@revoked vetoes a key; @cert-authority never pins one', () => {
  const kh = new KnownHosts(`h ${a.line}\n@revoked h ${a.line}\n@cert-authority h ${b.line}\nh ${rsa.line}\n`);
  const pinned = kh.pinned('h', 22);
  expect(pinned.keys).toEqual([rsa.blob]);
  expect(pinned.algorithms).toEqual(['rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa']);
});

test('garbled lines and comments pin nothing', () => {
  const junk = crypto.randomBytes(40).toString('base64');
  const kh = new KnownHosts(`# h ${a.line}\nh ssh-ed25519 ${junk}\nh\n\n`);
  expect(kh.pinned('h', 22).keys).toEqual([]);
});

test('algorithms offered are limited to the pinned key types', () => {
  expect(new KnownHosts(`h ${a.line}`).pinned('h', 22).algorithms).toEqual(['ssh-ed25519']);
});
