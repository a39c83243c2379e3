import crypto from 'node:crypto';
import { inShard, parseShard, shardOf } from '../../src/config/shard.js';
import { selectVms } from '../../src/sync/fleet.js';
import type { Config, VmConfig } from '../../src/config/types.js';

const ids = (n: number, prefix = 'vm'): string[] => Array.from({ length: n }, (_, i) => `${prefix}${String(i + 1).padStart(3, '0')}`);

describe('parseShard', () => {
  test.each([
    ['1/1', { index: 1, count: 1 }],
    ['2/4', { index: 2, count: 4 }],
    [' 3 / 3 ', { index: 3, count: 3 }],
    ['256/256', { index: 256, count: 256 }],
  ])('%j', (text, shard) => expect(parseShard(text, '--shard')).toEqual(shard));

  test.each(['0/2', '3/2', '1/0', '1/257', '1', '1/2/3', 'a/b', '-1/2', '1.5/2', '', '/2', '2/'])('refuses %j, naming the flag', (text) => {
    expect(() => parseShard(text, 'input shard')).toThrow(/^input shard must be K\/N with 1 <= K <= N <= 256/);
  });
});

describe('shardOf', () => {
  test('every VM is in exactly one shard, for every shard count', () => {
    for (const count of [1, 2, 3, 7, 16]) {
      for (const id of ids(200)) {
        const holders = Array.from({ length: count }, (_, i) => i + 1).filter((index) => inShard(id, { index, count }));
        expect(holders).toEqual([shardOf(id, count)]);
      }
    }
  });

  test('a hash of the id alone: the same for every runner, whatever the config order or the other VMs', () => {
    // Written independently of the implementation: the first 6 bytes of SHA-256, big-endian, modulo N, plus one.
    const reference = (id: string, count: number): number => Number(BigInt(`0x${crypto.createHash('sha256').update(id).digest('hex').slice(0, 12)}`) % BigInt(count)) + 1;
    for (const id of [...ids(300), 'web-01', 'db.eu-west', 'ünïcode', 'x']) for (const count of [2, 5, 10, 256]) expect(shardOf(id, count)).toBe(reference(id, count));
  });

  test('adding or removing VMs (in any order) moves no other VM', () => {
    const vm = (id: string): VmConfig => ({ id, host: '10.0.0.1' }) as VmConfig;
    const shardsOf = (list: string[]): Map<string, number> => {
      const config = { vms: list.map(vm) } as unknown as Config;
      return new Map([1, 2, 3, 4].flatMap((index) => selectVms(config, undefined, { index, count: 4 }).map((v) => [v.id, index] as [string, number])));
    };
    const before = shardsOf(ids(100));
    const after = shardsOf([...ids(50, 'new'), ...ids(100).slice(10).reverse()]);
    for (const id of ids(100).slice(10)) expect(after.get(id)).toBe(before.get(id));
    expect(after.size).toBe(140);
  });

  test('spreads a fleet evenly (each of 4 shards holds 25% ± 3% of 10,000 VMs)', () => {
    const sizes = [0, 0, 0, 0];
    for (const id of ids(10000)) sizes[shardOf(id, 4) - 1]++;
    for (const size of sizes) expect(Math.abs(size - 2500)).toBeLessThan(300);
  });
});

describe('selectVms with a shard', () => {
  const vm = (id: string): VmConfig => ({ id, host: '10.0.0.1' }) as VmConfig;
  const config = { vms: ids(40).map(vm) } as unknown as Config;

  test('the shards of a fleet are disjoint, cover it, and keep config order', () => {
    const shards = [1, 2, 3].map((index) => selectVms(config, undefined, { index, count: 3 }).map((v) => v.id));
    expect(shards.flat().sort()).toEqual(ids(40));
    for (const shard of shards) expect(shard).toEqual(ids(40).filter((id) => shard.includes(id)));
    for (const [index, shard] of shards.entries()) for (const id of shard) expect(shardOf(id, 3)).toBe(index + 1);
  });

  test('--vm narrows within the shard; a VM of another shard is not an error, an unknown one is', () => {
    const [a, b] = [ids(40).find((id) => shardOf(id, 2) === 1) as string, ids(40).find((id) => shardOf(id, 2) === 2) as string];
    expect(selectVms(config, [a, b], { index: 1, count: 2 }).map((v) => v.id)).toEqual([a]);
    expect(selectVms(config, [b], { index: 1, count: 2 })).toEqual([]);
    expect(() => selectVms(config, ['nope'], { index: 1, count: 2 })).toThrow(/unknown VM id nope/);
  });
});
