import { spawn } from 'node:child_process';
import fs from 'node:fs';

/** How one `git archive | tar -x` ended. */
export interface ArchiveOutcome {
  ok: boolean;
  /** git archive's and tar's exit codes. */
  archiveCode: number | null;
  tarCode: number | null;
  /** Their error output (the end of it). */
  stderr: string;
}

/** The most bytes of pathspecs one `git archive` is given (an argv has limits). */
const CHUNK_BYTES = 100_000;

/**
 * Unpacks `commit` as `git archive` makes it (export-ignore, export-subst and
 * eol attributes applied: the bytes a VM gets) into `dest`, all of it or only
 * `paths` (UTF-8 names, taken literally: a name with `*` or `:(...)` means
 * itself). `dest` is made 0755, and files come out 0644/0755 as git records
 * them: git archive's default umask 002 would make them group-writable, and
 * rsync -p copies modes to the VMs.
 */
export async function archiveInto(options: { repoDir: string; env?: NodeJS.ProcessEnv; commit: string; dest: string; paths?: readonly string[] }): Promise<ArchiveOutcome> {
  const { repoDir, env, commit, dest } = options;
  fs.mkdirSync(dest, { recursive: true, mode: 0o755 });
  fs.chmodSync(dest, 0o755);
  const chunks: string[][] = [];
  let chunk: string[] = [];
  let size = 0;
  for (const p of options.paths ?? []) {
    if (size + p.length > CHUNK_BYTES && chunk.length > 0) {
      chunks.push(chunk);
      chunk = [];
      size = 0;
    }
    chunk.push(p);
    size += p.length + 1;
  }
  if (chunk.length > 0) chunks.push(chunk);
  if (options.paths === undefined) chunks.push([]);
  for (const part of chunks) {
    const args = ['--literal-pathspecs', '-c', 'tar.umask=022', 'archive', '--format=tar', commit, ...(part.length ? ['--', ...part] : [])];
    const archive = spawn('git', args, { cwd: repoDir, env: { ...(env ?? process.env), LC_ALL: 'C' }, stdio: ['ignore', 'pipe', 'pipe'] });
    const tar = spawn('tar', ['-x', '-f', '-', '-C', dest], { stdio: ['pipe', 'ignore', 'pipe'] });
    archive.stdout.pipe(tar.stdin);
    const [a, t] = await Promise.all([exited(archive), exited(tar)]);
    if (a.code !== 0 || t.code !== 0) return { ok: false, archiveCode: a.code, tarCode: t.code, stderr: [a.stderr, t.stderr].filter((x) => x.trim()).join('\n') };
  }
  return { ok: true, archiveCode: 0, tarCode: 0, stderr: '' };
}

function exited(child: ReturnType<typeof spawn>): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stderr }));
  });
}
