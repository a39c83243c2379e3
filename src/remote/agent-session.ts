import crypto from 'node:crypto';
import { StringDecoder } from 'node:string_decoder';
import type { ClientChannel } from 'ssh2';
import { getErrorMessage, VmSyncError } from '../errors.js';
import { agentSessionCommand, encodeSessionArg, KILL_GRACE_S } from './agent-script.js';
import { BoundedText, type VmSession } from './session.js';

/** What one request answered: its framed lines, its exit status, its stderr and other output (bounded). */
export interface SessionReply {
  /** The request's framed lines, `@NONCE ` prefix kept (the parser reads them as a one-shot command's). */
  framed: string;
  /** The operation's exit status; -1 when the session died first. */
  code: number;
  stderr: string;
  /** Unframed output printed while the request ran (a health or post-sync command's, a chatty shell's). */
  other: string;
}

const LINE_MAX = 8192;
const LINES_MAX = 2000;
const OTHER_MAX = 16 * 1024;

/** How one request runs: its nonce and budget on the VM, and how much unframed output to keep. */
export interface RequestOptions {
  nonce: string;
  budgetS: number;
  signal?: AbortSignal;
  /** Keep only the last this many characters of the unframed output (default: the start and the end, 16 KB). */
  otherTail?: number;
}

interface Pending {
  nonce: string;
  framed: string[];
  stderr: string[];
  /** Everything else printed meanwhile: its start and its end (where a failing command says why). */
  other: BoundedText;
  resolve(reply: SessionReply): void;
  reject(error: VmSyncError): void;
}

/**
 * One agent process per VM, on one exec channel of the VM's connection:
 * requests go in on stdin, one a line, and each answer comes back framed by
 * the request's nonce and closed by `@NONCE done=STATUS`. Each operation
 * still runs on the VM as its own process under `timeout` (agent.sh `serve`),
 * so budgets and the kill by nonce work as for a command of its own; the
 * session only saves the channel, the shell start and a round trip per
 * operation. Requests are sent one at a time.
 */
