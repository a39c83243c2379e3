import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';

/*
 * The hosted-runner install path: the real @actions/tool-cache downloading
 * from a loopback HTTP server that stands in for GitHub releases and records
 * every request.
 */
let dir: string;
let server: http.Server;
let baseUrl: string;
const requests: string[] = [];
const archives = new Map<string, Buffer>();

function tarball(content: string): Buffer {
  const src = fs.mkdtempSync(path.join(dir, 'pkg-'));
  fs.writeFileSync(path.join(src, 'gitleaks'), content, { mode: 0o755 });
  fs.writeFileSync(path.join(src, 'LICENSE'), 'MIT\n');
  return execFileSync('tar', ['-czf', '-', '-C', src, 'gitleaks', 'LICENSE']);
}

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-install-'));
  process.env.RUNNER_TOOL_CACHE = path.join(dir, 'toolcache');
  process.env.RUNNER_TEMP = path.join(dir, 'runner-temp');
  server = http.createServer((req, res) => {
    requests.push(`${req.method} ${req.url}`);
    const body = archives.get(req.url ?? '');
    if (!body) {
      res.writeHead(404).end('not found');
      return;
    }
    res.writeHead(200, { 'content-type': 'application/octet-stream' }).end(body);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  baseUrl = `http://127.0.0.1:${(server.address() as { port: number }).port}/releases`;
});
afterAll(async () => {
  await new Promise((resolve) => server.close(resolve));
  fs.rmSync(dir, { recursive: true, force: true });
});

test('downloads the pinned archive once, verifies it, caches it, and then uses the cache', async () => {
  const { installGitleaks } = await import('../../src/scan/install.js');
  const body = tarball('#!/bin/sh\necho "fake gitleaks 9.9.9"\n');
  archives.set('/releases/v9.9.9/gitleaks_9.9.9_linux_x64.tar.gz', body);
  const checksums = { '9.9.9': { 'linux-x64': crypto.createHash('sha256').update(body).digest('hex') } };

  const first = await installGitleaks({ version: '9.9.9', platform: 'linux', arch: 'x64', baseUrl, checksums });
  expect(first).toBe(path.join(dir, 'toolcache', 'gitleaks', '9.9.9', 'x64', 'gitleaks'));
  expect(execFileSync(first, { encoding: 'utf8' })).toBe('fake gitleaks 9.9.9\n');
  expect(requests).toEqual(['GET /releases/v9.9.9/gitleaks_9.9.9_linux_x64.tar.gz']);

  const second = await installGitleaks({ version: 'v9.9.9', platform: 'linux', arch: 'x64', baseUrl, checksums });
  expect(second).toBe(first);
  expect(requests).toHaveLength(1); // served from the tool cache
});

test('a checksum mismatch is refused, and nothing is cached or left behind', async () => {
  const { installGitleaks } = await import('../../src/scan/install.js');
  archives.set('/releases/v9.9.8/gitleaks_9.9.8_linux_x64.tar.gz', tarball('#!/bin/sh\necho tampered\n'));
  const checksums = { '9.9.8': { 'linux-x64': 'a'.repeat(64) } };
  await expect(installGitleaks({ version: '9.9.8', platform: 'linux', arch: 'x64', baseUrl, checksums })).rejects.toMatchObject({
    code: 'gitleaks_missing',
    message: expect.stringContaining('checksum mismatch for gitleaks_9.9.8_linux_x64.tar.gz'),
  });
  expect(fs.existsSync(path.join(dir, 'toolcache', 'gitleaks', '9.9.8'))).toBe(false);
  expect(fs.readdirSync(path.join(dir, 'runner-temp'))).toEqual([]);
});

test('an unpinned version or platform, or a failed download, is an error', async () => {
  const { installGitleaks, GITLEAKS_SHA256 } = await import('../../src/scan/install.js');
  await expect(installGitleaks({ version: '8.0.0', platform: 'linux', arch: 'x64', baseUrl })).rejects.toThrow(/no pinned checksum for gitleaks 8.0.0 on linux-x64/);
  await expect(installGitleaks({ version: '8.30.1', platform: 'win32', arch: 'x64', baseUrl })).rejects.toThrow(/no pinned checksum for gitleaks 8.30.1 on win32-x64/);
  await expect(installGitleaks({ version: '8.30.1', platform: 'linux', arch: 'x64', baseUrl })).rejects.toThrow(/cannot download .*gitleaks_8.30.1_linux_x64.tar.gz/);
  expect(GITLEAKS_SHA256['8.30.1']['linux-x64']).toMatch(/^[0-9a-f]{64}$/);
});
