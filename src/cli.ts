import * as words from './words.js';
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { ConfigError, jumpHostsOf, loadConfig } from './config/load.js';
import { DEFAULT_DEMO_DIR, demoVm, describeStop, runDemo, setupDemo, stopDemo } from './demo/run-demo.js';
import { renderDoctor, runDoctor } from './doctor/doctor.js';
import { githubAccessFromEnv } from './doctor/github.js';
import { getErrorMessage, VmSyncError } from './errors.js';
import { colourWanted } from './report/colour.js';
import { jsonText, terminalLine } from './report/escape.js';
import { Log, type LogFormat } from './report/log.js';
import { readableStack } from './report/stack.js';
import { renderTable } from './report/table.js';
import { renderSarif } from './scan/findings.js';
import { execute, mergeShards, type Command } from './execute.js';
import { exitCodeFor } from './sync/fleet.js';
import { MAX_SHARDS, parseShard } from './config/shard.js';
import { renderSummary } from './report/summary.js';
import { runLocks } from './sync/locks.js';
import { HISTORY_MAX, runHistory } from './journal/history.js';
import { renderHistory } from './report/history.js';
import { runUnlock } from './sync/unlock.js';
import { scratchRemovalsSettled } from './local/scratch.js';
import type { Config } from './config/types.js';
import type { EngineEvents, RunReport } from './sync/types.js';
import { VERSION } from './version.generated.js';

/*
 * The command line: parse, dispatch through the COMMANDS table, present.
 * The table drives `vm-sync --help`, each `vm-sync CMD --help`, and the
 * errors for an option a command does not take.
 */

/** Where the CLI writes and what it reads of its surroundings: injectable so tests can capture and steer it. */
export interface CliIO {
  out(text: string): void;
  err(text: string): void;
  /** Whether stdout / stderr is a terminal (colour only there). Default: not. */
  outIsTTY?: boolean;
  errIsTTY?: boolean;
  /** `VM_SYNC_CONFIG`, `NO_COLOR`, `FORCE_COLOR`, `TERM`. Default: process.env. */
  env?: NodeJS.ProcessEnv;
  /** Where `./vm-sync.yml` is looked for. Default: process.cwd(). */
  cwd?: string;
}

const processIO: CliIO = {
  out: (t) => process.stdout.write(t),
  err: (t) => process.stderr.write(t),
  outIsTTY: process.stdout.isTTY,
  errIsTTY: process.stderr.isTTY,
};

/** A mistake on the command line: exit 2, with a hint to the help of `command` (or the command list). */
class UsageError extends Error {
  constructor(
    message: string,
    readonly command?: string,
  ) {
    super(message);
  }
}

// ---------------------------------------------------------------------------
// Options

/** One option: how it parses, and its line in `--help`. */
interface OptionSpec {
  type: 'string' | 'boolean';
  short?: string;
  /** The value's name in help (`FILE`). */
  arg?: string;
  help: string;
  /** Added to "--X only applies to ..." when it is given to another command. */
  elsewhere?: string;
}

const OPTIONS = {
  config: { type: 'string', short: 'c', arg: 'FILE', help: 'the config file (default: $VM_SYNC_CONFIG, then ./vm-sync.yml)' },
  commit: { type: 'string', arg: 'SHA', help: 'the commit to use instead of the default' },
  vm: { type: 'string', arg: 'ID,...', help: 'only these VMs (an unknown id is a usage error)' },
  shard: { type: 'string', arg: 'K/N', help: 'only the VMs of shard K of N (a stable hash of each VM id), for a fleet spread over N runner hosts' },
  force: { type: 'boolean', help: 'deploy even when a VM is ahead or up to date, or the commit is not on the default branch' },
  'dry-run': { type: 'boolean', help: 'connect, classify and list what would change on each VM; write nothing' },
  'no-fetch': { type: 'boolean', help: 'use the runner-host clone as it is (no git fetch)' },
  'scan-base': { type: 'string', arg: 'REV', help: 'scan REV..commit with the scan settings of REV, a commit you vouch for', elsewhere: '(scan takes --range BASE..HEAD)' },
  'lock-wait': { type: 'string', arg: 'SECONDS', help: 'wait up to SECONDS for a VM locked by another live run (default 0: fail with locked)' },
  to: { type: 'string', arg: 'SHA', help: 'the release to go back to (default: each VM\'s previous release)', elsewhere: '(sync takes --commit)' },
  github: { type: 'boolean', help: 'also check on GitHub that the deployed branch is protected (token from $GITHUB_TOKEN or $GH_TOKEN, never an argument)' },
  deep: { type: 'boolean', help: 'also compare every file each VM serves with its commit\'s tree (release_drifted when they differ)' },
  range: { type: 'string', arg: 'BASE..HEAD', help: 'scan these commits (default: what the VMs do not have yet, as recorded here)' },
  repo: { type: 'string', arg: 'DIR', help: 'scan this checkout instead of the runner-host clone (never fetched)' },
  sarif: { type: 'string', arg: 'FILE', help: 'also write the secret-scan findings as SARIF (for code scanning)' },
  merge: { type: 'boolean', help: 'merge the --json results of the shards of one deploy (the files or directories given)' },
  shards: { type: 'string', arg: 'N', help: 'how many shards the deploy had (default: what the results say)' },
  summary: { type: 'string', arg: 'FILE', help: 'also write the merged report as a markdown job summary' },
  dir: { type: 'string', arg: 'DIR', help: `the demo's directory (default: ${DEFAULT_DEMO_DIR})` },
  keep: { type: 'boolean', help: 'leave the fleet running after the walk-through' },
  vms: { type: 'string', arg: 'N', help: 'how many VMs (1 to 200, default 3)' },
  limit: { type: 'string', arg: 'N', help: `at most the N newest entries (1 to ${HISTORY_MAX}, default 20)` },
  json: { type: 'boolean', help: 'print one JSON document on stdout instead of the table' },
  quiet: { type: 'boolean', short: 'q', help: 'only the result and errors: no info or progress lines on stderr' },
  verbose: { type: 'boolean', short: 'v', help: 'also debug lines (connection attempts, phases) and stack traces of internal errors' },
  'log-format': { type: 'string', arg: 'text|json', help: 'stderr as text lines (default), or one JSON object per line for log shippers' },
  help: { type: 'boolean', short: 'h', help: 'show this help' },
  version: { type: 'boolean', short: 'V', help: 'print the version' },
} as const satisfies Record<string, OptionSpec>;

