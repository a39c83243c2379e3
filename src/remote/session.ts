import { count, noun } from '../words.js';
import fs from 'node:fs';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { NodeSSH } from 'node-ssh';
import { Client, utils, type ClientChannel, type ParsedKey } from 'ssh2';
import { keyFileProblem } from '../config/load.js';
import type { VmConfig } from '../config/types.js';
import { getErrorMessage, VmSyncError } from '../errors.js';
import { classifyConnectError } from './classify.js';
import { shellQuote } from './agent-script.js';
import { fingerprint, isPinned, isRevoked, keyType, probeHostKeys, type KnownHosts, type PinnedHost } from './known-hosts.js';
import { vmText } from './untrusted.js';
import { tunnelTo } from './jump.js';

/** A file sent as a command's standard input (then end of input). */
export interface ExecInput {
  path: string;
  /** Bytes sent so far, as they go. */
  onSent?: (bytes: number) => void;
}

/** The outcome of one command on a VM. `code` is -1 when the command was killed or the channel died. */
export interface ExecResult {
  code: number;
  /** With a frame: only the framed lines. Without: stdout, bounded. */
  stdout: string;
  /** With a frame: a bounded sample of everything else on stdout (what a chatty login shell printed). */
  other: string;
  /** Bounded: the start and the end of stderr. */
  stderr: string;
}

/** The outcome of {@link VmSession.execRaw}: stdout as bytes, exactly as the VM sent them. */
export interface RawExecResult {
  /** -1 when the command was killed, the channel died, or its output was cut (`overflowed`). */
  code: number;
  /** At most the byte cap; the bytes received before the cut when `overflowed`. */
  stdout: Buffer;
  /** Bounded: the start and the end of stderr. */
  stderr: string;
  /** stdout passed the byte cap: reading stopped there and the channel was closed. */
  overflowed: boolean;
}

const OUTPUT_MAX = 64 * 1024;
/**
 * How many bytes of a file being sent may wait in this process for the VM's
 * connection to take them. ssh2 hands a channel's data to the connection as
 * soon as the SSH window allows (2 MB with OpenSSH), whatever the socket has
 * queued: a hundred VMs that unpack slower than the runner reads would hold
 * about that much each in memory. Past this, reading waits for the connection
 * to drain; the kernel's socket buffer keeps the link busy meanwhile.
 */
export const SEND_BACKLOG_MAX = 256 * 1024;
/** How much of a sent file is read at a time. */
const SEND_CHUNK = 64 * 1024;
const FRAMED_LINE_MAX = 8192;
const FRAMED_LINES_MAX = 2000;

/**
 * Resolves once `stream` has taken `chunk` (its write callback): true, or
 * false when the channel refused it (the command ended without reading all;
 * its exit says why) or `stop` aborted.
 */
function written(stream: ClientChannel, chunk: Buffer, stop: AbortSignal): Promise<boolean> {
  return new Promise((resolve) => {
    if (stop.aborted) return resolve(false);
    const onStop = (): void => resolve(false);
    stop.addEventListener('abort', onStop, { once: true });
    stream.write(chunk, (error) => {
      stop.removeEventListener('abort', onStop);
      resolve(!error);
    });
  });
}

/**
 * Resolves true once `stream` has drained; false if it closes first or `stop`
 * aborts. No 'error' listener: a connection that fails is reported by the
 * command it carried (its channel closes), never as this send's failure.
 */
function drained(stream: Duplex, stop: AbortSignal): Promise<boolean> {
  return new Promise((resolve) => {
    if (stop.aborted || stream.destroyed) return resolve(false);
    const end = (result: boolean): void => {
      stream.off('drain', onDrain);
      stream.off('close', onClose);
      stop.removeEventListener('abort', onStop);
      resolve(result);
    };
    const onDrain = (): void => end(true);
    const onClose = (): void => end(false);
    const onStop = (): void => end(false);
    stream.on('drain', onDrain);
    stream.on('close', onClose);
    stop.addEventListener('abort', onStop, { once: true });
  });
}

/** Keeps the first and the last part of a stream, never more than `max` characters in all. */
export class BoundedText {
  private head = '';
  private tail = '';
  private dropped = 0;

