import fs from 'node:fs';
import path from 'node:path';
import { commitExactly, configure, destroyWorld, liveRev, rows } from '../helpers/hardening.js';
import { World } from '../helpers/world.js';

/*
 * Held: a deployed tree cannot steer writes through symlinks it committed
 * earlier (symlink -> directory transitions), nor through .sync_rev, in both
 * layouts.
 */

let world: World;
afterAll(() => destroyWorld(world));

test.each(['atomic', 'in-place'])('%s: committed escaping symlinks, then directories at the same names, write nothing outside the target', async (layout) => {
  world ??= await World.create(['atomic', 'in-place']);
  const id = layout;
  configure(world, { repository: [`layout: ${layout}`] });
  const home = world.vm(id).home;
  const outside = path.join(home, 'outside');
  fs.rmSync(outside, { recursive: true, force: true });
  fs.mkdirSync(outside);
  fs.writeFileSync(path.join(outside, 'keep'), 'keep\n');
  const c1 = commitExactly(world, { 'a.txt': '1\n', esc: { symlink: '../outside' }, 'deep': { symlink: '../../outside' }, '.sync_rev': { symlink: '../outside/keep' } }, 'c1');
  const r1 = rows(await world.cli(['sync', '--vm', id]))[id];
  expect([r1.result, liveRev(world, id)]).toEqual(['success', c1]);
  const c2 = commitExactly(world, { 'a.txt': '2\n', 'esc/pwn': 'x\n', 'deep/pwn': 'x\n', '.sync_rev/x': 'y\n' }, 'c2');
  const r2 = rows(await world.cli(['sync', '--vm', id]))[id];
  expect({ result: r2.result, live: liveRev(world, id), outside: fs.readdirSync(outside).sort(), keep: fs.readFileSync(path.join(outside, 'keep'), 'utf8') }).toEqual({ result: 'success', live: c2, outside: ['keep'], keep: 'keep\n' });
});
