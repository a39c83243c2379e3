import { together } from '../../src/local/together.js';

/** A task that settles when told to, or rejects with 'cancelled' when `signal` aborts. */
function controlled<T>(signal: AbortSignal): { promise: Promise<T>; resolve: (v: T) => void; reject: (e: unknown) => void; settled: () => boolean } {
  let done = false;
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = (v) => ((done = true), res(v));
    reject = (e) => ((done = true), rej(e));
  });
  signal.addEventListener('abort', () => reject(new Error('cancelled')), { once: true });
  return { promise, resolve, reject, settled: () => done };
}

describe('together', () => {
  it('gives every task its value, in order', async () => {
    const stop = new AbortController();
    const slow = controlled<string>(stop.signal);
    const run = together<[number, string]>(stop, [Promise.resolve(1), slow.promise]);
    setTimeout(() => slow.resolve('two'), 10);
    await expect(run).resolves.toEqual([1, 'two']);
    expect(stop.signal.aborted).toBe(false);
  });

  it("throws the first failure, not the other's cancellation, and aborts the others", async () => {
    const stop = new AbortController();
    const a = controlled<number>(stop.signal);
    const b = controlled<number>(stop.signal);
    const run = together<[number, number]>(stop, [a.promise, b.promise]);
    b.reject(new Error('disk full'));
    await expect(run).rejects.toThrow('disk full');
    expect(stop.signal.aborted).toBe(true);
    expect(a.settled()).toBe(true);
  });

  it('throws only after every task has settled', async () => {
    const stop = new AbortController();
    let lateSettled = false;
    // A task that ignores the abort for a while (a child process still exiting).
    const late = new Promise<number>((_, reject) =>
      setTimeout(() => {
        lateSettled = true;
        reject(new Error('cancelled'));
      }, 50),
    );
    const run = together<[number, number]>(stop, [Promise.reject(new Error('bad config')), late]);
    await expect(run).rejects.toThrow('bad config');
    expect(lateSettled).toBe(true);
  });
});
