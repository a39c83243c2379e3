import zlib from 'node:zlib';
import { World } from '../helpers/world.js';
import { commitPush, filesHolding, head, leaked, line, outputs, rewind, tarOf, token, zipOf } from './helpers.js';

/*
 * Ways a deployed file holding a token passes the gate. Each test's expectation
 * is the rule (blocked, exit 3); a failure shows what happens instead.
 * vm02 is never deployed, so `scan --commit HEAD` is the tree-only resync a
 * new VM gets.
 */
let world: World;

beforeAll(async () => {
  world = await World.create(['vm01', 'vm02']);
  world.ws.commit({ 'README.md': '# app\n', 'src/app.py': 'print("ok")\n' }, 'clean start');
  world.ws.push();
  expect((await world.cli(['sync', '--vm', 'vm01'])).code).toBe(0);
});
afterAll(() => world?.destroy());

async function rangeAndTree(files: Array<[string | Buffer, string | Buffer | null]>, name: string) {
  const base = head(world);
  commitPush(world, files, name);
  const range = await world.cli(['scan', '--range', `${base}..${head(world)}`]);
  const tree = await world.cli(['scan', '--commit', head(world)]);
  rewind(world, base);
  expect(leaked(...outputs(range), ...outputs(tree))).toBeNull();
  return { range, tree };
}

test('sync: a token line in front of a valid zip (assets/bundle.zip) is deployed to the VM', async () => {
  const base = head(world);
  commitPush(world, [['assets/bundle.zip', Buffer.concat([Buffer.from(line), zipOf({ 'readme.txt': 'hello\n' })])]], 'bundle');
  const run = await world.cli(['sync', '--vm', 'vm01']);
  const onVm = filesHolding(world.target('vm01'), token);
  rewind(world, base);
  await world.cli(['sync', '--vm', 'vm01', '--force']);
  expect(leaked(...outputs(run))).toBeNull();
  expect(onVm).toEqual([]);
  expect(run.code).toBe(3);
});

test('a text file named creds.tar (a NUL after the token, so git calls it binary)', async () => {
  const { range, tree } = await rangeAndTree([['config/creds.tar', Buffer.concat([Buffer.from(line), Buffer.alloc(16)])]], 'creds.tar');
  expect(range.code).toBe(3);
  expect(tree.code).toBe(3);
});

test('a plain text file named notes.zip (no NUL: git diffs it as text)', async () => {
  const { range, tree } = await rangeAndTree([['docs/notes.zip', line]], 'notes.zip');
  expect(range.code).toBe(3);
  expect(tree.code).toBe(3);
});

test('a tar.gz with the token after the end-of-archive blocks', async () => {
  const { range, tree } = await rangeAndTree([['dist/app.tar.gz', zlib.gzipSync(Buffer.concat([tarOf({ 'ok.txt': 'ok\n' }), Buffer.from(line)]))]], 'trailing tar');
  expect(range.code).toBe(3);
  expect(tree.code).toBe(3);
});

test('an image-named file whose name is not UTF-8 (\\xff.png)', async () => {
  const { range, tree } = await rangeAndTree([[Buffer.from([0x61, 0x73, 0x73, 0x65, 0x74, 0x73, 0x2f, 0xff, 0x2e, 0x70, 0x6e, 0x67]), line]], 'xff.png');
  expect(range.code !== 0 || (range.json.scan?.unscanned_count ?? 0) > 0).toBe(true);
  expect(range.code).toBe(3);
  expect(tree.code).toBe(3);
});

test('node_modules under a directory whose name is not UTF-8', async () => {
  const { range, tree } = await rangeAndTree([[Buffer.concat([Buffer.from('web'), Buffer.from([0xfe]), Buffer.from('/node_modules/p/index.js')]), line]], 'xfe node_modules');
  expect(range.code).toBe(3);
  expect(tree.code).toBe(3);
});

test('a text config file that starts with "MZ" (read as a Windows executable)', async () => {
  const { range, tree } = await rangeAndTree([['config/app.env', `MZ_REGION=eu-1\n${line}`]], 'MZ env');
  expect(range.code).toBe(3);
  expect(tree.code).toBe(3);
});

test('a zip whose token is in an entry under node_modules/', async () => {
  const { range, tree } = await rangeAndTree([['assets/plugin.zip', zipOf({ 'node_modules/x/index.js': line })]], 'zip node_modules');
  expect(range.code).toBe(3);
  expect(tree.code).toBe(3);
});

test('sync: the \\xff.png token reaches the VM', async () => {
  const base = head(world);
  commitPush(world, [[Buffer.from([0x61, 0x73, 0x73, 0x65, 0x74, 0x73, 0x2f, 0xff, 0x2e, 0x70, 0x6e, 0x67]), line]], 'xff.png');
  const run = await world.cli(['sync', '--vm', 'vm01']);
  const onVm = filesHolding(world.target('vm01'), token);
  rewind(world, base);
  await world.cli(['sync', '--vm', 'vm01', '--force']);
  expect(onVm).toEqual([]);
  expect(run.code).toBe(3);
});
