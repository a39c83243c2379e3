import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { stopVm } from '../../src/demo/fleet.js';
import {
  armSlow,
  commitExactly,
  destroyWorld,
  disarm,
  killVmProcesses,
  liveRev,
  loadLockModule,
  lockExists,
  lockPath,
  openGate,
  sleep,
  slowBin,
  slowFired,
  waitFor,
} from '../helpers/hardening.js';
import { cliWith, expectRan, fleetRows, secondConfig, track, type LocksDoc } from '../helpers/fleet-release.js';
import type { CliRun } from '../helpers/world.js';
import { World } from '../helpers/world.js';

/*
 * Contract 9, `vm-sync locks` and `--lock-wait`: the listing shows who holds
 * each VM's lock (read-only: it never breaks one), and a run given
 * --lock-wait waits for a live holder instead of failing `locked` at once.
 * l01's rsync server waits for a gate on demand, so a real deploy holds its
 * lock for as long as the test needs.
 */

let world: World;
let bins: string;
let rsyncBin: string;
let first: string;
const IDS = ['l01', 'l02', 'l03'];

beforeAll(async () => {
  bins = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-slowbin-'));
  rsyncBin = slowBin(bins, ['rsync']);
  world = await World.create(IDS, { sshdExtra: { l01: [`SetEnv PATH=${rsyncBin}:/usr/bin:/bin`] } });
  first = commitExactly(world, { 'app.txt': 'first\n' }, 'first');
  const run = await world.cli(['sync']);
  expect([run.code, run.json.error ?? null, run.json.vms.filter((vm) => vm.result !== 'success').map((vm) => [vm.id, vm.error]), IDS.map((id) => liveRev(world, id))]).toEqual([0, null, [], [first, first, first]]);
});
afterAll(() => {
  if (rsyncBin) disarm(rsyncBin);
  destroyWorld(world);
  if (bins) fs.rmSync(bins, { recursive: true, force: true });
});
afterEach(() => {
  disarm(rsyncBin);
  killVmProcesses(world);
});

const locksDoc = (run: CliRun): LocksDoc => run.json as unknown as LocksDoc;
const locksRows = (run: CliRun): Record<string, LocksDoc['vms'][number]> => Object.fromEntries((locksDoc(run).vms ?? []).map((vm) => [vm.id, vm]));

