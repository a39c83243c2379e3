/**
 * Runs independent tasks at the same time, as one task. The first to fail
 * aborts `stop` (the others watch its signal) and its error is the one thrown,
 * not the "cancelled" of a task it stopped; it is thrown only once every task
 * has settled, so nothing a task started (a child process, a scratch
 * directory) outlives the call.
 */
export async function together<T extends readonly unknown[]>(stop: AbortController, tasks: { readonly [K in keyof T]: Promise<T[K]> }): Promise<T> {
  let first: { error: unknown } | null = null;
  const watched = tasks.map((task) =>
    Promise.resolve(task).catch((error: unknown) => {
      first ??= { error };
      stop.abort();
      throw error;
    }),
  );
  const settled = await Promise.allSettled(watched);
  const failure = first as { error: unknown } | null;
  if (failure) throw failure.error;
  return settled.map((s) => (s.status === 'fulfilled' ? s.value : undefined)) as unknown as T;
}
