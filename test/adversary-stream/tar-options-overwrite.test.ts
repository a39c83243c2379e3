import fs from 'node:fs';
import path from 'node:path';
import { commitExactly, destroyWorld, killVmProcesses, stateDir } from '../helpers/hardening.js';
import { configureFleet, expectRan, releases } from '../helpers/fleet-release.js';
import { World } from '../helpers/world.js';

/*
 * Adversary (review of ecc9ae5..744acd0): the stream no longer removes a
 * modified ('M') path before tar writes it, trusting that "GNU tar unlinks a
 * file before writing it". It does so only by default: GNU tar reads
 * TAR_OPTIONS from the environment, and with --overwrite it opens the existing
 * file with O_TRUNC and writes *through* the hard link that `cp -al` made to
 * the live release. A VM whose SSH environment sets TAR_OPTIONS=--overwrite
 * (pam_env /etc/environment, ~/.ssh/environment, sshd SetEnv) gets its live
 * release rewritten before the flip, and its previous release (the rollback
 * target) ends up holding the new bytes. Before the change the agent removed
 * the path first (rm -rf), so tar created a new inode whatever TAR_OPTIONS said.
 */

let world: World;
const IDS = ['t01'];

beforeAll(async () => {
  world = await World.create(IDS, { sshdExtra: { t01: ['SetEnv TAR_OPTIONS=--overwrite'] } });
  commitExactly(world, { 'app.txt': 'base\n' }, 'base');
  configureFleet(world);
  expect((await world.cli(['sync'])).code).toBe(0);
});
afterAll(() => destroyWorld(world));
afterEach(() => killVmProcesses(world));

test('a streamed deploy of a modified file never writes into the release the VM served before (TAR_OPTIONS=--overwrite)', async () => {
  const base = releases(world, 't01').find((r) => r.rev !== null) as { name: string; rev: string };
  commitExactly(world, { 'app.txt': 'next\n' }, 'next');
  const run = await world.cli(['sync']);
  expectRan(run, IDS);
  expect(run.stderr).toMatch(/\[t01\] staging [0-9a-f]{12} from .* stream/);
  const old = fs.readFileSync(path.join(stateDir(world, 't01'), 'releases', base.name, 'app.txt'), 'utf8');
  // The release of `base` (what a rollback goes back to) still holds base's bytes.
  expect(old).toBe('base\n');
}, 120_000);