type OptionName = keyof typeof OPTIONS;
type Values = { [K in OptionName]?: (typeof OPTIONS)[K]['type'] extends 'string' ? string : boolean };

/** Options every command takes. */
const GLOBAL: readonly OptionName[] = ['quiet', 'verbose', 'log-format', 'help', 'version'];

// ---------------------------------------------------------------------------
// Commands

/** What a command's `run` gets: its options and operands, where to write, the engine's events. */
interface CommandContext {
  values: Values;
  /** The positional arguments after the command's name. */
  operands: string[];
  io: CliIO;
  log: Log;
  events: EngineEvents;
  signal?: AbortSignal;
  /** The config, loaded from --config / $VM_SYNC_CONFIG / ./vm-sync.yml. */
  config(options?: { checkFiles?: boolean }): Config;
  /** Colour the table (stdout is a terminal, NO_COLOR unset). */
  colour: boolean;
}

/** One subcommand: its help, the options it takes, and what it does. */
interface CommandSpec {
  name: string;
  /** One line for `vm-sync --help`. */
  summary: string;
  /** Usage lines (after `vm-sync NAME`); default: made from `options`. */
  usage?: string[];
  /** What it does, for `vm-sync NAME --help`. */
  description: string;
  /** The options it takes besides the global ones: '' keeps the option's own help line. */
  options: Partial<Record<OptionName, string>>;
  /** Positional operands it takes (help text); absent: none. */
  operands?: string;
  /** Options it cannot run without. */
  required?: OptionName[];
  /** What to say when it is given an option it does not take, instead of "only applies to". */
  misuse?: Partial<Record<OptionName, string>>;
  /** Exit codes 0, 1 (and 3) as this command means them; 2, 130 and 143 are added. */
  exits: Array<[number, string]>;
  run(ctx: CommandContext): Promise<number>;
}

const RUN_EXITS: Array<[number, string]> = [
  [0, 'every VM succeeded'],
  [1, 'a VM failed, was refused or did not verify, or the run failed before reaching the VMs'],
];