  /** `headMax`: how much of the start to keep (default half; 0 keeps only the end). */
  constructor(
    private readonly max: number,
    private readonly headMax: number = max / 2,
  ) {}

  add(chunk: string): void {
    if (this.head.length < this.headMax) {
      const room = this.headMax - this.head.length;
      this.head += chunk.slice(0, room);
      chunk = chunk.slice(room);
    }
    if (!chunk) return;
    const joined = this.tail + chunk;
    const keep = this.max - this.headMax;
    if (joined.length > keep) this.dropped += joined.length - keep;
    this.tail = joined.slice(-keep);
  }

  text(): string {
    return this.dropped > 0 ? `${this.head}\n[... ${count(this.dropped, 'character')} not kept ...]\n${this.tail}` : this.head + this.tail;
  }
}

export interface ConnectOptions {
  connectTimeoutMs: number;
  signal?: AbortSignal;
  /**
   * Ends the handshake as the connect timeout would (code `timeout`, the same
   * message), when the caller keeps the time itself: a connection made ahead
   * of its VM's pipeline has the pipeline's whole timeout from when it is taken.
   */
  expire?: AbortSignal;
}

/** A connect stopped by its signal (the run ended, or the VM's whole budget is spent). */
function connectCancelled(vm: VmConfig): VmSyncError {
  return new VmSyncError('timeout', `connecting to ${vm.id} was cancelled (per-VM timeout)`);
}

/** How long a closed session's socket may wait for the VM's side of the close before it is destroyed. */
const CLOSE_GRACE_MS = 2000;

/**
 * One authenticated SSH connection to one VM. Everything vm-sync does on a VM
 * (remote commands and rsync, through the bridge) runs over this single
 * connection, so a VM costs one handshake and one host-key check.
 */
export class VmSession {
  private closed = false;

  private constructor(
    readonly vm: VmConfig,
    private readonly ssh: NodeSSH,
    /** What the SSH connection runs over: the TCP socket, or the jump host's forwarded channel. */
    private readonly transport: Duplex,
    /** Behind a jump host: the jump connection's carriers (its socket, shared by every VM behind it). */
    private readonly upstream: readonly Duplex[],
    /** Tells the VM's jump host link this session closed (a no-op for a direct VM). */
    private readonly tunnelClosed: () => void = () => undefined,
  ) {}

