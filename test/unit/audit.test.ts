/*
 * The audit trail's parts on their own: the secret masking and the cleaning
 * of a command's output, the revisions.log parser, the journal (append,
 * rotation, damaged lines, concurrent appends from several processes), and
 * the excluded-paths listing with a real rsync.
 */
import { spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { appendJournal, journalPath, newRunId, parseJournalLine, readJournal, rotatedPath, RUN_ID, triggerFromEnv, type JournalRecord } from '../../src/journal/journal.js';
import { bootId, pidNamespace, processStart, runnerHostId } from '../../src/remote/lock.js';
import { clearRegisteredSecrets, maskSecrets, registerSecret } from '../../src/remote/mask.js';
import { parseRevisions } from '../../src/remote/revisions.js';
import { commandOutputTail } from '../../src/remote/untrusted.js';
import { excludedPaths, unescapeRsyncName } from '../../src/sync/excluded.js';
import { renderHistory } from '../../src/report/history.js';
import { boundedResults } from '../../src/report/escape.js';
import { failedRow } from '../../src/sync/types.js';
import { transpileClosure } from '../helpers/transpile.js';

const SHA = '0123456789abcdef0123456789abcdef01234567';
const SHA2 = 'fedcba9876543210fedcba9876543210fedcba98';
let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-audit-'));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('maskSecrets', () => {
  afterEach(() => clearRegisteredSecrets());
  // Built at run time: no secret-shaped literal in this file (the repository scans itself).
  const rand = (n: number): string => crypto.randomBytes(n).toString('base64').replace(/[^A-Za-z0-9]/g, 'x');

  test('token-shaped words, secret assignments, private key blocks and registered values are masked', () => {
    const gh = `ghp_${rand(30).slice(0, 36)}`;
    const aws = `AKIA${'ABCDEFGHIJ234567'}`;
    const slack = ['xoxb', '1234567890', '0987654321', rand(24).slice(0, 24)].join('-');
    const b64 = `${rand(12)}/${rand(6)}+${rand(12)}`;
    const pem = ['-----BEGIN OPENSSH PRIVATE', 'KEY-----'].join(' ') + `\n${rand(48)}\n${rand(48)}\n-----END OPENSSH PRIVATE KEY-----`;
    const registered = 'hunter22';
    registerSecret(`${registered}\n`);
    const text = [`a ${gh} b`, `id ${aws}`, `slack: ${slack}`, `key ${b64} end`, pem, `api_key: "abc"`, 'Password = s3cr3t!', `echo ${registered}`].join('\n');
    expect(maskSecrets(text).split('\n')).toEqual(['a [masked] b', 'id [masked]', 'slack: [masked]', 'key [masked] end', '[private key masked]', 'api_key: "[masked]"', 'Password = [masked]', 'echo ***']);
  });

  test('commit hashes, release names, plain words and paths are kept', () => {
    const text = `deployed ${SHA} as 20261122T070102345Z-0123456789ab in /home/deploy/.app.vm-sync/releases/20261122T070102345Z-0123456789ab/public; restarted configuration_management_system, node_modules/some-package/dist/index.js`;
    expect(maskSecrets(text)).toBe(text);
  });
});

describe('commandOutputTail', () => {
  test('escape sequences go whole, other control characters become ?, CR and CRLF are newlines', () => {
    expect(commandOutputTail('a \u001b[1;31mred\u001b[0m \u001b]0;title\u0007b\u0007 \u0000\r\nnext\rover\n\n', 200, 65536)).toBe('a red b? ?\nnext\nover');
  });

  test('the last lines and characters are kept, and the text says earlier output was dropped', () => {
    const raw = Array.from({ length: 300 }, (_, i) => `l${i + 1}`).join('\n');
    const tail = commandOutputTail(raw, 200, 65536).split('\n');
    expect(tail[0]).toBe('[… earlier output not kept]');
    expect(tail.slice(1)).toEqual(Array.from({ length: 200 }, (_, i) => `l${i + 101}`));
    // A character bound cuts at a line start (the partial line is dropped).
    expect(commandOutputTail('aaaa\nbbbb\ncccc', 200, 7)).toBe('[… earlier output not kept]\ncccc');
    // What the session kept of a long output starts with its notice and a partial line: both go.
    expect(commandOutputTail('\n[... 99 characters not kept ...]\nrtial\nwhole\n', 200, 65536)).toBe('[… earlier output not kept]\nwhole');
    expect(commandOutputTail('', 200, 65536)).toBe('');
  });
});