const COMMANDS: CommandSpec[] = [
  {
    name: 'sync',
    summary: 'deploy a commit to every VM as one atomic release',
    description:
      'Fetches remote/default_branch into the runner-host clone, brings it to the commit (default: the branch tip), exports it, runs the secret scan, and deploys it to every selected VM: each gets a complete new release, then its live path is flipped to it, and .sync_rev is read back. When this runner host recorded every selected VM on the commit already, nothing is exported or scanned.',
    options: {
      config: '',
      commit: 'deploy this commit (default: the tip of remote/default_branch); it must be on that branch unless --force',
      vm: '',
      shard: '',
      force: '',
      'dry-run': '',
      'no-fetch': '',
      'scan-base': '',
      'lock-wait': '',
      sarif: '',
      json: '',
    },
    exits: [...RUN_EXITS, [3, 'secrets found: the deploy was blocked and no VM was sent it']],
    run: (ctx) => engineCommand(ctx, 'sync'),
  },
  {
    name: 'rollback',
    summary: 'flip VMs back to their previous kept release (no transfer, no scan)',
    description: 'Flips each selected VM back to its previous kept release, or to its kept release of --to SHA. Nothing is transferred or scanned: the release was scanned when it was deployed.',
    options: { config: '', vm: '', shard: '', to: '', 'lock-wait': '', json: '' },
    misuse: { commit: 'rollback takes --to SHA, not --commit' },
    exits: RUN_EXITS,
    run: (ctx) => engineCommand(ctx, 'rollback'),
  },
  {
    name: 'verify',
    summary: 'check that every VM serves the commit (--deep: and its files)',
    description:
      "Reads each VM's .sync_rev and requires it to equal the commit (default: the fetched tip of remote/default_branch; with --no-fetch, the tip as last fetched). With --deep, also compares every file each VM serves with its commit's tree. One connection attempt per VM, bounded by sync.connect_timeout_s.",
    options: { config: '', commit: 'the commit every VM must serve (default: the fetched tip of remote/default_branch)', vm: '', shard: '', deep: '', 'no-fetch': '', json: '' },
    exits: [
      [0, 'every VM serves the commit'],
      [1, 'a VM is on another commit, unreachable or drifted, or the run failed'],
    ],
    run: (ctx) => engineCommand(ctx, 'verify'),
  },
  {
    name: 'status',
    summary: 'what each VM serves, against the fetched tip of the default branch',
    description: "Reads each VM's .sync_rev and classifies it (fresh, broken, up-to-date, behind, ahead, diverged) against the fetched tip of remote/default_branch (with --no-fetch, the tip as last fetched). One connection attempt per VM, bounded by sync.connect_timeout_s.",
    options: { config: '', vm: '', shard: '', 'no-fetch': '', json: '' },
    misuse: { commit: 'status compares with the fetched tip of the default branch; use verify --commit' },
    exits: [
      [0, 'every VM was read'],
      [1, 'a VM could not be read, or the run failed'],
    ],
    run: (ctx) => engineCommand(ctx, 'status'),
  },
  {
    name: 'scan',
    summary: 'the secret-scan gate alone (contacts no VM)',
    description: 'Runs the gitleaks gate on what sync would deploy, on --range BASE..HEAD, or on --commit SHA; --repo scans another checkout. Contacts no VM and needs no SSH keys.',
    options: { config: '', range: '', commit: 'scan what deploying this commit would add', repo: '', 'no-fetch': '', sarif: '', json: '' },
    exits: [
      [0, 'no secret found'],
      [1, 'the scan could not run'],
      [3, 'secrets found: a sync of it would be blocked'],
    ],
    run: (ctx) => engineCommand(ctx, 'scan'),
  },
  {
    name: 'doctor',
    summary: 'prove the runner host and every VM are ready for a sync',
    description:
      "Checks the runner host once (the runner's version, known_hosts, gitleaks, the runner-host clone; with --github, the deployed branch's protection) and, for each selected VM, what a sync needs (key file, host key, login, a clean login shell, rsync, the target and what stands there, free space, the lock, .sync_rev), and prints a fix for each failure. Read-only everywhere.",
    options: { config: '', vm: '', github: '', json: '' },
    exits: [
      [0, 'the runner host and every VM are ready'],
      [1, 'the runner host or a VM is not ready (each failure has its fix)'],
    ],
    run: doctorCommand,
  },
  {
    name: 'locks',
    summary: "every VM's deploy lock and who holds it",
    description: "Lists each selected VM's deploy lock: free, or held by whom, since when, and whether it is stale. Read-only: it never breaks a lock.",
    options: { config: '', vm: '', json: '' },
    exits: [
      [0, 'every VM was read'],
      [1, 'a VM could not be read'],
    ],
    run: locksCommand,
  },
  {
    name: 'unlock',
    summary: "break a VM's deploy lock",
    description:
      "Breaks the deploy lock of the named VMs and says whose it was. Without --force only a lock that is certainly abandoned (its deadline passed, its holder is gone from this runner host, or its record has been unreadable for over a minute); with --force any lock, and the holder's steps still running on the VM are killed.",
    options: { config: '', vm: 'the VMs whose lock to break', force: 'break a live holder\'s lock too, killing its steps on the VM', json: '' },
    required: ['vm'],
    exits: [
      [0, 'every lock named is free now'],
      [1, 'a lock was left alone (live holder without --force) or a VM could not be reached'],
    ],
    run: unlockCommand,
  },
  {
    name: 'inventory',
    summary: 'the VMs, key files and known_hosts path, as JSON',
    description: 'Prints the config\'s VMs, jump hosts, key files and known_hosts path as JSON, for scripts (the runner bootstrap provisions keys and pins host keys from it). Contacts nothing.',
    options: { config: '', json: 'accepted (the output is always JSON)' },
    exits: [
      [0, 'printed'],
      [1, 'the inventory could not be made'],
    ],
    run: inventoryCommand,
  },
  {
    name: 'history',
    usage: ['history [--config FILE] [--vm ID] [--limit N] [--json]'],
    summary: 'the runs journaled on this runner host (with --vm: and that VM\'s revisions.log)',
    description:
      "Lists the newest runs this runner host journaled (<state dir>/journal.jsonl: run id, trigger, commit, the result per VM), oldest of them first. With --vm ID, only the runs that included that VM, and also that VM's revisions.log, read over SSH in one attempt: one line per flip, revert or rollback, whichever runner host made it.",
    options: { config: '', vm: 'also this VM\'s revisions.log (one VM)', limit: '', json: '' },
    exits: [
      [0, 'printed'],
      [1, "the VM's revisions.log could not be read"],
    ],
    run: historyCommand,
  },
  {
    name: 'report',
    summary: "merge the shards' --json results into one report",
    usage: ['report --merge FILE_OR_DIR... [--shards N] [--config FILE] [--summary FILE] [--json]'],
    description:
      "Merges the --json results of the shards of one deploy into one report, table and exit code. With a config (--config, $VM_SYNC_CONFIG or ./vm-sync.yml), each VM of a missing shard gets its own failed row; a missing shard fails the report.",
    options: { merge: '', shards: '', config: 'the fleet\'s config: each VM of a missing shard gets a row (optional)', summary: '', json: '' },
    operands: 'FILE_OR_DIR...',
    exits: [
      [0, 'every shard reported and every VM succeeded'],
      [1, 'a shard is missing or failed, or a VM failed'],
      [3, 'a shard found secrets'],
    ],
    run: reportCommand,
  },
  {
    name: 'demo',
    summary: 'three loopback sshd VMs, a sample repo, three syncs',
    usage: ['demo [--dir DIR] [--keep]', 'demo up [--dir DIR] [--vms N] [--repo PATH]', 'demo stop [--dir DIR]', 'demo vm stop|start ID [--dir DIR]'],
    description:
      'The walk-through: starts loopback sshd "VMs" and a sample repository, deploys, stops one VM and deploys again, then lets it catch up. `demo up` leaves a fleet and its config running for experiments (it stops a fleet an earlier `demo up` left in DIR first); `demo stop` stops it and says what was running and what it stopped; `demo vm stop|start ID` takes one VM down or brings it back (same port and host key). The demo only ever deletes what it made: a DIR it did not create is refused (demo_dir_refused, exit 2).',
    options: { dir: '', keep: 'leave the fleet running after the walk-through (demo)', vms: 'how many VMs (demo up; 1 to 200, default 3)', repo: "deploy this repository's checked-out branch instead of the sample (demo up)" },
    operands: '[up | stop | vm stop|start ID]',
    exits: [
      [0, 'the walk-through went as described'],
      [1, 'it did not'],
    ],
    run: demoCommand,
  },
  {
    name: 'help',
    summary: 'help on a command (vm-sync help sync)',
    usage: ['help [COMMAND]'],
    description: 'Prints the list of commands, or the help of one command (the same as vm-sync COMMAND --help).',
    options: {},
    operands: '[COMMAND]',
    exits: [[0, 'printed']],
    run: async (ctx) => {
      if (ctx.operands.length > 1) throw new UsageError(`help takes one command, not '${ctx.operands.join(' ')}'`, 'help');
      const name = ctx.operands[0];
      if (name === undefined) ctx.io.out(generalHelp());
      else ctx.io.out(commandHelp(commandNamed(name)));
      return 0;
    },
  },
];

