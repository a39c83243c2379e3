import { commitExactly, destroyWorld, killVmProcesses, liveRev, lockExists } from '../helpers/hardening.js';
import { configureFleet, expectRan, fleetRows, liveRelease } from '../helpers/fleet-release.js';
import { World } from '../helpers/world.js';

/*
 * Regression test (finding fixed in cbb6b0d, agent prints a newline before its framed lines). Finding was: the agent prints its framed answer (`@NONCE exit=N`, `@NONCE end=ok`,
 * and the serve loop's `@NONCE done=N`) right after the health / post command's
 * unframed output, without first ending that output's line. A command whose
 * output does not end in a newline (`curl -s http://localhost/health` answering
 * `{"status":"ok"}`, `printf ok`) glues the framed line onto its own: the node
 * side no longer sees it.
 */

let world: World;
let base: string;

beforeAll(async () => {
  world = await World.create(['u01', 'u02', 'u03']);
  base = commitExactly(world, { 'app.txt': 'base\n' }, 'base');
  configureFleet(world);
  const first = await world.cli(['sync']);
  expect(first.code).toBe(0);
});
afterAll(() => destroyWorld(world));
afterEach(() => {
  killVmProcesses(world);
  configureFleet(world);
});

test('a passing health command whose output has no trailing newline (curl -s style) passes', async () => {
  const next = commitExactly(world, { 'app.txt': `next ${Date.now()}\n` }, 'next');
  configureFleet(world, { rollout: { health_command: 'printf \'{"status":"ok"}\'' } });
  const run = await world.cli(['sync', '--vm', 'u01']);
  expectRan(run, ['u01']);
  const row = fleetRows(run).u01;
  // Observed: result failed, error remote_command_failed "agent response lacks exit=", health skipped,
  // and the VM stays on the new release with no verdict.
  expect({ code: run.code, result: row.result, error: row.error, health: row.health, live: liveRev(world, 'u01') }).toEqual({
    code: 0,
    result: 'success',
    error: null,
    health: 'passed',
    live: next,
  });
});

test('a health command that prints without a newline and then hangs is health_failed and reverted (not a session timeout)', async () => {
  const before = liveRelease(world, 'u02');
  const beforeRev = liveRev(world, 'u02');
  commitExactly(world, { 'app.txt': `hang ${Date.now()}\n` }, 'hang');
  configureFleet(world, { rollout: { health_command: "printf 'checking...'; sleep 30", health_timeout_s: 2 } });
  const started = Date.now();
  const run = await world.cli(['sync', '--vm', 'u02']);
  expectRan(run, ['u02']);
  const row = fleetRows(run).u02;
  // Observed: the serve loop's `@NONCE done=` line is glued to 'checking...': the node side waits budget+5 s,
  // kills the session and reports `timeout` without a health verdict and without the revert: the VM keeps
  // serving the unhealthy release.
  expect({ code: run.code, error: row.error?.code, health: row.health, live: liveRev(world, 'u02'), release: liveRelease(world, 'u02'), lock: lockExists(world, 'u02'), fast: Date.now() - started < 20_000 }).toEqual({
    code: 1,
    error: 'health_failed',
    health: 'failed',
    live: beforeRev,
    release: before,
    lock: false,
    fast: true,
  });
});

test('a post_sync_command whose output has no trailing newline succeeds', async () => {
  const next = commitExactly(world, { 'app.txt': `post ${Date.now()}\n` }, 'post');
  configureFleet(world, { sync: ["post_sync_command: \"printf restarted\""] });
  const run = await world.cli(['sync', '--vm', 'u03']);
  expectRan(run, ['u03']);
  const row = fleetRows(run).u03;
  // Observed: post_sync_failed "post_sync_command exited 0".
  expect({ code: run.code, result: row.result, error: row.error, live: liveRev(world, 'u03') }).toEqual({ code: 0, result: 'success', error: null, live: next });
  void base;
});
