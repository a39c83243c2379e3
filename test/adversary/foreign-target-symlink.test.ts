import fs from 'node:fs';
import path from 'node:path';
import { commitExactly, destroyWorld, lockExists, rows } from '../helpers/hardening.js';
import { World } from '../helpers/world.js';

/*
 * Finding: probe() never reads .sync_rev through a target symlink vm-sync did
 * not make (kind=symlink -> rev_state=absent), but begin's "already on the
 * commit" shortcut tests `[ -f "$T/.sync_rev" ]`, which follows it. A VM whose
 * ~/app is a foreign symlink to a directory with a matching .sync_rev is
 * reported success/verified with rev_after null, and nothing is deployed.
 */

let world: World;
afterAll(() => destroyWorld(world));

test('a foreign ~/app symlink is followed by begin: success + verified, while rev_after is null and nothing was deployed', async () => {
  world = await World.create(['foreign']);
  const sha = commitExactly(world, { 'app.txt': 'v1\n' }, 'v1');
  const home = world.vm('foreign').home;
  fs.mkdirSync(path.join(home, 'elsewhere'), { recursive: true });
  fs.writeFileSync(path.join(home, 'elsewhere', '.sync_rev'), `${sha}\n`);
  fs.symlinkSync('elsewhere', path.join(home, 'app'));

  const run = await world.cli(['sync']);
  const row = rows(run).foreign ?? (console.log(run.stdout.slice(0, 3000), run.stderr.slice(0, 3000)) as never);
  const status = await world.cli(['status']);
  const st = rows(status).foreign;
  const observed = {
    statusRev: st.rev_after,
    result: row.result,
    action: row.action,
    verified: row.verified,
    rev_after: row.rev_after,
    appTxtDeployed: fs.existsSync(path.join(home, 'app', 'app.txt')),
    targetStillForeign: fs.readlinkSync(path.join(home, 'app')),
    lock: lockExists(world, 'foreign'),
  };
  // Must: the VM is treated as vm-sync treats a foreign symlink everywhere else
  // (never read through): deploy a release, rev_after = sha.
  expect(observed).toEqual({ statusRev: sha, result: 'success', action: 'deploy', verified: true, rev_after: sha, appTxtDeployed: true, targetStillForeign: expect.stringMatching(/^\.app\.vm-sync\/releases\//), lock: false });
});
