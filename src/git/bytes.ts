import { execFile } from 'node:child_process';

/**
 * Runs git in `repoDir` (LC_ALL=C) and gives its stdout as bytes (a path
 * that is not UTF-8 must survive), or null when git fails. `input` is
 * written to its stdin.
 */
export function gitBytes(repoDir: string, args: readonly string[], options: { input?: string; env?: NodeJS.ProcessEnv; maxBuffer?: number } = {}): Promise<Buffer | null> {
  return new Promise((resolve) => {
    const child = execFile('git', args, { cwd: repoDir, env: { ...(options.env ?? process.env), LC_ALL: 'C' }, encoding: 'buffer', maxBuffer: options.maxBuffer ?? 1 << 30 }, (error, stdout) => resolve(error ? null : stdout));
    if (options.input !== undefined) child.stdin?.end(options.input);
  });
}