/** The command called `name`, or a usage error that suggests the closest one. */
function commandNamed(name: string): CommandSpec {
  const spec = COMMANDS.find((c) => c.name === name);
  if (spec) return spec;
  const near = closest(name, COMMANDS.map((c) => c.name));
  throw new UsageError(`unknown command '${terminalLine(name, 80)}'${near ? ` (did you mean '${near}'?)` : ''}`);
}

/**
 * The candidate `word` is most likely a typo of: within one edit per three
 * letters (at least one), or one it begins; null unless exactly one is closest.
 */
function closest(word: string, candidates: readonly string[]): string | null {
  const most = Math.max(1, Math.floor(word.length / 3));
  const scored = candidates.map((c) => ({ c, d: c.startsWith(word) && word.length >= 3 ? 1 : distance(word, c) })).filter((s) => s.d <= most);
  scored.sort((a, b) => a.d - b.d);
  return scored.length > 0 && (scored.length === 1 || scored[0].d < scored[1].d) ? scored[0].c : null;
}

/** Levenshtein distance (the words are short). */
function distance(a: string, b: string): number {
  let row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const next = [i];
    for (let j = 1; j <= b.length; j++) next[j] = Math.min(row[j] + 1, next[j - 1] + 1, row[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    row = next;
  }
  return row[b.length];
}

// ---------------------------------------------------------------------------
// Help

function optionLabel(name: OptionName): string {
  const spec: OptionSpec = OPTIONS[name];
  return `${spec.short ? `-${spec.short}, ` : ''}--${name}${spec.arg ? ` ${spec.arg}` : ''}`;
}

function usageLines(spec: CommandSpec): string[] {
  if (spec.usage) return spec.usage;
  const parts = (Object.keys(spec.options) as OptionName[]).map((name) => {
    const option: OptionSpec = OPTIONS[name];
    const label = `--${name}${option.arg ? ` ${option.arg}` : ''}`;
    return spec.required?.includes(name) ? label : `[${label}]`;
  });
  return [[spec.name, ...(spec.operands ? [spec.operands] : []), ...parts].join(' ')];
}

function table(rows: Array<[string, string]>, indent = '  '): string {
  const width = Math.max(...rows.map(([left]) => left.length));
  return rows.map(([left, right]) => `${indent}${left.padEnd(width)}  ${right}`.trimEnd()).join('\n');
}

/** `vm-sync --help`: the commands, the conventions every command follows. */
function generalHelp(): string {
  return `vm-sync ${VERSION}: deploy a git repository to a fleet of VMs over rsync/SSH

Usage:
  vm-sync COMMAND [OPTIONS]
  vm-sync COMMAND --help      the options and exit codes of COMMAND (or: vm-sync help COMMAND)

Commands:
${table(COMMANDS.map((c) => [c.name, c.summary]))}

Options every command takes:
${table(GLOBAL.map((name) => [optionLabel(name), OPTIONS[name].help]))}

The config is --config FILE, else $VM_SYNC_CONFIG, else ./vm-sync.yml.
Colour only on a terminal; NO_COLOR (any value) turns it off, FORCE_COLOR on.

Exit codes: 0 success; 1 a VM failed or the run failed; 2 usage or config error;
3 secrets found (the deploy was blocked); 130 interrupted (SIGINT); 143 terminated (SIGTERM).
`;
}

/** `vm-sync NAME --help`: usage, what it does, its options, its exit codes. */
function commandHelp(spec: CommandSpec): string {
  const options = [
    ...(Object.keys(spec.options) as OptionName[]).map((name): [string, string] => [optionLabel(name), spec.options[name] || OPTIONS[name].help]),
    ...GLOBAL.filter((name) => name !== 'version').map((name): [string, string] => [optionLabel(name), OPTIONS[name].help]),
  ];
  const exits: Array<[string, string]> = [
    ...spec.exits.filter(([code]) => code < 2),
    [2, 'usage or config error: nothing was touched'] as [number, string],
    ...spec.exits.filter(([code]) => code > 2),
    [130, 'interrupted (SIGINT), after a clean stop'] as [number, string],
    [143, 'terminated (SIGTERM), after a clean stop'] as [number, string],
  ].map(([code, text]) => [String(code), text]);
  return `vm-sync ${spec.name}: ${spec.summary}

Usage:
${usageLines(spec).map((u) => `  vm-sync ${u}`).join('\n')}

${wrap(spec.description, 78)}

Options:
${table(options)}

Exit codes:
${table(exits)}
`;
}

function wrap(text: string, width: number): string {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(/\s+/)) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  if (line) lines.push(line);
  return lines.join('\n');
}

