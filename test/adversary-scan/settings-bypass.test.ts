import fs from 'node:fs';
import path from 'node:path';
import { World } from '../helpers/world.js';
import { commitPush, filesHolding, leaked, line, outputs, rewind, token } from './helpers.js';

/* A push that switches off its own scan. */
let world: World;

beforeAll(async () => {
  world = await World.create(['vm01']);
});
afterAll(() => world?.destroy());

test('first deploy (nothing recorded): a push of two commits, the first disabling the rule, the second adding a token', async () => {
  world.ws.commit({ 'README.md': '# app\n' }, 'clean start');
  world.ws.commit({ '.gitleaks.toml': '[extend]\nuseDefault = true\ndisabledRules = ["github-pat", "generic-api-key"]\n' }, 'tune the scanner');
  world.ws.commit({ 'config/prod.env': line }, 'prod config');
  world.ws.push();
  const run = await world.cli(['sync']);
  const onVm = filesHolding(world.target('vm01'), token);
  expect(leaked(...outputs(run))).toBeNull();
  expect(onVm).toEqual([]);
  expect(run.code).toBe(3);
});

test('a config that extends an absolute path inside the runner-host clone is refused at once, so a later push cannot rewrite its rules', async () => {
  // Start clean: the branch without the earlier test's token, deployed.
  commitPush(world, [['config/prod.env', null], ['.gitleaks.toml', null]], 'clean');
  expect((await world.cli(['sync'])).code).toBe(0);

  // Push 1: an innocent-looking shared base config, extended by absolute path (the README allows absolute paths).
  const base = path.join(world.runnerRepo, 'ci', 'gitleaks-base.toml');
  const first = commitPush(world, [
    ['ci/gitleaks-base.toml', '[extend]\nuseDefault = true\n'],
    ['.gitleaks.toml', `[extend]\npath = "${base}"\n`],
  ], 'share the scanner config');
  const r1 = await world.cli(['sync']);
  // Refused where it arrives: extend paths are not pinned to a commit.
  expect([r1.code, r1.json.error?.code]).toEqual([2, 'config_invalid']);

  // Push 2: only a non-settings file changes, plus a token.
  commitPush(world, [
    ['ci/gitleaks-base.toml', "[[rules]]\nid = \"placeholder\"\nregex = '''q{9}-never'''\n"],
    ['config/prod.env', line],
  ], 'prod config');
  const r2 = await world.cli(['sync']);
  const onVm = filesHolding(world.target('vm01'), token);
  rewind(world, first);
  expect(leaked(...outputs(r1), ...outputs(r2))).toBeNull();
  expect(fs.existsSync(base)).toBe(true);
  expect(onVm).toEqual([]);
  expect([2, 3]).toContain(r2.code);
});
