import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { expectedTree, snapshotTree, World } from '../helpers/world.js';

const READER = path.join(process.cwd(), 'test', 'helpers', 'tree-reader.mjs');

interface ReaderResult {
  snapshots: number;
  consistent: Record<string, number>;
  mixed: number;
  examples: unknown[];
}

/** Starts the reader process against a VM's target for `ms` milliseconds. */
function startReader(target: string, ms: number, stopMarker: string, markers: Record<string, string>): Promise<ReaderResult> {
  const child = spawn(process.execPath, [READER, target, String(ms), stopMarker, ...Object.entries(markers).map(([sha, m]) => `${sha}=${m}`)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  return new Promise((resolve, reject) => child.on('close', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`reader exited ${code}`)))));
}

/**
 * A commit where every one of `count` data files holds `marker`, plus a large
 * incompressible blob to make the transfer last. The blob is a binary (ELF
 * magic): gitleaks skips it quickly, as it does real binaries, where megabytes
 * of base64 text would make the secret scan, not the transfer, the long part.
 */
function treeOf(marker: string, count: number, blobBytes: number): Record<string, string> {
  const blob = Buffer.concat([Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0]), crypto.randomBytes(blobBytes)]);
  const files: Record<string, string> = { 'big.bin': blob.toString('latin1') };
  for (let i = 0; i < count; i++) files[`data/${String(i).padStart(4, '0')}`] = marker;
  return files;
}

let world: World;
beforeAll(async () => {
  world = await World.create(['vm01']);
});
afterAll(() => world?.destroy());

test('a reader looping during an atomic deploy only ever sees one whole commit', async () => {
  const a = world.ws.commit(treeOf('A', 1500, 1_000_000), 'A');
  world.ws.push();
  expect((await world.cli(['sync'])).code).toBe(0);

  const b = world.ws.commit(treeOf('B', 1500, 8_000_000), 'B');
  world.ws.push();
  // The reader stops once it has seen B whole 20 times; the window only has to outlast the deploy.
  const reader = startReader(world.target('vm01'), 60000, 'B', { [a]: 'A', [b]: 'B' });
  await new Promise((r) => setTimeout(r, 300));
  const run = await world.cli(['sync']);
  const seen = await reader;

  expect(run.code).toBe(0);
  expect(seen.mixed).toBe(0);
  expect(seen.examples).toEqual([]);
  // The reader really watched the flip: it saw A whole, then B whole.
  expect(seen.consistent.A).toBeGreaterThan(0);
  expect(seen.consistent.B).toBeGreaterThan(0);
});

test('control: the same reader does catch the mixed views of layout: in-place', async () => {
  world.writeConfig({ repository: ['layout: in-place'] });
  try {
    fs.rmSync(world.target('vm01'), { force: true });
    const a = world.ws.git(world.ws.work, ['rev-parse', 'HEAD']);
    expect((await world.cli(['sync'])).code).toBe(0);
    const c = world.ws.commit(treeOf('C', 1500, 8_000_000), 'C');
    world.ws.push();
    const reader = startReader(world.target('vm01'), 60000, 'C', { [a]: 'B', [c]: 'C' });
    await new Promise((r) => setTimeout(r, 300));
    expect((await world.cli(['sync'])).code).toBe(0);
    const seen = await reader;
    expect(seen.mixed).toBeGreaterThan(0);
  } finally {
    world.writeConfig();
    fs.rmSync(world.target('vm01'), { recursive: true, force: true });
  }
});

test('an interrupted deploy leaves the VM on its last complete release, and the next run completes it', async () => {
  const before = world.ws.commit(treeOf('D', 10, 1000), 'D');
  world.ws.push();
  expect((await world.cli(['sync'])).code).toBe(0);
  const liveBefore = fs.realpathSync(world.target('vm01'));

  const next = world.ws.commit(treeOf('E', 10, 40_000_000), 'E');
  world.ws.push();
  const controller = new AbortController();
  let stderr = '';
  const { main } = await import('../../src/cli.js');
  const code = await main(
    ['sync', '--config', world.configPath, '--json'],
    {
      out: () => undefined,
      err: (t) => {
        stderr += t;
        // Interrupt as soon as the transfer is under way (Ctrl-C, a cancelled job).
        if (/\[vm01\] transfer/.test(t)) controller.abort();
      },
    },
    controller.signal,
  );

  expect(stderr).toMatch(/\[vm01\] transfer \d+%/);
  expect(code).toBe(1);
  expect(stderr).toMatch(/interrupted/);
  expect(world.sentinel('vm01')).toBe(`${before}\n`);
  expect(fs.realpathSync(world.target('vm01'))).toBe(liveBefore);
  expect(snapshotTree(world.target('vm01'))).toEqual(expectedTree(world.ws, before));
  const state = path.join(world.vm('vm01').home, '.app.vm-sync');
  expect(fs.existsSync(path.join(state, 'lock'))).toBe(false); // released on the way out
  expect(fs.readdirSync(path.join(state, 'releases')).filter((n) => n.endsWith('.partial'))).toEqual([`${next}.partial`]);

  const resumed = await world.cli(['sync']);
  expect(resumed.json.vms[0]).toMatchObject({ result: 'success', rev_before: before, rev_after: next });
  expect(snapshotTree(world.target('vm01'))).toEqual(expectedTree(world.ws, next));
});
