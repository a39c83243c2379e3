import { execFileSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';

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

/** `pid` and every process under it (children, their children, ...), read from /proc: `pid` first. */
export function processTree(pid: number): number[] {
  const parents = new Map<number, number>();
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      parents.set(Number(entry), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    } catch {
      // gone meanwhile
    }
  }
  const tree = [pid];
  for (let i = 0; i < tree.length; i++) for (const [child, parent] of parents) if (parent === tree[i]) tree.push(child);
  return tree;
}
