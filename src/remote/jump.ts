import type { Duplex } from 'node:stream';
import type { JumpHost, VmConfig } from '../config/types.js';
import { getErrorMessage, VmSyncError } from '../errors.js';
import type { KnownHosts } from './known-hosts.js';
import type { ConnectOptions } from './session.js';
import { vmText } from './untrusted.js';

/** The connection to a jump host, as the link needs it (a VmSession; an interface so there is no import cycle). */
export interface JumpSession {
  forward(host: string, port: number): Promise<Duplex>;
  /** The streams that carry its bytes towards the network: its own socket (and, behind another jump host, that one's). */
  readonly carriers: readonly Duplex[];
  dispose(): void;
}

/** Connects to a jump host as if it were a VM (its own key, its pinned host key). */
export type JumpOpener = (jump: VmConfig, options: ConnectOptions) => Promise<JumpSession>;

/** A forwarded connection to a VM through its jump host. */
export interface Tunnel {
  sock: Duplex;
  /** The jump connection's carriers: a VM's bytes wait there too (and it is shared by every VM behind the jump host). */
  carriers: readonly Duplex[];
  /** The VM's SSH handshake is done (or failed): its opening slot goes to the next VM. Safe to call twice. */
  opened(): void;
  /** The VM's session is closed: the jump connection may close once no VM uses it. Safe to call twice. */
  closed(): void;
}

/** How long an idle jump connection is kept for the next VM behind it (a pool starts the next VM at once). */
const LINGER_MS = 300;

/** How long a failed connection to a jump host answers for it (the VMs that were waiting fail with it). */
const FAILURE_MEMORY_MS = 1000;

/**
 * One connection to one jump host, shared by every VM behind it in a run.
 *
 * `max_sessions` bounds how many VM connections are being *opened* through it
 * at once (the forward and the VM's SSH handshake): a burst of a hundred VMs
 * never hits the bastion at once. An established VM connection does not keep
 * its slot: a fleet release keeps every VM's session open from staging to the
 * flip, so a cap on open connections would deadlock an all-at-once rollout of
 * more VMs than the cap; and sshd's MaxSessions counts shell, exec and
 * subsystem sessions only, not forwarded channels (sshd_config(5)).
 *
 * The jump host is connected as a VmSession is: its own key, its host key
 * checked against the pinned ones, the same codes and messages. A jump host
 * that cannot be reached fails each VM behind it with `jump_unreachable`; the
 * next attempt (a retry) connects afresh.
 */
class JumpLink {
  private session: Promise<JumpSession> | null = null;
  private users = 0;
  private active = 0;
  private readonly waiting: Array<() => void> = [];
  private idle: NodeJS.Timeout | null = null;
  /** Jump connections that failed under their users: closed with the link, once no VM uses it. */
  private readonly retired: Array<Promise<JumpSession>> = [];

  constructor(
    private readonly jump: JumpHost,
    private readonly openJump: JumpOpener,
  ) {}

  /** A tunnel to `vm` through this jump host, once an opening slot is free. */
  async open(vm: VmConfig, options: ConnectOptions): Promise<Tunnel> {
    this.users++;
    if (this.idle) clearTimeout(this.idle);
    this.idle = null;
    let closed = false;
    const done = (): void => {
      if (closed) return;
      closed = true;
      if (--this.users === 0) this.idle = setTimeout(() => this.close(), LINGER_MS);
    };
    try {
      await this.slot(options.signal);
    } catch (error) {
      done();
      throw error;
    }
    let freed = false;
    const opened = (): void => {
      if (freed) return;
      freed = true;
      this.active--;
      // The slot passes straight to the next VM waiting (it counts itself in).
      this.waiting.shift()?.();
    };
    try {
      const { sock, carriers } = await this.forward(this.connect(options), vm, options);
      return { sock, carriers, opened, closed: done };
    } catch (error) {
      opened();
      done();
      throw error;
    }
  }

