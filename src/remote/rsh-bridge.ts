import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { ClientChannel } from 'ssh2';
import { makeScratchDir } from '../local/scratch.js';
import { KILL_GRACE_S, shellQuote } from './agent-script.js';
import type { VmSession } from './session.js';

/*
 * rsync needs a "remote shell" program (`-e`) that it runs as
 * `PROGRAM HOST rsync --server ...` and talks to over stdin/stdout. Instead of
 * OpenSSH (a second handshake, a second host-key check, the runner user's
 * ssh_config in play), vm-sync gives rsync this small bridge: it connects to a
 * unix socket served by the vm-sync process, which runs the command on the
 * VM's existing SSH connection as a new channel.
 *
 * Wire protocol on the socket:
 *   bridge -> vm-sync: one JSON line {token, argv}, then rsync's stdin bytes; EOF = half-close.
 *   vm-sync -> bridge: frames [type u8][length u32 BE][payload]:
 *     1 stdout bytes, 2 stderr bytes, 3 exit status (int32 BE; 255 when the VM gave none).
 *
 * The socket lives in a 0700 directory and the bridge must present a random
 * token (passed in rsync's environment, never on a command line), so no other
 * user on the runner host can drive the connection.
 */

const FRAME_STDOUT = 1;
const FRAME_STDERR = 2;
const FRAME_EXIT = 3;

/** The bridge program, written next to the socket at run time. Plain CommonJS, no dependencies. */
const BRIDGE_SOURCE = `'use strict';
// rsync stops its remote shell with SIGUSR1 on error. ssh dies of it; Node would
// instead open its inspector on 127.0.0.1:9229 and keep running. Die like ssh.
process.on('SIGUSR1', () => process.exit(255));
const net = require('net');
const sock = net.connect(process.argv[2]);
let code = 255;
let pending = Buffer.alloc(0);
sock.on('connect', () => {
  sock.write(JSON.stringify({ token: process.env.VM_SYNC_RSH_TOKEN || '', argv: process.argv.slice(3) }) + '\\n');
  process.stdin.pipe(sock);
});
sock.on('data', (chunk) => {
  pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
  while (pending.length >= 5) {
    const len = pending.readUInt32BE(1);
    if (pending.length < 5 + len) break;
    const type = pending[0];
    const payload = pending.subarray(5, 5 + len);
    pending = pending.subarray(5 + len);
    if (type === ${FRAME_STDOUT}) {
      if (!process.stdout.write(payload)) { sock.pause(); process.stdout.once('drain', () => sock.resume()); }
    } else if (type === ${FRAME_STDERR}) process.stderr.write(payload);
    else if (type === ${FRAME_EXIT}) code = payload.readInt32BE(0);
  }
});
sock.on('error', (e) => { process.stderr.write('vm-sync rsh bridge: ' + e.message + '\\n'); process.exit(255); });
sock.on('close', () => process.stdout.write('', () => process.exit(code)));
process.stdin.on('error', () => {});
process.stdout.on('error', () => process.exit(code));
`;

function frame(type: number, payload: Buffer): Buffer {
  const header = Buffer.alloc(5);
  header[0] = type;
  header.writeUInt32BE(payload.length, 1);
  return Buffer.concat([header, payload]);
}

function quoteForRsync(arg: string): string {
  // rsync splits -e on spaces and honours single quotes; our paths never hold one.
  if (arg.includes("'")) throw new Error(`path not usable in rsync -e: ${arg}`);
  return `'${arg}'`;
}

/**
 * Serves rsync's remote-shell requests for one VM over its {@link VmSession}.
 * Create one per VM, pass {@link rshCommand} and {@link env} to rsync, and
 * {@link close} it in `finally`.
 */
export class RshBridge {
  private readonly token = crypto.randomBytes(32).toString('hex');
  private readonly channels = new Set<ClientChannel>();
  private readonly sockets = new Set<net.Socket>();

  private constructor(
    private readonly dir: string,
    private readonly socketPath: string,
    private readonly server: net.Server,
    private readonly guard: RemoteGuard | null,
  ) {}

