import { commitPush, filesHolding, leaked, outputs, secrets } from './helpers.js';
import { World } from '../helpers/world.js';

/*
 * Adversary (review of 0a2963a): the scan cache vouches for a file by
 * (blob, path), but git archive makes its deployed bytes from the blob AND
 * the commit's .gitattributes. `working-tree-encoding=UTF-16LE` makes git
 * archive re-encode the blob (UTF-8 in git) as UTF-16LE: a blob holding the
 * UTF-8 form of "the secret's bytes read as UTF-16LE" (CJK text, no secret,
 * no `$Format:`) is deployed as the plain ASCII secret. Its commit's patch
 * shows only the CJK text; the tree scan of the first commit (no attribute)
 * sees only the CJK text: clean, cached. A second commit adds only the
 * attribute: its patch is one .gitattributes line, the file is cached, and
 * the VM gets the secret. A cold scan of that commit's tree finds it.
 *
 * Second: a file named `a!b.txt` holding a secret. The gate matches findings
 * to tree files by `file.split('!')[0]` ('a'), so `a!b.txt` itself is never
 * "touched" and is cached as clean although this very scan found a secret in
 * it. The next deploy skips it. (The same carrier hides it from the commit
 * scan.)
 */

const raw = `GITHUB_TOKEN=${secrets.github}\n`;
/** Even length: a whole number of UTF-16 code units. */
const text = raw.length % 2 ? `${raw}\n` : raw;
/** A blob whose UTF-16LE working-tree form is `plain` (even length: padded with a newline). */
function utf16Carrier(plain: string): Buffer {
  const bytes = Buffer.from(plain);
  return Buffer.from(bytes.toString('utf16le'), 'utf8');
}

test('a cached blob deployed through a later working-tree-encoding attribute is scanned again (its deployed bytes changed)', async () => {
  const world = await World.create(['w01']);
  try {
    commitPush(world, [['app.txt', 'v1\n'], ['notes.txt', utf16Carrier(text)]], 'base');
    const first = await world.cli(['sync']);
    expect(first.code).toBe(0);
    expect(filesHolding(world.target('w01'), secrets.github)).toEqual([]);
    // The work tree holds the file as the attribute says it is there (UTF-16LE: the plain text): git add stores the same blob.
    commitPush(world, [['.gitattributes', 'notes.txt working-tree-encoding=UTF-16LE\n'], ['notes.txt', text]], 'attributes');
    expect(world.ws.git(world.ws.work, ['diff', '--name-only', 'HEAD~1', 'HEAD'])).toBe('.gitattributes');
    const run = await world.cli(['sync']);
    for (const t of outputs(run)) expect(leaked(t)).toBeNull();
    expect({ code: run.code, onVm: filesHolding(world.target('w01'), secrets.github) }).toEqual({ code: 3, onVm: [] });
  } finally {
    world.destroy();
  }
}, 180_000);

test("a file whose name holds '!' with a finding is never cached as clean", async () => {
  const world = await World.create(['w02']);
  try {
    commitPush(world, [['app.txt', 'v1\n']], 'base');
    expect((await world.cli(['sync'])).code).toBe(0);
    // The secret reaches the tree only through git archive (the patch shows CJK text): the tree scan is the gate.
    commitPush(world, [['.gitattributes', 'a!b.txt working-tree-encoding=UTF-16LE\n'], ['a!b.txt', text]], 'carrier');
    const blocked = await world.cli(['sync']);
    expect(blocked.code).toBe(3);
    commitPush(world, [['app.txt', 'v2\n']], 'unrelated');
    const run = await world.cli(['sync']);
    for (const t of outputs(run)) expect(leaked(t)).toBeNull();
    expect({ code: run.code, onVm: filesHolding(world.target('w02'), secrets.github) }).toEqual({ code: 3, onVm: [] });
  } finally {
    world.destroy();
  }
}, 180_000);
