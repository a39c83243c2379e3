import { askedOnce, type History } from '../../src/sync/state.js';
import { attributeFiles, batchContents } from '../../src/git/attributes.js';

test('askedOnce: VMs on the same commit share one answer; another pair is asked; a failed question is asked again', async () => {
  const asked: string[] = [];
  let fail = true;
  const history: History = {
    relation: async (vmRev, deploy) => {
      asked.push(`${vmRev}..${deploy}`);
      if (vmRev === 'c' && fail) {
        fail = false;
        throw new Error('git could not run');
      }
      return vmRev === deploy ? 'up-to-date' : 'behind';
    },
  };
  const once = askedOnce(history);
  const answers = await Promise.all(['a', 'a', 'a', 'b', 'a'].map((rev) => once.relation(rev, 'd')));
  expect(answers).toEqual(['behind', 'behind', 'behind', 'behind', 'behind']);
  expect(asked).toEqual(['a..d', 'b..d']);
  await expect(once.relation('d', 'd')).resolves.toBe('up-to-date');
  await expect(once.relation('c', 'd')).rejects.toThrow('git could not run');
  await expect(once.relation('c', 'd')).resolves.toBe('behind');
  expect(asked).toEqual(['a..d', 'b..d', 'd..d', 'c..d', 'c..d']);
});

test('attributeFiles: every blob named .gitattributes at any depth, with its id; nothing else', () => {
  const oid = (n: number): string => String(n).repeat(40).slice(0, 40);
  const listing = Buffer.from(
    [
      `100644 blob ${oid(1)}\t.gitattributes`,
      `100644 blob ${oid(2)}\tsrc/app.c`,
      `100644 blob ${oid(3)}\tdeep/er/.gitattributes`,
      `100644 blob ${oid(4)}\tnot.gitattributes`,
      `160000 commit ${oid(5)}\tmodule/.gitattributes`,
      `120000 blob ${oid(6)}\tlinked/.gitattributes`,
      `100644 blob ${oid(7)}\twith\ttab/.gitattributes`,
      '',
    ].join('\0'),
    'latin1',
  );
  expect(attributeFiles(listing)).toEqual([
    { path: '.gitattributes', oid: oid(1) },
    { path: 'deep/er/.gitattributes', oid: oid(3) },
    { path: 'linked/.gitattributes', oid: oid(6) },
    { path: 'with\ttab/.gitattributes', oid: oid(7) },
  ]);
});

test('batchContents: the objects in order, each whole; null for a missing object, a short answer or the wrong count', () => {
  const answer = (parts: Array<[string, string]>): Buffer => Buffer.from(parts.map(([oid, body]) => `${oid} blob ${body.length}\n${body}\n`).join(''), 'latin1');
  const two = answer([
    ['a'.repeat(40), 'x export-su\nb'],
    ['b'.repeat(40), ''],
  ]);
  expect(batchContents(two, 2)?.map((b) => b.toString('latin1'))).toEqual(['x export-su\nb', '']);
  expect(batchContents(two, 3)).toBeNull();
  expect(batchContents(Buffer.from(`${'a'.repeat(40)} missing\n`), 1)).toBeNull();
  expect(batchContents(two.subarray(0, two.length - 3), 2)).toBeNull();
  expect(batchContents(null, 0)).toBeNull();
  expect(batchContents(Buffer.alloc(0), 0)).toEqual([]);
});
