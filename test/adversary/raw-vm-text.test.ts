import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { commitExactly, configure, destroyWorld, ESC, rows } from '../helpers/hardening.js';
import { World } from '../helpers/world.js';

/*
 * Finding: values the agent prints are only stripped of \n and \r on the VM;
 * target.ts passes `stage=` (stage()), `target=` (inPlaceBegin()) and
 * `timeout=` (writability()) on without vmText(). The stage/target become the
 * rsync destination and reach the error message ("rsync to <dest> failed"),
 * and doctor prints the timeout path: terminal escapes from the VM reach the
 * terminal and the JSON raw.
 *
 * The VM is hostile: its `timeout` (first on its PATH) answers `stage` and
 * `doctor` itself, with the frame (the nonce is in its own argv).
 */

let world: World;
let bin: string;
const EVIL = `${ESC}]0;owned${'\u0007'}${ESC}[2J${ESC}[31m`;

beforeAll(async () => {
  bin = fs.mkdtempSync(path.join(os.tmpdir(), 'adv-rawbin-'));
  // argv: -k 3 BUDGET sh -c SCRIPT vm-sync NONCE OP TARGET ARGS...
  fs.writeFileSync(
    path.join(bin, 'timeout'),
    `#!/bin/bash
nonce=$8 op=$9
evil=$(printf '\\033]0;owned\\007\\033[2J\\033[31m')
case $op in
stage) sha=\${12}; printf '@%s pgid=%s\\n@%s stage=/nonexistent/%s/releases/%s.partial\\n@%s link_dest=\\n@%s end=ok\\n' "$nonce" $$ "$nonce" "$evil" "$sha" "$nonce" "$nonce"; exit 0 ;;
inplace-begin) printf '@%s pgid=%s\\n@%s target=/nonexistent/%s/x\\n@%s end=ok\\n' "$nonce" $$ "$nonce" "$evil" "$nonce" "$nonce"; exit 0 ;;
doctor) printf '@%s pgid=%s\\n@%s parent=/tmp\\n@%s existing=/tmp\\n@%s writable=1\\n@%s avail_kb=100000\\n@%s timeout=/usr/bin/%stimeout\\n@%s end=ok\\n' "$nonce" $$ "$nonce" "$nonce" "$nonce" "$nonce" "$nonce" "$evil" "$nonce"; exit 0 ;;
esac
exec /usr/bin/timeout "$@"
`,
    { mode: 0o755 },
  );
  world = await World.create(['evil'], { sshdExtra: { evil: [`SetEnv PATH=${bin}:/usr/bin:/bin`] } });
  commitExactly(world, { 'app.txt': 'v1\n' }, 'v1');
});
afterAll(() => {
  destroyWorld(world);
  fs.rmSync(bin, { recursive: true, force: true });
});

test('atomic: a VM-chosen stage path with escapes reaches the error message raw', async () => {
  // Through rsync, which stages first (a stream transfer's apply makes its own stage, and never asks for one).
  configure(world, { sync: ['transfer: rsync'] });
  const run = await world.cli(['sync']);
  const row = rows(run).evil;
  const human = await world.cli(['sync'], { json: false });
  configure(world);
  expect(row.error?.code).toBe('remote_command_failed');
  expect({ code: row.error?.code, message: row.error?.message.slice(0, 120) }).toBeDefined();
  expect({ jsonHasEsc: row.error?.message.includes(ESC), humanHasEsc: (human.stdout + human.stderr).includes(EVIL) }).toEqual({ jsonHasEsc: false, humanHasEsc: false });
});

test('in-place: a VM-chosen target path with escapes reaches the error message raw', async () => {
  configure(world, { repository: ['layout: in-place'] });
  const run = await world.cli(['sync']);
  const row = rows(run).evil;
  const human = await world.cli(['sync'], { json: false });
  configure(world);
  expect(row.error?.code).toBeDefined();
  expect({ jsonHasEsc: row.error?.message.includes(ESC), humanHasEsc: (human.stdout + human.stderr).includes(EVIL) }).toEqual({ jsonHasEsc: false, humanHasEsc: false });
});

test('doctor: the VM\'s `command -v timeout` answer is printed raw', async () => {
  const human = await world.cli(['doctor'], { json: false });
  expect((human.stdout + human.stderr).includes(EVIL)).toBe(false);
});