test('while a deploy holds l01: locks lists its holder; sync fails locked at once; sync --lock-wait waits, then deploys', async () => {
  const b = commitExactly(world, { 'app.txt': `B ${Date.now()}\n` }, 'B');
  const c = commitExactly(world, { 'app.txt': `C ${Date.now()}\n` }, 'C');
  // A second runner host (its own clone) for the runs that meet the held lock.
  const other = secondConfig(world, 'b');

  // The holder transfers through rsync, whose server on l01 waits at a gate: it holds the lock meanwhile.
  world.writeConfig({ sync: ['transfer: rsync'] });
  armSlow(rsyncBin, 'gate 600', '--server');
  // Runs still pending when an assertion fails are stopped, so a failure does not leave them running into afterAll.
  const stop = new AbortController();
  const holder = track(world.cli(['sync', '--vm', 'l01', '--commit', b], { signal: stop.signal }));
  let waiting: ReturnType<typeof track<CliRun>> | null = null;
  try {
    const fired = await waitFor(() => slowFired(rsyncBin), 60_000);
    expect(fired).toMatch(/^rsync --server/);
    expect(lockExists(world, 'l01')).toBe(true);
    const record = fs.readlinkSync(lockPath(world, 'l01'));

    const list = await world.cli(['locks']);
    const rows = locksRows(list);
    // Catches a listing that does not parse the holder's record (host, pid, commit), reports a live holder as stale,
    // or changes the lock it reads.
    expect({
      code: list.code,
      command: locksDoc(list).command,
      ids: (locksDoc(list).vms ?? []).map((vm) => vm.id),
      l01: rows.l01 && { locked: rows.l01.locked, stale: rows.l01.stale, error: rows.l01.error, holder: rows.l01.holder && { host: rows.l01.holder.host, pid: rows.l01.holder.pid, commit: rows.l01.holder.commit, run: rows.l01.holder.run } },
      l02: rows.l02 && { id: rows.l02.id, locked: rows.l02.locked, stale: rows.l02.stale, holder: rows.l02.holder, record: rows.l02.record, age_s: rows.l02.age_s, error: rows.l02.error },
      lock: fs.readlinkSync(lockPath(world, 'l01')),
    }).toEqual({
      code: 0,
      command: 'locks',
      ids: IDS,
      l01: { locked: true, stale: false, error: null, holder: { host: os.hostname(), pid: process.pid, commit: b, run: '' } },
      l02: { id: 'l02', locked: false, stale: false, holder: null, record: null, age_s: null, error: null },
      lock: record,
    });
    expect(rows.l01.holder?.deadline).toBeGreaterThan(Date.now() / 1000);
    expect(typeof rows.l01.record).toBe('string');
    expect(rows.l01.age_s).toEqual(expect.any(Number));
    expect(rows.l01.age_s).toBeGreaterThanOrEqual(0);
    expect(rows.l01.age_s).toBeLessThan(120);
    // The table names the VM and the holder's host.
    const table = await world.cli(['locks'], { json: false });
    expect([table.code, table.stdout.includes('l01'), table.stdout.includes(os.hostname())]).toEqual([0, true, true]);

    // Without --lock-wait: locked, at once (while the holder still holds it).
    const started = Date.now();
    const refused = await cliWith(other, ['sync', '--vm', 'l01']);
    const took = Date.now() - started;
    expectRan(refused, ['l01']);
    expect({ code: refused.code, error: fleetRows(refused).l01.error?.code, holderDone: holder.settledAt() !== null, prompt: took < 15_000 ? true : took }).toEqual({
      code: 1,
      error: 'locked',
      holderDone: false,
      prompt: true,
    });

    // With --lock-wait 30: still waiting 3 s later; done once the holder is.
    waiting = track(cliWith(other, ['sync', '--vm', 'l01', '--lock-wait', '30'], stop.signal));
    await sleep(3000);
    // Catches --lock-wait ignored (fails locked at once) or rejected as an unknown option.
    expect({ waiting: waiting?.settledAt() === null, holder: holder.settledAt() === null }).toEqual({ waiting: true, holder: true });
    const openedAt = Date.now();
    openGate(rsyncBin);
    const held = await holder.promise;
    expect([held.code, fleetRows(held).l01?.rev_after]).toEqual([0, b]);
    const waited = await waiting.promise;
    expectRan(waited, ['l01']);
    const row = fleetRows(waited).l01;
    expect({ code: waited.code, result: row.result, error: row.error, rev_after: row.rev_after, live: liveRev(world, 'l01'), after: (waiting?.settledAt() ?? 0) >= openedAt, lock: lockExists(world, 'l01') }).toEqual({
      code: 0,
      result: 'success',
      error: null,
      rev_after: c,
      live: c,
      after: true,
      lock: false,
    });
  } finally {
    openGate(rsyncBin);
    stop.abort();
    await Promise.allSettled([holder.promise, waiting?.promise]);
  }
});

test('locks: a dead holder on this host is listed stale and left in place; --vm narrows the listing', async () => {
  const { encodeLockOwner, runnerHostId, bootId, pidNamespace } = await loadLockModule();
  const gone = spawn('true', [], { stdio: 'ignore' });
  await new Promise((r) => gone.on('exit', r));
  const pid = gone.pid ?? 0;
  const text = encodeLockOwner({
    token: `${runnerHostId()}:${pid}:dead00000001`,
    host: runnerHostId(),
    pid,
    pidStart: '12345',
    boot: bootId?.() ?? '',
    pidns: pidNamespace?.() ?? '',
    commit: first,
    run: '',
    deadline: Math.floor(Date.now() / 1000) + 3600,
  });
  fs.symlinkSync(text, lockPath(world, 'l02'));
  try {
    const list = await world.cli(['locks', '--vm', 'l02']);
    const rows = locksRows(list);
    // Catches a listing that takes over or removes a stale lock (listing is read-only), or calls it live.
    expect({
      code: list.code,
      ids: (locksDoc(list).vms ?? []).map((vm) => vm.id),
      l02: rows.l02 && [rows.l02.locked, rows.l02.stale, rows.l02.holder?.pid, rows.l02.holder?.commit, rows.l02.record?.includes('dead00000001')],
      lock: fs.readlinkSync(lockPath(world, 'l02')),
    }).toEqual({ code: 0, ids: ['l02'], l02: [true, true, pid, first, true], lock: text });
  } finally {
    fs.rmSync(lockPath(world, 'l02'), { force: true });
  }
});

test('locks exits 1 when a VM does not answer, and still lists the others', async () => {
  stopVm(world.vm('l03'));
  const list = await world.cli(['locks']);
  const rows = locksRows(list);
  // Catches an unreachable VM reported as unlocked (a user would take that as "safe to deploy").
  expect({
    code: list.code,
    ids: (locksDoc(list).vms ?? []).map((vm) => vm.id),
    l03: rows.l03 && [rows.l03.error?.code, rows.l03.holder],
    others: ['l01', 'l02'].map((id) => rows[id] && [rows[id].locked, rows[id].error]),
  }).toEqual({ code: 1, ids: IDS, l03: ['unreachable', null], others: [[false, null], [false, null]] });
});
