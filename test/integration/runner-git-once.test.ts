import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { World } from '../helpers/world.js';

/*
 * The runner host asks git each question once per run, not once per VM: a
 * fleet on one commit costs one ancestry check (two git processes), and the
 * stream's export-subst check reads every .gitattributes with one process.
 * Observed through a `git` on PATH that logs its arguments.
 */

let world: World;
let bin: string;
let log: string;

beforeAll(async () => {
  world = await World.create(['g1', 'g2', 'g3', 'g4']);
  bin = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-gitlog-'));
  log = path.join(bin, 'git.log');
  const real = fs.realpathSync('/usr/bin/git');
  fs.writeFileSync(path.join(bin, 'git'), `#!/bin/sh\nprintf '%s\\n' "$*" >> '${log}'\nexec '${real}' "$@"\n`, { mode: 0o755 });
});
afterAll(() => {
  world?.destroy();
  fs.rmSync(bin, { recursive: true, force: true });
});

test('four VMs on one commit: one ancestry check, and the attribute files read once for the whole run', async () => {
  const files = { '.gitattributes': '*.txt text\n', 'a/.gitattributes': '*.sh text eol=lf\n', 'b/c/.gitattributes': '*.md text\n', 'app.txt': 'one\n' };
  const c1 = world.ws.commit(files, 'c1');
  world.ws.push();
  expect((await world.cli(['sync'])).code).toBe(0);
  const c2 = world.ws.commit({ ...files, 'app.txt': 'two\n' }, 'c2');
  world.ws.push();
  fs.rmSync(log, { force: true });
  const saved = process.env.PATH;
  process.env.PATH = `${bin}:${saved}`;
  let run;
  try {
    run = await world.cli(['sync', '-v']);
  } finally {
    process.env.PATH = saved;
  }
  expect(run.code).toBe(0);
  for (const id of ['g1', 'g2', 'g3', 'g4']) {
    expect(world.sentinel(id)).toBe(`${c2}\n`);
    expect(run.stderr).toMatch(new RegExp(`\\[${id}\\] staging ${c2.slice(0, 12)} from ${c1.slice(0, 12)} .*stream`));
  }
  const calls = fs.readFileSync(log, 'utf8').split('\n');
  expect(calls.filter((c) => c === `merge-base --is-ancestor ${c1} ${c2}`)).toHaveLength(1);
  // (Not one per VM: other steps ask it once each, the export's base and the scan's records.)
  expect(calls.filter((c) => c === `cat-file -e ${c1}^{commit}`).length).toBeLessThan(4);
  // The export and the stream both ask whether the commit uses export-subst: git is asked once.
  expect(calls.filter((c) => c.startsWith('cat-file blob ') || c.startsWith('show '))).toEqual([]);
  expect(calls.filter((c) => c === `ls-tree -r -z ${c2}`)).toHaveLength(1);
});
