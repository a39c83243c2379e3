import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { commitExactly, configure, destroyWorld } from '../helpers/hardening.js';
import { plantedSecrets } from '../helpers/secrets.js';
import { World } from '../helpers/world.js';

/*
 * From the adversary review of 8248e08 (copy ahead). The commit says "a blocked scan leaves
 * the VM as it was". The agent's `link` op, which now runs *before* the scan
 * has passed, begins with drop_partials: it deletes every other partial
 * release on the VM (and every other commit's linked.* record). Before
 * 8248e08 that happened only in stage/apply, after the scan passed; now a
 * deploy that the scan blocks still deletes them.
 */

let world: World;
let dir: string;
beforeAll(async () => {
  world = await World.create(['s1']);
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-review23-link-'));
});
afterAll(() => {
  destroyWorld(world);
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Every path under `root` (directories end with /). */
function listing(root: string): string[] {
  const out: string[] = [];
  const walk = (d: string, rel: string): void => {
    for (const name of fs.readdirSync(d).sort()) {
      const full = path.join(d, name);
      const r = rel ? `${rel}/${name}` : name;
      const st = fs.lstatSync(full);
      out.push(st.isDirectory() ? `${r}/` : r);
      if (st.isDirectory() && !st.isSymbolicLink()) walk(full, r);
    }
  };
  walk(root, '');
  return out;
}

test('a deploy blocked by the scan leaves the state directory as it was: another commit\'s partial release is not deleted', async () => {
  configure(world);
  commitExactly(world, { 'app.txt': 'v1\n', 'data/x.txt': 'x\n' }, 'v1');
  expect((await world.cli(['sync'])).code).toBe(0);

  const state = path.join(world.vm('s1').home, '.app.vm-sync');
  // Another commit's partial release (a run cut short), kept for now.
  const other = 'ab'.repeat(20);
  fs.mkdirSync(path.join(state, 'releases', `${other}.partial`, 'lib'), { recursive: true });
  fs.writeFileSync(path.join(state, 'releases', `${other}.partial`, 'lib', 'big.bin'), 'staged by another run\n');
  const before = listing(state);

  // A gitleaks that waits (up to 10 s) for s1's copy ahead before scanning, so the copy is surely made.
  const real = (process.env.PATH ?? '').split(':').map((d) => path.join(d, 'gitleaks')).find((f) => fs.existsSync(f)) as string;
  const wrapper = path.join(dir, 'gitleaks');
  fs.writeFileSync(
    wrapper,
    `#!/bin/sh\nif [ ! -e ${dir}/done ]; then\n  : > ${dir}/done\n  i=0\n  while [ $i -lt 200 ] && ! ls ${state}/tmp/linked.* >/dev/null 2>&1; do sleep 0.05; i=$((i + 1)); done\n  ls ${state}/tmp/linked.* > ${dir}/seen 2>/dev/null\nfi\nexec ${real} "$@"\n`,
    { mode: 0o755 },
  );
  world.writeConfig({ repository: [`secret_scanning: { gitleaks_path: ${wrapper} }`], rollout: ['max_failed: "100%"'] });
  commitExactly(world, { 'app.txt': 'v2\n', 'data/x.txt': 'x\n', 'config/github.env': `GITHUB_TOKEN=${plantedSecrets().github}\n` }, 'leak');
  const run = await world.cli(['sync']);
  expect(run.code).not.toBe(0);
  expect(`${run.stdout}\n${run.stderr}`).toMatch(/secrets_found/);
  // The copy ahead was made while the scan ran (and removed again by unlock).
  expect(fs.readFileSync(path.join(dir, 'seen'), 'utf8')).toMatch(/linked\.[0-9a-f]{40}/);

  // Byte-for-byte as it was: in particular the other commit's partial release is still there.
  expect(fs.existsSync(path.join(state, 'releases', `${other}.partial`, 'lib', 'big.bin'))).toBe(true);
  expect(listing(state)).toEqual(before);
}, 240_000);

test('a deploy blocked by the scan leaves a partial release of its own commit as it was (no copy is made over it)', async () => {
  configure(world);
  const v3 = commitExactly(world, { 'app.txt': 'v3\n', 'data/x.txt': 'x\n' }, 'v3');
  // The test before left a token in the history the VMs never got: scanned from v3's parent on.
  expect((await world.cli(['sync', '--scan-base', world.ws.git(world.ws.work, ['rev-parse', `${v3}~1`])])).code).toBe(0);
  const leak = commitExactly(world, { 'app.txt': 'v4\n', 'data/x.txt': 'x\n', 'config/github.env': `GITHUB_TOKEN=${plantedSecrets().github}\n` }, 'leak again');
  const state = path.join(world.vm('s1').home, '.app.vm-sync');
  // This commit's partial release, left by an rsync run cut short (rsync would resume it).
  fs.mkdirSync(path.join(state, 'releases', `${leak}.partial`, 'data'), { recursive: true });
  fs.writeFileSync(path.join(state, 'releases', `${leak}.partial`, 'data', 'x.txt'), 'x\n');
  const before = listing(state);
  const run = await world.cli(['sync']);
  expect(`${run.stdout}\n${run.stderr}`).toMatch(/secrets_found/);
  expect(listing(state)).toEqual(before);
}, 240_000);
