import { commitPush, filesHolding, leaked, outputs, secrets } from './helpers.js';
import { World } from '../helpers/world.js';

/*
 * Adversary (review of 0a2963a): withPlaceholder keeps a file out of the scan
 * cache when its *blob* holds `$Format:`. git archive converts a file to its
 * working-tree form (working-tree-encoding) before it expands export-subst
 * placeholders, so a file with `export-subst working-tree-encoding=UTF-16LE`
 * whose blob is `$Format:%B$` read as UTF-16LE (CJK text in git, no
 * `$Format:` for git grep) is still deployed as the commit's message. Same
 * attack as export-subst-cache.test.ts: cached once, then a commit whose
 * message carries a token reaches the VMs unscanned.
 */

let world: World;

beforeAll(async () => {
  world = await World.create(['e02']);
  // The work tree holds the UTF-16LE form: the ASCII placeholder itself (even length).
  commitPush(world, [['.gitattributes', 'VERSION export-subst working-tree-encoding=UTF-16LE\n'], ['VERSION', '$Format:%B$\n\n\n'], ['app.txt', 'v1\n']], 'base');
  const blob = world.ws.git(world.ws.work, ['cat-file', '-p', 'HEAD:VERSION']);
  expect(blob).not.toContain('$Format:');
  const first = await world.cli(['sync']);
  expect(first.code).toBe(0);
});
afterAll(() => world?.destroy());

test('a placeholder git grep cannot see in the blob (working-tree-encoding) still keeps the file out of the cache', async () => {
  const message = `bump\n\nGITHUB_TOKEN=${secrets.github}\n`;
  commitPush(world, [['app.txt', 'v2\n']], message);
  const run = await world.cli(['sync']);
  for (const text of outputs(run)) expect(leaked(text)).toBeNull();
  expect({ code: run.code, onVm: filesHolding(world.target('e02'), secrets.github) }).toEqual({ code: 3, onVm: [] });
}, 120_000);