  /**
   * A forwarded connection to the VM through `session`, bounded by the VM's
   * signal and the connect timeout (a jump host that stopped answering must
   * not hold the VM past its budget). A failure that is the jump connection's
   * (it closed, or gave no answer) forgets it, so the next opening (a retry)
   * connects afresh, and is `jump_unreachable`; the jump host's refusal to
   * reach the VM (an SSH channel-open failure, with its reason code) is the VM's.
   */
  private forward(session: Promise<JumpSession>, vm: VmConfig, options: ConnectOptions): Promise<{ sock: Duplex; carriers: readonly Duplex[] }> {
    const { name, host } = this.jump;
    return session.then(
      (s) =>
        new Promise<{ sock: Duplex; carriers: readonly Duplex[] }>((resolve, reject) => {
          let settled = false;
          const settle = (): boolean => {
            if (settled) return false;
            settled = true;
            clearTimeout(timer);
            options.signal?.removeEventListener('abort', onAbort);
            return true;
          };
          const linkFailed = (why: string): void => {
            if (!settle()) return;
            this.forget(session);
            reject(new VmSyncError('jump_unreachable', `the connection to jump host ${name} (${host}) ${why} while opening the way to ${vm.id} (every VM behind jump host ${name} fails until it is back; the next attempt connects afresh)`));
          };
          const onAbort = (): void => {
            if (settle()) reject(new VmSyncError('timeout', `opening the way to ${vm.id} through jump host ${name} was cancelled (per-VM timeout)`));
          };
          const timer = setTimeout(() => linkFailed(`did not answer within ${Math.round(options.connectTimeoutMs / 1000)}s (sync.connect_timeout_s)`), options.connectTimeoutMs);
          options.signal?.addEventListener('abort', onAbort, { once: true });
          if (options.signal?.aborted) onAbort();
          s.forward(vm.host, vm.port).then(
            (sock) => {
              if (settle()) resolve({ sock, carriers: s.carriers });
              else sock.destroy();
            },
            (error: unknown) => {
              const reason = (error as { reason?: unknown } | null)?.reason;
              if (typeof reason !== 'number') return linkFailed(`is gone (${vmText(getErrorMessage(error), 200)})`);
              if (settle()) {
                reject(new VmSyncError('unreachable', `jump host ${name} (${host}) could not open a connection to ${vm.id} at ${vm.host}:${vm.port}: ${vmText(getErrorMessage(error), 200)}. Check the VM is up and that the jump host can reach it (AllowTcpForwarding on the jump host's sshd).`));
              }
            },
          );
        }),
    );
  }

  /** The jump connection failed under its users: the next opening connects afresh; this one is closed when the link is idle. */
  private forget(session: Promise<JumpSession>): void {
    if (this.session !== session) return;
    this.session = null;
    this.retired.push(session);
  }

  /** Takes a slot, at once or when one is released (counted when taken, so concurrent callers cannot overshoot). */
  private slot(signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) return Promise.reject(new VmSyncError('timeout', `the VM's time ran out before a connection through jump host ${this.jump.name} could be opened`));
    if (this.active < this.jump.maxSessions) {
      this.active++;
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => {
      const go = (): void => {
        signal?.removeEventListener('abort', cancel);
        this.active++;
        resolve();
      };
      const cancel = (): void => {
        const at = this.waiting.indexOf(go);
        if (at >= 0) this.waiting.splice(at, 1);
        reject(new VmSyncError('timeout', `stopped while waiting to open a connection through jump host ${this.jump.name} (at most ${this.jump.maxSessions} at a time): the run was cancelled or the VM's time ran out; if it ran out, raise jump_hosts.${this.jump.name}.max_sessions or sync.timeout_s`));
      };
      signal?.addEventListener('abort', cancel, { once: true });
      this.waiting.push(go);
    });
  }

  private connect(options: ConnectOptions): Promise<JumpSession> {
    if (!this.session) {
      const { name, host, user, port, keyPath } = this.jump;
      const attempt = this.openJump({ id: `jump host ${name}`, host, user, port, keyPath, repoPath: '' }, { connectTimeoutMs: options.connectTimeoutMs });
      const failed: Promise<JumpSession> = attempt.catch((error: unknown) => {
        // The VMs waiting now share this failure (a hundred VMs behind a dead bastion cost one connect
        // timeout, not one each); after a short while, the next VM or a retry tries again.
        setTimeout(() => {
          if (this.session === failed) this.session = null;
        }, FAILURE_MEMORY_MS).unref();
        const code = error instanceof VmSyncError ? error.code : 'unreachable';
        // A bastion that is down or silent is the jump host's failure, not the VM's; a key problem keeps its own code.
        const network = code === 'unreachable' || code === 'timeout';
        const behind = network ? ` (every VM behind jump host ${name} fails until it is back)` : code === 'key_invalid' ? ` (every VM behind jump host ${name} fails until it is fixed; the other VMs are not affected)` : '';
        throw new VmSyncError(network ? 'jump_unreachable' : code, `${getErrorMessage(error)}${behind}`, { cause: error });
      });
      this.session = failed;
    }
    return this.session;
  }

  private close(): void {
    if (this.users > 0) return;
    const sessions = [...this.retired.splice(0), ...(this.session ? [this.session] : [])];
    this.session = null;
    for (const session of sessions) void session.then((s) => s.dispose(), () => undefined);
  }
}

/** Per set of pinned keys (one per run): the jump links, so VMs behind one jump host share its connection. */
const links = new WeakMap<KnownHosts, Map<string, JumpLink>>();

/**
 * The way to a VM behind a jump host: a tunnel through the run's one shared
 * connection to that jump host (null for a VM reached directly).
 */
export function tunnelTo(vm: VmConfig, knownHosts: KnownHosts, openJump: JumpOpener): ((options: ConnectOptions) => Promise<Tunnel>) | null {
  const jump = vm.jump;
  if (!jump) return null;
  let byName = links.get(knownHosts);
  if (!byName) links.set(knownHosts, (byName = new Map()));
  let link = byName.get(jump.name);
  if (!link) byName.set(jump.name, (link = new JumpLink(jump, openJump)));
  const shared = link;
  return (options) => shared.open(vm, options);
}
