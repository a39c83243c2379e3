import { mergeResults, type ResultsSource } from '../../src/report/merge.js';
import { fleetStatus } from '../../src/report/github.js';
import { renderSummary } from '../../src/report/summary.js';
import { renderTable } from '../../src/report/table.js';
import { exitCodeFor } from '../../src/sync/fleet.js';
import { failedRow, type RunReport, type VmReport } from '../../src/sync/types.js';

const SHA = 'a'.repeat(40);

function row(id: string, over: Partial<VmReport> = {}): VmReport {
  return { ...failedRow({ id, host: `10.0.0.${id.slice(-1)}` }), state: 'behind', action: 'deploy', result: 'success', rev_before: 'b'.repeat(40), rev_after: SHA, files_changed: 3, bytes_sent: 1200, duration_ms: 1500, verified: true, ...over };
}

function doc(source: string, report: Partial<RunReport> & { error?: { code: string; message: string } }): ResultsSource {
  return { source, text: JSON.stringify({ command: 'sync', commit: SHA, dry_run: false, scan: null, vms: [], ...report }) };
}

const shard = (index: number, count: number, vms: VmReport[], extra: Partial<RunReport> = {}): ResultsSource => doc(`shard-${index}.json`, { shard: { index, count }, vms, ...extra });

/** The config's shards in these tests: vm1,vm4 | vm2,vm5 | vm3. */
const layout: Record<number, string[]> = { 1: ['vm1', 'vm4'], 2: ['vm2', 'vm5'], 3: ['vm3'] };
const options = { vmsOfShard: (s: { index: number }) => (layout[s.index] ?? []).map((id) => ({ id, host: `10.0.0.${id.slice(-1)}` })), order: ['vm1', 'vm2', 'vm3', 'vm4', 'vm5'] };

test('every shard back: one report in config order, the fleet-wide flip skew, exit 0', () => {
  const merged = mergeResults(
    [
      shard(2, 3, [row('vm2', { flipped_at: '2026-12-06T05:00:01.500Z' }), row('vm5', { flipped_at: '2026-12-06T05:00:02.000Z' })]),
      shard(1, 3, [row('vm1', { flipped_at: '2026-12-06T05:00:00.250Z' }), row('vm4')]),
      shard(3, 3, [row('vm3')]),
    ],
    options,
  );
  expect(merged.vms.map((vm) => vm.id)).toEqual(['vm1', 'vm2', 'vm3', 'vm4', 'vm5']);
  expect(merged.shards).toEqual({ expected: 3, received: [1, 2, 3], missing: [], failed: [] });
  expect(merged.commit).toBe(SHA);
  expect(merged.flip_skew_ms).toBe(1750);
  expect(exitCodeFor(merged)).toBe(0);
  expect(fleetStatus(merged, null)).toEqual({ state: 'success', description: '5 of 5 VMs ok in 3 shards' });
});

test('a shard with no results fails each of its VMs with shard_missing, never success', () => {
  const merged = mergeResults([shard(1, 3, [row('vm1'), row('vm4')]), shard(3, 3, [row('vm3')])], options);
  expect(merged.vms.map((vm) => [vm.id, vm.result, vm.error?.code ?? null])).toEqual([
    ['vm1', 'success', null],
    ['vm2', 'failed', 'shard_missing'],
    ['vm3', 'success', null],
    ['vm4', 'success', null],
    ['vm5', 'failed', 'shard_missing'],
  ]);
  expect(merged.vms[1].error?.message).toMatch(/^shard 2\/3, which has vm2, wrote no results: .* vm-sync status --shard 2\/3/);
  expect(merged.shards?.missing).toEqual([2]);
  expect(exitCodeFor(merged)).toBe(1);
  expect(fleetStatus(merged, null)).toEqual({ state: 'failure', description: '3 of 5 VMs ok in 3 shards, 1 shard missing' });
  // Without the config there are no rows to fail, but the run still fails.
  const blind = mergeResults([shard(1, 3, [row('vm1'), row('vm4')]), shard(3, 3, [row('vm3')])]);
  expect(blind.vms.map((vm) => vm.id)).toEqual(['vm1', 'vm3', 'vm4']);
  expect(exitCodeFor(blind)).toBe(1);
  expect(fleetStatus(blind, null).state).toBe('failure');
});

test('N comes from the caller when given: with no results at all, every shard is missing', () => {
  const merged = mergeResults([], { ...options, expected: 3 });
  expect(merged.shards).toEqual({ expected: 3, received: [], missing: [1, 2, 3], failed: [] });
  expect(merged.vms.every((vm) => vm.error?.code === 'shard_missing')).toBe(true);
  expect(merged.vms).toHaveLength(5);
  expect(exitCodeFor(merged)).toBe(1);
  // A shard count larger than the results say is a missing shard, not a smaller fleet.
  expect(() => mergeResults([shard(1, 2, [row('vm1')])], { expected: 3 })).toThrow(/disagree on the number of shards \(2, 3\)/);
  expect(() => mergeResults([])).toThrow(/no shard results to merge/);
});

