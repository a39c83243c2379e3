/*
 * The fleet-release planner (src/sync/planner.ts): pure decisions, tested
 * table-driven against rules written here from contract 9, never by calling
 * the code under test to compute what it should answer.
 */
import type { Layout, Quantity } from '../../src/config/types.js';
import type { FailureCode } from '../../src/errors.js';
import type { SentinelState } from '../../src/remote/target.js';
import { afterHealth, chooseRollback, decidePrepare, planBatches, rolloutVerdict, type ReleaseFact } from '../../src/sync/planner.js';
import type { VmState } from '../../src/sync/types.js';

const COMMIT = '0123456789abcdef0123456789abcdef01234567';

describe('decidePrepare', () => {
  const states: (VmState | null)[] = ['fresh', 'up-to-date', 'behind', 'ahead', 'diverged', 'unknown', null];
  const sentinels: SentinelState[] = ['regular', 'absent', 'symlink', 'directory', 'special', 'unreadable'];
  const bools = [true, false];

  type Expected = { kind: 'none' } | { kind: 'refuse'; code: FailureCode; result: 'refused' | 'failed' } | { kind: 'stage'; notes: number };

  /**
   * The contract's rule, in priority order:
   * - without --force: a sentinel vm-sync cannot read (not a regular file, not absent) is refused (failed);
   *   a VM that already serves the commit (it released the lock itself, or is up to date) needs nothing;
   *   a VM ahead of the commit is refused (result refused);
   * - a VM without rsync cannot be staged, --force or not (failed);
   * - anything else is staged; a diverged history gets one note.
   */
  function rule(state: VmState | null, sentinel: SentinelState, force: boolean, released: boolean, rsync: boolean): Expected {
    const readable = sentinel === 'regular' || sentinel === 'absent';
    if (!force && !readable) return { kind: 'refuse', code: 'sentinel_unreadable', result: 'failed' };
    if (!force && (released || state === 'up-to-date')) return { kind: 'none' };
    if (!force && state === 'ahead') return { kind: 'refuse', code: 'refused_ahead', result: 'refused' };
    if (!rsync) return { kind: 'refuse', code: 'remote_rsync_missing', result: 'failed' };
    return { kind: 'stage', notes: state === 'diverged' ? 1 : 0 };
  }

  const table = states.flatMap((state) =>
    sentinels.flatMap((sentinel) => bools.flatMap((force) => bools.flatMap((released) => bools.map((rsync) => ({ state, sentinel, force, released, rsync }))))),
  );

  test('the table covers every combination (7 x 6 x 2 x 2 x 2)', () => expect(table).toHaveLength(336));

  test.each(table)('state=$state sentinel=$sentinel force=$force releasedAtBegin=$released rsync=$rsync', ({ state, sentinel, force, released, rsync }) => {
    const decision = decidePrepare('vm07', { state, sentinel, releasedAtBegin: released, rsyncPresent: rsync }, { force, commit: COMMIT });
    const expected = rule(state, sentinel, force, released, rsync);
    expect(decision.kind).toBe(expected.kind);
    if (decision.kind === 'refuse' && expected.kind === 'refuse') {
      expect({ code: decision.code, result: decision.result }).toEqual({ code: expected.code, result: expected.result });
      // Every refusal names the VM and says what to do.
      expect(decision.message).toContain('vm07');
    }
    if (decision.kind === 'stage' && expected.kind === 'stage') {
      expect(decision.notes).toHaveLength(expected.notes);
      if (expected.notes) expect(decision.notes[0]).toContain(COMMIT.slice(0, 12));
    }
  });

  test.each([
    ['unreadable', 'not readable'],
    ['symlink', 'a symlink, not a file'],
    ['directory', 'a directory, not a file'],
    ['special', 'a special, not a file'],
  ] as const)('an unreadable-sentinel refusal says what stands there (%s) and points at --force', (sentinel, words) => {
    const decision = decidePrepare('vm01', { state: null, sentinel, releasedAtBegin: false, rsyncPresent: true }, { force: false, commit: COMMIT });
    expect(decision).toMatchObject({ kind: 'refuse', code: 'sentinel_unreadable' });
    expect((decision as { message: string }).message).toContain(words);
    expect((decision as { message: string }).message).toContain('--force');
  });

  test('refused_ahead names the commit and both ways out', () => {
    const decision = decidePrepare('vm01', { state: 'ahead', sentinel: 'regular', releasedAtBegin: false, rsyncPresent: true }, { force: false, commit: COMMIT });
    expect(decision).toMatchObject({ kind: 'refuse', code: 'refused_ahead', result: 'refused' });
    const { message } = decision as { message: string };
    expect(message).toContain(COMMIT.slice(0, 12));
    expect(message).toContain('--force');
    expect(message).toContain('rollback');
  });
});

