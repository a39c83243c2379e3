import { cliCommand, invocation, option, setEntryPoint } from '../../src/advice.js';
import { outcomeLine } from '../../src/report/table.js';
import { dryRunNotes, targetPlan } from '../../src/sync/dry-run.js';
import { classifyState } from '../../src/sync/state.js';
import { failedRow, type RunReport, type VmReport } from '../../src/sync/types.js';
import { count, firstFew, plural } from '../../src/words.js';

describe('count: the noun as the number needs it', () => {
  test.each([
    [0, 'file', '0 files'],
    [1, 'file', '1 file'],
    [2, 'file', '2 files'],
    [1, 'VM', '1 VM'],
    [3, 'VM', '3 VMs'],
    [1, 'directory', '1 directory'],
    [2, 'directory', '2 directories'],
    [2, 'batch', '2 batches'],
    [2, 'entry', '2 entries'],
    [1, 'possible secret', '1 possible secret'],
    [4847, 'file', '4847 files'],
  ])('%d %s -> %s', (n, noun, text) => expect(count(n, noun)).toBe(text));

  test('irregular plurals given by the caller, and the rules for -s, -y and -ch', () => {
    expect(count(2, 'deployed file or archive entry', 'deployed files or archive entries')).toBe('2 deployed files or archive entries');
    expect(count(1, 'deployed file or archive entry', 'deployed files or archive entries')).toBe('1 deployed file or archive entry');
    expect(['key', 'day', 'match', 'box', 'release'].map(plural)).toEqual(['keys', 'days', 'matches', 'boxes', 'releases']);
    expect(firstFew(['a', 'b', 'c', 'd'], 2)).toBe('a, b and 2 more');
    expect(firstFew(['a', 'b'], 5)).toBe('a, b');
  });
});

describe('advice: one wording per entry point', () => {
  afterEach(() => setEntryPoint('cli'));

  test('the CLI names its flags and commands', () => {
    setEntryPoint('cli');
    expect(option('force')).toBe('--force');
    expect(option('lock-wait', 'SECONDS')).toBe('--lock-wait SECONDS');
    expect(invocation('sync', [['force'], ['vm', 'vm01']])).toBe('vm-sync sync --force --vm vm01');
    expect(invocation('status')).toBe('vm-sync status');
    expect(cliCommand('vm-sync unlock --vm vm01')).toBe('vm-sync unlock --vm vm01');
  });

  test("the Action names its inputs, never a CLI flag", () => {
    setEntryPoint('action');
    expect(option('force')).toBe('input force: true');
    expect(option('vm', 'vm01')).toBe('input vms: vm01');
    expect(option('deep')).toBe('input deep: true');
    expect(invocation('sync', [['commit', 'abc'], ['force'], ['vm', 'vm01']])).toBe('the Action with command: sync, commit: abc, force: true and vms: vm01');
    expect(invocation('status', [['shard', '2/3']])).toBe('the Action with command: status and shard: 2/3');
    expect(invocation('rollback')).toBe('the Action with command: rollback');
    for (const text of [option('force'), option('lock-wait', '60'), option('to', 'SHA'), option('commit', 'X'), option('dry-run'), invocation('verify', [['deep'], ['vm', 'a']])]) {
      expect(text).not.toMatch(/--|vm-sync /);
    }
    // A command only the CLI has is said to be one, run in a shell.
    expect(cliCommand('vm-sync unlock --vm vm01')).toBe('`vm-sync unlock --vm vm01` in a shell on the runner host');
  });
});

function report(command: RunReport['command'], rows: Array<Partial<VmReport>>, dryRun = false): RunReport {
  return { command, commit: 'a'.repeat(40), dry_run: dryRun, scan: null, vms: rows.map((r, i) => ({ ...failedRow({ id: `vm0${i}`, host: 'h' }), result: 'success', ...r })) };
}

describe('the status line says where VMs stand', () => {
  test('status: every VM behind is "3 behind", never "3/3 ok"', () => {
    expect(outcomeLine(report('status', [{ state: 'behind' }, { state: 'behind' }, { state: 'behind' }]))).toBe('3 behind');
    expect(outcomeLine(report('status', [{ state: 'behind' }, { state: 'up-to-date' }, { state: 'broken' }, { state: 'unknown', result: 'failed', error: { code: 'unreachable', message: '' } }]))).toBe(
      '1 up to date, 1 behind, 1 broken, 1 failed',
    );
  });
  test('verify: a mismatch counts where the VM stands, a drift as drifted', () => {
    const r = report('verify', [
      { state: 'up-to-date' },
      { state: 'ahead', result: 'failed', error: { code: 'verify_mismatch', message: '' } },
      { state: 'up-to-date', result: 'failed', error: { code: 'release_drifted', message: '' } },
    ]);
    expect(outcomeLine(r)).toBe('1 up to date, 1 ahead, 1 drifted');
  });
  test('sync, dry run, rollback and an empty selection', () => {
    expect(outcomeLine(report('sync', [{ action: 'deploy' }, { action: 'none' }, { action: 'deploy', result: 'failed' }]))).toBe('1 deployed, 1 up to date, 1 failed');
    expect(outcomeLine(report('sync', [{ action: 'deploy' }, { action: 'refuse' }], true))).toBe('1 would be deployed, 1 would be refused');
    expect(outcomeLine(report('rollback', [{ action: 'rollback' }, { action: 'rollback' }]))).toBe('2 rolled back');
    expect(outcomeLine(report('status', []))).toBe('no VM');
  });
});

