import type { Quantity } from './types.js';

/**
 * Turns a configured {@link Quantity} into a number of VMs out of `total` (the VMs selected for
 * the run, a whole number >= 0).
 *
 * - `{ count }` is returned as written (it is not capped at `total`; a batch larger than the
 *   fleet simply holds every VM).
 * - `{ percent }` is `percent` % of `total`, rounded in integer arithmetic (no floating-point
 *   surprises such as 0.07 * 100 = 7.000000000000001).
 * - `round: 'up'` is for `rollout.batch_size`: rounded up, and never less than 1, so a rolling
 *   rollout always makes progress (25% of 10 = 3; 1% of 10 = 1; any percentage of 0 = 1).
 * - `round: 'down'` is for `rollout.max_failed`: rounded down, so the tolerance is never more
 *   than asked for (10% of 9 = 0; 50% of 5 = 2).
 *
 * @param q the parsed `batch_size` or `max_failed`
 * @param total how many VMs the quantity is a share of
 * @param round `'up'` for batch sizes, `'down'` for failure limits
 * @returns a whole number of VMs, >= 0 (>= 1 with `'up'`)
 * @throws RangeError when `total` is not a whole number >= 0
 */
export function resolveQuantity(q: Quantity, total: number, round: 'up' | 'down'): number {
  if (!Number.isSafeInteger(total) || total < 0) throw new RangeError(`total must be a whole number >= 0, not ${total}`);
  let n: number;
  if ('count' in q) {
    n = q.count;
  } else {
    const hundredths = q.percent * total;
    n = round === 'up' ? Math.floor((hundredths + 99) / 100) : Math.floor(hundredths / 100);
  }
  return round === 'up' ? Math.max(1, n) : n;
}

/**
 * Parses the YAML value of `batch_size` (`min` 1) or `max_failed` (`min` 0): a whole number
 * >= `min` written as plain digits, or a string `"N%"` with N a whole number from `min` to 100.
 * Returns null for anything else: negative numbers, floats (also `3.0`), `1e3`, `0x10`,
 * `"abc"`, `"150%"`, `"2.5%"`, and `"0%"` when `min` is 1.
 *
 * @param value the scalar's value as the YAML parser produced it
 * @param source the scalar's text in the file, when known (tells `3` from `3.0`)
 */
export function parseQuantity(value: unknown, min: 0 | 1, source?: string): Quantity | null {
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value) || value < min) return null;
    if (source !== undefined && !/^[0-9]+$/.test(source)) return null;
    return { count: value };
  }
  if (typeof value === 'string') {
    const match = /^([0-9]{1,3})%$/.exec(value);
    if (!match) return null;
    const percent = Number(match[1]);
    return percent >= min && percent <= 100 ? { percent } : null;
  }
  return null;
}
