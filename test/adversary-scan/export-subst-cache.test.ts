import { commitPush, filesHolding, leaked, outputs, secrets } from './helpers.js';
import { World } from '../helpers/world.js';

/*
 * Adversary: the scan cache vouches for a file by (blob, path), but a file
 * with the export-subst attribute is deployed as `git archive` expands it:
 * its bytes depend on the commit being deployed (%B its message, %d/%D ref
 * names, %(describe) a tag name), not only on its blob. gitleaks' git mode
 * scans patches, not commit messages. So: VERSION = "$Format:%B$" is
 * scanned clean once and cached; a later commit whose message carries a
 * token changes nothing else of note; the tree scan skips VERSION (cached)
 * and the VMs get the token inside VERSION.
 */

let world: World;

beforeAll(async () => {
  world = await World.create(['e01']);
  commitPush(world, [['.gitattributes', 'VERSION export-subst\n'], ['VERSION', '$Format:%B$\n'], ['app.txt', 'v1\n']], 'base');
  const first = await world.cli(['sync']);
  expect(first.code).toBe(0);
});
afterAll(() => world?.destroy());

test('a secret that only an export-subst expansion puts in the deployed tree is found (the cached blob is not the deployed bytes)', async () => {
  const message = `bump\n\nGITHUB_TOKEN=${secrets.github}\n`;
  commitPush(world, [['app.txt', 'v2\n']], message);
  const run = await world.cli(['sync']);
  for (const text of outputs(run)) expect(leaked(text)).toBeNull();
  expect({ code: run.code, onVm: filesHolding(world.target('e01'), secrets.github) }).toEqual({ code: 3, onVm: [] });
}, 120_000);