  /**
   * Connects with the VM's own key, accepting only a host key pinned in
   * known_hosts for `ip`/`[ip]:port` (ssh2 would accept any key by default).
   * No password, keyboard-interactive or agent: an unattended deploy must
   * fail fast rather than prompt (OpenSSH's BatchMode).
   */
  static async open(vm: VmConfig, knownHosts: KnownHosts, options: ConnectOptions): Promise<VmSession> {
    // The key first: a problem with it is this host's alone, and says exactly what to fix.
    const privateKey = readPrivateKey(vm).text;
    const pinned = knownHosts.pinned(vm.host, vm.port);
    if (pinned.keys.length === 0 && pinned.revoked.length > 0) {
      throw new VmSyncError(
        'host_key_revoked',
        `every host key pinned for ${pinned.name} in known_hosts is REVOKED (@revoked ${pinned.revoked.map(fingerprint).join(', ')}): vm-sync will not connect to ${vm.id}. Give the VM a new host key, fetch it with ssh-keyscan -p ${vm.port} ${vm.host}, check its fingerprint out of band and pin it; remove the @revoked line only if it was added by mistake.`,
      );
    }
    if (pinned.keys.length === 0) {
      throw new VmSyncError(
        'host_key_unknown',
        `no pinned host key for ${pinned.name} in known_hosts: fetch it with ssh-keyscan -p ${vm.port} ${vm.host}, check its fingerprint out of band, and add the line.`,
      );
    }
    // A run already stopped connects to nothing (an abort listener added now would never fire).
    if (options.signal?.aborted) throw connectCancelled(vm);
    // A VM behind a jump host is reached through the run's one connection to it, as a forwarded channel.
    const tunnel = await tunnelTo(vm, knownHosts, (jump, jumpOptions) => VmSession.open(jump, knownHosts, jumpOptions))?.(options);
    const ssh = new NodeSSH();
    let offered: Buffer | null = null;
    let rejected = false;
    // The socket is made here, not by ssh2, so that a send can see how much waits in it (SEND_BACKLOG_MAX).
    // ssh2 takes a socket that is still connecting as its own: the same timeout, errors and events.
    const transport: Duplex = tunnel ? tunnel.sock : net.connect({ host: vm.host, port: vm.port });
    // Every send in progress waits on it (and on a jump host's socket, every VM behind it does).
    transport.setMaxListeners(0);
    const abort = (): void => {
      ssh.connection?.end();
      // A handshake still under way stops now, not when the VM answers or the connect timeout passes.
      transport.destroy();
    };
    options.signal?.addEventListener('abort', abort, { once: true });
    options.expire?.addEventListener('abort', abort, { once: true });
    // Either may have aborted while the way to the VM was being opened (a jump host's tunnel).
    if (options.signal?.aborted || options.expire?.aborted) abort();
    try {
      const connecting = ssh.connect({
        host: vm.host,
        port: vm.port,
        sock: transport as never,
        username: vm.user,
        privateKey,
        tryKeyboard: false,
        agent: undefined,
        readyTimeout: options.connectTimeoutMs,
        keepaliveInterval: 5000,
        keepaliveCountMax: 3,
        algorithms: { serverHostKey: pinned.algorithms as never },
        hostVerifier: (key: Buffer) => {
          offered = key;
          rejected = !isPinned(pinned, key);
          return !rejected;
        },
      });
      // node-ssh stops listening for errors at 'ready', and a socket error that follows at once (the VM
      // dropping the connection just after authentication: a write's EPIPE is emitted on the next tick,
      // before this function resumes) would then crash the process. Listening from the start closes that
      // gap; node-ssh's own listener still turns a failure to connect into the rejection caught below.
      const early = ssh.connection;
      early?.on('error', () => undefined);
      await connecting;
      if (ssh.connection !== early) ssh.connection?.on('error', () => undefined);
    } catch (error) {
      ssh.dispose();
      transport.destroy();
      tunnel?.opened();
      tunnel?.closed();
      let code = options.expire?.aborted ? 'timeout' : classifyConnectError(error, rejected);
      // The VM showed no key of a pinned type: ask it (unrestricted) what it has, to say so.
      // (Not through a jump host: the probe connects directly, which from here would not reach the VM.)
      // It stops with the connect it explains: when the run ends or the VM's time is up (with a run already
      // stopped it connects to nothing, and the check below says so).
      const probeStop = [options.signal, options.expire].filter((s): s is AbortSignal => s !== undefined);
      const probed = code === 'host_key_mismatch' && !offered && !tunnel ? await probeHostKeys(vm.host, vm.port, Math.min(options.connectTimeoutMs, 5000), probeStop.length ? AbortSignal.any(probeStop) : undefined) : null;
      if (options.signal?.aborted) throw connectCancelled(vm);
      const shown = offered ?? probed?.key ?? null;
      if (shown && isRevoked(pinned, shown)) code = 'host_key_revoked';
      // A probe cut short by the VM's time before the VM listed its key types learnt nothing: not "it offers nothing".
      const algorithms = probed && (probed.algorithms.length > 0 || !options.expire?.aborted) ? probed.algorithms : null;
      throw new VmSyncError(code, connectMessage(vm, code, error, { offered: shown, pinned, algorithms }), { cause: error });
    } finally {
      options.signal?.removeEventListener('abort', abort);
      options.expire?.removeEventListener('abort', abort);
    }
    // (The listener above stays: a later socket error, a VM rebooting mid-deploy, must not crash the process.
    // What it breaks is seen by the channel or step that was using the connection.)
    tunnel?.opened();
    return new VmSession(vm, ssh, transport, tunnel?.carriers ?? [], tunnel?.closed);
  }

  /** A TCP connection from this host to `host:port`, as a channel of this session (this session is a jump host's). */
  forward(host: string, port: number): Promise<Duplex> {
    return new Promise((resolve, reject) => {
      const connection = this.ssh.connection;
      if (!connection || this.closed) return reject(new Error('the connection to the jump host is closed'));
      connection.forwardOut('127.0.0.1', 0, host, port, (error, channel) => (error ? reject(error) : resolve(channel)));
    });
  }

