import { annotationText, boundedResults, githubDescription, markdownCode, markdownText, RESULTS_MAX_BYTES, terminalLine } from '../../src/report/escape.js';
import { GitHubReporter, vmStatus, type GitHubApi } from '../../src/report/github.js';
import { renderSummary } from '../../src/report/summary.js';
import { renderTable } from '../../src/report/table.js';
import type { RunReport, VmReport } from '../../src/sync/types.js';

/*
 * Text a VM controls, planted in every field of a report that can hold it,
 * must come out of each output channel escaped for that channel and bounded.
 */
const ESC = '\u001b[31m';
const HTML = '<img src=x onerror=alert(1)>';
const LINK = '[link](http://evil)';
const EVIL = `${ESC}red${HTML}${LINK}\n# heading\r\u009b2J | pipe \`tick\` *b* _i_ &amp;`;
const HUGE = `${'A'.repeat(10 * 1024 * 1024)}END`;
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/;
// eslint-disable-next-line no-control-regex
const CONTROL_OR_NEWLINE = /[\u0000-\u001f\u007f-\u009f]/;

function vm(overrides: Partial<VmReport>): VmReport {
  return { id: 'vm01', host: '10.0.0.1', state: 'behind', action: 'deploy', result: 'success', rev_before: 'a'.repeat(40), rev_after: 'b'.repeat(40), files_changed: 3, bytes_sent: 2048, duration_ms: 1500, verified: true, notes: [], error: null, staged_at: null, flipped_at: null, health: 'skipped', health_output: null, release: null, ...overrides };
}

const planted = vm({
  result: 'failed',
  rev_before: EVIL,
  rev_after: HUGE,
  verified: false,
  notes: [EVIL, HUGE, ...Array.from({ length: 50 }, (_, i) => `note ${i} ${EVIL}`)],
  error: { code: 'sentinel_unreadable', message: `${EVIL} ${HUGE}` },
});
const report: RunReport = { command: 'sync', commit: 'c'.repeat(40), dry_run: false, scan: null, vms: [planted, vm({ id: 'vm02' })] };