describe('planBatches', () => {
  const seven = ['vm01', 'vm02', 'vm03', 'vm04', 'vm05', 'vm06', 'vm07'];
  const ten = Array.from({ length: 10 }, (_, i) => `n${String(i).padStart(2, '0')}`);
  /** Sizes of consecutive batches, checked to be the ids in order. */
  function sizes(ids: string[], batches: string[][]): number[] {
    expect(batches.flat()).toEqual(ids);
    return batches.map((b) => b.length);
  }

  test.each<[string, string[], Quantity, number[]]>([
    ['1 of 7', seven, { count: 1 }, [1, 1, 1, 1, 1, 1, 1]],
    ['2 of 7', seven, { count: 2 }, [2, 2, 2, 1]],
    ['3 of 7', seven, { count: 3 }, [3, 3, 1]],
    ['7 of 7', seven, { count: 7 }, [7]],
    ['a batch bigger than the fleet', seven, { count: 50 }, [7]],
    ['25% of 10 (rounded up to 3)', ten, { percent: 25 }, [3, 3, 3, 1]],
    ['1% of 10 (never less than 1)', ten, { percent: 1 }, [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]],
    ['50% of 7 (4)', seven, { percent: 50 }, [4, 3]],
    ['100%', seven, { percent: 100 }, [7]],
    ['one VM', ['solo'], { percent: 10 }, [1]],
  ])('rolling, %s', (_name, ids, batchSize, expected) => {
    expect(sizes(ids, planBatches(ids, { strategy: 'rolling', batchSize }))).toEqual(expected);
  });

  test('rolling keeps the config order, not a sorted one', () => {
    const ids = ['web3', 'db1', 'web1', 'cache', 'web2'];
    expect(planBatches(ids, { strategy: 'rolling', batchSize: { count: 2 } })).toEqual([['web3', 'db1'], ['web1', 'cache'], ['web2']]);
  });

  test.each<Quantity>([{ count: 1 }, { count: 3 }, { percent: 10 }])('all-at-once is one batch of every VM in order, whatever batch_size says (%j)', (batchSize) => {
    const ids = ['vm03', 'vm01', 'vm02'];
    const batches = planBatches(ids, { strategy: 'all-at-once', batchSize });
    expect(batches).toEqual([['vm03', 'vm01', 'vm02']]);
    // A copy: the caller's list is not handed out to be changed.
    expect(batches[0]).not.toBe(ids);
  });

  test.each(['all-at-once', 'rolling'] as const)('%s of no VM is no batch', (strategy) => {
    expect(planBatches([], { strategy, batchSize: { count: 1 } })).toEqual([]);
    expect(planBatches([], { strategy, batchSize: { percent: 25 } })).toEqual([]);
  });
});

describe('rolloutVerdict', () => {
  // [max_failed, total, allowed]: every failed <= allowed continues, allowed + 1 halts.
  test.each<[string, Quantity, number, number]>([
    ['0', { count: 0 }, 5, 0],
    ['1', { count: 1 }, 5, 1],
    ['"10%" of 9 = 0', { percent: 10 }, 9, 0],
    ['"10%" of 10 = 1', { percent: 10 }, 10, 1],
    ['"50%" of 5 = 2', { percent: 50 }, 5, 2],
    ['"0%" of 8 = 0', { percent: 0 }, 8, 0],
    ['"100%" of 4 = 4', { percent: 100 }, 4, 4],
  ])('max_failed %s', (_name, maxFailed, total, allowed) => {
    const verdicts = Array.from({ length: allowed + 2 }, (_, failed) => rolloutVerdict(failed, total, maxFailed));
    expect(verdicts).toEqual([...Array<string>(allowed + 1).fill('continue'), 'halt']);
  });
});

describe('afterHealth', () => {
  const exits: (number | null)[] = [0, 1, 2, 124, 137, null];
  const previous: (string | null)[] = ['20261122T070102000Z-0123456789ab', null];
  const layouts: Layout[] = ['atomic', 'in-place'];
  const table = exits.flatMap((exit) => [true, false].flatMap((revertUnhealthy) => previous.flatMap((prev) => layouts.map((layout) => ({ exit, revertUnhealthy, prev, layout })))));

  /** Healthy keeps; unhealthy goes back only when asked to, and only to a release the VM had (atomic layout). */
  function rule(exit: number | null, revert: boolean, prev: string | null, layout: Layout): string {
    if (exit === 0) return 'keep';
    return revert && prev !== null && layout === 'atomic' ? 'revert' : 'keep-unhealthy';
  }

  test('the table covers every combination', () => expect(table).toHaveLength(6 * 2 * 2 * 2));
  test.each(table)('exit=$exit revert_unhealthy=$revertUnhealthy previous=$prev layout=$layout', ({ exit, revertUnhealthy, prev, layout }) => {
    expect(afterHealth({ exit }, { revertUnhealthy, previous: prev, layout })).toBe(rule(exit, revertUnhealthy, prev, layout));
  });
});