  /**
   * `guard`: run the VM's `rsync --server` under `timeout` with this budget,
   * carrying `nonce` on its command line, so a cancelled run can find it and
   * kill it on the VM (closing the channel does not stop it).
   */
  static async start(session: VmSession, guard: RemoteGuard | null = null): Promise<RshBridge> {
    const dir = makeScratchDir('rsh'); // mode 0700, swept if this process dies
    const bridgePath = path.join(dir, 'rsh.cjs');
    fs.writeFileSync(bridgePath, BRIDGE_SOURCE, { mode: 0o600 });
    const socketPath = path.join(dir, 's');
    let bridge: RshBridge | null = null;
    const server = net.createServer({ allowHalfOpen: true }, (socket) => {
      bridge?.sockets.add(socket);
      socket.on('close', () => bridge?.sockets.delete(socket));
      bridge?.serve(session, socket);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => resolve());
    });
    bridge = new RshBridge(dir, socketPath, server, guard);
    return bridge;
  }

  /** The value for rsync's `-e`: this Node binary running the bridge against our socket. */
  get rshCommand(): string {
    return [process.execPath, path.join(this.dir, 'rsh.cjs'), this.socketPath].map(quoteForRsync).join(' ');
  }

  /** Environment additions for the rsync process (the token stays off every command line). */
  get env(): Record<string, string> {
    return { VM_SYNC_RSH_TOKEN: this.token };
  }

  private serve(session: VmSession, socket: net.Socket): void {
    let header = Buffer.alloc(0);
    const fail = (message: string): void => {
      socket.end(Buffer.concat([frame(FRAME_STDERR, Buffer.from(`vm-sync: ${message}\n`)), exitFrame(255)]));
    };
    const onHeader = (chunk: Buffer): void => {
      header = Buffer.concat([header, chunk]);
      const newline = header.indexOf(0x0a);
      if (newline < 0) {
        if (header.length > 64 * 1024) fail('bridge header too long');
        return;
      }
      socket.off('data', onHeader);
      socket.pause();
      const rest = header.subarray(newline + 1);
      let request: { token?: unknown; argv?: unknown };
      try {
        request = JSON.parse(header.subarray(0, newline).toString('utf8'));
      } catch {
        fail('bad bridge request');
        return;
      }
      const token = Buffer.from(String(request.token ?? ''));
      const expected = Buffer.from(this.token);
      if (token.length !== expected.length || !crypto.timingSafeEqual(token, expected)) {
        fail('bridge token rejected');
        return;
      }
      const argv = Array.isArray(request.argv) ? request.argv.map(String) : [];
      // argv is [HOST, rsync, --server, ...]: only rsync's server side may run here.
      if (argv[1] !== 'rsync' || argv[2] !== '--server') {
        fail('the bridge only runs rsync --server');
        return;
      }
      // Like OpenSSH, join the words with spaces: rsync already quoted them for the remote shell.
      const rsync = argv.slice(1).join(' ');
      const guard = this.guard;
      this.pump(session, socket, guard ? `${['timeout', '-k', String(KILL_GRACE_S), String(Math.max(1, Math.ceil(guard.budgetS()))), 'sh', '-c', 'exec rsync "$@"', guard.nonce].map(shellQuote).join(' ')} ${argv.slice(2).join(' ')}` : rsync, rest);
    };
    socket.on('data', onHeader);
    socket.on('error', () => socket.destroy());
  }

  private pump(session: VmSession, socket: net.Socket, command: string, firstInput: Buffer): void {
    session.openChannel(command).then(
      (channel) => {
        this.channels.add(channel);
        let exitCode = 255;
        let sawExit = false;
        const forward = (type: number) => (data: Buffer) => {
          if (!socket.write(frame(type, data))) {
            channel.pause();
            socket.once('drain', () => channel.resume());
          }
        };
        channel.on('data', forward(FRAME_STDOUT));
        channel.stderr.on('data', forward(FRAME_STDERR));
        channel.on('exit', (code: number | null) => {
          sawExit = true;
          exitCode = typeof code === 'number' ? code : 255;
        });
        channel.on('close', () => {
          this.channels.delete(channel);
          const lost = sawExit ? Buffer.alloc(0) : frame(FRAME_STDERR, Buffer.from(`vm-sync: SSH connection to ${session.vm.id} lost during rsync\n`));
          socket.end(Buffer.concat([lost, exitFrame(exitCode)]));
        });
        if (firstInput.length > 0) channel.write(firstInput);
        socket.pipe(channel);
        socket.resume();
      },
      (error: Error) => {
        socket.end(Buffer.concat([frame(FRAME_STDERR, Buffer.from(`vm-sync: SSH connection to ${session.vm.id} lost: ${error.message}\n`)), exitFrame(255)]));
      },
    );
  }

  /** Stops serving, closes any channel still open and removes the socket directory. */
  async close(): Promise<void> {
    // After an abort the remote rsync may still be waiting on its own I/O
    // timeout: close its channel and drop the socket instead of waiting.
    for (const channel of this.channels) channel.close();
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** How the VM side of a transfer is bounded and found again (see {@link RshBridge.start}). */
export interface RemoteGuard {
  /** Seconds left of the run's budget for this VM. */
  budgetS: () => number;
  /** Marks the transfer's process on the VM for `RemoteTarget.stopInterrupted()`. */
  nonce: string;
}

function exitFrame(code: number): Buffer {
  const payload = Buffer.alloc(4);
  payload.writeInt32BE(code, 0);
  return frame(FRAME_EXIT, payload);
}
