import type { VmConfig } from '../config/types.js';

/** What a warm connection must tell: whether it can still carry a session. */
export interface Warmable {
  readonly alive: boolean;
  dispose(): void;
}

/** One connection made ahead: its opening, how it ended so far, its stop, and its timeout once taken. */
interface Warming<S> {
  opening: Promise<S>;
  settled: boolean;
  failed: boolean;
  error: unknown;
  stop: AbortController;
  expire: AbortController;
}

/**
 * SSH connections opened before the run needs them: while the runner host
 * fetches and exports the commit, the first VMs of the fleet are connected
 * (handshake, host-key check, authentication), so a VM's pipeline starts
 * with its connection made. Nothing is run on a VM here: its lock, probe and
 * everything else wait for the pipeline, which knows the commit.
 *
 * A connection made ahead never costs the VM anything it would not have
 * spent anyway (the reasons the first version of this, d96a1dc, was taken
 * out in 91ec66c):
 * - each is handed out once ({@link take}), and only when it is still
 *   usable: one that failed before its pipeline asked, or closed meanwhile,
 *   is not handed out, and the pipeline connects afresh (a VM down only
 *   during the fetch loses no attempt); unless its failure lasts (a host
 *   key that is not the pinned one, a refused key): that failure is handed
 *   out as the pipeline's, whose connect could only repeat it;
 * - it has no timeout of its own until it is taken: one still being made
 *   when the pipeline asks becomes the pipeline's connect, with the
 *   pipeline's whole connect timeout from then (a VM that answers late in
 *   the fetch is not cut short by the time the fetch took);
 * - {@link close} stops those still being made and closes those not taken,
 *   at once: a VM silent during the fetch does not hold a run that failed
 *   before its pipelines open until the connect timeout.
 */
export class WarmConnections<S extends Warmable> {
  private readonly pending = new Map<string, Warming<S>>();
  private closing = false;

  /**
   * `open` connects to a VM with no timeout of its own: it must give up promptly when `stop` aborts (the
   * run ends), and fail as a connect timeout does when `expire` aborts (the taker's timeout passed).
   */
  constructor(
    private readonly open: (vm: VmConfig, stop: AbortSignal, expire: AbortSignal) => Promise<S>,
    /** Whether a failure lasts: connecting again would only repeat it (not a network failure). */
    private readonly lasting: (error: unknown) => boolean = () => false,
  ) {}

  /** Starts connecting to each of `vms` (each VM once; nothing after {@link close}). */
  start(vms: readonly VmConfig[]): void {
    for (const vm of vms) {
      if (this.closing || this.pending.has(vm.id)) continue;
      const stop = new AbortController();
      const expire = new AbortController();
      const warming: Warming<S> = { opening: this.open(vm, stop.signal, expire.signal), settled: false, failed: false, error: null, stop, expire };
      // Observed by take or close; a failure nobody takes is not an unhandled rejection.
      warming.opening.then(
        () => (warming.settled = true),
        (error: unknown) => {
          warming.settled = warming.failed = true;
          warming.error = error;
        },
      );
      this.pending.set(vm.id, warming);
    }
  }

  /**
   * The connection started for `vm`, once, as a promise: null when none was
   * started, it was already taken, or it failed before this call (unless its
   * failure lasts: then it rejects with that failure); resolves to
   * null when it closed meanwhile (the caller then connects afresh). One
   * still being made fails as a connect timeout would `timeoutMs` from now,
   * and stops when `signal` aborts. (For a direct connection only: a jump
   * host's own connect knows neither.)
   */
  take(vm: VmConfig, timeoutMs: number, signal?: AbortSignal): Promise<S | null> | null {
    const warming = this.pending.get(vm.id);
    if (!warming) return null;
    this.pending.delete(vm.id);
    if (warming.failed) return this.lasting(warming.error) ? warming.opening : null;
    if (!warming.settled) {
      // The taker's timeout, and its signal (the VM's budget): as for a connect it started itself.
      const timer = setTimeout(() => warming.expire.abort(), timeoutMs);
      timer.unref();
      const stop = (): void => warming.stop.abort();
      signal?.addEventListener('abort', stop, { once: true });
      if (signal?.aborted) stop();
      const clear = (): void => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', stop);
      };
      warming.opening.then(clear, clear);
    }
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
