import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { main, type CliIO } from '../../src/cli.js';
import { colourWanted } from '../../src/report/colour.js';
import { Log } from '../../src/report/log.js';
import { renderTable } from '../../src/report/table.js';
import { failedRow, type RunReport } from '../../src/sync/types.js';
import { VERSION } from '../../src/version.generated.js';

/*
 * The CLI's conventions, in-process (no VM is contacted): help per command,
 * --version, errors for unknown or misplaced options and commands, the
 * config's default, colour, and the log formats.
 */

const pkg = JSON.parse(fs.readFileSync(path.join(process.cwd(), 'package.json'), 'utf8')) as { version: string };

interface Run {
  code: number;
  out: string;
  err: string;
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-cli-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Runs the CLI in `tmp` (no ./vm-sync.yml there unless a test writes one), with an empty environment unless given. */
async function cli(args: string[], io: Partial<CliIO> = {}): Promise<Run> {
  let out = '';
  let err = '';
  const code = await main(args, { out: (t) => (out += t), err: (t) => (err += t), env: {}, cwd: tmp, ...io });
  return { code, out, err };
}

/** The command names `vm-sync --help` lists. */
async function commandNames(): Promise<string[]> {
  const help = (await cli(['--help'])).out;
  const block = help.split('Commands:\n')[1].split('\n\n')[0];
  return block.split('\n').map((line) => line.trim().split(/\s+/)[0]);
}

/** The long options a command's help lists (global ones included). */
function optionsIn(help: string): string[] {
  const block = help.split('Options:\n')[1].split('\n\n')[0];
  return block.split('\n').map((line) => /--([a-z-]+)/.exec(line)?.[1] ?? '').filter(Boolean);
}

const config = (ids: string[]): string => `vms:\n${ids.map((id, i) => `  ${id}: { ip: 192.0.2.${i + 10}, ssh_user: deploy }`).join('\n')}\nrepository:\n  main_repo_path: /srv/app\n`;

describe('help and version', () => {
  test('--version and -V print "vm-sync X.Y.Z" from package.json; the baked version is current', async () => {
    expect(VERSION).toBe(pkg.version);
    for (const args of [['--version'], ['-V'], ['sync', '--version']]) expect(await cli(args)).toEqual({ code: 0, out: `vm-sync ${pkg.version}\n`, err: '' });
  });

  test('vm-sync --help lists every command; without a command, the same on stderr with exit 2', async () => {
    const names = await commandNames();
    expect(names).toEqual(expect.arrayContaining(['sync', 'rollback', 'verify', 'status', 'scan', 'doctor', 'locks', 'unlock', 'inventory', 'report', 'demo', 'help']));
    const help = await cli(['--help']);
    expect(help.code).toBe(0);
    const bare = await cli([]);
    expect(bare).toEqual({ code: 2, out: '', err: help.out });
  });

  test('each command has its own help: usage, what it does, options, exit codes; `help CMD` is the same', async () => {
    const names = await commandNames();
    for (const name of names) {
      const viaFlag = await cli([name, '--help']);
      const viaShort = await cli([name, '-h']);
      const viaHelp = await cli(['help', name]);
      expect({ name, code: viaFlag.code, err: viaFlag.err }).toEqual({ name, code: 0, err: '' });
      if (name !== 'help') expect([viaShort.out, viaHelp.out]).toEqual([viaFlag.out, viaFlag.out]);
      const help = viaFlag.out;
      // Catches a help page that is the general one, or lacks a section.
      expect(help.startsWith(`vm-sync ${name}: `)).toBe(true);
      expect(help).toMatch(new RegExp(`Usage:\\n  vm-sync ${name}`));
      for (const section of ['Options:', 'Exit codes:']) expect(help).toContain(section);
      expect(help).toMatch(/^ {2}2 +usage or config error/m);
      expect(help).toMatch(/^ {2}130 +interrupted \(SIGINT\)/m);
      expect(help).toMatch(/^ {2}143 +terminated \(SIGTERM\)/m);
    }
    expect((await cli(['sync', '--help'])).out).toMatch(/^ {2}3 +secrets found/m);
  });

  test('every option a command lists is accepted by it, and one it does not list is refused with a pointer to its help', async () => {
    const names = (await commandNames()).filter((n) => n !== 'help');
    const listed = new Map<string, string[]>();
    for (const name of names) listed.set(name, optionsIn((await cli([name, '--help'])).out));
    const every = [...new Set([...listed.values()].flat())];
    const missing = path.join(tmp, 'missing.yml');
    for (const name of names) {
      for (const option of every) {
        if (['help', 'version'].includes(option)) continue;
        const value = ['quiet', 'verbose', 'force', 'dry-run', 'no-fetch', 'json', 'keep', 'deep', 'merge'].includes(option) ? [] : option === 'log-format' ? ['text'] : ['x'];
        // demo would start a fleet: only its refusals are run.
        if (name === 'demo' && listed.get(name)?.includes(option)) continue;
        const args = [name, `--${option}`, ...value, ...(option === 'config' || name === 'demo' ? [] : ['--config', missing])];
        const run = await cli(args);
        if (listed.get(name)?.includes(option)) {
          // Accepted: whatever fails next is not about the option.
          expect({ args, refused: /unknown option|only applies|takes no|does not apply/.test(run.err) }).toEqual({ args, refused: false });
        } else {
          expect({ args, code: run.code, hint: run.err.endsWith(`Run vm-sync ${name} --help for its options.\n`), names: run.err.includes(`--${option}`) || run.err.includes(name) }).toEqual({ args, code: 2, hint: true, names: true });
        }
      }
    }
  });
});

describe('unknown options and commands', () => {
  test.each([
    [['sync', '--foo'], "vm-sync: unknown option '--foo' for sync\nRun vm-sync sync --help for its options.\n"],
    [['status', '--bar=1', '--config', 'x'], "vm-sync: unknown option '--bar' for status\nRun vm-sync status --help for its options.\n"],
    [['rollback', '-x'], "vm-sync: unknown option '-x' for rollback\nRun vm-sync rollback --help for its options.\n"],
    [['sync', '--lock-wiat', '5'], "vm-sync: unknown option '--lock-wiat' for sync (did you mean '--lock-wait'?)\nRun vm-sync sync --help for its options.\n"],
    [['verify', '--dep'], "vm-sync: unknown option '--dep' for verify (did you mean '--deep'?)\nRun vm-sync verify --help for its options.\n"],
    [['stauts'], "vm-sync: unknown command 'stauts' (did you mean 'status'?)\nRun vm-sync --help for the commands.\n"],
    [['rollbak', '--vm', 'a'], "vm-sync: unknown command 'rollbak' (did you mean 'rollback'?)\nRun vm-sync --help for the commands.\n"],
    [['launch'], "vm-sync: unknown command 'launch'\nRun vm-sync --help for the commands.\n"],
    [['sync', '--config'], "vm-sync: option '--config' needs a value: -c, --config FILE\nRun vm-sync sync --help for its options.\n"],
    [['sync', '--json=yes'], "vm-sync: option '--json' takes no value\nRun vm-sync sync --help for its options.\n"],
    [['status', '-q', '-v'], 'vm-sync: give -q or -v, not both\nRun vm-sync status --help for its options.\n'],
    [['sync', '--log-format', 'xml'], "vm-sync: --log-format must be text or json, not 'xml'\nRun vm-sync --help for the commands.\n"],
  ])('%j', async (args, err) => {
    expect(await cli(args)).toEqual({ code: 2, out: '', err });
  });

  test('an option of another command names the commands that take it; --json also gets the error document', async () => {
    const run = await cli(['status', '--deep', '--json']);
    expect(run.code).toBe(2);
    expect(run.err).toBe('vm-sync: --deep only applies to verify\nRun vm-sync status --help for its options.\n');
    expect(JSON.parse(run.out)).toEqual({ commit: null, vms: [], error: { code: 'usage', message: '--deep only applies to verify' } });
    expect((await cli(['scan', '--shard', '1/2'])).err).toContain('--shard only applies to sync, rollback, verify and status\n');
    expect((await cli(['rollback', '--commit', 'abc'])).err).toContain('rollback takes --to SHA, not --commit\n');
  });
});

describe('the config file: --config, else $VM_SYNC_CONFIG, else ./vm-sync.yml', () => {
  const ids = async (io: Partial<CliIO>, args: string[] = []): Promise<string[] | Run> => {
    const run = await cli(['inventory', ...args], io);
    return run.code === 0 ? (JSON.parse(run.out) as { vms: Array<{ id: string }> }).vms.map((vm) => vm.id) : run;
  };

  test('each source in its order', async () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'cwd-'));
    fs.writeFileSync(path.join(dir, 'vm-sync.yml'), config(['local01']));
    const fromEnv = path.join(tmp, 'env.yml');
    fs.writeFileSync(fromEnv, config(['env01', 'env02']));
    const given = path.join(tmp, 'given.yml');
    fs.writeFileSync(given, config(['given01']));
    expect(await ids({ cwd: dir })).toEqual(['local01']);
    expect(await ids({ cwd: dir, env: { VM_SYNC_CONFIG: fromEnv } })).toEqual(['env01', 'env02']);
    expect(await ids({ cwd: dir, env: { VM_SYNC_CONFIG: fromEnv } }, ['--config', given])).toEqual(['given01']);
    expect(await ids({ cwd: dir, env: { VM_SYNC_CONFIG: fromEnv } }, ['-c', given])).toEqual(['given01']);
    // A relative $VM_SYNC_CONFIG is relative to the working directory.
    fs.writeFileSync(path.join(dir, 'other.yml'), config(['rel01']));
    expect(await ids({ cwd: dir, env: { VM_SYNC_CONFIG: 'other.yml' } })).toEqual(['rel01']);
  });

  test('none there: exit 2, and the message names all three ways; a $VM_SYNC_CONFIG naming no file is not replaced by ./vm-sync.yml', async () => {
    const empty = fs.mkdtempSync(path.join(tmp, 'empty-'));
    for (const command of ['status', 'sync', 'inventory', 'doctor']) {
      const run = await cli([command], { cwd: empty });
      expect(run.code).toBe(2);
      expect(run.err).toBe(`vm-sync: no config file: pass --config FILE, set VM_SYNC_CONFIG to its path, or create ./vm-sync.yml (there is none in ${empty}).\n`);
    }
    const dir = fs.mkdtempSync(path.join(tmp, 'cwd-'));
    fs.writeFileSync(path.join(dir, 'vm-sync.yml'), config(['local01']));
    const run = (await ids({ cwd: dir, env: { VM_SYNC_CONFIG: '/nonexistent/vm-sync.yml' } })) as Run;
    expect([run.code, run.out]).toEqual([2, '']);
    expect(run.err).toContain('$VM_SYNC_CONFIG is /nonexistent/vm-sync.yml, which does not exist');
    expect(run.err).toContain('./vm-sync.yml is not used while VM_SYNC_CONFIG is set');
  });
});