test('a shard that failed before reaching its VMs fails each of them with its own code', () => {
  const merged = mergeResults([shard(1, 2, [row('vm1'), row('vm4')]), doc('shard-2.json', { commit: null as unknown as string, shard: { index: 2, count: 2 }, error: { code: 'git_failed', message: 'could not fetch origin' } })], {
    ...options,
    vmsOfShard: (s) => (s.index === 1 ? ['vm1', 'vm4'] : ['vm2', 'vm3']).map((id) => ({ id, host: 'h' })),
  });
  expect(merged.vms.filter((vm) => vm.result === 'failed').map((vm) => [vm.id, vm.error?.code, vm.error?.message])).toEqual([
    ['vm2', 'git_failed', 'shard 2/2 failed before reaching vm2: could not fetch origin'],
    ['vm3', 'git_failed', 'shard 2/2 failed before reaching vm3: could not fetch origin'],
  ]);
  expect(merged.shards?.failed).toEqual([{ index: 2, code: 'git_failed', message: 'could not fetch origin' }]);
  expect(exitCodeFor(merged)).toBe(1);
});

test('an empty shard (no VM hashed to it) counts as received', () => {
  const merged = mergeResults([shard(1, 2, [row('vm1')]), doc('shard-2.json', { commit: '', shard: { index: 2, count: 2 } })]);
  expect(merged.shards).toEqual({ expected: 2, received: [1, 2], missing: [], failed: [] });
  expect(exitCodeFor(merged)).toBe(0);
});

test("the scan job's verdict is the merged report's scan; a blocked scan exits 3", () => {
  const scan = { blocked: true, findings: [{ rule: 'aws', file: 'a', line: 1, commit: null, fingerprint: 'f' }], description: 'x', commits_scanned: 1 };
  const merged = mergeResults([doc('scan.json', { command: 'scan', scan: scan as unknown as RunReport['scan'] }), shard(1, 1, [])]);
  expect(merged.scan?.blocked).toBe(true);
  expect(exitCodeFor(merged)).toBe(3);
  expect(fleetStatus(merged, null)).toEqual({ state: 'failure', description: 'secrets_found: 1 possible secret: deploy blocked' });
});

describe('inputs that are not the results of one deploy are refused, naming the file', () => {
  test.each<[string, ResultsSource[], RegExp]>([
    ['the same shard twice', [shard(1, 2, [row('vm1')]), { ...shard(1, 2, [row('vm4')]), source: 'again.json' }], /^again\.json: shard 1\/2 is also in shard-1\.json/],
    ['one VM in two shards', [shard(1, 2, [row('vm1')]), shard(2, 2, [row('vm1')])], /^shard-2\.json: VM "vm1" is in two shards' results/],
    ['different commits', [shard(1, 2, [row('vm1')]), shard(2, 2, [row('vm2')], { commit: 'c'.repeat(40) })], /are of different commits/],
    ['different commands', [shard(1, 2, [row('vm1')]), shard(2, 2, [row('vm2')], { command: 'verify' })], /ran different commands \(sync, verify\)/],
    ['not JSON', [{ source: 'x.json', text: '{"vms": [' }], /^x\.json: is not JSON/],
    ['a row without its result', [{ source: 'r.json', text: JSON.stringify({ command: 'sync', commit: SHA, vms: [{ ...row('vm1'), result: undefined }] }) }], /^r\.json: vms\[0\]\.result is not one of success/],
    ['an unknown failure code', [{ source: 'r.json', text: JSON.stringify({ command: 'sync', commit: SHA, vms: [row('vm1', { result: 'failed', error: { code: 'made_up' as never, message: 'm' } })] }) }], /vms\[0\]\.error\.code is not a vm-sync failure code/],
    ['a shard index past N', [shard(3, 2, [row('vm1')])], /^shard-3\.json: shard\.index is not from 1 to 2/],
    ['a document cut to fit an output', [doc('out.json', { truncated: { vms_total: 9, vms_shown: 1, reason: 'big' } } as never)], /shortened to fit an output/],
  ])('%s', (_, sources, message) => {
    expect(() => mergeResults(sources, options)).toThrow(message);
    try {
      mergeResults(sources, options);
    } catch (error) {
      expect((error as { code: string }).code).toBe('results_invalid');
    }
  });
});

test('the merged report renders as one table and one job summary (snapshots)', () => {
  const merged = mergeResults([shard(1, 3, [row('vm1'), row('vm4', { result: 'failed', verified: false, error: { code: 'unreachable', message: 'connect ECONNREFUSED' } })]), shard(3, 3, [row('vm3')])], options);
  const table = renderTable(merged);
  expect(table).toContain('shards: 2 of 3 reported; MISSING 2/3');
  expect(table).toMatchSnapshot();
  const summary = renderSummary(merged, { runUrl: 'https://github.com/acme/app/actions/runs/9', failure: null });
  expect(summary).toContain('## vm-sync sync (3 shards merged): 2 deployed, 3 failed');
  expect(summary).toContain('❌ shards: 2 of 3 reported; MISSING 2/3');
  expect(summary).toMatchSnapshot();
});

test('a merged dry run says so in its aggregate status', () => {
  const merged = mergeResults([shard(1, 2, [row('vm1')], { dry_run: true }), shard(2, 2, [row('vm2')], { dry_run: true })]);
  expect(fleetStatus(merged, null)).toEqual({ state: 'success', description: 'dry run: 2 of 2 VMs ok in 2 shards, nothing changed' });
});

test('a merge that could not be done is an error status, never success', () => {
  expect(fleetStatus(null, { code: 'results_invalid', message: 'a.json: is not JSON' })).toEqual({ state: 'error', description: 'results_invalid: a.json: is not JSON' });
});
