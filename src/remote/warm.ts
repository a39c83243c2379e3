import type { VmConfig } from '../config/types.js';

/** What a warm connection must tell: whether it can still carry a session. */
export interface Warmable {
  readonly alive: boolean;
  dispose(): void;
}

/** One connection made ahead: its opening, how it ended so far, and its own stop. */
interface Warming<S> {
  opening: Promise<S>;
  failed: boolean;
  stop: AbortController;
}

/**
 * SSH connections opened before the run needs them: while the runner host
 * fetches and exports the commit, the first VMs of the fleet are connected
 * (handshake, host-key check, authentication), so a VM's pipeline starts
 * with its connection made. Nothing is run on a VM here: its lock, probe and
 * everything else wait for the pipeline, which knows the commit.
 *
 * A connection made ahead never costs the VM anything it would not have
 * spent anyway (the reasons the first version of this, 6dcfa6f, was taken out):
 * - each is handed out once ({@link take}), and only when it is still
 *   usable: one that failed before its pipeline asked, or closed meanwhile,
 *   is not handed out, and the pipeline connects afresh (a VM down only
 *   during the fetch loses no attempt);
 * - one still being made when the pipeline asks is the pipeline's own
 *   connect: its outcome, success or failure, is that attempt's;
 * - {@link close} stops those still being made and closes those not taken,
 *   at once: a VM silent during the fetch does not hold a run that failed
 *   before its pipelines open until the connect timeout.
 */
export class WarmConnections<S extends Warmable> {
  private readonly pending = new Map<string, Warming<S>>();
  private closing = false;

  /** `open` connects to a VM; it must give up promptly when its signal aborts. */
  constructor(private readonly open: (vm: VmConfig, signal: AbortSignal) => Promise<S>) {}

  /** Starts connecting to each of `vms` (each VM once; nothing after {@link close}). */
  start(vms: readonly VmConfig[]): void {
    for (const vm of vms) {
      if (this.closing || this.pending.has(vm.id)) continue;
      const stop = new AbortController();
      const warming: Warming<S> = { opening: this.open(vm, stop.signal), failed: false, stop };
      // Observed by take or close; a failure nobody takes is not an unhandled rejection.
      warming.opening.catch(() => (warming.failed = true));
      this.pending.set(vm.id, warming);
    }
  }

  /**
   * The connection started for `vm`, once, as a promise: null when none was
   * started, it was already taken, or it failed before this call; resolves to
   * null when it closed meanwhile (the caller then connects afresh).
   */
  take(vm: VmConfig): Promise<S | null> | null {
    const warming = this.pending.get(vm.id);
    if (!warming) return null;
    this.pending.delete(vm.id);
    if (warming.failed) return null;
    return warming.opening.then((session) => {
      if (session.alive) return session;
      session.dispose();
      return null;
    });
  }

  /** Stops the connections still being made and closes every one not taken. */
  async close(): Promise<void> {
    this.closing = true;
    const left = [...this.pending.values()];
    this.pending.clear();
    for (const warming of left) warming.stop.abort();
    await Promise.all(left.map((warming) => warming.opening.then((session) => session.dispose(), () => undefined)));
  }
}
