import { spawn } from 'node:child_process';
import type { UnscannedFile } from './coverage.js';

/** Compressions whose stream vm-sync inflates itself, to scan what is inside as text. */
export type Compression = 'gz' | 'zst' | 'xz' | 'bz2';

/**
 * The tool that inflates each compression: the one GNU tar on a VM runs, so
 * that it reads what a VM would unpack (every frame of a zstd file, every
 * member of a gzip file; Node's zlib stops after the first zstd frame).
 */
const TOOLS: Record<Compression, string> = { gz: 'gzip', zst: 'zstd', xz: 'xz', bz2: 'bzip2' };

/** What inflating gave: the bytes it could inflate (null: none), and what keeps the file from being read whole. */
export interface Inflated {
  bytes: Buffer | null;
  problem: Pick<UnscannedFile, 'reason' | 'detail'> | null;
}

/**
 * The inflated bytes of a compressed file, at most `limit` of them.
 *
 * Why vm-sync reads them itself: gitleaks reads a compressed tarball through
 * Go's archive/tar, which stops at the first member header it rejects and
 * says nothing, where GNU tar on a VM skips that header and unpacks the rest.
 * Scanning the inflated stream as text covers every member, headers or not.
 *
 * What could be inflated is always returned, also from a stream that is cut
 * short or followed by junk (a VM's tar unpacks what it can too); anything
 * that kept the file from being read whole is the `problem`, reported as not
 * scanned, never passed as scanned.
 */
export function inflate(kind: Compression, bytes: Buffer, limit: number, options: { signal?: AbortSignal; cwd: string }): Promise<Inflated> {
  const tool = TOOLS[kind];
  return new Promise((resolve) => {
    // In a scratch directory (never the deployed tree), stopped by the scan's own end (its deadline, a cancel).
    const child = spawn(tool, ['-d', '-c'], { stdio: ['pipe', 'pipe', 'ignore'], cwd: options.cwd, env: process.env, signal: options.signal, killSignal: 'SIGKILL' });
    const chunks: Buffer[] = [];
    let size = 0;
    let over = false;
    let failed: Inflated['problem'] = null;
    child.stdout.on('data', (chunk: Buffer) => {
      if (over) return;
      const room = limit - size;
      chunks.push(chunk.length > room ? chunk.subarray(0, room) : chunk);
      size += Math.min(chunk.length, room);
      if (chunk.length > room) {
        over = true;
        child.kill('SIGKILL');
      }
    });
    // A tool that stops reading (killed, or done with a damaged stream) must not fail the write.
    child.stdin.on('error', () => undefined);
    child.stdin.end(bytes);
    child.on('error', (error: NodeJS.ErrnoException) => {
      failed =
        error.code === 'ENOENT'
          ? { reason: 'archive', detail: `${tool} is not installed on the runner host, so its content is only scanned as far as gitleaks reads it` }
          : error.name === 'AbortError'
            ? { reason: 'unreadable', detail: 'the scan ended before it was inflated' }
            : { reason: 'archive', detail: `${tool} did not start (${error.code ?? 'error'})` };
      // A tool that never started may never close: answer now (a later answer is ignored).
      resolve({ bytes: size > 0 ? Buffer.concat(chunks) : null, problem: failed });
    });
    child.on('close', (code, signal) => {
      const inflated = size > 0 ? Buffer.concat(chunks) : null;
      if (failed) return resolve({ bytes: inflated, problem: failed });
      if (over) return resolve({ bytes: inflated, problem: { reason: 'too_large', detail: `its content is scanned as one stream only up to ${limit / 1024 / 1024} MB inflated` } });
      if (code === 0) return resolve({ bytes: inflated ?? Buffer.alloc(0), problem: null });
      resolve({ bytes: inflated, problem: { reason: 'archive', detail: `its ${kind} stream is damaged (${tool} ${code === null ? `killed by ${signal}` : `exited ${code}`}): what could be inflated was scanned` } });
    });
  });
}
