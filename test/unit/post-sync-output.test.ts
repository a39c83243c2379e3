/*
 * post_sync_command output on its way from the VM's channel to the report:
 * what the masking sees must be the output as the command printed it. A line
 * longer than the session's line bound, or a character split between two
 * reads of the channel, must not be cut into pieces that no longer look like
 * the secret they hold.
 */
import { AgentSession } from '../../src/remote/agent-session.js';
import { clearRegisteredSecrets, maskSecrets, registerSecret } from '../../src/remote/mask.js';
import { commandOutputTail } from '../../src/remote/untrusted.js';
import { FakeChannel, sessionWith } from '../helpers/fake-channel.js';

const KEEP = 64 * 1024;

/** Sends `chunks` as the VM's stdout for one post request and returns the output as vm-sync keeps it (tail, masked). */
async function keptOutput(chunks: Buffer[]): Promise<string> {
  const channel = new FakeChannel();
  const agent = await AgentSession.open(sessionWith(channel), '/srv/app', 60);
  const reply = agent.request('post', [], { nonce: 'n1', budgetS: 60, otherTail: KEEP });
  await new Promise((resolve) => setImmediate(resolve)); // the request is sent from the session's queue
  for (const chunk of [...chunks, Buffer.from('@n1 exit=0\n@n1 done=0\n')]) channel.emit('data', chunk);
  const { other } = await reply;
  return maskSecrets(commandOutputTail(other, 200, KEEP));
}

afterEach(() => clearRegisteredSecrets());

describe('post_sync output from the channel to the report', () => {
  test('a secret that straddles the session line bound of a long line is still masked (no newline is put into the line)', async () => {
    // An assignment whose name is cut at the bound: PASSW | ORD=...
    const value = 'hunter2-' + 'q'.repeat(6);
    const line = `${'x'.repeat(8188)} PASSW`;
    const kept = await keptOutput([Buffer.from(line), Buffer.from(`ORD=${value} done\n`), Buffer.from('restarted\n')]);
    expect(kept.includes(value)).toBe(false);
    expect(kept.split('\n').at(-1)).toBe('restarted');
  });

  test('a registered value split by the bound, even over many reads of a very long line, is masked', async () => {
    const secret = 'Registered-Value-9';
    registerSecret(secret);
    // The first read ends inside the value, past the session's line bound.
    const chunks = [Buffer.from(`${'y'.repeat(8190)}${secret.slice(0, 8)}`), Buffer.from(secret.slice(8)), Buffer.from(`${'z'.repeat(20_000)}\nok ${secret}\n`)];
    const kept = await keptOutput(chunks);
    expect(/Regis|Value-9/.test(kept.split('\n').slice(0, -1).join('\n'))).toBe(false);
    expect(kept.split('\n').at(-1)).toBe('ok ***');
  });

  test('a line longer than what is kept is dropped whole, never kept as a fragment that starts mid-line', () => {
    // The character bound falls inside the only line: what is left of it starts mid-word.
    expect(commandOutputTail(`${'x'.repeat(100)} PASSWORD=abc`, 200, 50)).toBe('[… earlier output not kept]\n');
    expect(commandOutputTail(`first\n${'x'.repeat(100)} PASSWORD=abc`, 200, 50)).toBe('[… earlier output not kept]\n');
    // After the session's own cut, the same.
    expect(commandOutputTail(`\n[... 99 characters not kept ...]\nPASSWORD=abc`, 200, 65536)).toBe('[… earlier output not kept]\n');
  });

  test('a character split between two reads stays one character', async () => {
    const text = Buffer.from('déploiement réussi ✓\n');
    const at = text.indexOf(Buffer.from('é', 'utf8')) + 1; // inside the two bytes of é
    const kept = await keptOutput([text.subarray(0, at), text.subarray(at)]);
    expect(kept).toBe('déploiement réussi ✓');
  });

  test('the line after a one-character cut is dropped like after any cut', () => {
    // BoundedText says "1 character" for a cut of one.
    expect(commandOutputTail('\n[... 1 character not kept ...]\nASSWORD=abc\nwhole\n', 200, 65536)).toBe('[… earlier output not kept]\nwhole');
  });
});
