import { AgentSession } from '../../src/remote/agent-session.js';
import { FakeChannel, sessionWith } from '../helpers/fake-channel.js';

/** One request on a fresh session, answered by `lines` (the VM's stdout). */
async function answered(lines: string): Promise<{ code: number; framed: string }> {
  const channel = new FakeChannel();
  const agent = await AgentSession.open(sessionWith(channel), '/srv/app', 60);
  const reply = agent.request('probe', [], { nonce: 'ab12', budgetS: 30 });
  await new Promise((resolve) => setImmediate(resolve)); // the request is sent from the session's queue
  expect(channel.written).toEqual(['ab12 30 probe\n']);
  channel.emit('data', Buffer.from(lines));
  return reply;
}

describe("a request's exit status, as the session's done line gives it", () => {
  test.each([
    ['0', 0],
    ['3', 3],
    ['124', 124],
  ])('done=%s is status %d', async (status, code) => {
    const reply = await answered(`@ab12 kind=dir\n@ab12 done=${status}\n`);
    expect(reply).toMatchObject({ code, framed: '@ab12 kind=dir' });
  });

  // The agent could not read the status it wrote (its file gone): never a success.
  test.each(['', ' 0', '0x0', '-3', '1e1', '99999'])('done=%j is no status (-1)', async (status) => {
    const reply = await answered(`@ab12 done=${status}\n`);
    expect(reply.code).toBe(-1);
  });
});