  /**
   * Runs a command line on the VM (parsed by the SSH user's shell), with a
   * hard timeout. Output is bounded whatever the VM sends: with `frame`, the
   * lines that start with `@<frame> ` are kept apart (the agent's answer) and
   * everything else only as a bounded sample, so a login shell that prints
   * megabytes can neither exhaust memory nor push the answer out.
   */
  exec(command: string, timeoutMs: number, signal?: AbortSignal, frame?: string, onFramedLine?: (line: string) => void, input?: ExecInput): Promise<ExecResult> {
    return new Promise<ExecResult>((resolve, reject) => {
      const connection = this.ssh.connection;
      if (!connection || this.closed) {
        reject(new VmSyncError('unreachable', `SSH connection to ${this.vm.id} is closed`));
        return;
      }
      let channel: ClientChannel | null = null;
      let settled = false;
      const out = new BoundedText(OUTPUT_MAX);
      const err = new BoundedText(OUTPUT_MAX);
      const framed: string[] = [];
      const prefix = frame ? `@${frame} ` : null;
      let partial = '';
      // Stops a file still being sent once the command is over, whatever ended it.
      const sending = new AbortController();
      const finish = (error: VmSyncError | null, code = -1): void => {
        if (settled) return;
        settled = true;
        sending.abort();
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        if (error) {
          channel?.close();
          reject(error);
        } else {
          if (partial) take(partial);
          resolve({ code, stdout: prefix ? framed.join('\n') : out.text(), other: prefix ? out.text() : '', stderr: err.text() });
        }
      };
      const take = (line: string): void => {
        if (prefix && line.startsWith(prefix)) {
          if (framed.length < FRAMED_LINES_MAX) {
            framed.push(line.slice(0, FRAMED_LINE_MAX));
            onFramedLine?.(line);
          }
        } else out.add(`${line}\n`);
      };
      const timer = setTimeout(() => finish(new VmSyncError('timeout', `command on ${this.vm.id} did not finish within ${Math.round(timeoutMs / 1000)}s`)), timeoutMs);
      const onAbort = (): void => finish(new VmSyncError('timeout', `command on ${this.vm.id} was cancelled`));
      if (signal?.aborted) {
        onAbort();
        return;
      }
      signal?.addEventListener('abort', onAbort, { once: true });
      connection.exec(command, (error, ch) => {
        if (error) {
          finish(new VmSyncError('unreachable', `SSH connection to ${this.vm.id} lost: ${getErrorMessage(error)}`));
          return;
        }
        channel = ch;
        if (settled) {
          ch.close();
          return;
        }
        let code = -1;
        ch.on('data', (data: Buffer) => {
          if (!prefix) {
            out.add(data.toString('utf8'));
            return;
          }
          const text = partial + data.toString('utf8');
          const lines = text.split('\n');
          partial = lines.pop() ?? '';
          // A line that never ends is noise, not an answer: keep memory bounded.
          if (partial.length > FRAMED_LINE_MAX) {
            out.add(partial);
            partial = '';
          }
          for (const line of lines) take(line);
        });
        ch.stderr.on('data', (data: Buffer) => err.add(data.toString('utf8')));
        if (input) {
          // A command that exits without reading all of it ends the channel: its answer says why.
          ch.on('error', () => undefined);
          this.send(input, ch, sending.signal).catch((error: unknown) => finish(new VmSyncError('internal_error', `cannot read ${input.path} to send it to ${this.vm.id}: ${getErrorMessage(error)}`)));
        }
        ch.on('exit', (exitCode: number | null) => {
          code = typeof exitCode === 'number' ? exitCode : -1;
        });
        ch.on('close', () => finish(null, code));
      });
    });
  }