describe('dry run predictions', () => {
  test('what the real sync does with each kind of target', () => {
    expect(targetPlan({ kind: 'release', currentRelease: '/r/x' }, 'atomic')).toEqual({ compareWith: 'release', movedAside: null, wouldFail: null });
    expect(targetPlan({ kind: 'dir', currentRelease: null }, 'atomic')).toEqual({ compareWith: 'target', movedAside: 'the directory', wouldFail: null });
    expect(targetPlan({ kind: 'other', currentRelease: null }, 'atomic')).toEqual({ compareWith: 'nothing', movedAside: 'the file', wouldFail: null });
    expect(targetPlan({ kind: 'symlink', currentRelease: null }, 'atomic').movedAside).toBe('the symlink');
    expect(targetPlan({ kind: 'dangling', currentRelease: null }, 'atomic').movedAside).toBe('the symlink');
    expect(targetPlan({ kind: 'dangling', currentRelease: '/r/gone' }, 'atomic')).toEqual({ compareWith: 'nothing', movedAside: null, wouldFail: null });
    expect(targetPlan({ kind: 'absent', currentRelease: null }, 'atomic').movedAside).toBeNull();
    expect(targetPlan({ kind: 'dir', currentRelease: null }, 'in-place')).toEqual({ compareWith: 'target', movedAside: null, wouldFail: null });
    expect(targetPlan({ kind: 'symlink', currentRelease: null }, 'in-place').wouldFail).toMatch(/not a directory/);
  });

  test('counts files only, lists ten, then "and N more"', () => {
    const changes = [
      { kind: 'add' as const, path: 'new/', dir: true },
      ...Array.from({ length: 12 }, (_, i) => ({ kind: 'add' as const, path: `new/f${i}`, dir: false })),
      { kind: 'delete' as const, path: 'old', dir: false },
    ];
    const notes = dryRunNotes('/srv/app', { compareWith: 'release', movedAside: null, wouldFail: null }, changes, { add: 12, change: 0, delete: 1 });
    expect(notes[0]).toBe('would add 12 files and delete 1 file');
    expect(notes.slice(1, 11)).toEqual(Array.from({ length: 10 }, (_, i) => `would add: new/f${i}`));
    expect(notes[11]).toBe('…and 3 more files');
    expect(notes).toHaveLength(12);
    expect(dryRunNotes('/srv/app', { compareWith: 'release', movedAside: null, wouldFail: null }, [], { add: 0, change: 0, delete: 0 })).toEqual(['no file would change']);
    const one = dryRunNotes('/srv/app', { compareWith: 'target', movedAside: 'the directory', wouldFail: null }, [{ kind: 'delete', path: 'x', dir: false }], { add: 0, change: 0, delete: 1 });
    expect(one).toEqual([
      'would move the directory at /srv/app aside to /srv/.app.vm-sync/previous-<UTC time> (vm-sync did not create it, so it is kept, never deleted) and point /srv/app at the new release',
      'would leave out 1 file',
      'would leave out: x',
      'the 1 file left out stays in the copy moved aside',
    ]);
  });

  test('a path a VM chose is shown as one clean line', () => {
    const notes = dryRunNotes('/srv/app', { compareWith: 'release', movedAside: null, wouldFail: null }, [{ kind: 'add', path: 'a\u001b[31mb\nc', dir: false }], { add: 1, change: 0, delete: 0 });
    expect(notes[1]).toBe('would add: a?[31mb c');
  });
});

test('a dangling target is broken, never fresh, whatever its sentinel says', async () => {
  const history = { relation: async () => 'behind' as const };
  expect(await classifyState('vm01', null, 'a'.repeat(40), history, 'dangling')).toBe('broken');
  expect(await classifyState('vm01', null, 'a'.repeat(40), history, 'absent')).toBe('fresh');
  expect(await classifyState('vm01', null, 'a'.repeat(40), history)).toBe('fresh');
});
