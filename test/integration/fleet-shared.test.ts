import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { commitExactly, destroyWorld, killVmProcesses, liveRev, stateDir } from '../helpers/hardening.js';
import { configLineOf, configureFleet, expectRan, fleetRows } from '../helpers/fleet-release.js';
import { World } from '../helpers/world.js';

/*
 * Contract 9, `repository.shared_paths`: each entry lives once per VM under
 * `<state dir>/shared/<path>`, seeded from the first release that has it and
 * never overwritten; every release has a symlink there; deploys (rsync
 * --delete) and rollbacks never touch what the app wrote into it.
 */

let world: World;

beforeAll(async () => {
  world = await World.create(['s01', 's02', 's03']);
});
afterAll(() => destroyWorld(world));
afterEach(() => {
  killVmProcesses(world);
  configureFleet(world);
});

const SHARED = ['shared_paths: [storage/, .env]'];

/** Where a live path really is (following the release and the shared-path symlinks), and whether the live entry is a symlink. */
function resolved(id: string, rel: string): { link: boolean; real: string | null } {
  const live = path.join(world.target(id), rel);
  let link: boolean;
  try {
    link = fs.lstatSync(live).isSymbolicLink();
  } catch {
    return { link: false, real: null };
  }
  return { link, real: fs.realpathSync(live) };
}

function read(file: string): string | null {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return null;
  }
}

describe('storage/ and .env shared across releases', () => {
  const upload = crypto.randomBytes(70_000);
  let a: string;
  let b: string;

  test('the first deploy seeds shared/ from the tree and links the release to it', async () => {
    configureFleet(world, { repository: SHARED });
    a = commitExactly(world, { 'app.txt': 'A\n', 'storage/seed.txt': 'seed A\n', '.env': 'APP_MODE=a\n' }, 'A');
    const run = await world.cli(['sync', '--vm', 's01']);
    expectRan(run, ['s01']);
    const shared = path.join(fs.realpathSync(stateDir(world, 's01')), 'shared');
    // Catches shared paths deployed as ordinary files of the release (not links), or links to an unseeded place.
    expect({
      code: run.code,
      live: liveRev(world, 's01'),
      storage: resolved('s01', 'storage'),
      env: resolved('s01', '.env'),
      seed: read(path.join(shared, 'storage', 'seed.txt')),
      envText: read(path.join(shared, '.env')),
      throughLive: read(path.join(world.target('s01'), 'storage', 'seed.txt')),
    }).toEqual({
      code: 0,
      live: a,
      storage: { link: true, real: path.join(shared, 'storage') },
      env: { link: true, real: path.join(shared, '.env') },
      seed: 'seed A\n',
      envText: 'APP_MODE=a\n',
      throughLive: 'seed A\n',
    });
    // The app writes through the live path.
    fs.writeFileSync(path.join(world.target('s01'), 'storage', 'upload.bin'), upload);
    expect(fs.readFileSync(path.join(shared, 'storage', 'upload.bin')).equals(upload)).toBe(true);
  });

  test('later deploys (a tree that changes them, then one without them) and a rollback never overwrite or delete them', async () => {
    configureFleet(world, { repository: SHARED });
    const shared = path.join(fs.realpathSync(stateDir(world, 's01')), 'shared');
    const check = (label: string, rev: string): void => {
      // Catches rsync --delete (or the seed step) reaching into shared/, a release without the link, or a rollback
      // that restores the release's own copy.
      expect({
        label,
        live: liveRev(world, 's01'),
        storage: resolved('s01', 'storage'),
        env: resolved('s01', '.env'),
        upload: fs.existsSync(path.join(world.target('s01'), 'storage', 'upload.bin')) && fs.readFileSync(path.join(world.target('s01'), 'storage', 'upload.bin')).equals(upload),
        seed: read(path.join(world.target('s01'), 'storage', 'seed.txt')),
        envText: read(path.join(world.target('s01'), '.env')),
      }).toEqual({
        label,
        live: rev,
        storage: { link: true, real: path.join(shared, 'storage') },
        env: { link: true, real: path.join(shared, '.env') },
        upload: true,
        seed: 'seed A\n',
        envText: 'APP_MODE=a\n',
      });
    };
    b = commitExactly(world, { 'app.txt': 'B\n', 'storage/seed.txt': 'seed B\n', '.env': 'APP_MODE=b\n' }, 'B');
    const toB = await world.cli(['sync', '--vm', 's01']);
    expectRan(toB, ['s01']);
    expect(toB.code).toBe(0);
    check('after B', b);

    const c = commitExactly(world, { 'app.txt': 'C\n' }, 'C without storage/ and .env');
    const toC = await world.cli(['sync', '--vm', 's01']);
    expectRan(toC, ['s01']);
    expect(toC.code).toBe(0);
    check('after C', c);

    const back = await world.cli(['rollback', '--vm', 's01', '--to', b]);
    expectRan(back, ['s01']);
    expect([back.code, fleetRows(back).s01.result]).toEqual([0, 'success']);
    check('after rollback to B', b);
  });
});