// ---------------------------------------------------------------------------
// Parsing

const PARSE_OPTIONS = Object.fromEntries(
  Object.entries(OPTIONS).map(([name, spec]: [string, OptionSpec]) => [name, { type: spec.type, ...(spec.short ? { short: spec.short } : {}) }]),
) as { [K in OptionName]: { type: (typeof OPTIONS)[K]['type']; short?: string } };

interface Parsed {
  values: Values;
  command: string | undefined;
  operands: string[];
  /** Each option as written (`--foo`, `-x`), with its problem if any, in order. */
  problems: Array<{ raw: string; name: string; problem: 'unknown' | 'needs-value' | 'takes-no-value' }>;
  /** The options given, by name. */
  given: OptionName[];
}

/**
 * Reads argv leniently (an unknown option is noted, not thrown), so the
 * error can name the command it was given to and what that command takes.
 */
function parse(argv: string[]): Parsed {
  const { values, positionals, tokens } = parseArgs({ args: argv, options: PARSE_OPTIONS, allowPositionals: true, strict: false, tokens: true });
  const problems: Parsed['problems'] = [];
  const given = new Set<OptionName>();
  for (const token of tokens) {
    if (token.kind !== 'option') continue;
    const spec = (OPTIONS as Record<string, OptionSpec>)[token.name];
    if (!spec) problems.push({ raw: token.rawName, name: token.name, problem: 'unknown' });
    else if (spec.type === 'string' && (token.value === undefined || (!token.inlineValue && token.value.startsWith('-') && token.value !== '-'))) {
      problems.push({ raw: token.rawName, name: token.name, problem: 'needs-value' });
    } else if (spec.type === 'boolean' && token.inlineValue) problems.push({ raw: token.rawName, name: token.name, problem: 'takes-no-value' });
    else given.add(token.name as OptionName);
  }
  const [command, ...operands] = positionals;
  return { values: values as Values, command, operands, problems, given: [...given] };
}

/** The usage error for `problem`, for `command` (which is known). */
function optionProblem(problem: Parsed['problems'][number], spec: CommandSpec | null): UsageError {
  const raw = terminalLine(problem.raw, 80);
  const where = spec ? ` for ${spec.name}` : '';
  if (problem.problem === 'unknown') {
    const allowed = spec ? [...Object.keys(spec.options), ...GLOBAL] : Object.keys(OPTIONS);
    const near = problem.raw.startsWith('--') ? closest(problem.name, allowed) : null;
    return new UsageError(`unknown option '${raw}'${where}${near ? ` (did you mean '--${near}'?)` : ''}`, spec?.name);
  }
  const option = problem.name as OptionName;
  if (problem.problem === 'needs-value') return new UsageError(`option '${raw}' needs a value: ${optionLabel(option)}`, spec?.name);
  return new UsageError(`option '${raw}' takes no value`, spec?.name);
}

/** "--X only applies to a, b and c", in table order (or the command's own word for it). */
function notApplicable(option: OptionName, spec: CommandSpec): UsageError {
  const own = spec.misuse?.[option];
  if (own) return new UsageError(own, spec.name);
  const takers = COMMANDS.filter((c) => option in c.options).map((c) => c.name);
  const list = takers.length > 1 ? `${takers.slice(0, -1).join(', ')} and ${takers[takers.length - 1]}` : (takers[0] ?? 'no command');
  const extra: string | undefined = (OPTIONS[option] as OptionSpec).elsewhere;
  return new UsageError(`--${option} only applies to ${list}${extra ? ` ${extra}` : ''}`, spec.name);
}

/**
 * The config file: `--config`, else `$VM_SYNC_CONFIG`, else `./vm-sync.yml`.
 * A `$VM_SYNC_CONFIG` that names no file is an error, never a silent fall
 * back to another fleet's config.
 */
export function configPathFor(given: string | undefined, env: NodeJS.ProcessEnv, cwd: string): string {
  if (given !== undefined) return given;
  const fromEnv = env.VM_SYNC_CONFIG;
  if (fromEnv) {
    if (!fs.existsSync(path.resolve(cwd, fromEnv))) {
      throw new VmSyncError(
        'config_invalid',
        `no config file: $VM_SYNC_CONFIG is ${terminalLine(fromEnv)}, which does not exist (./vm-sync.yml is not used while VM_SYNC_CONFIG is set). Fix VM_SYNC_CONFIG, or pass --config FILE.`,
      );
    }
    return path.resolve(cwd, fromEnv);
  }
  const local = path.join(cwd, 'vm-sync.yml');
  if (fs.existsSync(local)) return local;
  throw new VmSyncError('config_invalid', `no config file: pass --config FILE, set VM_SYNC_CONFIG to its path, or create ./vm-sync.yml (there is none in ${terminalLine(cwd)}).`);
}

// ---------------------------------------------------------------------------
// Entry

/**
 * Runs the CLI with `argv` (without `node` and the script) and returns the exit
 * code. Every failure becomes a message and an exit code; nothing throws out.
 * When `signal` aborts (its reason names the signal), the run stops cleanly.
 */