describe('job summary', () => {
  const text = renderSummary(report, { runUrl: 'https://github.com/acme/app/actions/runs/1', failure: { code: 'internal_error', message: EVIL + HUGE } });

  test('no control character, no raw HTML, no live link, bounded', () => {
    // Booleans, not toMatch on the text: a failure must not print the summary.
    expect(CONTROL.test(text)).toBe(false);
    expect(text.includes('<img')).toBe(false);
    expect(/(^|[^\\])\[link\]\(/.test(text)).toBe(false);
    expect(/^# heading/m.test(text)).toBe(false);
    expect(text.includes('A'.repeat(3000))).toBe(false);
    expect(Buffer.byteLength(text)).toBeLessThan(64 * 1024);
  });

  /** The summary's line that starts with `prefix`, cut to `length` (a failure must not print megabytes). */
  const line = (prefix: string, length: number): string | undefined => text.split('\n').find((l) => l.startsWith(prefix))?.slice(0, length);

  test('the planted text renders as its literal characters', () => {
    const escaped = '?\\[31mred&lt;img src=x onerror=alert(1)&gt;\\[link\\](http://evil) # heading ?2J \\| pipe \\`tick\\` \\*b\\* \\_i\\_ &amp;amp;';
    const error = `- **vm01** \`sentinel_unreadable\`: ${escaped} AAAA`;
    expect(line('- **vm01**', error.length)).toBe(error);
    expect(line('- vm01: ?', 200)).toBe(`- vm01: ${escaped}`);
    const failure = `❌ \`internal_error\`: ${escaped}AAAA`;
    expect(line('❌', failure.length)).toBe(failure);
    // Revs that are not commit hashes are not echoed; notes past 20 are counted, not listed.
    expect(line('| vm01 |', 200)).toBe('| vm01 | 10.0.0.1 | behind | deploy | ❌ failed (`sentinel_unreadable`) | ? → ? | 3 | 2.0 KB | 1.5s | no |');
    expect(line('- vm01: …', 200)).toBe('- vm01: …and 32 more notes (see the `results` output)');
  });

  test('a summary over the cap is cut at a line, in bytes, with <details> closed', () => {
    const wide = '日本語'.repeat(300); // 3 bytes a character: a character count would overshoot the byte cap
    const many: RunReport = { ...report, vms: Array.from({ length: 3000 }, (_, i) => vm({ id: `vm${i}`, notes: [wide, wide] })) };
    const out = renderSummary(many, { runUrl: 'u', failure: null });
    expect(Buffer.byteLength(out)).toBeLessThanOrEqual(512 * 1024);
    expect(out).toMatch(/\n<\/details>\n\n…summary truncated; the full report is in the `results` output and the job log\.\n$/);
  });
});

describe('terminal table', () => {
  const text = renderTable(report);

  test('no control character but newlines, bounded, revs shown only when they are hashes', () => {
    expect(CONTROL.test(text)).toBe(false);
    expect(text.length).toBeLessThan(200 * 1024);
    const lines = text.split('\n');
    expect(lines[4]).toMatch(/^vm01 +10\.0\.0\.1 +behind +deploy +failed \(sentinel_unreadable\) +\? -> \? /);
    expect(lines).toContain(`vm01: note: ?[31mred${HTML}${LINK} # heading ?2J | pipe \`tick\` *b* _i_ &amp;`);
    expect(lines).toContain('vm01: note: …and 32 more notes (see --json)');
  });

  test('an error of 10 MB is one bounded line', () => {
    const line = text.split('\n').find((l) => l.startsWith('vm01: sentinel_unreadable: '));
    expect(line?.length).toBeLessThan(4100);
    expect(line).toMatch(/… \(\d+ more characters cut\)$/);
  });
});

describe('commit status and deployment descriptions', () => {
  test('one line, no control character, at most 140 characters', () => {
    const { description } = vmStatus(planted, 'sync', false);
    const start = `sentinel_unreadable: ?[31mred${HTML}${LINK} # heading ?2J | pipe \`tick\` *b* _i_ &amp; `;
    expect(description).toBe(`${start}${'A'.repeat(139 - start.length)}…`);
    expect(description).toHaveLength(140);
  });

  test('a cut never splits a surrogate pair', () => {
    const emoji = githubDescription(`${'x'.repeat(138)}😀😀`);
    expect(emoji).toBe(`${'x'.repeat(138)}…`);
    expect(githubDescription('😀'.repeat(100)).length).toBeLessThanOrEqual(140);
    expect(githubDescription('😀'.repeat(100))).toMatch(/^(😀)+…$/u);
  });

  test('the reporter posts only bounded single-line descriptions, for statuses and deployments', async () => {
    const bodies: Array<{ description: string }> = [];
    const api: GitHubApi = {
      createStatus: async (_sha, body) => void bodies.push(body),
      createDeployment: async () => 1,
      createDeploymentStatus: async (_id, body) => void bodies.push(body),
    };
    const reporter = new GitHubReporter(api, { sha: 'c'.repeat(40), runUrl: 'u', statuses: true, environment: 'prod', verb: 'sync', dryRun: false, warn: () => undefined });
    reporter.scanStarted();
    reporter.vmStarted('vm01');
    reporter.vmFinished(planted);
    reporter.vmStarted('vm02');
    reporter.finalize({ code: 'internal_error', message: EVIL + HUGE });
    await reporter.flush();
    // scan pending + error; per VM: pending, in_progress, and the final status and deployment status.
    expect(bodies.length).toBe(10);
    for (const { description } of bodies) {
      expect(description.length).toBeLessThanOrEqual(140);
      expect(description).not.toMatch(CONTROL_OR_NEWLINE);
    }
  });
});

describe('the results output', () => {
  test('a normal report is passed through unchanged', () => {
    const normal: RunReport = { ...report, vms: [vm({}), vm({ id: 'vm02', notes: ['took over a stale lock'] })] };
    expect(boundedResults(normal)).toBe(JSON.stringify(normal));
  });

  test('planted values are cleaned and bounded, and the JSON stays valid', () => {
    const text = boundedResults(report);
    expect(Buffer.byteLength(text)).toBeLessThan(64 * 1024);
    const parsed = JSON.parse(text) as RunReport;
    const row = parsed.vms[0];
    expect(row.notes[0]).toBe(`?[31mred${HTML}${LINK}\n# heading\n?2J | pipe \`tick\` *b* _i_ &amp;`);
    expect(row.notes[1]).toMatch(/^A{2000}… \(\d+ more characters cut\)$/);
    expect(row.notes).toHaveLength(20);
    expect(row.rev_after).toMatch(/^A{2000}…/);
    expect(text).not.toContain('\\u001b');
    expect(text).not.toContain('\\u009b');
  });

  test('a fleet too big for one output keeps as many rows as fit and says so', () => {
    const fleet: RunReport = { ...report, vms: Array.from({ length: 20000 }, (_, i) => vm({ id: `vm${i}`, result: 'failed', error: { code: 'unreachable', message: `cannot reach vm${i}: ${'x'.repeat(300)}` } })) };
    const text = boundedResults(fleet);
    expect(Buffer.byteLength(text)).toBeLessThanOrEqual(RESULTS_MAX_BYTES);
    const parsed = JSON.parse(text) as RunReport & { truncated: { vms_total: number; vms_shown: number; reason: string } };
    expect(parsed.truncated.vms_total).toBe(20000);
    expect(parsed.truncated.vms_shown).toBe(parsed.vms.length);
    expect(parsed.vms.length).toBeGreaterThan(1000);
    expect(parsed.vms[0].error?.message).toMatch(/^cannot reach vm0: x{182}… \(\d+ more characters cut\)$/);
    // Close to the cap: the search keeps as many rows as fit.
    expect(Buffer.byteLength(text)).toBeGreaterThan(RESULTS_MAX_BYTES - 1024);
  });

  test('a run that failed before any VM is a valid document carrying the error', () => {
    const text = boundedResults({ command: 'sync', commit: null, dry_run: false, scan: null, vms: [], error: { code: 'git_failed', message: EVIL + HUGE } });
    const parsed = JSON.parse(text) as { commit: null; error: { code: string; message: string } };
    expect(parsed.commit).toBeNull();
    expect(parsed.error.code).toBe('git_failed');
    expect(parsed.error.message.length).toBeLessThan(2100);
  });
});

describe('log lines and annotations', () => {
  test('a log line can never be a workflow command, and is one bounded line', () => {
    expect(terminalLine('::add-mask::x')).toBe(': :add-mask::x');
    expect(terminalLine(' ::add-mask::x')).toBe(' : :add-mask::x');
    expect(terminalLine(`ok\n::set-output name=x::y${ESC}`)).toBe('ok ::set-output name=x::y?[31m');
    expect(terminalLine(HUGE).length).toBeLessThan(4100);
  });

  test('annotations are one bounded line', () => {
    const text = annotationText(`${EVIL}${HUGE}`);
    expect(text).not.toMatch(CONTROL_OR_NEWLINE);
    expect(text.length).toBeLessThan(2100);
  });

  test('markdown helpers: code spans cannot be closed early, text cannot open markup', () => {
    expect(markdownCode('a`b|c', 50)).toBe('`a\'b\\|c`');
    expect(markdownText('# title', 50)).toBe('\\# title');
    expect(markdownText('- item', 50)).toBe('\\- item');
    expect(markdownText('1. item', 50)).toBe('1\\. item');
    expect(markdownText('10.0.0.1', 50)).toBe('10.0.0.1');
    expect(markdownText('![x](y) <b>&', 50)).toBe('!\\[x\\](y) &lt;b&gt;&amp;');
  });
});
