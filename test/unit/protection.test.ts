import type { WorkflowContext } from '../../src/action/context.js';
import { octokitBranchReader } from '../../src/action/octokit-api.js';
import { repositoryOfUrl } from '../../src/doctor/github.js';
import { repositoryKey } from '../../src/doctor/host.js';
import { answerOf, fetchBranchReader, judgeProtection } from '../../src/report/protection.js';

const where = { owner: 'acme', repo: 'app', branch: 'main' };

describe('repositoryOfUrl', () => {
  test.each([
    ['https://github.com/acme/app.git', 'acme/app'],
    ['https://github.com/acme/app', 'acme/app'],
    ['https://x-access-token:abc@github.com/acme/app.git/', 'acme/app'],
    ['git@github.com:acme/app.git', 'acme/app'],
    ['ssh://git@ghe.example.com:2222/acme/app', 'acme/app'],
    ['https://ghe.example.com/scm/acme/app.git', 'acme/app'],
  ])('%s names %s', (url, name) => expect(repositoryOfUrl(url)).toEqual({ owner: name.split('/')[0], repo: name.split('/')[1] }));
  test.each(['/srv/git/app.git', 'file:///srv/app.git', 'https://github.com/app.git', 'https://github.com/ac me/app'])('%s names none', (url) => expect(repositoryOfUrl(url)).toBeNull());
  // A dot segment would move the API request to another path of the API host (with the token).
  test.each(['git@github.com:acme/..', 'git@github.com:../app.git', 'git@github.com:./..', 'ssh://git@github.com/acme/%2e%2E', 'https://github.com/acme/%2E'])('%s names none (a dot segment)', (url) => expect(repositoryOfUrl(url)).toBeNull());
});

describe('fetchBranchReader', () => {
  test('asks exactly GET {api}/repos/{owner}/{repo}/branches/{branch}, and never with a dot segment in it', async () => {
    const asked: string[] = [];
    const fetchImpl = (async (url: string | URL) => {
      asked.push(String(url));
      return new Response(JSON.stringify({ protected: true }), { status: 200 });
    }) as typeof fetch;
    const read = fetchBranchReader('https://ghe.example.com/api/v3/', 'tok', { fetchImpl });
    expect((await read('acme', 'app', 'release/1.x')).protected).toBe(true);
    expect(asked).toEqual(['https://ghe.example.com/api/v3/repos/acme/app/branches/release%2F1.x']);
    for (const [owner, repo, branch] of [['..', '..', 'main'], ['acme', '.', 'main'], ['acme', 'app', '..']]) {
      const answer = await read(owner, repo, branch);
      expect(answer.status).toBe(0);
      expect(answer.reason).toMatch(/not a repository or branch name/);
    }
    expect(asked).toHaveLength(1);
  });

  test('a token no HTTP header can carry is never quoted back: fetch\'s own error names the header value', async () => {
    const parts = ['first-line-part', 'second-line-part'];
    for (const token of [parts.join('\n'), `${parts[0]}\u20ac${parts[1]}`, `${parts[0]}\u0000${parts[1]}`]) {
      // The CLI's reader (doctor --github) and the Action's (octokit).
      const readers = [fetchBranchReader('http://127.0.0.1:9', token, { timeoutMs: 2000 }), octokitBranchReader(token, { apiUrl: 'http://127.0.0.1:9' } as WorkflowContext)];
      for (const read of readers) {
        const answer = await read('acme', 'app', 'main');
        expect(answer.status).toBe(0);
        expect(answer.reason).toMatch(/token/);
        for (const part of parts) expect(answer.reason).not.toContain(part);
        expect(judgeProtection(where, answer).message).not.toMatch(/line-part/);
      }
    }
  });
});

describe('repositoryKey: one repository however it is written', () => {
  test.each([
    ['https://github.com/acme/app.git', 'https://GitHub.com/acme/app/'],
    ['https://user:secret@github.com/acme/app', 'https://github.com/acme/app.git'],
    ['git@github.com:acme/app.git', 'github.com:acme/app'],
    ['/srv/git/app.git', '/srv/git/app.git/'],
  ])('%s = %s', (a, b) => expect(repositoryKey(a)).toBe(repositoryKey(b)));
  test.each([
    ['https://github.com/acme/app.git', 'https://github.com/acme/other.git'],
    ['https://github.com/acme/app.git', 'https://gitlab.com/acme/app.git'],
    ['/srv/git/app.git', '/srv/git/other.git'],
  ])('%s != %s', (a, b) => expect(repositoryKey(a)).not.toBe(repositoryKey(b)));
});

describe('judgeProtection', () => {
  test('not protected is a warning; protected and requiring the scan is ok', () => {
    expect(judgeProtection(where, answerOf(200, { protected: false })).level).toBe('warning');
    expect(judgeProtection(where, answerOf(200, { protected: true, protection: { required_status_checks: { enforcement_level: 'everyone', contexts: ['vm-sync/secret-scan'] } } }))).toEqual({ level: 'ok', message: 'branch main of acme/app is protected', fix: null, checked: true });
  });
  test('protected without the scan required (or with required checks off) is a notice; a protection the answer does not show is ok', () => {
    expect(judgeProtection(where, answerOf(200, { protected: true, protection: { required_status_checks: { enforcement_level: 'off', contexts: ['vm-sync/secret-scan'] } } })).message).toBe(
      'branch main of acme/app is protected, but its required status checks (none) do not include vm-sync/secret-scan',
    );
    expect(judgeProtection(where, answerOf(200, { protected: true })).level).toBe('ok');
  });
  test('no usable answer is a notice that says why, never a warning', () => {
    for (const [status, body] of [[403, { message: 'Resource not accessible by integration' }], [404, null], [401, {}], [500, 'oops'], [200, { protected: 'yes' }]] as const) {
      const verdict = judgeProtection(where, answerOf(status, body));
      expect([status, verdict.level, verdict.checked]).toEqual([status, 'notice', false]);
    }
    expect(judgeProtection(where, { status: 0, reason: 'ECONNREFUSED' }).message).toBe('could not check whether branch main of acme/app is protected (no answer: ECONNREFUSED)');
    // Text the API sends is cleaned before it is shown.
    expect(judgeProtection(where, answerOf(403, { message: 'no\u001b[31m access' })).message).not.toContain('\u001b');
  });
});
