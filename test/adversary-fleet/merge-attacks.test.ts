import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { mergeResults, type ResultsSource } from '../../src/report/merge.js';
import { readResultsFiles } from '../../src/report/results-files.js';
import { fleetStatus } from '../../src/report/github.js';
import { renderSummary } from '../../src/report/summary.js';
import { renderTable } from '../../src/report/table.js';
import { exitCodeFor } from '../../src/sync/fleet.js';
import { shardOf } from '../../src/config/shard.js';
import { failedRow, type RunReport, type VmReport } from '../../src/sync/types.js';

/*
 * Adversarial results files for `vm-sync report --merge` / `command: report`:
 * a results file is written by another job (its artifact), so nothing in it
 * may make a failed deploy look successful or reach the terminal or the job
 * summary raw.
 */
const SHA = 'a'.repeat(40);
const ESC = '\u001b';

function row(id: string, over: Partial<VmReport> = {}): VmReport {
  return { ...failedRow({ id, host: '10.0.0.1' }), state: 'behind', action: 'deploy', result: 'success', rev_before: 'b'.repeat(40), rev_after: SHA, files_changed: 3, bytes_sent: 1200, duration_ms: 1500, verified: true, ...over };
}
function doc(source: string, report: Record<string, unknown>): ResultsSource {
  return { source, text: JSON.stringify({ command: 'sync', commit: SHA, dry_run: false, scan: null, vms: [], ...report }) };
}
const shard = (index: number, count: number, vms: VmReport[], extra: Record<string, unknown> = {}): ResultsSource => doc(`shard-${index}.json`, { shard: { index, count }, vms, ...extra });

/** The real partition (a hash of the id), as `selectVms(config, undefined, shard)` gives it. */
const IDS = Array.from({ length: 12 }, (_, i) => `vm${String(i + 1).padStart(2, '0')}`);
const realOptions = (count: number) => ({
  vmsOfShard: (s: { index: number }) => IDS.filter((id) => shardOf(id, count) === s.index).map((id) => ({ id, host: '10.0.0.1' })),
  order: IDS,
});
const of = (index: number, count: number): string[] => IDS.filter((id) => shardOf(id, count) === index);

test('a shard that failed before reaching its VMs is not made "success" by a row for its VM in another shard\'s file', () => {
  // vm02 belongs to shard 2/2. Shard 2 failed before reaching any VM; shard 1's file claims vm02 was deployed.
  expect(shardOf('vm02', 2)).toBe(2);
  const sources = [
    shard(1, 2, [...of(1, 2).map((id) => row(id)), row('vm02')]),
    doc('shard-2.json', { commit: null, shard: { index: 2, count: 2 }, error: { code: 'git_failed', message: 'could not fetch origin' } }),
  ];
  let merged: RunReport | null;
  try {
    merged = mergeResults(sources, realOptions(2));
  } catch (error) {
    // Refusing the inputs is a right answer too.
    expect((error as { code: string }).code).toBe('results_invalid');
    return;
  }
  const vm02 = merged.vms.find((vm) => vm.id === 'vm02');
  expect([vm02?.result, vm02?.error?.code]).toEqual(['failed', 'git_failed']);
});

test('a row in the wrong shard\'s file is refused even when the owning shard merely left it out', () => {
  // Shard 2 reported (no error) but has no row for vm02; shard 1 claims it. The partition is a pure function of the id.
  const sources = [shard(1, 2, [...of(1, 2).map((id) => row(id)), row('vm02')]), shard(2, 2, of(2, 2).filter((id) => id !== 'vm02').map((id) => row(id)))];
  expect(() => mergeResults(sources, realOptions(2))).toThrow(/vm02/);
});

test('dry-run and real shards are not one deploy', () => {
  const sources = [shard(1, 2, of(1, 2).map((id) => row(id))), shard(2, 2, of(2, 2).map((id) => row(id)), { dry_run: true })];
  expect(() => mergeResults(sources, realOptions(2))).toThrow(expect.objectContaining({ code: 'results_invalid' }));
});

