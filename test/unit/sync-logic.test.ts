import { VmSyncError } from '../../src/errors.js';
import { renderTable } from '../../src/report/table.js';
import { exitCodeFor } from '../../src/sync/fleet.js';
import { mapPool } from '../../src/sync/pool.js';
import { classifyState, type History } from '../../src/sync/state.js';
import type { RunReport, VmReport } from '../../src/sync/types.js';

const A = 'a'.repeat(40);
const B = 'b'.repeat(40);

/** A history where `ancestors[x]` lists the commits x descends from. */
function history(ancestors: Record<string, string[]>): History {
  return {
    relation: async (vmRev, deploy) => {
      if (vmRev === deploy) return 'up-to-date';
      if (!(vmRev in ancestors)) return 'diverged';
      if (ancestors[deploy]?.includes(vmRev)) return 'behind';
      if (ancestors[vmRev]?.includes(deploy)) return 'ahead';
      return 'diverged';
    },
  };
}

describe('classifyState', () => {
  const h = history({ [A]: [], [B]: [A] });
  test('no sentinel is fresh', async () => expect(await classifyState('vm01', null, B, h)).toBe('fresh'));
  test('same commit is up-to-date (trailing newline ignored)', async () => expect(await classifyState('vm01', `${B}\n`, B, h)).toBe('up-to-date'));
  test('an ancestor is behind', async () => expect(await classifyState('vm01', A, B, h)).toBe('behind'));
  test('a descendant is ahead', async () => expect(await classifyState('vm01', B, A, h)).toBe('ahead'));
  test('an unknown commit is diverged', async () => expect(await classifyState('vm01', 'c'.repeat(40), B, h)).toBe('diverged'));
  test.each(['', 'deadbeef', 'not a hash at all', `${A}x`])('a sentinel holding %j is an error, never fresh', async (rev) => {
    await expect(classifyState('vm01', rev, B, h)).rejects.toMatchObject({ code: 'sentinel_unreadable' });
  });
});

describe('mapPool', () => {
  test('never runs more than the cap at once and keeps input order', async () => {
    let inFlight = 0;
    let peak = 0;
    const results = await mapPool([5, 1, 4, 2, 3, 6, 1], 3, async (n) => {
      inFlight++;
      peak = Math.max(peak, inFlight);
      await new Promise((r) => setTimeout(r, n * 5));
      inFlight--;
      return n * 10;
    });
    expect(results).toEqual([50, 10, 40, 20, 30, 60, 10]);
    expect(peak).toBe(3);
  });
});

function vm(overrides: Partial<VmReport>): VmReport {
  return {
    id: 'vm01',
    host: '192.0.2.11',
    state: 'behind',
    action: 'deploy',
    result: 'success',
    rev_before: A,
    rev_after: B,
    files_changed: 3,
    bytes_sent: 2048,
    duration_ms: 1234,
    verified: true,
    notes: [],
    error: null,
    staged_at: null,
    flipped_at: null,
    health: 'skipped',
    health_output: null,
    release: null,
    ...overrides,
  };
}

const report: RunReport = {
  command: 'sync',
  commit: B,
  dry_run: false,
  scan: null,
  vms: [
    vm({}),
    vm({ id: 'vm02', host: '192.0.2.12', state: 'unknown', action: 'none', result: 'failed', rev_before: null, rev_after: null, files_changed: 0, bytes_sent: 0, duration_ms: 310, verified: false, error: { code: 'unreachable', message: 'cannot reach vm02 (deploy@192.0.2.12:22): connect ECONNREFUSED. Check the VM is up.' } }),
    vm({ id: 'vm03', host: '192.0.2.13', state: 'up-to-date', action: 'none', rev_before: B, files_changed: 0, bytes_sent: 0, duration_ms: 90 }),
    vm({ id: 'vm04', host: '192.0.2.14', state: 'diverged', rev_before: 'c'.repeat(40), notes: ['history diverged: cccccccccccc is not an ancestor of bbbbbbbbbbbb'] }),
  ],
};

test('the table is a pure function of the report', () => {
  expect(renderTable(report)).toMatchSnapshot();
  expect(renderTable(report)).toBe(renderTable(structuredClone(report)));
});

test('exit code: 0 only when every VM succeeded', () => {
  expect(exitCodeFor(report)).toBe(1);
  expect(exitCodeFor({ ...report, vms: [report.vms[0], report.vms[2]] })).toBe(0);
  expect(exitCodeFor({ ...report, vms: [vm({ result: 'refused' })] })).toBe(1);
});

test('only network failures are retryable', () => {
  expect(new VmSyncError('unreachable', 'x').retryable).toBe(true);
  expect(new VmSyncError('timeout', 'x').retryable).toBe(true);
  for (const code of ['host_key_mismatch', 'auth_failed', 'storage_full', 'locked', 'refused_ahead'] as const) {
    expect(new VmSyncError(code, 'x').retryable).toBe(false);
  }
});
