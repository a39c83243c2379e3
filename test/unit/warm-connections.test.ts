import type { VmConfig } from '../../src/config/types.js';
import { WarmConnections, type Warmable } from '../../src/remote/warm.js';

/** A connection whose opening the test settles by hand. */
class FakeConnection implements Warmable {
  alive = true;
  disposed = 0;
  dispose(): void {
    this.disposed++;
    this.alive = false;
  }
}

interface Opening {
  vm: string;
  signal: AbortSignal;
  expire: AbortSignal;
  resolve(c: FakeConnection): void;
  reject(e: Error): void;
}

function harness(): { warm: WarmConnections<FakeConnection>; opened: Opening[] } {
  const opened: Opening[] = [];
  const warm = new WarmConnections<FakeConnection>(
    (vm, signal, expire) =>
      new Promise<FakeConnection>((resolve, reject) => {
        const entry: Opening = { vm: vm.id, signal, expire, resolve, reject };
        opened.push(entry);
        // As VmSession.open does: an abort ends the handshake at once; an expiry is a connect timeout.
        signal.addEventListener('abort', () => reject(new Error(`connecting to ${vm.id} was cancelled`)), { once: true });
        expire.addEventListener('abort', () => reject(new Error(`${vm.id} did not complete the SSH handshake in time`)), { once: true });
      }),
  );
  return { warm, opened };
}

const vm = (id: string): VmConfig => ({ id }) as VmConfig;
const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

test('each VM is connected once, and its connection handed out once', async () => {
  const { warm, opened } = harness();
  warm.start([vm('a'), vm('b'), vm('a')]);
  expect(opened.map((o) => o.vm)).toEqual(['a', 'b']);
  const conn = new FakeConnection();
  opened[0].resolve(conn);
  await expect(warm.take(vm('a'), 1000)).resolves.toBe(conn);
  expect(warm.take(vm('a'), 1000)).toBeNull();
  expect(warm.take(vm('zzz'), 1000)).toBeNull();
  await warm.close();
  expect(conn.disposed).toBe(0); // taken: the taker's to close
});

test('a connection that failed before it was asked for is not handed out (the pipeline connects afresh, no attempt lost)', async () => {
  const { warm, opened } = harness();
  warm.start([vm('a')]);
  opened[0].reject(new Error('ECONNREFUSED'));
  await tick();
  expect(warm.take(vm('a'), 1000)).toBeNull();
});

test("a connection still being made when asked for is the pipeline's connect: its failure is that attempt's", async () => {
  const { warm, opened } = harness();
  warm.start([vm('a')]);
  const taken = warm.take(vm('a'), 1000);
  expect(taken).not.toBeNull();
  opened[0].reject(new Error('host key mismatch'));
  await expect(taken).rejects.toThrow('host key mismatch');
});

test('a connection that closed while it waited is disposed and not handed out', async () => {
  const { warm, opened } = harness();
  warm.start([vm('a')]);
  const conn = new FakeConnection();
  opened[0].resolve(conn);
  await tick();
  conn.alive = false;
  await expect(warm.take(vm('a'), 1000)).resolves.toBeNull();
  expect(conn.disposed).toBe(1);
});

test('close stops the connections still being made and closes those not taken, without waiting for a silent VM', async () => {
  const { warm, opened } = harness();
  warm.start([vm('made'), vm('silent'), vm('taken')]);
  const made = new FakeConnection();
  opened[0].resolve(made);
  const taken = new FakeConnection();
  opened[2].resolve(taken);
  await expect(warm.take(vm('taken'), 1000)).resolves.toBe(taken);
  await warm.close(); // would never settle if the silent VM's connect were awaited without being stopped
  expect(opened[1].signal.aborted).toBe(true);
  expect(opened[0].signal.aborted).toBe(true);
  expect(made.disposed).toBe(1);
  expect(taken.disposed).toBe(0);
  expect(opened[2].signal.aborted).toBe(false);
  // Nothing starts after close.
  warm.start([vm('late')]);
  expect(opened).toHaveLength(3);
  expect(warm.take(vm('late'), 1000)).toBeNull();
});

test("a connection still being made when taken has the taker's whole timeout from then, not from when it started", async () => {
  const { warm, opened } = harness();
  warm.start([vm('slow'), vm('late')]);
  // No timeout of its own while nobody asked for it (the fetch may take long).
  await new Promise((r) => setTimeout(r, 80));
  expect(opened[0].expire.aborted).toBe(false);
  const taken = warm.take(vm('slow'), 100);
  await new Promise((r) => setTimeout(r, 60));
  expect(opened[0].expire.aborted).toBe(false);
  await expect(taken).rejects.toThrow('did not complete the SSH handshake in time');
  expect(opened[0].expire.aborted).toBe(true);
  // One that answers within the taker's timeout is used, and its timer stops.
  const late = warm.take(vm('late'), 100);
  const conn = new FakeConnection();
  opened[1].resolve(conn);
  await expect(late).resolves.toBe(conn);
  await new Promise((r) => setTimeout(r, 150));
  expect(opened[1].expire.aborted).toBe(false);
});

test('a failure that lasts (not the network: a host key that is not the pinned one) is handed out as it is: connecting again would only repeat it', async () => {
  const opened: Opening[] = [];
  const warm = new WarmConnections<FakeConnection>(
    (vm, signal, expire) =>
      new Promise<FakeConnection>((resolve, reject) => {
        opened.push({ vm: vm.id, signal, expire, resolve, reject });
      }),
    (error) => (error as Error).message.startsWith('host key'),
  );
  warm.start([vm('pinned-wrong'), vm('down')]);
  opened[0].reject(new Error('host key of pinned-wrong does not match the pinned key'));
  opened[1].reject(new Error('connect ECONNREFUSED'));
  await tick();
  await expect(warm.take(vm('pinned-wrong'), 1000)).rejects.toThrow('does not match the pinned key');
  expect(warm.take(vm('down'), 1000)).toBeNull();
});

test("a connection still being made when taken stops with the taker's signal (the VM's budget), as its own connect would", async () => {
  const { warm, opened } = harness();
  warm.start([vm('slow')]);
  const budget = new AbortController();
  const taken = warm.take(vm('slow'), 60_000, budget.signal);
  expect(opened[0].signal.aborted).toBe(false);
  budget.abort();
  await expect(taken).rejects.toThrow('connecting to slow was cancelled');
  expect(opened[0].signal.aborted).toBe(true);
});