test('an empty shard succeeds; a missing shard fails (with and without the config)', () => {
  // 12 VMs over 5 shards leave... find an N with an empty shard to be sure.
  const count = [5, 6, 7, 8, 9, 10, 11, 12, 13].find((n) => Array.from({ length: n }, (_, i) => of(i + 1, n).length).includes(0)) as number;
  const empty = Array.from({ length: count }, (_, i) => i + 1).find((i) => of(i, count).length === 0) as number;
  const full = Array.from({ length: count }, (_, i) => i + 1).map((i) => (i === empty ? doc(`shard-${i}.json`, { commit: '', shard: { index: i, count } }) : shard(i, count, of(i, count).map((id) => row(id)))));
  const ok = mergeResults(full, realOptions(count));
  expect(exitCodeFor(ok)).toBe(0);
  expect(fleetStatus(ok, null).state).toBe('success');
  // The empty shard's file is missing: still nothing fails by VM, but the shard is missing, so the run fails.
  const without = mergeResults(full.filter((_, i) => i + 1 !== empty), { ...realOptions(count), expected: count });
  expect(without.shards?.missing).toEqual([empty]);
  expect(exitCodeFor(without)).toBe(1);
  expect(fleetStatus(without, null).state).toBe('failure');
  // A non-empty missing shard fails its VMs by name.
  const other = empty === 1 ? 2 : 1;
  const noOther = mergeResults(full.filter((_, i) => i + 1 !== other), realOptions(count));
  for (const id of of(other, count)) expect(noOther.vms.find((vm) => vm.id === id)?.error?.code).toBe('shard_missing');
  expect(exitCodeFor(noOther)).toBe(1);
});

test.each<[string, ResultsSource[]]>([
  ['duplicate VM in one file', [shard(1, 1, [row('vm01'), row('vm01', { result: 'failed', error: { code: 'unreachable', message: 'x' } })])]],
  ['shard count mismatch', [shard(1, 2, [row('vm01')]), shard(2, 3, [row('vm02')])]],
  ['a shard field missing among sharded files', [shard(1, 2, [row('vm01')]), doc('noshard.json', { vms: [row('vm02')] })]],
  ['a success row of an unknown shape (result "success " with a space)', [doc('x.json', { vms: [{ ...row('vm01'), result: 'success ' }] })]],
  ['a count that is not a count', [doc('x.json', { vms: [{ ...row('vm01'), files_changed: -1 }] })]],
])('%s is results_invalid', (_, sources) => {
  expect(() => mergeResults(sources)).toThrow(expect.objectContaining({ code: 'results_invalid' }));
});

test('deeply nested or huge JSON is refused or parsed without a crash', () => {
  const deep = `${'['.repeat(200_000)}${']'.repeat(200_000)}`;
  expect(() => mergeResults([{ source: 'deep.json', text: deep }])).toThrow(expect.objectContaining({ code: 'results_invalid' }));
  // A row whose drift is 5,000 objects deep (JSON.stringify of it would overflow the stack).
  const text = doc('d.json', { vms: [{ ...row('vm01'), drift: 'DRIFT' }] }).text.replace('"DRIFT"', `${'{"a":'.repeat(5000)}1${'}'.repeat(5000)}`);
  let merged: RunReport;
  try {
    merged = mergeResults([{ source: 'd.json', text }]);
  } catch (error) {
    expect((error as { code: string }).code).toBe('results_invalid');
    return;
  }
  expect(() => renderTable(merged)).not.toThrow();
  expect(() => renderSummary(merged, { runUrl: '', failure: null })).not.toThrow();
});

