import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { AGENT_SCRIPT } from '../../src/remote/agent-script.js';

/*
 * Review of 6447b46. `link` runs while the scan runs and, per its comment, "the partial is
 * removed by `unlock` when the run ends without building on it". unlock finds it by the record
 * tmp/linked.<sha> ("TOKEN BASE"), but link writes that record only after `cp -al` finished.
 * A link cut off during the copy (the run cancelled while the scan runs and its steps killed by
 * nonce, or its step budget spent: `timeout` kills the whole process group) leaves
 * releases/<sha>.partial, a hard-link copy of the live release, with no record: unlock leaves it
 * behind, so a blocked or cancelled run does not leave the VM as it found it (and the next run
 * of that commit finds a partial, so link answers '' and the copy ahead is lost for it too).
 * The copy is the slow part on exactly the large trees this step exists for.
 */

let root: string;
afterEach(() => fs.rmSync(root, { recursive: true, force: true }));

const TOKEN = 'runner-host:4242:feedc0de';
const SHA = 'ab'.repeat(20);
const BASE = '20261122T070000000Z-222222222222';

function agent(op: string, args: string[], env: NodeJS.ProcessEnv = process.env, timeoutS?: number): { code: number | null; out: string } {
  const argv = ['-c', AGENT_SCRIPT, 'vm-sync', 'abc123', op, path.join(root, 'app'), ...args];
  const r = timeoutS ? spawnSync('timeout', [String(timeoutS), 'sh', ...argv], { env, encoding: 'utf8' }) : spawnSync('sh', argv, { env, encoding: 'utf8' });
  return { code: r.status, out: `${r.stdout}${r.stderr}` };
}

test('a link cut off during its copy leaves no partial release behind once the run unlocks', () => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-review23b-link-'));
  // The lock, taken as a run takes it.
  const begun = agent('begin', [`vm-sync-lock-v2 token=${TOKEN} host=runner-host pid=4242`, '600', SHA, '0', '30', '3600', '']);
  expect(begun.out).toMatch(/lock=acquired/);
  // A live release sealed by vm-sync: files, completion marker, manifest, the target's symlink.
  const S = path.join(root, '.app.vm-sync');
  const live = path.join(S, 'releases', BASE);
  fs.mkdirSync(path.join(live, 'lib'), { recursive: true });
  for (let i = 0; i < 50; i++) fs.writeFileSync(path.join(live, 'lib', `f${i}.txt`), `${i}\n`);
  fs.writeFileSync(path.join(live, '.sync_rev'), `${'22'.repeat(20)}\n`);
  fs.writeFileSync(path.join(S, 'complete', BASE), `${'22'.repeat(20)}\nkey=\n`);
  fs.writeFileSync(path.join(S, 'manifests', BASE), execFileSync('sh', ['-c', `find "$1" -mindepth 1 -printf '%y %m %s %T@ %i %P\\0' | LC_ALL=C sort -z`, 'sh', live]));
  fs.symlinkSync(`.app.vm-sync/releases/${BASE}`, path.join(root, 'app'));
  const before = fs.readdirSync(path.join(S, 'releases')).sort();

  // A slow copy (a large tree), cut off by the step's budget: `timeout` kills its process group.
  const bin = path.join(root, 'bin');
  fs.mkdirSync(bin);
  const realCp = execFileSync('sh', ['-c', 'command -v cp'], { encoding: 'utf8' }).trim();
  fs.writeFileSync(path.join(bin, 'cp'), `#!/bin/sh\n'${realCp}' "$@"\nsleep 30\n`, { mode: 0o755 });
  const cut = agent('link', [TOKEN, SHA, BASE], { ...process.env, PATH: `${bin}:${process.env.PATH ?? ''}` }, 2);
  expect(cut.code).toBe(124);
  expect(fs.existsSync(path.join(S, 'releases', `${SHA}.partial`))).toBe(true);

  // The run ends (scan blocked, or cancelled): unlock releases the lock and removes what link made.
  expect(agent('unlock', [TOKEN]).out).toMatch(/lock=released/);
  expect(fs.readdirSync(path.join(S, 'releases')).sort()).toEqual(before);
});
