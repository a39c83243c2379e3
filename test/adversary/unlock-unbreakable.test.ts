import fs from 'node:fs';
import path from 'node:path';
import { commitExactly, destroyWorld, lockExists, rows, stateDir } from '../helpers/hardening.js';
import { World } from '../helpers/world.js';

/*
 * Finding: `vm-sync unlock` passes probe.lock.record -- already cleaned by
 * vmText() (control characters -> '?', tab -> ' ') -- to the agent's break_lock,
 * which compares it with the raw bytes on the VM. A lock whose owner text
 * holds any control character, a tab or a multi-byte character cut by
 * `head -c` never compares equal: `unlock` (even --force) answers "the lock
 * changed while it was being read ... look again" forever.
 */

let world: World;
afterAll(() => destroyWorld(world));

test('a lock record with a control character can never be broken by vm-sync unlock --force', async () => {
  world = await World.create(['u']);
  commitExactly(world, { 'app.txt': 'c0\n' }, 'c0');
  expect(rows(await world.cli(['sync'])).u.result).toBe('success');
  // An older vm-sync's lock directory whose owner line carries a tab (or any control byte).
  const lock = path.join(stateDir(world, 'u'), 'lock');
  fs.mkdirSync(lock);
  fs.writeFileSync(path.join(lock, 'owner'), `old-runner\ttoken 1700000000\n`);
  const outcomes: string[] = [];
  for (let i = 0; i < 3; i++) {
    const run = await world.cli(['unlock', '--vm', 'u', '--force']);
    outcomes.push(run.json.vms[0] ? (run.json.vms[0] as unknown as { outcome: string }).outcome : run.stdout);
  }
  // Must: broken at the first try (the lock never changed).
  expect({ outcomes, lockLeft: lockExists(world, 'u') }).toEqual({ outcomes: ['broken', 'not-locked', 'not-locked'], lockLeft: false });
});
