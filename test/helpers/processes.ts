import { execFileSync, type ChildProcess } from 'node:child_process';

/**
 * Waits for a child to exit while sampling every process's command line
 * (`ps -eo args`) every `everyMs`, so tests can prove a secret never appeared
 * in the process list while the child and its descendants ran.
 */
export async function exitWhileSampling(child: ChildProcess, everyMs: number): Promise<{ code: number | null; processes: string[] }> {
  const processes: string[] = [];
  const sampler = setInterval(() => {
    try {
      processes.push(...execFileSync('ps', ['-eo', 'args'], { encoding: 'utf8' }).split('\n'));
    } catch {
      // a process vanished mid-listing
    }
  }, everyMs);
  try {
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    return { code, processes };
  } finally {
    clearInterval(sampler);
  }
}