describe('chooseRollback', () => {
  const A = 'a'.repeat(40);
  const B = 'b'.repeat(40);
  const C = 'c'.repeat(40);
  const D = 'd'.repeat(40);
  const rel = (name: string, commit: string): ReleaseFact => ({ name: `${name}-${commit.slice(0, 12)}`, commit });
  const r1 = rel('20261101T080000000Z', A);
  const r2 = rel('20261105T080000000Z', B);
  const r3 = rel('20261110T080000000Z', C);
  const r4 = rel('20261112T080000000Z', A); // A again, deployed later
  // Out of order on purpose: the planner sorts by name (= time), not by the listing.
  const kept = [r3, r1, r4, r2];

  // `previous` is the VM's answer (its flip history, rejected releases skipped: agent.sh previous_of).
  test('no --to: the release the VM names as previous, whatever its age', () => {
    expect(chooseRollback('vm01', { live: r4.name, previous: r3.name, complete: kept }, null)).toEqual({ kind: 'flip', release: r3 });
    // After a revert or a rollback the previous one may be older than a rejected newer one.
    expect(chooseRollback('vm01', { live: r4.name, previous: r1.name, complete: kept }, null)).toEqual({ kind: 'flip', release: r1 });
    expect(chooseRollback('vm01', { live: r2.name, previous: r3.name, complete: kept }, null)).toEqual({ kind: 'flip', release: r3 });
  });

  test('no --to and no previous (or one that is not kept complete, or the live one): refused', () => {
    for (const previous of [null, '20261106T000000000Z-eeeeeeeeeeee', r4.name]) {
      const decision = chooseRollback('vm01', { live: r4.name, previous, complete: kept }, null);
      expect([previous, decision.kind]).toEqual([previous, 'refuse']);
    }
  });

  test('--to picks the newest kept release of that commit', () => {
    expect(chooseRollback('vm01', { live: r3.name, previous: null, complete: kept }, A)).toEqual({ kind: 'flip', release: r4 });
    expect(chooseRollback('vm01', { live: r4.name, previous: null, complete: kept }, B)).toEqual({ kind: 'flip', release: r2 });
  });

  test('--to of the live release is nothing to do', () => {
    expect(chooseRollback('vm01', { live: r3.name, previous: null, complete: kept }, C)).toEqual({ kind: 'none', release: r3 });
    expect(chooseRollback('vm01', { live: r4.name, previous: null, complete: kept }, A)).toEqual({ kind: 'none', release: r4 });
  });

  test('--to on a VM that serves no release of vm-sync still flips to it', () => {
    expect(chooseRollback('vm01', { live: null, previous: null, complete: kept }, B)).toEqual({ kind: 'flip', release: r2 });
  });

  /** A refusal's message lists every kept release (short commit and name), newest first. */
  function expectListsKept(message: string, releases: ReleaseFact[]): void {
    const positions = releases.map((r) => message.indexOf(`${r.commit.slice(0, 12)} (${r.name})`));
    for (const p of positions) expect(p).toBeGreaterThanOrEqual(0);
    expect([...positions].sort((x, y) => x - y)).toEqual(positions);
  }

  test('no live release and no --to: refused, saying what is kept', () => {
    const decision = chooseRollback('vm01', { live: null, previous: null, complete: kept }, null);
    expect(decision.kind).toBe('refuse');
    const { message } = decision as { message: string };
    expect(message).toContain('vm01');
    expectListsKept(message, [r4, r3, r2, r1]);
  });

  test('no previous release: refused, naming the live release and what is kept', () => {
    const decision = chooseRollback('vm01', { live: r1.name, previous: null, complete: kept }, null);
    expect(decision.kind).toBe('refuse');
    const { message } = decision as { message: string };
    expect(message).toContain(r1.name);
    expect(message).toContain('keep_releases');
    expectListsKept(message, [r4, r3, r2, r1]);
  });

  test('a single kept release (the live one): refused', () => {
    const decision = chooseRollback('vm02', { live: r2.name, previous: null, complete: [r2] }, null);
    expect(decision.kind).toBe('refuse');
    expectListsKept((decision as { message: string }).message, [r2]);
  });

  test('--to a commit the VM keeps no release of: refused, listing what it keeps', () => {
    const decision = chooseRollback('vm01', { live: r4.name, previous: null, complete: kept }, D);
    expect(decision.kind).toBe('refuse');
    const { message } = decision as { message: string };
    expect(message).toContain(D.slice(0, 12));
    expectListsKept(message, [r4, r3, r2, r1]);
  });

  test('no complete release at all: refused, saying it keeps none', () => {
    for (const to of [null, A]) {
      const decision = chooseRollback('vm01', { live: null, previous: null, complete: [] }, to);
      expect(decision.kind).toBe('refuse');
      expect((decision as { message: string }).message).toContain('keeps no complete release');
    }
  });

  test('--to: a collision suffix (-PID) sorts after its base name, before the next second', () => {
    const early = { name: '20261101T080000000Z-aaaaaaaaaaaa', commit: A };
    const later = { name: '20261101T080000000Z-aaaaaaaaaaaa-4242', commit: A };
    const latest = { name: '20261101T080001000Z-bbbbbbbbbbbb', commit: B };
    expect(chooseRollback('vm01', { live: latest.name, previous: null, complete: [early, latest, later] }, A)).toEqual({ kind: 'flip', release: later });
  });
});