export async function main(argv: string[], io: CliIO = processIO, signal?: AbortSignal): Promise<number> {
  const env = io.env ?? process.env;
  const parsed = parse(argv);
  const { values } = parsed;
  const json = values.json === true;
  const format: LogFormat = values['log-format'] === 'json' ? 'json' : 'text';
  const log = new Log(io.err, {
    format,
    verbosity: values.quiet === true ? 'quiet' : values.verbose === true ? 'verbose' : 'normal',
    colour: format === 'text' && colourWanted(io.errIsTTY, env),
    stack: readableStack,
  });
  const onAbort = (): void => {
    const name = typeof signal?.reason === 'string' ? signal.reason : 'interrupted';
    log.note('warn', `vm-sync: ${name}: stopping; every VM stays on its last complete release (again to force)`);
  };
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    if (values['log-format'] !== undefined && values['log-format'] !== 'text' && values['log-format'] !== 'json') {
      throw new UsageError(`--log-format must be text or json, not '${terminalLine(String(values['log-format']), 80)}'`);
    }
    if (values.version === true && parsed.problems.length === 0) {
      io.out(`vm-sync ${VERSION}\n`);
      return 0;
    }
    const spec = parsed.command === undefined ? null : commandNamed(parsed.command);
    if (values.help === true) {
      io.out(spec ? commandHelp(spec) : generalHelp());
      return 0;
    }
    if (!spec) {
      if (parsed.problems.length > 0) throw optionProblem(parsed.problems[0], null);
      io.err(generalHelp());
      return 2;
    }
    if (parsed.problems.length > 0) throw optionProblem(parsed.problems[0], spec);
    for (const option of parsed.given) if (!GLOBAL.includes(option) && !(option in spec.options)) throw notApplicable(option, spec);
    if (values.quiet && values.verbose) throw new UsageError('give -q or -v, not both', spec.name);
    if (parsed.operands.length > 0 && !spec.operands) throw new UsageError(`unexpected argument '${terminalLine(parsed.operands[0], 80)}'`, spec.name);
    for (const option of spec.required ?? []) if (values[option] === undefined) throw new UsageError(`${spec.name} needs ${optionLabel(option)}`, spec.name);

    const cwd = io.cwd ?? process.cwd();
    let configPath: string | null = null;
    const ctx: CommandContext = {
      values,
      operands: parsed.operands,
      io,
      log,
      events: log.events(),
      signal,
      colour: !json && colourWanted(io.outIsTTY, env),
      config: (options = {}) => {
        configPath ??= configPathFor(values.config, env, cwd);
        log.line('debug', null, `config: ${configPath}${values.config !== undefined ? '' : env.VM_SYNC_CONFIG ? ' (from $VM_SYNC_CONFIG)' : ' (./vm-sync.yml)'}`);
        return loadConfig(configPath, options);
      },
    };
    return await spec.run(ctx);
  } catch (error) {
    const usage = error instanceof UsageError || error instanceof ConfigError || (error instanceof VmSyncError && (error.code === 'config_invalid' || error.code === 'demo_dir_refused'));
    const code = error instanceof VmSyncError ? error.code : usage ? 'usage' : 'internal';
    const message = getErrorMessage(error);
    if (json) io.out(`${jsonText({ commit: null, vms: [], error: { code, message } }, 2)}\n`);
    if ((code === 'internal' || code === 'internal_error') && error instanceof Error && error.stack) {
      // -v: where the defect is, in the sources' terms.
      log.line('debug', null, `internal error: ${error.stack}`);
    }
    const hints: string[] = [];
    if (error instanceof UsageError) hints.push(error.command ? `Run vm-sync ${error.command} --help for its options.` : 'Run vm-sync --help for the commands.');
    else if (code === 'internal' && !log.enabled('debug')) hints.push('This is a defect in vm-sync: run again with -v for its stack trace, and report it.');
    log.failure(code === 'usage' || code === 'config_invalid' ? null : code, message, hints);
    return usage ? 2 : 1;
  } finally {
    signal?.removeEventListener('abort', onAbort);
    // After the output: scratch directories removed in the background are gone when main returns.
    await scratchRemovalsSettled();
  }
}

// ---------------------------------------------------------------------------
// The commands

/** How known_hosts names a host: `host` on port 22, `[host]:port` otherwise. */
function knownHostsName(host: { host: string; port: number }): string {
  return host.port === 22 ? host.host : `[${host.host}]:${host.port}`;
}

function vmList(values: Values): string[] | undefined {
  return values.vm?.split(',').map((s) => s.trim()).filter(Boolean);
}

