import { execFileSync, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { World } from '../helpers/world.js';

/**
 * The scan reads a copy of the files it scans, made in the temporary
 * directory (src/scan/gate.ts, copyView). One too small for it (a full disk)
 * fails the scan closed, says why and what to do, and leaves nothing behind.
 */
const bundleDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-scan-scratch-full-'));
const bundle = path.join(bundleDir, 'cli.js');
fs.copyFileSync(path.join(process.cwd(), 'dist', 'cli.js'), bundle);
const small = path.join(bundleDir, 'small-tmp');

let world: World;
beforeAll(async () => {
  world = await World.create(['s1']);
  fs.mkdirSync(small);
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', small]);
});
afterAll(() => {
  world?.destroy();
  try {
    execFileSync('umount', [small]);
  } catch {
    /* not mounted */
  }
  fs.rmSync(bundleDir, { recursive: true, force: true });
});

test('a scan whose view does not fit in the temporary directory fails closed, says so, and leaves nothing there', () => {
  // 3 MB of text (hex): more than the 2 MB temporary directory holds.
  world.ws.commit({ 'index.html': '<h1>hi</h1>\n', 'big.txt': crypto.randomBytes(1536 * 1024).toString('hex') }, 'big');
  world.ws.push();
  const result = spawnSync(process.execPath, [bundle, 'sync', '--config', world.configPath, '--json'], { encoding: 'utf8', cwd: bundleDir, timeout: 120_000, killSignal: 'SIGKILL', env: { ...process.env, TMPDIR: small } });
  expect(result.status).toBe(1);
  expect(world.sentinel('s1')).toBeNull();
  // Nothing left in the temporary directory (the view is removed in scanTreePart's finally).
  expect(fs.readdirSync(small)).toEqual([]);
  // Said as what it is, with what to do: not a defect of vm-sync, not a VM's failure.
  expect(result.stderr).not.toMatch(/internal error|internal:|a defect/);
  const doc = JSON.parse(result.stdout);
  expect(doc.error?.code).toBe('storage_full');
  expect(doc.error?.message).toContain(`no space left for the secret scan's copy of the files to scan in ${small}`);
  expect(doc.error?.message).toContain('point TMPDIR at a larger directory');
}, 180_000);
