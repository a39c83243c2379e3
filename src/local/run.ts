import { spawn, type SpawnOptions } from 'node:child_process';

/** What a finished local command left behind. */
export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  signal?: AbortSignal;
  /** Called with each chunk of stdout/stderr as it arrives (progress parsing). */
  onStdout?: (chunk: string) => void;
  onStderr?: (chunk: string) => void;
  /** Keep at most this many characters of each stream (the tail); long rsync runs print a lot. */
  maxOutput?: number;
}

/**
 * Runs a program from an argument array (never through a shell) and resolves
 * with its exit status and output. Never rejects for a non-zero exit: callers
 * classify failures themselves; it rejects only when the program cannot start.
 */
export function run(command: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  const max = options.maxOutput ?? 4 * 1024 * 1024;
  return new Promise((resolve, reject) => {
    const spawnOptions: SpawnOptions = {
      cwd: options.cwd,
      env: options.env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
      signal: options.signal,
    };
    const child = spawn(command, args, spawnOptions);
    let stdout = '';
    let stderr = '';
    const keep = (acc: string, chunk: string): string => {
      const next = acc + chunk;
      return next.length > max ? next.slice(next.length - max) : next;
    };
    child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
      stdout = keep(stdout, chunk);
      options.onStdout?.(chunk);
    });
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
      stderr = keep(stderr, chunk);
      options.onStderr?.(chunk);
    });
    child.on('error', (error: NodeJS.ErrnoException) => {
      // An abort is reported through the close event's signal, not as a failure to start.
      if (error.name === 'AbortError') return;
      reject(error);
    });
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}