describe('the results output', () => {
  test('post_sync output is cut to its end, where a command says why it failed', () => {
    const row = { ...failedRow({ id: 'vm01', host: 'h' }), post_sync: { exit_code: 1, output_tail: `${'start '.repeat(2000)}the reason` } };
    const doc = JSON.parse(boundedResults({ command: 'sync', commit: SHA, dry_run: false, scan: null, vms: [row] }));
    expect(doc.vms[0].post_sync.exit_code).toBe(1);
    expect(doc.vms[0].post_sync.output_tail).toMatch(/^\[…\](start )+the reason$/);
    expect(doc.vms[0].post_sync.output_tail.length).toBeLessThanOrEqual(2000);
  });
});

describe('parseRevisions', () => {
  const good = `vm-sync-rev-1 2026-11-22T07:01:03Z deploy - ${SHA} 20261122T070102Z-0a1b2c3d 20261122T070102345Z-0123456789ab`;
  test('a record with every field checked; - means unknown', () => {
    expect(parseRevisions([good, `vm-sync-rev-1 2026-11-22T07:02:00Z rollback ${SHA} ${SHA2} - -`])).toEqual({
      revisions: [
        { time: '2026-11-22T07:01:03Z', action: 'deploy', from: null, to: SHA, run: '20261122T070102Z-0a1b2c3d', release: '20261122T070102345Z-0123456789ab' },
        { time: '2026-11-22T07:02:00Z', action: 'rollback', from: SHA, to: SHA2, run: null, release: null },
      ],
      skipped: 0,
    });
  });

  test('anything else is skipped and counted: extra or missing fields, bad values, escapes, another format', () => {
    const bad = [
      `${good} extra`,
      good.split(' ').slice(0, 6).join(' '),
      good.replace('deploy', 'delete'),
      good.replace('2026-11-22T07:01:03Z', '2026-13-45T99:99:99Z'),
      good.replace('2026-11-22T07:01:03Z', 'yesterday'),
      good.replace(SHA, SHA.toUpperCase()),
      good.replace(SHA, '\u001b[2J'),
      good.replace('20261122T070102Z-0a1b2c3d', 'run;rm'),
      good.replace('20261122T070102345Z-0123456789ab', '../../etc'),
      good.replace('vm-sync-rev-1', 'vm-sync-rev-2'),
      good.replace(/ /g, '\t'),
      `${good} `,
    ];
    expect(parseRevisions([...bad, '', good])).toEqual({ revisions: [expect.objectContaining({ to: SHA })], skipped: bad.length });
  });
});

/** A journal record with `vms` rows whose ids make it about `size` bytes. */
function record(id: string, size = 300): JournalRecord {
  const pad = 'x'.repeat(Math.max(1, size - 300));
  return {
    v: 1,
    run_id: id,
    started_at: '2026-11-22T07:01:02.000Z',
    ended_at: '2026-11-22T07:01:03.000Z',
    command: 'sync',
    trigger: { kind: 'cli', user: 'deploy', sudo_user: null, host: 'runner-1' },
    commit: SHA,
    dry_run: false,
    shard: null,
    exit_code: 0,
    error: null,
    vms: [{ id: `vm-${pad}`, state: 'behind', action: 'deploy', result: 'success', code: null, rev: SHA }],
  };
}