test('shared paths neither the tree nor the VM has are created empty: a directory 0700, a file 0600 (also inside a tree directory)', async () => {
  configureFleet(world, { repository: ['shared_paths: [logs/, secrets.txt, config/local.ini]'] });
  const sha = commitExactly(world, { 'app.txt': 'empty shared\n', 'config/app.ini': 'x=1\n' }, 'no shared paths in the tree');
  const run = await world.cli(['sync', '--vm', 's02']);
  expectRan(run, ['s02']);
  const shared = path.join(fs.realpathSync(stateDir(world, 's02')), 'shared');
  const kind = (p: string): string | null => {
    try {
      const st = fs.lstatSync(p);
      const mode = (st.mode & 0o777).toString(8);
      if (st.isDirectory()) return `dir ${mode} ${fs.readdirSync(p).length} entries`;
      if (st.isFile()) return `file ${mode} ${st.size} bytes`;
      return 'other';
    } catch {
      return null;
    }
  };
  // Catches an entry that is skipped when the tree lacks it (no link: the app's first write would land in the
  // release), or one created with the wrong type or an open mode.
  expect({
    code: run.code,
    live: liveRev(world, 's02'),
    logs: [kind(path.join(shared, 'logs')), resolved('s02', 'logs')],
    secrets: [kind(path.join(shared, 'secrets.txt')), resolved('s02', 'secrets.txt')],
    local: [kind(path.join(shared, 'config', 'local.ini')), resolved('s02', 'config/local.ini')],
    tree: read(path.join(world.target('s02'), 'config', 'app.ini')),
  }).toEqual({
    code: 0,
    live: sha,
    logs: ['dir 700 0 entries', { link: true, real: path.join(shared, 'logs') }],
    secrets: ['file 600 0 bytes', { link: true, real: path.join(shared, 'secrets.txt') }],
    local: ['file 600 0 bytes', { link: true, real: path.join(shared, 'config', 'local.ini') }],
    tree: 'x=1\n',
  });
});

test.each([
  ['a parent reference', "'../x'", '../x', []],
  ['an absolute path', '/abs', '/abs', []],
  ["vm-sync's sentinel", '.sync_rev', '.sync_rev', []],
  ['git metadata', '.git/hooks', '.git', []],
  ['a path inside another', 'storage, storage/x', 'storage/x', []],
  ['layout in-place', 'storage/', 'layout', ['layout: in-place']],
])('shared_paths with %s is a config error (exit 2) naming the entry and its line, before any VM is contacted', async (_label, list, named, more) => {
  const before = liveRev(world, 's03');
  configureFleet(world, { repository: [...more, `shared_paths: [${list}]`] });
  const line = configLineOf(world, 'shared_paths:');
  commitExactly(world, { 'app.txt': `config error ${Date.now()}\n` }, 'config error');
  const run = await world.cli(['sync', '--vm', 's03']);
  const error = (run.json as { error?: { code: string; message: string } }).error;
  // Catches an entry accepted (then written outside the release, or over vm-sync's own files) or an error without
  // the line a user has to fix.
  expect({ code: run.code, error: error?.code, vms: run.json.vms, live: liveRev(world, 's03') }).toEqual({ code: 2, error: 'config_invalid', vms: [], live: before });
  expect(error?.message).toContain(named);
  expect(error?.message).toMatch(new RegExp(`:${line}:`));
});