  /**
   * Sends a file as a command's standard input, then ends it. The file is
   * read as it is sent, into one buffer reused for the whole file (ssh2 copies
   * each write into a packet of its own before it calls back), and reading
   * waits while the channel is full (the SSH window) or the connection holds
   * more than {@link SEND_BACKLOG_MAX}: a stream of any size costs one buffer
   * and a bounded backlog per VM, and leaves no garbage of its own for the GC.
   * Resolves early, having sent part, when `stop` aborts (the command is over).
   */
  private async send(input: ExecInput, ch: ClientChannel, stop: AbortSignal): Promise<void> {
    const handle = await fs.promises.open(input.path, 'r');
    const buffer = Buffer.allocUnsafeSlow(SEND_CHUNK);
    let sent = 0;
    try {
      for (;;) {
        const { bytesRead } = await handle.read(buffer, 0, buffer.length, null);
        if (stop.aborted) return;
        if (bytesRead === 0) break;
        sent += bytesRead;
        input.onSent?.(sent);
        // Until the callback, ssh2 may still hold the bytes (a window that closed mid-chunk): the buffer waits.
        if (!(await written(ch, buffer.subarray(0, bytesRead), stop))) return;
        // Behind a jump host the bytes wait in its socket too: shared, so every VM behind it waits for it to drain.
        for (const carrier of this.carriers) {
          while (carrier.writableLength > SEND_BACKLOG_MAX) if (!(await drained(carrier, stop))) return;
        }
      }
      ch.end();
    } catch (error) {
      if (stop.aborted) return;
      throw error;
    } finally {
      await handle.close();
    }
  }

  /** The streams this session's bytes pass through in this process: its transport, then a jump host's socket. */
  get carriers(): readonly Duplex[] {
    return [this.transport, ...this.upstream];
  }

  /** The most bytes waiting in one of {@link carriers} to be taken (see {@link SEND_BACKLOG_MAX}). */
  get backlog(): number {
    return Math.max(...this.carriers.map((c) => c.writableLength));
  }

  /**
   * Runs a command line on the VM and keeps its stdout as raw bytes (a
   * binary answer: names that are not UTF-8 must arrive byte for byte),
   * under a hard timeout and a byte cap: past `maxBytes` the channel is
   * closed and the result says `overflowed`, so a VM that sends without end
   * cannot exhaust the runner's memory.
   */
  execRaw(command: string, timeoutMs: number, maxBytes: number, signal?: AbortSignal): Promise<RawExecResult> {
    return new Promise<RawExecResult>((resolve, reject) => {
      const connection = this.ssh.connection;
      if (!connection || this.closed) {
        reject(new VmSyncError('unreachable', `SSH connection to ${this.vm.id} is closed`));
        return;
      }
      let channel: ClientChannel | null = null;
      let settled = false;
      const chunks: Buffer[] = [];
      let size = 0;
      const err = new BoundedText(OUTPUT_MAX);
      const finish = (outcome: VmSyncError | { code: number; overflowed: boolean }): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        if (outcome instanceof VmSyncError || outcome.overflowed) channel?.close();
        if (outcome instanceof VmSyncError) reject(outcome);
        else resolve({ code: outcome.code, stdout: Buffer.concat(chunks, size), stderr: err.text(), overflowed: outcome.overflowed });
      };
      const timer = setTimeout(() => finish(new VmSyncError('timeout', `command on ${this.vm.id} did not finish within ${Math.round(timeoutMs / 1000)}s`)), timeoutMs);
      const onAbort = (): void => finish(new VmSyncError('timeout', `command on ${this.vm.id} was cancelled`));
      if (signal?.aborted) {
        onAbort();
        return;
      }
      signal?.addEventListener('abort', onAbort, { once: true });
      connection.exec(command, (error, ch) => {
        if (error) {
          finish(new VmSyncError('unreachable', `SSH connection to ${this.vm.id} lost: ${getErrorMessage(error)}`));
          return;
        }
        channel = ch;
        if (settled) {
          ch.close();
          return;
        }
        let code = -1;
        ch.on('data', (data: Buffer) => {
          if (settled) return;
          if (size + data.length > maxBytes) {
            const room = maxBytes - size;
            if (room > 0) chunks.push(data.subarray(0, room));
            size = maxBytes;
            finish({ code: -1, overflowed: true });
            return;
          }
          chunks.push(data);
          size += data.length;
        });
        ch.stderr.on('data', (data: Buffer) => err.add(data.toString('utf8')));
        ch.on('exit', (exitCode: number | null) => {
          code = typeof exitCode === 'number' ? exitCode : -1;
        });
        ch.on('close', () => finish({ code, overflowed: false }));
      });
    });
  }

  /**
   * Runs a program on the VM from an argument vector: each word is quoted for
   * the remote shell, so no value can change the command. Times out cleanly.
   */
  run(argv: readonly string[], timeoutMs: number, signal?: AbortSignal): Promise<ExecResult> {
    if (argv.length === 0) throw new Error('run() needs a program');
    return this.exec(argv.map(shellQuote).join(' '), timeoutMs, signal);
  }

  /** Opens a raw exec channel (for the rsync bridge, which streams both ways). */
  openChannel(command: string): Promise<ClientChannel> {
    return new Promise((resolve, reject) => {
      const connection = this.ssh.connection;
      if (!connection || this.closed) {
        reject(new Error(`SSH connection to ${this.vm.id} is closed`));
        return;
      }
      connection.exec(command, (error, channel) => (error ? reject(error) : resolve(channel)));
    });
  }

  /** Whether the connection is still open (not disposed, not closed by the VM or the network). */
  get alive(): boolean {
    return !this.closed && this.ssh.isConnected();
  }

  /** Closes the connection. Safe to call twice; an open socket would keep the process alive. */
  dispose(): void {
    if (this.closed) return;
    this.closed = true;
    this.ssh.dispose();
    // ssh2's end only half-closes the socket, and stops its keepalive: a VM that stopped answering would
    // hold it (and the process, which exits when nothing is left open) until the kernel gives up, minutes
    // later. After a grace for an orderly close, the socket goes; the timer alone keeps nothing alive.
    const transport = this.transport;
    setTimeout(() => transport.destroy(), CLOSE_GRACE_MS).unref();
    this.tunnelClosed();
  }
}