export class AgentSession {
  private partial = '';
  /** Whether the line being read is past LINE_MAX: what is left of it, up to its newline, is unframed output too. */
  private overlong = false;
  private pending: Pending | null = null;
  private dead: VmSyncError | null = null;
  private stderrTail = '';
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly vmId: string,
    private readonly channel: ClientChannel,
    /** The session's own nonce: on its `timeout` process on the VM, for the kill step. */
    readonly nonce: string,
  ) {
    // One decoder for the stream: a character split between two reads stays one character.
    const decoder = new StringDecoder('utf8');
    channel.on('data', (data: Buffer) => this.onData(decoder.write(data)));
    channel.stderr.on('data', (data: Buffer) => {
      this.stderrTail = (this.stderrTail + data.toString('utf8')).slice(-4000);
    });
    channel.on('close', () => this.fail(new VmSyncError('unreachable', `the agent session on ${vmId} ended${this.stderrTail.trim() ? `: ${this.stderrTail.trim().split('\n').slice(-3).join(' | ')}` : ''}`)));
  }

  /** Starts the agent on the VM for `target`, alive for at most `budgetS` seconds. */
  static async open(session: VmSession, target: string, budgetS: number): Promise<AgentSession> {
    const nonce = crypto.randomBytes(12).toString('hex');
    let channel: ClientChannel;
    try {
      channel = await session.openChannel(agentSessionCommand(target, { nonce, budgetS }));
    } catch (error) {
      throw new VmSyncError('unreachable', `cannot start the agent on ${session.vm.id}: ${getErrorMessage(error)}`);
    }
    return new AgentSession(session.vm.id, channel, nonce);
  }

  /** Whether the session can take requests (it dies with its channel, a timeout or a cancellation). */
  get alive(): boolean {
    return this.dead === null;
  }

  /** The stderr the session itself printed (a missing `timeout`, a shell error), bounded. */
  get stderr(): string {
    return this.stderrTail;
  }

  /**
   * Runs one operation. `nonce` names it on the VM (for the kill step);
   * `timeoutMs` bounds the wait here (the VM-side budget is `budgetS`). A
   * timeout or a cancellation ends the session: its operation may still run
   * on the VM, and only a kill by nonce stops it.
   */
  request(op: string, args: readonly string[], options: RequestOptions): Promise<SessionReply> {
    const run = (): Promise<SessionReply> => this.send(op, args, options);
    const next = this.queue.then(run, run);
    this.queue = next.catch(() => undefined);
    return next;
  }

  private send(op: string, args: readonly string[], options: RequestOptions): Promise<SessionReply> {
    return new Promise<SessionReply>((resolve, reject) => {
      if (this.dead) {
        reject(this.dead);
        return;
      }
      const budget = Math.max(1, Math.ceil(options.budgetS));
      const line = `${options.nonce} ${budget} ${op}${args.map((a) => ` ${encodeSessionArg(a)}`).join('')}\n`;
      const signal = options.signal;
      const onAbort = (): void => this.fail(new VmSyncError('timeout', `${op} on ${this.vmId} was cancelled`));
      const timer = setTimeout(() => this.fail(new VmSyncError('timeout', `${op} on ${this.vmId} did not finish within ${budget}s`)), (budget + KILL_GRACE_S + 2) * 1000);
      const done = (): void => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        this.pending = null;
      };
      this.pending = {
        nonce: options.nonce,
        framed: [],
        stderr: [],
        // A command's own output (post_sync) is kept by its end only, as much as asked.
        other: options.otherTail ? new BoundedText(options.otherTail, 0) : new BoundedText(OTHER_MAX),
        resolve: (reply) => {
          done();
          resolve(reply);
        },
        reject: (error) => {
          done();
          reject(error);
        },
      };
      if (signal?.aborted) {
        onAbort();
        return;
      }
      signal?.addEventListener('abort', onAbort, { once: true });
      this.channel.write(line);
    });
  }

  /** Ends the session: the agent reads end-of-input and exits. */
  close(): void {
    if (!this.dead) this.dead = new VmSyncError('unreachable', `the agent session on ${this.vmId} was closed`);
    this.channel.end();
    this.channel.close();
  }

  private fail(error: VmSyncError): void {
    if (!this.dead) this.dead = error;
    const pending = this.pending;
    this.pending = null;
    pending?.reject(error);
    this.channel.close();
  }

  private onData(text: string): void {
    const lines = (this.partial + text).split('\n');
    this.partial = lines.pop() ?? '';
    for (const line of lines) {
      if (this.overlong) {
        // The end of a line already passed on as output: never an answer.
        this.overlong = false;
        this.noise(line);
      } else this.onLine(line);
    }
    // A line that never ends is noise, not an answer: keep memory bounded.
    // It is passed on as it was printed, with no newline put into it (a
    // secret cut in two by one would no longer look like a secret).
    if (this.partial.length > LINE_MAX) {
      this.pending?.other.add(this.partial);
      this.partial = '';
      this.overlong = true;
    }
  }

  private noise(line: string): void {
    this.pending?.other.add(`${line}\n`);
  }

  private onLine(line: string): void {
    const pending = this.pending;
    const prefix = pending ? `@${pending.nonce} ` : null;
    if (!pending || !prefix || !line.startsWith(prefix)) {
      if (line.startsWith(`@${this.nonce} error=`)) this.fail(new VmSyncError('remote_command_failed', `the agent session on ${this.vmId} failed to start`));
      else if (!line.startsWith(`@${this.nonce} `)) this.noise(line);
      return;
    }
    const body = line.slice(prefix.length, LINE_MAX);
    if (body.startsWith('done=')) {
      // No status (the shell that writes it died first) is no success: Number('') would be 0.
      const status = body.slice(5);
      const code = /^[0-9]{1,3}$/.test(status) ? Number(status) : -1;
      pending.resolve({ framed: pending.framed.join('\n'), code, stderr: pending.stderr.join('\n'), other: pending.other.text() });
    } else if (body.startsWith('stderr=')) {
      if (pending.stderr.length < 200) pending.stderr.push(body.slice(7));
    } else if (pending.framed.length < LINES_MAX) {
      pending.framed.push(line.slice(0, LINE_MAX));
    }
  }
}
