import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

/** A file change in a commit: text content, a symlink, an executable, or deletion (null). */
export type FileChange = string | null | { symlink: string } | { content: string; executable: true };

/**
 * A bare "GitHub" remote plus a working clone that pushes to it, for the demo
 * and the tests. Commits are made with fixed identities so hashes are stable
 * within a run.
 */
export class GitWorkspace {
  readonly origin: string;
  readonly work: string;

  constructor(dir: string) {
    this.origin = path.join(dir, 'origin.git');
    this.work = path.join(dir, 'work');
    if (!fs.existsSync(this.origin)) {
      this.git(dir, ['init', '--quiet', '--bare', '--initial-branch=main', this.origin]);
      this.git(dir, ['init', '--quiet', '--initial-branch=main', this.work]);
      this.git(this.work, ['remote', 'add', 'origin', this.origin]);
    }
  }

  git(cwd: string, args: string[]): string {
    const result = spawnSync('git', args, {
      cwd,
      encoding: 'utf8',
      env: {
        ...process.env,
        GIT_AUTHOR_NAME: 'Demo Dev',
        GIT_AUTHOR_EMAIL: 'dev@example.invalid',
        GIT_COMMITTER_NAME: 'Demo Dev',
        GIT_COMMITTER_EMAIL: 'dev@example.invalid',
        GIT_CONFIG_NOSYSTEM: '1',
      },
    });
    if (result.status !== 0) throw new Error(`git ${args.join(' ')} failed: ${result.stderr}`);
    return result.stdout.trim();
  }

  /** Applies the changes, commits on the current branch and returns the full hash. */
  commit(changes: Record<string, FileChange>, message: string): string {
    for (const [name, change] of Object.entries(changes)) {
      const file = path.join(this.work, name);
      fs.rmSync(file, { force: true, recursive: true });
      if (change === null) continue;
      fs.mkdirSync(path.dirname(file), { recursive: true });
      if (typeof change === 'string') fs.writeFileSync(file, change);
      else if ('symlink' in change) fs.symlinkSync(change.symlink, file);
      else fs.writeFileSync(file, change.content, { mode: 0o755 });
    }
    this.git(this.work, ['add', '--all']);
    this.git(this.work, ['commit', '--quiet', '--allow-empty', '-m', message]);
    return this.git(this.work, ['rev-parse', 'HEAD']);
  }

  /** Pushes the current branch to `main` on the origin (`force` for rewritten history). */
  push(force = false): void {
    this.git(this.work, ['push', '--quiet', ...(force ? ['--force'] : []), 'origin', 'HEAD:refs/heads/main']);
  }
}

/** The demo application: a handful of files, a nested directory and a symlink. */
export function seedDemoApp(ws: GitWorkspace): string {
  const first = ws.commit(
    {
      'README.md': '# demo app\nDeployed by vm-sync.\n',
      'app/server.py': 'print("hello from version 1")\n',
      'app/settings.json': '{ "version": 1 }\n',
      'bin/start': { content: '#!/bin/sh\nexec python3 app/server.py\n', executable: true },
      'current-settings': { symlink: 'app/settings.json' },
    },
    'demo app v1',
  );
  ws.push();
  return first;
}