/** `key_invalid`, with what is wrong and the fix apart (doctor shows them on lines of their own). */
export class KeyInvalidError extends VmSyncError {
  constructor(
    /** What is wrong, as a sentence about the file. */
    readonly problem: string,
    /** What to run or do about it. */
    readonly fix: string,
  ) {
    super('key_invalid', `${problem}: ${fix}.`);
    this.name = 'KeyInvalidError';
  }
}

/**
 * Reads a host's private key (a VM's, or a jump host's) as a connection will
 * use it, or throws {@link KeyInvalidError} (`key_invalid`) with the fix: the
 * file's checks ({@link keyFileProblem}), then its content must be an
 * unencrypted private key ssh2 can use. Nothing of the key's content is ever
 * put in a message.
 */
export function readPrivateKey(host: Pick<VmConfig, 'id' | 'keyPath'>): { text: string; key: ParsedKey } {
  const file = host.keyPath;
  const invalid = (problem: string, fix: string): KeyInvalidError => new KeyInvalidError(`the SSH key for ${host.id}, ${file}, ${problem}`, fix);
  const problem = keyFileProblem(file);
  if (problem) throw invalid(problem.problem, problem.fix);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (error) {
    throw invalid(`cannot be read (${(error as NodeJS.ErrnoException).code ?? getErrorMessage(error)})`, `run chmod 600 ${file}`);
  }
  // One file may hold several keys (ssh2 answers a list): the first is the one used.
  const parsed = utils.parseKey(text) as ParsedKey | ParsedKey[] | Error;
  const key = Array.isArray(parsed) ? parsed[0] : parsed;
  if (key instanceof Error || !key) {
    if (/passphrase|encrypted/i.test(key ? key.message : '')) {
      throw invalid('is protected by a passphrase, which an unattended deploy cannot type', `remove the passphrase (ssh-keygen -p -N '' -f ${file}), keeping the file mode 600`);
    }
    throw invalid('is not a private key vm-sync can read (OpenSSH or PEM format)', `put ${host.id}'s private key there, or create a new one: ssh-keygen -t ed25519 -N '' -f ${file} (then authorize ${file}.pub on the host)`);
  }
  if (!key.isPrivateKey()) throw invalid('holds a public key, not the private one', 'put the private half there (the file without .pub)');
  return { text, key };
}

