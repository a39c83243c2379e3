import fs from 'node:fs';
import path from 'node:path';
import { commitExactly, configure, destroyWorld } from '../helpers/hardening.js';
import { releases } from '../helpers/fleet-release.js';
import { expectedTree, snapshotTree, World } from '../helpers/world.js';

/*
 * Found by the adversary review of 839bf8d (the stage survey with the lock);
 * the defect is older. `apply` starts this commit's partial release as
 * `cp -al` of the live release; when it is cut short (a cancelled run, a lost
 * connection, the VM-side timeout) that partial is left holding hard links
 * into the live release. `stage` kept a commit's own partial for rsync to
 * resume, and rsync runs with -p and --checksum: a file whose content is
 * unchanged but whose mode the new commit changes was chmod-ed in place,
 * through the hard link, in the LIVE release, before the flip, and in the
 * release a rollback goes back to. `stage` now drops a partial that holds
 * hard links.
 */

let world: World;
beforeAll(async () => {
  world = await World.create(['h1']);
});
afterAll(() => destroyWorld(world));

test('rsync resuming a partial left by a cut-short apply never changes the live release', async () => {
  configure(world);
  const c1 = commitExactly(world, { 'app.txt': 'v1\n', 'mode.sh': 'echo mode\n' }, 'c1');
  expect((await world.cli(['sync'])).code).toBe(0);
  const [live] = releases(world, 'h1');
  expect(live.rev).toBe(c1);
  const state = path.join(world.vm('h1').home, '.app.vm-sync');
  const liveDir = path.join(state, 'releases', live.name);

  // c2 changes mode.sh's mode only (and app.txt).
  const c2 = commitExactly(world, { 'app.txt': 'v2\n', 'mode.sh': { content: 'echo mode\n', executable: true } }, 'c2');
  // What apply leaves when it is cut short after its hard-link copy of the base (agent.sh apply: cp -al).
  const partial = path.join(state, 'releases', `${c2}.partial`);
  fs.mkdirSync(partial);
  fs.cpSync(liveDir, partial, { recursive: true }); // replaced below by hard links, as cp -al makes them
  for (const name of ['app.txt', 'mode.sh']) {
    fs.rmSync(path.join(partial, name));
    fs.linkSync(path.join(liveDir, name), path.join(partial, name));
  }

  // This run goes through rsync (the stream is not used: sync.transfer rsync, or a stream the runner cannot make).
  configure(world, { sync: ['transfer: rsync'] });
  const run = await world.cli(['sync']);
  expect(run.code).toBe(0);
  expect(snapshotTree(world.target('h1'))).toEqual(expectedTree(world.ws, c2));
  // The release c1 was live and is the rollback target: it must still hold exactly c1's tree.
  expect(snapshotTree(liveDir)).toEqual(expectedTree(world.ws, c1));
}, 180_000);
