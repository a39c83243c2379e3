/*
 * The vm-sync command on a runner host (scripts/vm-sync-wrapper.sh) chooses
 * the Node.js that runs the CLI. Root, or an operator, must never run a node
 * that another user can replace: not one that another user owns (tested in
 * test/integration/bootstrap.test.ts), and not one in a directory, or a file,
 * that another user may write (a group- or world-writable directory, without
 * the sticky bit that keeps others off what is not theirs). Real sh, real
 * files, run as root.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const isRoot = process.getuid?.() === 0;
const maybe = isRoot ? test : test.skip;
/** A group that is not root's (the file's group is what counts, not who is in it). */
const OTHER_GID = 65534;

let tree: string;
let runnerDir: string;
let nodeDir: string;
let record: string;

beforeEach(() => {
  tree = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-wrapper-'));
  fs.chmodSync(tree, 0o755);
  const bin = path.join(tree, 'usr', 'local', 'bin');
  fs.mkdirSync(bin, { recursive: true });
  fs.writeFileSync(path.join(bin, 'vm-sync'), fs.readFileSync('scripts/vm-sync-wrapper.sh', 'utf8').replace('@RUNNER_DIR@', '/opt/runner'), { mode: 0o755 });
  fs.mkdirSync(path.join(tree, 'usr', 'local', 'lib', 'vm-sync'), { recursive: true });
  fs.writeFileSync(path.join(tree, 'usr', 'local', 'lib', 'vm-sync', 'cli.js'), '');
  runnerDir = path.join(tree, 'opt', 'runner');
  nodeDir = path.join(runnerDir, 'externals', 'node24', 'bin');
  fs.mkdirSync(nodeDir, { recursive: true });
  record = path.join(tree, 'ran');
  // A stand-in node: it records that it ran, and with what arguments.
  fs.writeFileSync(path.join(nodeDir, 'node'), `#!/bin/sh\necho "$@" > ${record}\n`, { mode: 0o755 });
  for (let p = nodeDir; p.startsWith(tree); p = path.dirname(p)) fs.chmodSync(p, 0o755);
  // PATH: the few tools the wrapper uses, and no node.
  fs.mkdirSync(path.join(tree, 'tools'));
  for (const tool of ['readlink', 'dirname', 'id', 'stat']) fs.symlinkSync(`/usr/bin/${tool}`, path.join(tree, 'tools', tool));
});
afterEach(() => fs.rmSync(tree, { recursive: true, force: true }));

/** Runs the tree's vm-sync as root with only the tools it needs on PATH (no node there). */
function run(env: Record<string, string> = {}): { code: number | null; stderr: string; ran: boolean } {
  fs.rmSync(record, { force: true });
  const result = spawnSync(path.join(tree, 'usr', 'local', 'bin', 'vm-sync'), ['--help'], { env: { PATH: path.join(tree, 'tools'), ...env }, encoding: 'utf8' });
  return { code: result.status, stderr: result.stderr, ran: fs.existsSync(record) };
}

describe("the vm-sync wrapper caps V8's young generation", () => {
  const cli = (): string => path.join(tree, 'usr', 'local', 'lib', 'vm-sync', 'cli.js');
  maybe('node runs the CLI with --max-semi-space-size=2 (a deploy to 100 VMs peaks at 130-155 MB, not 190-245)', () => {
    expect(run().ran).toBe(true);
    expect(fs.readFileSync(record, 'utf8').trim()).toBe(`--max-semi-space-size=2 ${cli()} --help`);
  });

  maybe('a size chosen in NODE_OPTIONS is left to apply (a flag on the command line would override it)', () => {
    expect(run({ NODE_OPTIONS: '--max-semi-space-size=16' }).ran).toBe(true);
    expect(fs.readFileSync(record, 'utf8').trim()).toBe(`${cli()} --help`);
    // Another NODE_OPTIONS does not stop the cap.
    expect(run({ NODE_OPTIONS: '--enable-source-maps' }).ran).toBe(true);
    expect(fs.readFileSync(record, 'utf8').trim()).toBe(`--max-semi-space-size=2 ${cli()} --help`);
  });
});

describe('the vm-sync wrapper never runs a node another user may replace', () => {
  maybe('a root-owned node in root-owned directories that only root can write is used', () => {
    expect(run()).toEqual({ code: 0, stderr: '', ran: true });
  });

  maybe('a world-writable directory on the way (no sticky bit) is refused, with the reason and the fix', () => {
    fs.chmodSync(path.join(runnerDir, 'externals'), 0o777);
    const refused = run();
    expect(refused.ran).toBe(false);
    expect(refused.code).toBe(127);
    expect(refused.stderr).toContain(`${nodeDir}/node (${path.join(runnerDir, 'externals')} is writable by other users)`);
  });

  maybe('a directory writable by a group other than root\'s, or a node file others may write, is refused', () => {
    fs.chownSync(nodeDir, 0, OTHER_GID);
    fs.chmodSync(nodeDir, 0o775);
    expect(run().ran).toBe(false);
    fs.chmodSync(nodeDir, 0o755);
    expect(run().ran).toBe(true);
    fs.chmodSync(path.join(nodeDir, 'node'), 0o757);
    expect(run().ran).toBe(false);
  });

  maybe('the CLI bundle is held to the same rule: one another user owns or may write is not run', () => {
    const cli = path.join(tree, 'usr', 'local', 'lib', 'vm-sync', 'cli.js');
    fs.chownSync(cli, OTHER_GID, OTHER_GID);
    const owned = run();
    expect([owned.code, owned.ran]).toEqual([127, false]);
    expect(owned.stderr).toContain(`the CLI bundle ${cli} is not used, because another user can replace it: ${cli} (${cli} belongs to uid ${OTHER_GID})`);
    fs.chownSync(cli, 0, 0);
    fs.chmodSync(path.dirname(cli), 0o777);
    expect(run().ran).toBe(false);
  });

  maybe('a sticky world-writable directory (like /tmp) does not make what root owns in it replaceable', () => {
    fs.chmodSync(path.join(runnerDir, 'externals'), 0o1777);
    expect(run()).toEqual({ code: 0, stderr: '', ran: true });
  });
});