/** sync, rollback, verify, status, scan: one engine command, then the table or the JSON document. */
async function engineCommand(ctx: CommandContext, name: Command['name']): Promise<number> {
  const { values, io, events, signal } = ctx;
  const shard = values.shard === undefined ? undefined : parseShard(values.shard, '--shard');
  const lockWait = values['lock-wait'] === undefined ? 0 : Number(values['lock-wait']);
  if (!Number.isInteger(lockWait) || lockWait < 0 || lockWait > 86400) throw new UsageError(`--lock-wait must be a whole number of seconds from 0 to 86400, not '${values['lock-wait']}'`, name);
  if (values.to !== undefined && !/^[0-9A-Za-z._/-]{1,200}$/.test(values.to)) throw new UsageError(`--to must be a commit hash or a ref, not '${terminalLine(values.to, 80)}'`, name);
  if (values.range && values.commit) throw new UsageError('give --range or --commit, not both', name);
  // scan never reaches a VM, so it does not need (or check) the SSH keys.
  const config = ctx.config({ checkFiles: name !== 'scan' });
  const vms = vmList(values);
  const options = { commit: values.commit, vms, shard, events, signal };
  let request: Command;
  if (name === 'sync') {
    request = { name, options: { ...options, force: values.force === true, dryRun: values['dry-run'] === true, fetch: values['no-fetch'] !== true, scanBase: values['scan-base'], lockWaitS: lockWait } };
  } else if (name === 'rollback') {
    request = { name, options: { vms, shard, events, signal, to: values.to, lockWaitS: lockWait } };
  } else if (name === 'scan') {
    request = { name, options: { ...options, range: values.range, repoDir: values.repo, fetch: values['no-fetch'] !== true } };
  } else if (name === 'verify') {
    request = { name, options: { ...options, deep: values.deep === true, fetch: values['no-fetch'] !== true } };
  } else {
    request = { name, options: { ...options, fetch: values['no-fetch'] !== true } };
  }
  const report: RunReport = await execute(config, request);
  if (values.sarif) fs.writeFileSync(values.sarif, renderSarif(report.scan?.findings ?? []));
  io.out(values.json ? `${jsonText(report, 2)}\n` : renderTable(report, { colour: ctx.colour }));
  if (report.scan?.blocked) {
    const what = name !== 'sync' ? 'a sync of it would be blocked' : report.vms.length === 0 ? 'the deploy was blocked and no VM was contacted' : 'the deploy was blocked and no VM was sent it';
    ctx.log.failure('secrets_found', `${words.count(report.scan.findings.length, 'possible secret')} in what would be deployed; ${what}.`);
  }
  return exitCodeFor(report);
}

async function doctorCommand(ctx: CommandContext): Promise<number> {
  // doctor reports a missing key or known_hosts per VM, with the fix.
  const config = ctx.config({ checkFiles: false });
  // The token comes from the environment only: an argument would show in the process list.
  const doctor = await runDoctor(config, { vms: vmList(ctx.values), github: ctx.values.github === true ? githubAccessFromEnv(process.env) : undefined });
  ctx.io.out(ctx.values.json ? `${jsonText(doctor, 2)}\n` : renderDoctor(doctor));
  return doctor.ready ? 0 : 1;
}

/** `vm-sync history`: the journal (and a VM's revisions.log) as a table or a JSON document. */
async function historyCommand(ctx: CommandContext): Promise<number> {
  const vms = vmList(ctx.values) ?? [];
  if (vms.length > 1) throw new UsageError('history takes one --vm ID', 'history');
  const raw = ctx.values.limit;
  const limit = raw === undefined ? undefined : Number(raw);
  if (limit !== undefined && !(Number.isInteger(limit) && limit >= 1 && limit <= HISTORY_MAX)) throw new UsageError(`--limit must be a whole number from 1 to ${HISTORY_MAX}, not '${terminalLine(String(raw), 80)}'`, 'history');
  const config = ctx.config({ checkFiles: false });
  const report = await runHistory(config, { vm: vms[0], limit });
  ctx.io.out(ctx.values.json ? `${jsonText(report, 2)}\n` : renderHistory(report));
  return report.vm?.error ? 1 : 0;
}

async function locksCommand(ctx: CommandContext): Promise<number> {
  const config = ctx.config({ checkFiles: false });
  const rows = await runLocks(config, { vms: vmList(ctx.values) });
  if (ctx.values.json) ctx.io.out(`${jsonText({ command: 'locks', vms: rows }, 2)}\n`);
  else for (const row of rows) ctx.io.out(`${terminalLine(`${row.id}: ${row.detail}`)}\n`);
  return rows.every((row) => row.error === null) ? 0 : 1;
}

async function unlockCommand(ctx: CommandContext): Promise<number> {
  const vms = vmList(ctx.values) ?? [];
  if (vms.length === 0) throw new UsageError('unlock needs --vm ID[,ID...]: the VMs whose lock to break', 'unlock');
  const config = ctx.config();
  const rows = await runUnlock(config, { vms, force: ctx.values.force === true });
  if (ctx.values.json) ctx.io.out(`${jsonText({ command: 'unlock', vms: rows }, 2)}\n`);
  else for (const row of rows) ctx.io.out(`${terminalLine(`${row.id}: ${row.detail}`)}\n`);
  return rows.every((row) => row.outcome === 'not-locked' || row.outcome === 'broken') ? 0 : 1;
}

async function inventoryCommand(ctx: CommandContext): Promise<number> {
  const config = ctx.config({ checkFiles: false });
  // For scripts (the runner bootstrap): everything needed to provision keys and pin host keys.
  const inventory = {
    key_storage_path: config.keyStoragePath,
    known_hosts: config.knownHostsPath,
    vms: config.vms.map((vm) => ({ id: vm.id, host: vm.host, port: vm.port, user: vm.user, key_path: vm.keyPath, known_hosts_name: knownHostsName(vm), jump: vm.jump?.name ?? null })),
    jump_hosts: jumpHostsOf(config).map((jump) => ({
      name: jump.name,
      host: jump.host,
      port: jump.port,
      user: jump.user,
      key_path: jump.keyPath,
      known_hosts_name: knownHostsName(jump),
      max_sessions: jump.maxSessions,
    })),
  };
  ctx.io.out(`${jsonText(inventory, 2)}\n`);
  return 0;
}

/**
 * `vm-sync report --merge PATH...`: one report from the results of every
 * shard of a deploy. With a config, each VM of a missing shard gets its own
 * failed row; `--shards N` says how many shards there were (else the results say).
 */
