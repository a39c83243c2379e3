import { spawn } from 'node:child_process';
import http from 'node:http';
import path from 'node:path';

/** One request the fake GitHub received. */
export interface Recorded {
  method: string;
  path: string;
  authorization: string | null;
  body: unknown;
}

/**
 * A loopback stand-in for GitHub: records REST calls (statuses, deployments)
 * and serves git repositories over smart HTTP through `git http-backend`,
 * recording the Authorization header of each git request.
 */
export class FakeGitHub {
  readonly api: Recorded[] = [];
  readonly git: Recorded[] = [];
  /** When set, every commit-status call answers this HTTP status (to test that failures only warn). */
  failStatusesWith: number | null = null;
  /**
   * What `GET /repos/{owner}/{repo}/branches/{branch}` answers, by branch name: a
   * boolean is `protected` in a 200 answer (`contexts`: the required status checks it
   * shows), a number that HTTP status. A branch not listed: 404.
   */
  branches: Record<string, boolean | number | { protected: boolean; contexts: string[] }> = {};
  private nextDeployment = 1000;

  private constructor(
    private readonly server: http.Server,
    readonly url: string,
  ) {}

  /** Starts on a free loopback port; `gitRoot` is the directory holding the served bare repositories. */
  static async start(gitRoot: string): Promise<FakeGitHub> {
    let fake: FakeGitHub | null = null;
    const server = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => fake?.handle(req, res, Buffer.concat(chunks), gitRoot));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    fake = new FakeGitHub(server, `http://127.0.0.1:${(server.address() as { port: number }).port}`);
    return fake;
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse, body: Buffer, gitRoot: string): void {
    const url = new URL(req.url ?? '/', this.url);
    const authorization = (req.headers.authorization as string | undefined) ?? null;
    if (url.pathname.startsWith('/git/')) {
      this.git.push({ method: req.method ?? '', path: url.pathname + url.search, authorization, body: null });
      this.gitBackend(req, res, body, url, gitRoot);
      return;
    }
    let parsed: unknown;
    try {
      parsed = body.length ? JSON.parse(body.toString('utf8')) : null;
    } catch {
      parsed = body.toString('utf8');
    }
    this.api.push({ method: req.method ?? '', path: url.pathname, authorization, body: parsed });
    const json = (status: number, value: unknown): void => {
      res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(value));
    };
    // GitHub Enterprise Server serves the REST API under /api/v3.
    const route = url.pathname.replace(/^\/api\/v3/, '');
    if (/^\/repos\/[^/]+\/[^/]+\/statuses\/[0-9a-f]{40}$/.test(route)) {
      if (this.failStatusesWith) json(this.failStatusesWith, { message: 'status service unavailable' });
      else json(201, { id: 1, ...(parsed as object) });
    } else if (/^\/repos\/[^/]+\/[^/]+\/deployments$/.test(route)) {
      json(201, { id: this.nextDeployment++, ...(parsed as object) });
    } else if (/^\/repos\/[^/]+\/[^/]+\/deployments\/\d+\/statuses$/.test(route)) {
      json(201, { id: 1, ...(parsed as object) });
    } else if (req.method === 'GET' && /^\/repos\/[^/]+\/[^/]+\/branches\/[^/]+$/.test(route)) {
      const name = decodeURIComponent(route.split('/').pop() ?? '');
      const answer = this.branches[name];
      if (answer === undefined) json(404, { message: 'Branch not found' });
      else if (typeof answer === 'number') json(answer, { message: answer === 403 ? 'Resource not accessible by integration' : 'error' });
      else {
        const entry = typeof answer === 'boolean' ? { protected: answer, contexts: [] as string[] } : answer;
        json(200, {
          name,
          commit: { sha: '0'.repeat(40) },
          protected: entry.protected,
          protection: { enabled: entry.protected, required_status_checks: { enforcement_level: entry.protected ? 'non_admins' : 'off', contexts: entry.contexts, checks: [] } },
        });
      }
    } else {
      json(404, { message: 'Not Found' });
    }
  }

  private gitBackend(req: http.IncomingMessage, res: http.ServerResponse, body: Buffer, url: URL, gitRoot: string): void {
    const child = spawn('git', ['http-backend'], {
      env: {
        ...process.env,
        GIT_PROJECT_ROOT: gitRoot,
        GIT_HTTP_EXPORT_ALL: '1',
        PATH_INFO: url.pathname.slice('/git'.length),
        QUERY_STRING: url.search.replace(/^\?/, ''),
        REQUEST_METHOD: req.method ?? 'GET',
        CONTENT_TYPE: (req.headers['content-type'] as string | undefined) ?? '',
        CONTENT_LENGTH: String(body.length),
        GIT_PROTOCOL: (req.headers['git-protocol'] as string | undefined) ?? '',
      },
    });
    const out: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.on('close', () => {
      const all = Buffer.concat(out);
      const split = all.indexOf('\r\n\r\n');
      const headerText = all.subarray(0, split).toString('latin1');
      const headers: Record<string, string> = {};
      let status = 200;
      for (const line of headerText.split('\r\n')) {
        const [name, ...rest] = line.split(':');
        if (name.toLowerCase() === 'status') status = Number.parseInt(rest.join(':').trim(), 10);
        else if (name) headers[name] = rest.join(':').trim();
      }
      res.writeHead(status, headers).end(all.subarray(split + 4));
    });
    // http-backend may answer and exit before reading the whole body (a GET, a refused
    // request): its stdin then closes under us, which is its answer, not a server failure.
    child.stdin.on('error', () => undefined);
    child.stdin.end(body);
  }

  /** The REST calls, as "METHOD path" with the fields tests assert on. */
  calls(): Array<{ call: string; body: Record<string, unknown> }> {
    return this.api.map((r) => ({ call: `${r.method} ${r.path}`, body: (r.body ?? {}) as Record<string, unknown> }));
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise((resolve) => this.server.close(resolve));
  }

  static gitPath(repoDir: string): string {
    return `/git/${path.basename(repoDir)}`;
  }
}
