/*
 * The one wording of "what to do next" per entry point. The engine's messages
 * tell the user to set an option or run a command; the CLI spells that
 * `--force` or `vm-sync sync --force --vm vm01`, the Action `force: true` or
 * `command: sync with force: true and vms: vm01`. A message built here never
 * shows an Action user a CLI flag: every option and command an engine message
 * names goes through this module.
 */

/** Who is running the engine: the `vm-sync` CLI, or the GitHub Action. */
export type EntryPoint = 'cli' | 'action';

let current: EntryPoint = 'cli';

/**
 * Selects the wording for this process (the Action's `run()` sets `action`
 * and restores the previous one when it returns); returns the previous one.
 */
export function setEntryPoint(entry: EntryPoint): EntryPoint {
  const previous = current;
  current = entry;
  return previous;
}

/** An option a message may tell the user to set, by its CLI name. */
export type OptionName = 'force' | 'commit' | 'vm' | 'lock-wait' | 'deep' | 'to' | 'shard' | 'dry-run';

/** The Action's input for each option, and its value when the option is a switch. */
const ACTION_INPUT: Record<OptionName, { input: string; flag: boolean }> = {
  force: { input: 'force', flag: true },
  commit: { input: 'commit', flag: false },
  vm: { input: 'vms', flag: false },
  'lock-wait': { input: 'lock-wait', flag: false },
  deep: { input: 'deep', flag: true },
  to: { input: 'to', flag: false },
  shard: { input: 'shard', flag: false },
  'dry-run': { input: 'dry-run', flag: true },
};

/**
 * How to set one option: `--force`, `--vm vm01` (CLI); `input force: true`,
 * `input vms: vm01` (Action). `value` is what the option takes (none for a switch).
 */
export function option(name: OptionName, value?: string): string {
  if (current === 'cli') return value === undefined ? `--${name}` : `--${name} ${value}`;
  return `input ${actionInput(name, value)}`;
}

/** One option as the Action's input and value: `force: true`, `vms: vm01`. */
function actionInput(name: OptionName, value?: string): string {
  const { input, flag } = ACTION_INPUT[name];
  return `${input}: ${flag ? 'true' : (value ?? input.toUpperCase())}`;
}

/**
 * A command of both entry points, with the options to give it (`[name,
 * value]`, value absent for a switch): `vm-sync sync --force --vm vm01` (CLI),
 * `the Action with command: sync, force: true and vms: vm01` (Action).
 */
export function invocation(command: 'sync' | 'verify' | 'status' | 'rollback' | 'scan', options: Array<[OptionName, string?]> = []): string {
  if (current === 'cli') return ['vm-sync', command, ...options.map(([name, value]) => option(name, value))].join(' ');
  const inputs = [`command: ${command}`, ...options.map(([name, value]) => actionInput(name, value))];
  const last = inputs.pop() as string;
  return `the Action with ${inputs.length === 0 ? last : `${inputs.join(', ')} and ${last}`}`;
}

/**
 * A command only the CLI has (`unlock`, `doctor`, `locks`): as it is for the
 * CLI; for the Action, the same command line, said to be typed in a shell on
 * the runner host (the Action cannot run it).
 */
export function cliCommand(commandLine: string): string {
  return current === 'cli' ? commandLine : `\`${commandLine}\` in a shell on the runner host`;
}

/**
 * The advice after a failed fetch: the network and the credentials, and for
 * the CLI, the way to go on with the clone as last fetched.
 */
export function fetchAdvice(): string {
  return current === 'cli'
    ? "Check the network and the runner's credentials for the remote, or run with --no-fetch to use the clone as last fetched."
    : "Check the network and the runner's credentials for the remote (the github-token input).";
}

/** How to let a deploy fetch again, for a commit missing from a clone that was not fetched. */
export function noFetchAdvice(): string {
  return current === 'cli' ? 'drop --no-fetch so vm-sync fetches it' : 'let the run fetch it';
}
