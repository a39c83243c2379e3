import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { commitExactly, configure, destroyWorld, killVmProcesses, lockPath, rows, sleep, waitFor } from '../helpers/hardening.js';
import { World } from '../helpers/world.js';

/*
 * Finding (end to end; see agent-lock-record.test.ts for the agent alone):
 * a lock record longer than 400 characters loses its `deadline=` to the
 * agent's `head -c 400`; the live lock is then "unreadable" and is taken over
 * once its symlink is 60 s old, and the holder's running steps are killed.
 *
 * Run A: the built CLI on a runner whose host name is an FQDN (own UTS
 * namespace), in a GitHub Enterprise job of a long-named repository. Holding
 * the lock for 60 s is simulated by back-dating the lock symlink's mtime (the
 * only clock the agent consults for an unreadable lock).
 */

const CLI = process.env.ADV_CLI ?? path.resolve('dist/cli.js');
const HOST = 'ci-runner-07.build.eu-central-1.internal.example-corp.com';
let world: World;
afterAll(() => {
  if (world) killVmProcesses(world);
  destroyWorld(world);
});

test('a live lock with a long (legitimate) owner record is taken over after 60 s and its post_sync_command killed', async () => {
  world = await World.create(['long']);
  const home = world.vm('long').home;
  commitExactly(world, { 'app.txt': 'c0\n' }, 'c0');
  expect(rows(await world.cli(['sync'])).long.result).toBe('success');
  const c1 = commitExactly(world, { 'app.txt': 'c1\n' }, 'c1');
  configure(world, { sync: [`post_sync_command: 'touch "$HOME/post.started.$VM_SYNC_COMMIT"; sleep 15; touch "$HOME/post.done.$VM_SYNC_COMMIT"'`] });

  const env = {
    ...process.env,
    GITHUB_SERVER_URL: 'https://github.enterprise.example-corp.com',
    GITHUB_REPOSITORY: 'platform-infrastructure/payments-gateway-deployment-configuration-service-eu-production',
    GITHUB_RUN_ID: '12345678901',
  };
  let aOut = '';
  const a = spawn('unshare', ['--uts', 'sh', '-c', `hostname ${HOST} && exec "$0" "$@"`, process.execPath, CLI, 'sync', '--config', world.configPath, '--json'], { stdio: ['ignore', 'pipe', 'pipe'], env });
  a.stdout.on('data', (d: Buffer) => (aOut += d.toString()));
  const aDone = new Promise<number>((resolve) => a.on('exit', (code) => resolve(code ?? -1)));
  expect(await waitFor(() => fs.existsSync(path.join(home, `post.started.${c1}`)), 60_000)).toBe(true);
  const lock = lockPath(world, 'long');
  const record = fs.readlinkSync(lock);
  const deadlineLeft = Number(/deadline=(\d+)/.exec(record)![1]) - Date.now() / 1000;
  execFileSync('touch', ['-h', '-d', `@${Math.floor(Date.now() / 1000) - 61}`, lock]);

  const b = await world.cli(['sync']);
  const rowB = rows(b).long;
  await aDone;
  const rowA = JSON.parse(aOut).vms[0];
  await sleep(300);
  const observed = {
    recordLength: record.length > 400,
    aDeadlineAhead: deadlineLeft > 60,
    bResult: rowB.result,
    bError: rowB.error?.code ?? null,
    bTookOver: rowB.notes.filter((n: string) => n.startsWith('took over')).map((n: string) => n.replace(/^.*\((.*)\)$/, '$1')),
    aResult: rowA.result,
    aError: rowA.error?.code ?? null,
    aPostDone: fs.existsSync(path.join(home, `post.done.${c1}`)),
  };
  // Must: B is refused (`locked`): A is alive and its deadline is ahead.
  expect(observed).toEqual({ recordLength: true, aDeadlineAhead: true, bResult: 'failed', bError: 'locked', bTookOver: [], aResult: 'success', aError: null, aPostDone: true });
}, 120_000);