describe('colour', () => {
  test('only on a terminal; NO_COLOR (any non-empty value) wins; FORCE_COLOR forces it; TERM=dumb has none', () => {
    expect(colourWanted(true, {})).toBe(true);
    expect(colourWanted(false, {})).toBe(false);
    expect(colourWanted(undefined, {})).toBe(false);
    expect(colourWanted(true, { NO_COLOR: '1' })).toBe(false);
    expect(colourWanted(true, { NO_COLOR: 'anything' })).toBe(false);
    expect(colourWanted(true, { NO_COLOR: '' })).toBe(true);
    expect(colourWanted(false, { FORCE_COLOR: '1' })).toBe(true);
    expect(colourWanted(true, { FORCE_COLOR: '0' })).toBe(false);
    expect(colourWanted(true, { NO_COLOR: '1', FORCE_COLOR: '1' })).toBe(false);
    expect(colourWanted(true, { TERM: 'dumb' })).toBe(false);
  });

  test('the error prefix is red on a terminal stderr, plain otherwise', async () => {
    const red = "\u001b[31mvm-sync: \u001b[0munknown option '--foo' for sync\n";
    expect((await cli(['sync', '--foo'], { errIsTTY: true })).err).toContain(red);
    expect((await cli(['sync', '--foo'], { errIsTTY: true, env: { NO_COLOR: '1' } })).err).toContain("vm-sync: unknown option '--foo' for sync\n");
    expect((await cli(['sync', '--foo'], { errIsTTY: true, env: { NO_COLOR: '1' } })).err).not.toContain('\u001b');
    expect((await cli(['sync', '--foo'], { errIsTTY: false })).err).not.toContain('\u001b');
    expect((await cli(['sync', '--foo'], { errIsTTY: false, env: { FORCE_COLOR: '1' } })).err).toContain(red);
  });

  test("the table's RESULT words are coloured by result, without changing the alignment", () => {
    const row = (id: string, result: 'success' | 'failed' | 'skipped' | 'refused') => ({ ...failedRow({ id, host: '192.0.2.1' }), result, error: result === 'success' ? null : { code: 'unreachable' as const, message: 'down' } });
    const report: RunReport = { command: 'status', commit: 'a'.repeat(40), dry_run: false, scan: null, vms: [row('vm01', 'success'), row('vm02', 'failed'), row('vm03', 'skipped'), row('vm04', 'refused')] };
    const ESC = '\u001b';
    const lineOf = (text: string, id: string): string => text.split('\n').find((l) => l.startsWith(`${id} `)) ?? '';
    const plain = renderTable(report);
    const coloured = renderTable(report, { colour: true });
    expect(plain).not.toContain('\u001b');
    expect(coloured.split(ESC).map((part, i) => (i === 0 ? part : part.replace(/^\[\d+m/, ''))).join('')).toBe(plain);
    expect(lineOf(coloured, 'vm01')).toContain(`${ESC}[32msuccess${ESC}[0m`);
    expect(lineOf(coloured, 'vm02')).toContain(`${ESC}[31mfailed (unreachable)${ESC}[0m`);
    expect(lineOf(coloured, 'vm03')).toContain(`${ESC}[33mskipped (unreachable)${ESC}[0m`);
    expect(lineOf(coloured, 'vm04')).toContain(`${ESC}[31mrefused (unreachable)${ESC}[0m`);
    // Only the RESULT cells: no other line has colour.
    expect(coloured.split('\n').filter((l) => l.includes('\u001b')).map((l) => l.split(' ')[0])).toEqual(['vm01', 'vm02', 'vm03', 'vm04']);
  });
});

describe('the log: levels and formats', () => {
  const at = new Date('2026-11-22T07:01:02.345Z');
  const capture = (options: Partial<ConstructorParameters<typeof Log>[1]>): { log: Log; lines: () => string[] } => {
    let text = '';
    const log = new Log((t) => (text += t), { format: 'text', verbosity: 'normal', colour: false, now: () => at, ...options });
    return { log, lines: () => text.split('\n').filter(Boolean) };
  };
  const emitAll = (log: Log): void => {
    const events = log.events();
    events.debug?.('vm01', 'connecting to deploy@192.0.2.1:22', 'prepare');
    events.info('vm01', 'staged\u001b[2J abc', 'transfer');
    events.progress('vm01', 40, '1.2MB/s');
    events.warn?.('vm01', 'unreachable: retry 1/2', 'prepare');
    events.error?.('vm02', 'failed: timeout: slow', 'finish');
    events.info(null, 'deploying', 'prepare');
  };

  test('text: -q keeps warnings and errors, -v adds debug lines; control characters never reach the terminal', () => {
    const normal = capture({});
    emitAll(normal.log);
    expect(normal.lines()).toEqual(['[vm01] staged?[2J abc', '[vm01] transfer 40% at 1.2MB/s', '[vm01] unreachable: retry 1/2', '[vm02] failed: timeout: slow', 'deploying']);
    const quiet = capture({ verbosity: 'quiet' });
    emitAll(quiet.log);
    expect(quiet.lines()).toEqual(['[vm01] unreachable: retry 1/2', '[vm02] failed: timeout: slow']);
    const verbose = capture({ verbosity: 'verbose' });
    emitAll(verbose.log);
    expect(verbose.lines()[0]).toBe('[vm01] debug: connecting to deploy@192.0.2.1:22');
    expect(verbose.lines()).toHaveLength(6);
  });

  test('json: one object per line with time, level, vm, phase, message (progress adds percent)', () => {
    const json = capture({ format: 'json', verbosity: 'verbose' });
    emitAll(json.log);
    json.log.failure('config_invalid', 'invalid config (2 problems):\n  a.yml:1: x\n  a.yml:2: y');
    const parsed = json.lines().map((line) => JSON.parse(line));
    const time = at.toISOString();
    expect(parsed).toEqual([
      { time, level: 'debug', vm: 'vm01', phase: 'prepare', message: 'connecting to deploy@192.0.2.1:22' },
      { time, level: 'info', vm: 'vm01', phase: 'transfer', message: 'staged?[2J abc' },
      { time, level: 'info', vm: 'vm01', phase: 'transfer', message: 'transfer 40% at 1.2MB/s', percent: 40, rate: '1.2MB/s' },
      { time, level: 'warn', vm: 'vm01', phase: 'prepare', message: 'unreachable: retry 1/2' },
      { time, level: 'error', vm: 'vm02', phase: 'finish', message: 'failed: timeout: slow' },
      { time, level: 'info', vm: null, phase: 'prepare', message: 'deploying' },
      { time, level: 'error', vm: null, phase: null, message: 'invalid config (2 problems):; a.yml:1: x; a.yml:2: y', code: 'config_invalid' },
    ]);
    const quiet = capture({ format: 'json', verbosity: 'quiet' });
    emitAll(quiet.log);
    expect(quiet.lines().map((l) => JSON.parse(l).level)).toEqual(['warn', 'error']);
  });

  test('--log-format json through main: a usage error is one JSON line on stderr', async () => {
    const run = await cli(['sync', '--foo', '--log-format', 'json']);
    expect(run.code).toBe(2);
    const lines = run.err.split('\n').filter(Boolean);
    expect(lines).toHaveLength(1);
    expect(JSON.parse(lines[0])).toEqual({ time: expect.stringMatching(/^\d{4}-\d\d-\d\dT/), level: 'error', vm: null, phase: null, message: "unknown option '--foo' for sync; Run vm-sync sync --help for its options." });
  });
});
