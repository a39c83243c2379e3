import crypto from 'node:crypto';
import { VmSyncError } from '../errors.js';

/** The largest shard count: far more runner hosts than any fleet vm-sync serves would use. */
export const MAX_SHARDS = 256;

/** Shard `index` of `count` (1-based, as written: `--shard 2/4`). */
export interface Shard {
  index: number;
  count: number;
}

/**
 * Parses `K/N` (1 ≤ K ≤ N ≤ {@link MAX_SHARDS}). `what` names the flag or
 * input in the error, so the user knows which one to fix.
 */
export function parseShard(text: string, what: string): Shard {
  const match = /^\s*([0-9]{1,3})\s*\/\s*([0-9]{1,3})\s*$/.exec(text);
  const index = match ? Number(match[1]) : NaN;
  const count = match ? Number(match[2]) : NaN;
  if (!(index >= 1 && count >= 1 && index <= count && count <= MAX_SHARDS)) {
    throw new VmSyncError('config_invalid', `${what} must be K/N with 1 <= K <= N <= ${MAX_SHARDS} (for example 2/4), not '${text}'`);
  }
  return { index, count };
}

/**
 * Which shard (1-based) of `count` a VM belongs to: a hash of its id alone.
 * Because nothing else enters the hash, adding or removing a VM moves no
 * other VM, and every runner computes the same partition from the same
 * config (no coordination, no state).
 */
export function shardOf(vmId: string, count: number): number {
  const digest = crypto.createHash('sha256').update(vmId, 'utf8').digest();
  // 48 bits are exact in a double and make the modulo bias negligible for N <= 256.
  return (digest.readUIntBE(0, 6) % count) + 1;
}

/** Whether the VM is in the shard (every VM is in exactly one shard of a given count). */
export function inShard(vmId: string, shard: Shard): boolean {
  return shardOf(vmId, shard.count) === shard.index;
}

/** `K/N`, as the user wrote it. */
export function shardLabel(shard: Shard): string {
  return `${shard.index}/${shard.count}`;
}