describe('journal', () => {
  test('appends one line per record, readable back; a damaged line is skipped and counted, the rest still read', async () => {
    const file = journalPath(path.join(dir, 'state'));
    await appendJournal(file, record('r1'));
    fs.appendFileSync(file, '{"v":1,"run_id":"half\n\u001b[2Jgarbage\n{"v":1}\n');
    await appendJournal(file, record('r2'));
    const read = readJournal(file);
    expect(read.records.map((r) => r.run_id)).toEqual(['r1', 'r2']);
    expect(read.skipped).toBe(3);
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect(fs.statSync(path.dirname(file)).mode & 0o777).toBe(0o700);
  });

  test('a line cut short (a run killed mid-write, a full disk) costs only itself: the next record starts on a line of its own', async () => {
    const file = journalPath(path.join(dir, 'state'));
    await appendJournal(file, record('r1'));
    // What a write cut by SIGKILL or ENOSPC leaves: the start of a record, no newline.
    const torn = JSON.stringify(record('torn')).slice(0, 40);
    fs.appendFileSync(file, torn);
    await appendJournal(file, record('r2'));
    // The same with the lock busy (the record is written without it).
    fs.appendFileSync(file, torn);
    fs.symlinkSync(`vm-sync-journal-lock-v1 t ${runnerHostId()} ${process.pid} ${processStart(process.pid)} ${bootId()} ${pidNamespace()}`, `${file}.lock`);
    expect(await appendJournal(file, record('r3'), { lockWaitMs: 50 })).toMatch(/stayed busy/);
    const read = readJournal(file);
    expect(read.records.map((r) => r.run_id)).toEqual(['r1', 'r2', 'r3']);
    expect(read.skipped).toBe(2);
  });

  test('history reads the journal itself, never through a symlink or from a FIFO (no hang), and at most its newest bytes', async () => {
    const file = journalPath(path.join(dir, 'state'));
    for (let i = 1; i <= 5; i++) await appendJournal(file, record(`r${i}`));
    // Only the newest bytes are read: the first, partial, line goes (counted), the newest records stay.
    const line = fs.readFileSync(file, 'utf8').split('\n')[0].length + 1;
    const tail = readJournal(file, { maxBytes: 2 * line + 10 });
    expect(tail.records.map((r) => r.run_id)).toEqual(['r4', 'r5']);
    expect(tail.skipped).toBe(1);
    // A symlink in place of the rotated journal (to a FIFO that would block a read forever, or to another file).
    const fifo = path.join(dir, 'fifo');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    fs.symlinkSync(fifo, rotatedPath(file));
    const started = Date.now();
    expect(() => readJournal(file)).toThrow(/is a symbolic link/);
    fs.rmSync(rotatedPath(file));
    fs.renameSync(fifo, rotatedPath(file));
    expect(() => readJournal(file)).toThrow(/is not a regular file/);
    expect(Date.now() - started).toBeLessThan(5000);
    fs.rmSync(rotatedPath(file));
    const elsewhere = path.join(dir, 'elsewhere.jsonl');
    fs.writeFileSync(elsewhere, `${JSON.stringify(record('planted'))}\n`);
    fs.symlinkSync(elsewhere, rotatedPath(file));
    expect(() => readJournal(file)).toThrow(/is a symbolic link/);
  });

  test('rotates past its size limit, keeping one older file; both are read, oldest first', async () => {
    const file = journalPath(dir);
    const line = Buffer.byteLength(JSON.stringify(record('r1', 1000))) + 1;
    for (let i = 1; i <= 7; i++) await appendJournal(file, record(`r${i}`, 1000), { maxBytes: 3 * line });
    // Three lines a file: r1-r3 were rotated out when r4 came, then replaced by r4-r6 when r7 came.
    expect(readJournal(rotatedPath(file)).records.map((r) => r.run_id)).toEqual(['r4', 'r5', 'r6']);
    expect(fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l).run_id)).toEqual(['r7']);
    expect(readJournal(file).records.map((r) => r.run_id)).toEqual(['r4', 'r5', 'r6', 'r7']);
  });

  test('a lock left by a dead process is broken; a symlinked journal is refused, not written through', async () => {
    const file = journalPath(dir);
    // A holder on this host whose pid does not exist.
    fs.symlinkSync(`vm-sync-journal-lock-v1 t ${runnerHostId()} 999999999 1 ${bootId()} ${pidNamespace()}`, `${file}.lock`);
    expect(await appendJournal(file, record('r1'), { lockWaitMs: 200 })).toBeNull();
    expect(readJournal(file).records).toHaveLength(1);
    expect(fs.existsSync(`${file}.lock`)).toBe(false);
    const elsewhere = path.join(dir, 'elsewhere');
    fs.writeFileSync(elsewhere, '');
    const linked = path.join(dir, 'linked', 'journal.jsonl');
    fs.mkdirSync(path.dirname(linked));
    fs.symlinkSync(elsewhere, linked);
    await expect(appendJournal(linked, record('r2'))).rejects.toThrow(/ELOOP/);
    expect(fs.readFileSync(elsewhere, 'utf8')).toBe('');
  });

  test('a busy lock (a live holder) is waited for, then the record is still written, without rotating', async () => {
    const file = journalPath(dir);
    fs.symlinkSync(`vm-sync-journal-lock-v1 t ${runnerHostId()} ${process.pid} ${processStart(process.pid)} ${bootId()} ${pidNamespace()}`, `${file}.lock`);
    const warning = await appendJournal(file, record('r1'), { lockWaitMs: 100 });
    expect(warning).toMatch(/stayed busy: the record was appended without it/);
    expect(readJournal(file).records.map((r) => r.run_id)).toEqual(['r1']);
  });

  test('concurrent appends from several processes never interleave: every line is a whole record (lines far above PIPE_BUF)', async () => {
    const entry = transpileClosure(path.resolve('src/journal/journal.ts'), path.resolve('src'), path.join(dir, 'js'));
    const file = journalPath(path.join(dir, 'state'));
    const child = path.join(dir, 'child.mjs');
    const base = record('x', 20_000);
    fs.writeFileSync(
      child,
      `import { appendJournal } from ${JSON.stringify(entry)};\nconst [file, who] = process.argv.slice(2);\nconst base = ${JSON.stringify(base)};\nfor (let i = 0; i < 25; i++) await appendJournal(file, { ...base, run_id: who + '-' + i }, { maxBytes: 1 << 30 });\n`,
    );
    const runs = Array.from({ length: 6 }, (_, n) =>
      new Promise<number>((resolve, reject) => {
        const p = spawn(process.execPath, [child, file, `p${n}`], { stdio: ['ignore', 'ignore', 'inherit'] });
        p.on('error', reject);
        p.on('close', (code) => resolve(code ?? -1));
      }),
    );
    expect(await Promise.all(runs)).toEqual([0, 0, 0, 0, 0, 0]);
    const read = readJournal(file);
    expect(read.skipped).toBe(0);
    expect(read.records).toHaveLength(150);
    expect(new Set(read.records.map((r) => r.run_id)).size).toBe(150);
    expect(fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).every((line) => line.length > 20_000)).toBe(true);
  }, 60_000);

  test('records are checked field by field and cleaned; run ids are unique and shaped; the trigger comes from the environment', () => {
    expect(parseJournalLine(JSON.stringify({ ...record('r1'), exit_code: '0' }))).toBeNull();
    expect(parseJournalLine(JSON.stringify({ ...record('r1'), trigger: { kind: 'root' } }))).toBeNull();
    expect(parseJournalLine(JSON.stringify({ ...record('r1'), vms: [{ id: 'a' }] }))).toBeNull();
    expect(parseJournalLine(JSON.stringify({ ...record('r\u001b[2J1') }))?.run_id).toBe('r?[2J1');
    const ids = new Set(Array.from({ length: 200 }, () => newRunId()));
    expect(ids.size).toBe(200);
    for (const id of ids) expect(id).toMatch(RUN_ID);
    expect(triggerFromEnv({ GITHUB_ACTIONS: 'true', GITHUB_RUN_ID: '42', GITHUB_RUN_ATTEMPT: '2', GITHUB_SERVER_URL: 'https://ghe.example', GITHUB_REPOSITORY: 'o/r', GITHUB_ACTOR: 'octocat' })).toEqual({
      kind: 'actions',
      run_url: 'https://ghe.example/o/r/actions/runs/42/attempts/2',
      actor: 'octocat',
      host: os.hostname(),
    });
    expect(triggerFromEnv({ SUDO_USER: 'alice' })).toEqual({ kind: 'cli', user: os.userInfo().username, sudo_user: 'alice', host: os.hostname() });
  });

  test('history renders the journal as a table, the Actions run with its actor and URL', () => {
    const actions = { ...record('20261122T070102Z-0a1b2c3d'), trigger: { kind: 'actions' as const, run_url: 'https://github.com/o/r/actions/runs/7', actor: 'octocat', host: 'runner-1' } };
    const text = renderHistory({ command: 'history', journal: { path: '/srv/.app.vm-sync/journal.jsonl', records: [actions], total: 1, skipped: 0 }, vm: null });
    expect(text).toBe(
      [
        'journal /srv/.app.vm-sync/journal.jsonl: 1 run',
        '',
        'STARTED               RUN                        COMMAND  COMMIT   DRY  SHARD  RESULT  BY',
        '--------------------  -------------------------  -------  -------  ---  -----  ------  ---------------------------------------------------------',
        '2026-11-22 07:01:02Z  20261122T070102Z-0a1b2c3d  sync     0123456  -    -      1/1 ok  octocat via Actions https://github.com/o/r/actions/runs/7',
        '',
      ].join('\n'),
    );
  });
});