async function reportCommand(ctx: CommandContext): Promise<number> {
  const { values, operands } = ctx;
  if (!values.merge) throw new UsageError('report needs --merge FILE_OR_DIR... (the --json results of each shard)', 'report');
  if (operands.length === 0) throw new UsageError('report --merge needs at least one results file or directory', 'report');
  const expected = values.shards === undefined ? undefined : Number(values.shards);
  if (expected !== undefined && !(Number.isInteger(expected) && expected >= 1 && expected <= MAX_SHARDS)) throw new UsageError(`--shards must be a whole number from 1 to ${MAX_SHARDS}, not '${terminalLine(values.shards ?? '', 80)}'`, 'report');
  // The config is optional here: without one (none given, none by default), a missing shard is one row.
  const env = ctx.io.env ?? process.env;
  const hasDefault = values.config !== undefined || Boolean(env.VM_SYNC_CONFIG) || fs.existsSync(path.join(ctx.io.cwd ?? process.cwd(), 'vm-sync.yml'));
  const config = hasDefault ? ctx.config({ checkFiles: false }) : null;
  const report = mergeShards(config, operands, { expected });
  if (values.summary) fs.writeFileSync(values.summary, renderSummary(report, { runUrl: '', failure: null }));
  ctx.io.out(values.json ? `${jsonText(report, 2)}\n` : renderTable(report, { colour: ctx.colour }));
  return exitCodeFor(report);
}

async function demoCommand(ctx: CommandContext): Promise<number> {
  const { values, operands, io, log } = ctx;
  const [sub, ...rest] = operands;
  const dir = values.dir ?? DEFAULT_DEMO_DIR;
  if (sub !== undefined && sub !== 'up' && sub !== 'stop' && sub !== 'vm') throw new UsageError(`unknown demo command '${terminalLine(sub, 80)}' (up, stop, vm)`, 'demo');
  if (sub === 'vm') {
    const [action, id, extra] = rest;
    if ((action !== 'stop' && action !== 'start') || !id || extra !== undefined) throw new UsageError('usage: vm-sync demo vm stop|start ID [--dir DIR]', 'demo');
    if (values.keep || values.vms !== undefined || values.repo !== undefined) throw new UsageError('demo vm takes only --dir', 'demo');
    const result = await demoVm(dir, action, id);
    io.out(`${terminalLine(result.message)}\n`);
    return result.ok ? 0 : 1;
  }
  if (rest.length > 0) throw new UsageError(`unexpected argument '${terminalLine(rest[0], 80)}'`, 'demo');
  if (values.repo !== undefined && sub !== 'up') throw new UsageError('--repo only applies to demo up (and scan)', 'demo');
  if (values.keep && sub !== undefined) throw new UsageError(`--keep only applies to demo (the walk-through), not demo ${sub}`, 'demo');
  if (values.vms !== undefined && sub !== 'up') throw new UsageError('--vms only applies to demo up', 'demo');
  if (sub === 'up') {
    const count = Number(values.vms ?? '3');
    if (!Number.isInteger(count) || count < 1 || count > 200) throw new UsageError('--vms must be a whole number from 1 to 200', 'demo');
    const demo = await setupDemo(dir, count, { repo: values.repo });
    if (demo.warning) log.note('warn', `WARNING: ${demo.warning}`);
    if (demo.previous?.vms.some((vm) => vm.running > 0)) log.note('info', terminalLine(`stopped the fleet an earlier demo up left running: ${describeStop(demo.previous)}`));
    if (demo.kept.length) log.note('info', terminalLine(`left alone in ${demo.fleet.dir} (not the demo's): ${demo.kept.join(', ')}`));
    io.out(`${terminalLine(`started ${words.count(count, 'loopback VM')} under ${demo.fleet.dir}${values.repo ? `, deploying ${values.repo}` : ''}`)}\n${terminalLine(`config: ${demo.configPath}`)}\n${terminalLine(`stop with: vm-sync demo stop --dir ${dir}`)}\n`);
    return 0;
  }
  if (sub === 'stop') {
    const stop = stopDemo(dir);
    io.out(`${terminalLine(`${describeStop(stop)} (${stop.dir})`)}\n`);
    return stop.vms.every((vm) => vm.problems.length === 0) ? 0 : 1;
  }
  return await runDemo(dir, values.keep === true, ctx.events, io.out);
}

// ---------------------------------------------------------------------------
// Program

/** The exit code of a run stopped by `signal`: 128 + its number, as shells report it. */
const SIGNAL_EXIT: Record<'SIGINT' | 'SIGTERM', number> = { SIGINT: 130, SIGTERM: 143 };

/**
 * Entry point when run as a program: Ctrl-C / SIGTERM stop the run cleanly
 * (every VM ends on a complete release), then the exit code says which signal
 * it was (130, 143), whatever the run itself returned. A second signal, or a
 * signal after the run finished, exits at once.
 */
export async function runCli(): Promise<void> {
  const controller = new AbortController();
  let received: 'SIGINT' | 'SIGTERM' | null = null;
  let finished = false;
  const onSignal = (name: 'SIGINT' | 'SIGTERM'): void => {
    // A second signal, or one after the run finished (nothing left to stop cleanly): exit at once.
    if (received || finished) process.exit(SIGNAL_EXIT[name]);
    received = name;
    controller.abort(name);
  };
  process.on('SIGINT', () => onSignal('SIGINT'));
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  // If the event loop ever drains while a step still awaits (a bug), Node would
  // exit 0 silently; a deploy tool must never report success it did not reach.
  process.on('exit', () => {
    if (!finished) {
      process.stderr.write('vm-sync: internal error: stopped before the run finished\n');
      process.exitCode = 70;
    }
  });
  const code = await main(process.argv.slice(2), processIO, controller.signal);
  finished = true;
  process.exitCode = received ? SIGNAL_EXIT[received] : code;
}
