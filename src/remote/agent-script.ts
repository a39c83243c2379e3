import { AGENT_SH } from './agent-sh.generated.js';

/**
 * The POSIX sh program vm-sync runs on a VM for everything that is not rsync
 * (src/remote/agent.sh, embedded at build time): probing the target, the
 * lock, staging, sealing and flipping releases, pruning, health and
 * post-sync commands. Values from the config reach it only as positional
 * arguments, never spliced into it.
 */
export const AGENT_SCRIPT = AGENT_SH;

/** Quotes one word for a POSIX shell: the only way config values reach a VM's shell. */
export function shellQuote(word: string): string {
  return `'${word.replace(/'/g, `'\\''`)}'`;
}

/** Seconds `timeout` waits after its TERM before it sends KILL to the operation's process group. */
export const KILL_GRACE_S = 3;

/**
 * The command line that runs one agent operation under a deadline on the VM:
 * `timeout -k 3 BUDGET sh -c SCRIPT vm-sync NONCE OP TARGET ARGS...`.
 */
export function agentCommand(op: string, target: string, options: { nonce: string; budgetS: number }, ...args: string[]): string {
  const budget = String(Math.max(1, Math.ceil(options.budgetS)));
  return ['timeout', '-k', String(KILL_GRACE_S), budget, 'sh', '-c', AGENT_SCRIPT, 'vm-sync', options.nonce, op, target, ...args].map(shellQuote).join(' ');
}

/** What one agent operation answered: its framed `key=value` lines, in order, with repeated keys kept. */
export class AgentResponse {
  constructor(private readonly values: Map<string, string[]>) {}

  /** Whether the operation ran to its end marker (a killed one did not). */
  get complete(): boolean {
    return this.values.has('end');
  }

  /** The first value of a key, or null. */
  get(key: string): string | null {
    return this.values.get(key)?.[0] ?? null;
  }

  /** Every value of a key (`pruned=` lines). */
  all(key: string): string[] {
    return this.values.get(key) ?? [];
  }

  /** The value of a key the operation must have printed; a missing one is a protocol error, never ''. */
  require(key: string): string {
    const value = this.get(key);
    if (value === null) throw new Error(`agent response lacks ${key}=`);
    return value;
  }

  /**
   * Rejects a response that carries a key its operation never prints: a
   * protocol mismatch (an agent of another version, a forged line) is an
   * error, never silently ignored. `end`, `error` and `message` are always allowed.
   */
  only(allowed: readonly string[]): this {
    for (const key of this.values.keys()) {
      if (!allowed.includes(key) && key !== 'end' && key !== 'error' && key !== 'message') throw new Error(`agent response has an unknown field ${JSON.stringify(key.slice(0, 40))}=`);
    }
    return this;
  }

  /** A key whose value must be one of `allowed`. */
  oneOf<T extends string>(key: string, allowed: readonly T[]): T {
    const value = this.require(key);
    if (!(allowed as readonly string[]).includes(value)) throw new Error(`agent response has ${key}=${JSON.stringify(value.slice(0, 40))}, expected one of ${allowed.join(', ')}`);
    return value as T;
  }
}

/**
 * One argument of a session request: `=` then its bytes, with everything but
 * a few plain characters as a `printf %b` octal escape, so a request stays
 * one line of words whatever the value holds (spaces, newlines, quotes).
 */
export function encodeSessionArg(value: string): string {
  if (value.includes('\0')) throw new Error('an agent argument cannot hold a NUL byte');
  let out = '=';
  for (const byte of Buffer.from(value, 'utf8')) {
    const c = String.fromCharCode(byte);
    out += /[A-Za-z0-9._,:/@+-]/.test(c) ? c : `\\0${byte.toString(8).padStart(3, '0')}`;
  }
  return out;
}

/**
 * The command line of an agent session: `timeout -k 3 BUDGET sh -c AGENT
 * vm-sync NONCE serve TARGET AGENT`. It reads one request a line on stdin
 * (see `serve` in agent.sh) and runs each as its own operation.
 */
export function agentSessionCommand(target: string, options: { nonce: string; budgetS: number }): string {
  const budget = String(Math.max(1, Math.ceil(options.budgetS)));
  return ['timeout', '-k', String(KILL_GRACE_S), budget, 'sh', '-c', AGENT_SCRIPT, 'vm-sync', options.nonce, 'serve', target, AGENT_SCRIPT].map(shellQuote).join(' ');
}

/** Lines longer than this are cut: no framed value of ours is anywhere near it. */
const MAX_LINE = 8192;
/** More framed lines than this is not an answer of ours. */
const MAX_LINES = 2000;

/**
 * Reads the framed lines of an operation's stdout. Lines without the
 * operation's nonce (a chatty login shell, post_sync_command output) are
 * ignored here; the caller keeps a bounded copy of them for messages.
 */
export function parseAgentOutput(stdout: string, nonce: string): AgentResponse {
  const prefix = `@${nonce} `;
  const values = new Map<string, string[]>();
  let count = 0;
  for (const raw of stdout.split('\n')) {
    if (!raw.startsWith(prefix) || ++count > MAX_LINES) continue;
    const line = raw.slice(prefix.length, MAX_LINE);
    const eq = line.indexOf('=');
    if (eq <= 0) continue;
    const key = line.slice(0, eq);
    values.set(key, [...(values.get(key) ?? []), line.slice(eq + 1)]);
  }
  return new AgentResponse(values);
}