describe('excludedPaths (real rsync)', () => {
  /** Writes files (relative path -> content); a Buffer path keeps bytes that are not UTF-8. */
  function tree(files: Array<[string | Buffer, string]>): string {
    const root = path.join(dir, 'export');
    for (const [rel, content] of files) {
      const full = Buffer.concat([Buffer.from(`${root}/`), Buffer.isBuffer(rel) ? rel : Buffer.from(rel)]);
      fs.mkdirSync(full.subarray(0, full.lastIndexOf(0x2f)), { recursive: true });
      fs.writeFileSync(full, content);
    }
    return root;
  }

  test('rsync decides: anchored, **, directory-only, +/- rules and ! (clear) mean what they mean to rsync', async () => {
    const root = tree([
      ['.vscode/settings.json', '{}'],
      ['a/.vscode/x', 'x'],
      ['build/out.js', 'x'],
      ['src/build/in.js', 'x'],
      ['p/__pycache__/m.pyc', 'x'],
      ['logs', 'a file named logs'],
      ['d/logs/x.txt', 'x'],
      ['src/keep.log', 'x'],
      ['src/deep/drop.log', 'x'],
      ['plain.txt', 'x'],
    ]);
    fs.symlinkSync('plain.txt', path.join(root, 'link.log'));
    expect(await excludedPaths(root, ['.vscode', '/build', '**/__pycache__', 'logs/', '+ src/keep.log', '*.log'])).toEqual({
      count: 7,
      paths: ['.vscode/settings.json', 'a/.vscode/x', 'build/out.js', 'd/logs/x.txt', 'link.log', 'p/__pycache__/m.pyc', 'src/deep/drop.log'],
      patterns: ['.vscode', '/build', '**/__pycache__', 'logs/', '+ src/keep.log', '*.log'],
    });
    // `!` clears the rules before it.
    expect((await excludedPaths(root, ['*.log', '!', '/build'])).paths).toEqual(['build/out.js']);
    expect(await excludedPaths(root, [])).toEqual({ count: 0, paths: [], patterns: [] });
  });

  test('names with newlines, backslashes, escapes and bytes that are not UTF-8 are matched exactly and listed cleaned', async () => {
    const root = tree([
      ['x/new\nline.tmp', 'x'],
      ['x/back\\#101slash.tmp', 'x'],
      ['x/esc\u001b[31m.tmp', 'x'],
      [Buffer.from([0x78, 0x2f, 0x62, 0xff, 0x2e, 0x74, 0x6d, 0x70]), 'x'],
      ['x/kept.txt', 'x'],
      ['x/caf\u00e9.txt', 'x'],
    ]);
    const out = await excludedPaths(root, ['*.tmp']);
    expect(out.count).toBe(4);
    expect(out.paths).toEqual(['x/back\\#101slash.tmp', 'x/b\ufffd.tmp', 'x/esc?[31m.tmp', 'x/new line.tmp']);
    expect(unescapeRsyncName('a\\#134#101b\\#012c')).toBe('a\\#101b\nc');
  });

  test('an rsync that refuses a rule is an error with its message, not an empty list', async () => {
    const root = tree([['a.txt', 'x']]);
    await expect(excludedPaths(root, ['- '])).rejects.toThrow(/rsync could not list what rsync_excludes leaves out/);
  });
});
