import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { commitExactly, configure, destroyWorld, killVmProcesses, lockPath, rows, sleep, waitFor } from '../helpers/hardening.js';
import { World } from '../helpers/world.js';

/*
 * Finding: holderIsDead() (src/remote/lock.ts) calls a holder "certainly dead"
 * when its record's host equals os.hostname() and its pid is absent from THIS
 * process's /proc (or has another start time). Two runners on one machine in
 * different PID namespaces with the same host name (containers with
 * --network host / --uts host, the usual set-up for self-hosted runners)
 * cannot see each other's pids: run B takes over run A's LIVE lock at once and
 * kills A's running steps (post_sync_command here).
 *
 * Run A is the built CLI (HEAD's src bundled to dist/cli.js; set ADV_CLI to
 * override) in its own PID namespace (unshare, root); run B is in-process.
 */

const CLI = process.env.ADV_CLI ?? path.resolve('dist/cli.js');
let world: World;
afterAll(() => {
  if (world) killVmProcesses(world);
  destroyWorld(world);
});

test('a live holder in another PID namespace of the same host is judged dead: its lock is taken and its post_sync_command killed', async () => {
  world = await World.create(['ns']);
  const home = world.vm('ns').home;
  commitExactly(world, { 'app.txt': 'c0\n' }, 'c0');
  expect(rows(await world.cli(['sync'])).ns.result).toBe('success');
  const c1 = commitExactly(world, { 'app.txt': 'c1\n' }, 'c1');
  configure(world, { sync: [`post_sync_command: 'touch "$HOME/post.started"; sleep 15; touch "$HOME/post.done.$VM_SYNC_COMMIT"'`] });

  let aOut = '';
  const a = spawn('unshare', ['--pid', '--fork', '--mount-proc', process.execPath, CLI, 'sync', '--config', world.configPath, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
  a.stdout.on('data', (d: Buffer) => (aOut += d.toString()));
  const aDone = new Promise<number>((resolve) => a.on('exit', (code) => resolve(code ?? -1)));
  let aErr = ''; a.stderr.on('data', (d: Buffer) => (aErr += d.toString()));
  const started = await waitFor(() => fs.existsSync(path.join(home, 'post.started')), 60_000);
  if (!started) console.log('A stdout', aOut.slice(0, 2000), 'A stderr', aErr.slice(0, 3000));
  expect(started).toBe(true);
  const lockOfA = fs.readlinkSync(lockPath(world, 'ns'));

  const c2 = commitExactly(world, { 'app.txt': 'c2\n' }, 'c2');
  const b = await world.cli(['sync']);
  const rowB = rows(b).ns;
  await aDone;
  const rowA = JSON.parse(aOut).vms[0];
  await sleep(500);
  const observed = {
    lockOfA: /pid=1 /.test(lockOfA),
    bResult: rowB.result,
    bError: rowB.error?.code ?? null,
    bNotes: rowB.notes.filter((n: string) => n.startsWith('took over')).map((n: string) => n.replace(/\(pid.*\)/, '')),
    aResult: rowA.result,
    aError: rowA.error?.code ?? null,
    aPostDone: fs.existsSync(path.join(home, `post.done.${c1}`)),
  };
  // Must: B is refused with `locked` while A (alive, deadline ahead) deploys and finishes its post_sync_command.
  expect(observed).toEqual({ lockOfA: true, bResult: 'failed', bError: 'locked', bNotes: [], aResult: 'success', aError: null, aPostDone: true });
  void c1;
  void c2;
}, 120_000);
