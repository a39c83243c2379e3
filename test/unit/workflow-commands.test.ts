/*
 * Text a VM, a commit's tree or an API answer controls must never be read by
 * the GitHub Actions runner as a workflow command, wherever vm-sync prints it
 * (the Action's log, or the CLI run in a workflow step: its stderr lines, its
 * tables and its --json documents). The runner (actions/runner,
 * ActionCommandManager.TryProcessCommand) reads `::name::` at the start of a
 * line once leading whitespace is trimmed, and the legacy `##[name]` anywhere
 * in a line; its string search may be culture-aware, which skips characters
 * Unicode calls ignorable (soft hyphen, zero-width and bidi marks, variation
 * selectors). A command such as `##[stop-commands]` would silence every
 * annotation and mask vm-sync sends after it; `##[add-mask]` and
 * `##[error]` forge the log.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { main } from '../../src/cli.js';
import { renderDoctor, type DoctorReport } from '../../src/doctor/doctor.js';
import { terminalLine } from '../../src/report/escape.js';
import { Log } from '../../src/report/log.js';

const SHA = '0123456789abcdef0123456789abcdef01234567';
/** Characters a culture-aware comparison may skip. */
const IGNORABLE = /[\p{Cf}\p{Variation_Selector}\u034f]/gu;

/** Whether the runner could take `line` (one line of output) for a workflow command. */
function runnerReads(line: string): boolean {
  const seen = line.replace(IGNORABLE, '');
  return seen.trimStart().startsWith('::') || seen.includes('##[');
}

/** Every output line the runner could take for a command. */
function commandLines(text: string): string[] {
  return text.split('\n').filter(runnerReads);
}

/** Hostile texts: each is a command in the runner's eyes as printed raw. */
const HOSTILE = [
  '##[add-mask]deploy',
  'post_sync: ##[stop-commands]pause-token',
  '::error::forged',
  '   ::warning title=x::forged',
  '\u00a0\u2003::notice::forged',
  '\u00ad::error::forged',
  'ok ##\u00ad[error]forged',
  'ok #\u200b#\u200d[error]forged',
  'ok ##\ufe0f[group]forged',
  'ok \u202e##[endgroup]',
];

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-wfc-'));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('workflow commands in printed text', () => {
  test('the hostile texts are commands to the runner as printed raw (the check itself works)', () => {
    for (const text of HOSTILE) expect(runnerReads(text)).toBe(true);
    expect(runnerReads('[vm01] post_sync: restarted app (#3) [ok]: a::b')).toBe(false);
  });

  test('terminalLine never yields a command, and keeps ordinary text as it is', () => {
    expect(HOSTILE.map(terminalLine).filter(runnerReads)).toEqual([]);
    expect(terminalLine('##[add-mask]deploy')).toBe('## [add-mask]deploy');
    expect(terminalLine('  ::error::x')).toBe('  : :error::x');
    expect(terminalLine('[vm01] post_sync: restarted app (#3) [ok]: a::b ✓ é')).toBe('[vm01] post_sync: restarted app (#3) [ok]: a::b ✓ é');
  });

  test('--log-format json lines and text lines of the CLI log carry no command; JSON keeps the text exactly', () => {
    let json = '';
    const log = new Log((t) => (json += t), { format: 'json', verbosity: 'verbose', colour: false });
    let text = '';
    const plain = new Log((t) => (text += t), { format: 'text', verbosity: 'verbose', colour: false });
    for (const l of [log, plain]) {
      for (const message of HOSTILE) {
        l.line('info', 'vm01', message, 'finish');
        l.line('debug', null, `Error: ${message}\n    at x (y.js:1:2)`);
        l.note('warn', message);
      }
      l.failure('config_invalid', HOSTILE.join('\n'), HOSTILE);
    }
    expect(commandLines(json)).toEqual([]);
    expect(commandLines(text)).toEqual([]);
    const first = JSON.parse(json.split('\n')[0]) as { message: string };
    expect(first.message).toBe(HOSTILE[0]);
  });

  test('doctor prints its details and hints through the same cleaning', () => {
    const report = {
      command: 'doctor',
      runner_host: { ready: true, checks: [{ name: 'clone', status: 'warn', detail: `a ${HOSTILE[1]}\u001b[2J`, hint: HOSTILE[3] }] },
      vms: [{ id: 'vm01', ready: false, checks: HOSTILE.map((detail) => ({ name: 'shell', status: 'fail', detail, hint: detail })) }],
    } as unknown as DoctorReport;
    const out = renderDoctor(report);
    expect(commandLines(out)).toEqual([]);
    expect(out).not.toContain('\u001b');
  });

  test('history and history --json of a journal holding hostile text print no command; --json parses back to the same text', async () => {
    const clone = path.join(dir, 'app');
    const config = path.join(dir, 'vm-sync.yml');
    fs.writeFileSync(config, `vms:\n  vm01: { ip: 192.0.2.10, ssh_user: deploy }\nrepository:\n  main_repo_path: ${clone}\n`);
    const stateDir = path.join(dir, '.app.vm-sync');
    fs.mkdirSync(stateDir);
    const lines = HOSTILE.map((text, i) =>
      JSON.stringify({
        v: 1,
        run_id: `r${i}`,
        started_at: '2026-11-22T07:01:02.000Z',
        ended_at: '2026-11-22T07:01:03.000Z',
        command: 'sync',
        trigger: { kind: 'actions', run_url: text, actor: text, host: text },
        commit: SHA,
        dry_run: false,
        shard: null,
        exit_code: 1,
        error: { code: 'x', message: text },
        vms: [{ id: 'vm01', state: text, action: 'deploy', result: 'failed', code: text, rev: null }],
      }),
    );
    fs.writeFileSync(path.join(stateDir, 'journal.jsonl'), `${lines.join('\n')}\n`);
    const run = async (args: string[]): Promise<{ code: number; out: string; err: string }> => {
      let out = '';
      let err = '';
      const code = await main(args, { out: (t) => (out += t), err: (t) => (err += t), env: {}, cwd: dir });
      return { code, out, err };
    };
    const text = await run(['history', '--config', config]);
    expect(text.code).toBe(0);
    expect(text.out).toContain('r9');
    expect(commandLines(text.out + text.err)).toEqual([]);
    const json = await run(['history', '--json', '--config', config]);
    expect(json.code).toBe(0);
    expect(commandLines(json.out + json.err)).toEqual([]);
    const doc = JSON.parse(json.out) as { journal: { records: { trigger: { actor: string } }[] } };
    expect(doc.journal.records.map((r) => r.trigger.actor)).toContain('##[add-mask]deploy');
  });
});