/**
 * The message for a failed connection: what happened and what to do. `seen`
 * holds what the VM showed: the key it presented (`offered`) and, when no key
 * of a pinned type was offered, the host key algorithms it lists.
 */
function connectMessage(vm: VmConfig, code: string, error: unknown, seen: { offered: Buffer | null; pinned: PinnedHost; algorithms: string[] | null }): string {
  const where = `${vm.id} (${vm.user}@${vm.host}:${vm.port})`;
  const { offered, pinned } = seen;
  const key = (blob: Buffer): string => `${fingerprint(blob)} (${keyType(blob)})`;
  // ssh2's message can carry text the VM sent (a disconnect reason).
  const said = vmText(getErrorMessage(error), 300);
  switch (code) {
    case 'host_key_revoked':
      return `host key of ${where} is REVOKED: it presented ${offered ? key(offered) : 'a key'}, which a @revoked line for ${pinned.name} in known_hosts vetoes. Do not deploy to this VM until you know why: check it out of band, give it a new host key and pin that one (ssh-keyscan -p ${vm.port} ${vm.host}, fingerprint verified out of band).`;
    case 'host_key_mismatch':
      if (seen.algorithms !== null) {
        const types = [...new Set(pinned.keys.map(keyType))];
        const pinnedTypes = types.join(', ');
        const vmOffers = seen.algorithms.length ? seen.algorithms.join(', ') : 'nothing vm-sync could read';
        return `host key of ${where} cannot be checked: known_hosts pins only ${pinnedTypes} ${noun(types.length, 'key')} for ${pinned.name}, and the VM offers host key types ${vmOffers}${offered ? ` (its ${keyType(offered)} key is ${fingerprint(offered)})` : ''}. Pin one of the keys the VM has: fetch them with ssh-keyscan -p ${vm.port} ${vm.host}, verify the fingerprint out of band, and add the line to known_hosts. Retrying will not help.`;
      }
      return `host key of ${where} does not match the pinned key: offered ${offered ? fingerprint(offered) : 'unknown'}, pinned ${pinned.keys.map(fingerprint).join(', ')}. If the VM was rebuilt, verify the new fingerprint out of band and replace its line in known_hosts; otherwise treat this as an attack.`;
    case 'auth_failed':
      return `${where} refused key ${vm.keyPath} (${said}): add its public key (ssh-keygen -y -f ${vm.keyPath}) to ~${vm.user}/.ssh/authorized_keys on the VM.`;
    case 'timeout':
      return `${where} did not complete the SSH handshake in time: check the VM is up and that sshd answers on port ${vm.port}.`;
    default:
      return `cannot reach ${where}: ${said}. Check the VM is up, the address and port, and firewalls between the runner and the VM.`;
  }
}

/** A host key as a server offers it. */
export interface OfferedHostKey {
  type: string;
  blob: Buffer;
  fingerprint: string;
}

/**
 * Reads the host key a server offers (like ssh-keyscan) without
 * authenticating: the handshake is stopped right after the key is seen.
 * `algorithms` restricts which key type to ask for (default: ssh2's list).
 */
export function scanHostKey(host: string, port: number, timeoutMs: number, algorithms?: string[]): Promise<OfferedHostKey> {
  return new Promise((resolve, reject) => {
    const client = new Client();
    let offered: OfferedHostKey | null = null;
    const finish = (error: Error | null): void => {
      client.end();
      if (offered) resolve(offered);
      else reject(error ?? new Error('no host key offered'));
    };
    client.on('error', (error) => finish(error));
    client.on('close', () => finish(null));
    client.connect({
      host,
      port,
      username: 'vm-sync-keyscan',
      readyTimeout: timeoutMs,
      ...(algorithms && algorithms.length ? { algorithms: { serverHostKey: algorithms as never } } : {}),
      hostVerifier: (key: Buffer) => {
        const len = key.readUInt32BE(0);
        offered = { type: key.subarray(4, 4 + len).toString('latin1'), blob: key, fingerprint: fingerprint(key) };
        return false; // stop here: we only wanted the key
      },
    });
  });
}
