import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { agentCommand, parseAgentOutput } from '../../src/remote/agent-script.js';

// A VM user whose $HOME ends in "/" (a passwd field "/home/deploy/"), target "~/app": the agent's
// parent directory must come out as dirname(1) gives it, without the trailing slash, or `stage` answers
// "$HOME/.app.vm-sync/..." with a doubled slash, RemoteTarget.stage refuses it, and every deploy to such
// a VM fails at stage.
test('stage with HOME ending in "/" answers the path RemoteTarget.stage expects', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-home-slash-'));
  try {
    const env = { ...process.env, HOME: `${dir}/` };
    const run = (op: string, nonce: string, ...args: string[]) => parseAgentOutput(execFileSync('sh', ['-c', agentCommand(op, '~/app', { nonce, budgetS: 30 }, ...args)], { encoding: 'utf8', env }), nonce);
    const probe = run('probe', 'n1');
    const target = probe.require('target');
    expect(run('begin', 'n2', 'vm-sync-lock-v2 token=tok pid=1', '600', '', '0', '60', '600', '').get('lock')).toBe('acquired');
    const sha = 'a'.repeat(40);
    const stage = run('stage', 'n3', 'tok', sha).require('stage');
    // What RemoteTarget.stage compares it with:
    const expected = path.posix.join(path.posix.dirname(target), `.${path.posix.basename(target)}.vm-sync`, 'releases', `${sha}.partial`);
    expect(stage).toBe(expected);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
