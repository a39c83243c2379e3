import fs from 'node:fs';
import path from 'node:path';
import { commitExactly, destroyWorld, killVmProcesses, liveRev, stateDir } from '../helpers/hardening.js';
import { configureFleet } from '../helpers/fleet-release.js';
import { World } from '../helpers/world.js';

/*
 * Finding: two agent steps open a file in the state dir for writing with a
 * plain `>` and no prior removal, so a symlink planted at that name (by anyone
 * with the SSH user's rights, e.g. a compromised application running as that
 * user) steers the write outside the state dir:
 *   - prune:        list="$S/tmp/prune.$$"; { ... } | sort -r -u > "$list"
 *                   (pid_max is 32768 here: planting every pid is cheap) -> truncates and
 *                   overwrites any file the user can write;
 *   - adopt_legacy: [ -e "$C/$name" ] && continue; printf ... > "$C/$name"
 *                   (a dangling symlink at complete/<name> passes `-e`) -> creates a file anywhere.
 */

let world: World;
let outside: string;

beforeAll(async () => {
  world = await World.create(['z01', 'z02']);
  outside = path.join(world.dir, 'outside');
  fs.mkdirSync(outside, { recursive: true });
  commitExactly(world, { 'app.txt': 'base\n' }, 'base');
  configureFleet(world);
  expect((await world.cli(['sync'])).code).toBe(0);
});
afterAll(() => destroyWorld(world));
afterEach(() => killVmProcesses(world));

test('a symlink planted at tmp/prune.<pid> does not make prune overwrite a file outside the state dir', async () => {
  const victim = path.join(outside, 'victim.conf');
  fs.writeFileSync(victim, 'precious\n');
  const tmp = path.join(stateDir(world, 'z01'), 'tmp');
  const max = Number(fs.readFileSync('/proc/sys/kernel/pid_max', 'utf8'));
  for (let pid = 2; pid <= max; pid++) fs.symlinkSync(victim, path.join(tmp, `prune.${pid}`));
  try {
    const next = commitExactly(world, { 'app.txt': `next ${Date.now()}\n` }, 'next');
    const run = await world.cli(['sync', '--vm', 'z01']);
    expect([run.code, liveRev(world, 'z01')]).toEqual([0, next]);
    // Observed: victim.conf now holds the list of release names.
    expect(fs.readFileSync(victim, 'utf8')).toBe('precious\n');
  } finally {
    for (const name of fs.readdirSync(tmp)) if (name.startsWith('prune.')) fs.rmSync(path.join(tmp, name), { force: true });
  }
});

test('a dangling symlink planted at complete/<legacy release> does not make begin create a file outside the state dir', async () => {
  const state = stateDir(world, 'z02');
  const sha = liveRev(world, 'z02') as string;
  const name = `20200101T000000Z-${sha.slice(0, 12)}`;
  fs.mkdirSync(path.join(state, 'releases', name));
  fs.writeFileSync(path.join(state, 'releases', name, '.sync_rev'), `${sha}\n`);
  const created = path.join(outside, 'created-by-vm-sync');
  fs.symlinkSync(created, path.join(state, 'complete', name));
  commitExactly(world, { 'app.txt': `z02 ${Date.now()}\n` }, 'z02');
  await world.cli(['sync', '--vm', 'z02']);
  // Observed: outside/created-by-vm-sync exists and holds the sha.
  expect(fs.existsSync(created)).toBe(false);
});