describe('nothing from a results file reaches the terminal or the summary raw', () => {
  const evil = `${ESC}]8;;https://evil.example${ESC}\\click${ESC}]8;;${ESC}\\${ESC}[2J\r\n::error::forged`;
  const md = '</details><img src=x onerror=alert(1)>[pwn](https://evil.example) | x |';

  test('VM id, host, error message, notes, shard error', () => {
    const merged = mergeResults([
      shard(1, 2, [row(`vm${evil}`, { host: evil, notes: [evil, md], result: 'failed', verified: false, error: { code: 'unreachable', message: `${evil}${md}` } })]),
      doc('s2.json', { commit: null, shard: { index: 2, count: 2 }, error: { code: `git_failed${evil}`, message: `${evil}${md}` } }),
    ]);
    const table = renderTable(merged);
    const summary = renderSummary(merged, { runUrl: '', failure: null });
    expect(table).not.toContain(ESC);
    expect(table).not.toMatch(/^::/m);
    expect(summary).not.toContain(ESC);
    expect(summary).not.toContain('<img');
    expect(summary).not.toMatch(/(?<!\\)\]\(https:\/\/evil/);
    expect(fleetStatus(merged, null).description).not.toContain(ESC);
  });

  test('the drift of a row (not checked by the merge) cannot inject escapes or crash the renderers', () => {
    const drift = { checked: 1, changed: `${evil}`, missing: 0, extra: 0, paths: [{ path: evil, what: `changed${evil}`, detail: md }] };
    let merged: RunReport | null;
    try {
      merged = mergeResults([doc('d.json', { command: 'verify', vms: [{ ...row('vm01'), action: 'verify', drift }] })]);
    } catch (error) {
      expect((error as { code: string }).code).toBe('results_invalid');
      return;
    }
    expect(renderTable(merged)).not.toContain(ESC);
    expect(renderSummary(merged, { runUrl: '', failure: null })).not.toContain(ESC);
  });

  test('a drift whose paths is not a list does not crash the summary', () => {
    const drift = { checked: 1, changed: 1, missing: 0, extra: 0, paths: 'nope' };
    let merged: RunReport | null;
    try {
      merged = mergeResults([doc('d.json', { command: 'verify', vms: [{ ...row('vm01'), action: 'verify', drift }] })]);
    } catch (error) {
      expect((error as { code: string }).code).toBe('results_invalid');
      return;
    }
    expect(() => renderSummary(merged as RunReport, { runUrl: '', failure: null })).not.toThrow();
  });

  test("the scan job's description and settings", () => {
    const scan = { blocked: false, findings: [], description: evil, commits_scanned: 1, tree_scanned: true, configuration: { commit: null, reason: evil, files: [evil], changed: [], weakening: [evil] } };
    const merged = mergeResults([doc('scan.json', { command: 'scan', scan }), shard(1, 1, [row('vm01')])]);
    expect(renderTable(merged)).not.toContain(ESC);
    expect(renderSummary(merged, { runUrl: '', failure: null })).not.toContain(ESC);
  });

  test('a crafted file name in the results directory does not reach an error message raw', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-adv-merge-'));
    try {
      const name = `x${ESC}[2J${ESC}]0;pwned${String.fromCharCode(7)}.json`;
      fs.writeFileSync(path.join(dir, name), '{"not": "a report"}');
      let message = '';
      try {
        mergeResults(readResultsFiles([dir]));
      } catch (error) {
        message = (error as Error).message;
      }
      expect(message).toMatch(/results|command/);
      expect(message).not.toContain(ESC);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('the results directory', () => {
  let dir: string;
  beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-adv-merge-'))));
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('a symlink to /etc/shadow (or a symlinked directory, or a FIFO) is not read', () => {
    fs.mkdirSync(path.join(dir, 'shard-1'));
    fs.writeFileSync(path.join(dir, 'shard-1', 'results.json'), shard(1, 1, [row('vm01')]).text);
    fs.symlinkSync('/etc/shadow', path.join(dir, 'shard-1', 'shadow.json'));
    fs.mkdirSync(path.join(dir, 'elsewhere'));
    fs.writeFileSync(path.join(dir, 'elsewhere', 'r.json'), shard(1, 1, [row('vm99')]).text);
    fs.symlinkSync(path.join(dir, 'elsewhere'), path.join(dir, 'shard-2'));
    execFileSync('mkfifo', [path.join(dir, 'fifo.json')]);
    const files = readResultsFiles([dir]);
    expect(files.map((f) => path.relative(dir, f.source))).toEqual(['elsewhere/r.json', 'shard-1/results.json']);
    // A symlink given as the path itself is refused, not followed.
    expect(() => readResultsFiles([path.join(dir, 'shard-1', 'shadow.json')])).toThrow(/not a file or a directory/);
  });
});
