import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { plantedSecrets, secretFragments } from '../helpers/secrets.js';
import type { World, CliRun } from '../helpers/world.js';
import { renderSummary } from '../../src/report/summary.js';

export const secrets = plantedSecrets();
export const fragments = secretFragments(secrets);
export const token = secrets.github;
export const line = `api_token = "${token}"\n`;

export function leaked(...texts: string[]): string | null {
  const all = texts.join('\n');
  for (const f of fragments) if (all.includes(f)) return f;
  return null;
}

export function outputs(run: CliRun): string[] {
  return [run.stdout, run.stderr, run.json?.scan ? renderSummary(run.json, { runUrl: '', failure: null }) : ''];
}

export const head = (world: World): string => world.ws.git(world.ws.work, ['rev-parse', 'HEAD']);

/** Commits files (names may be raw byte Buffers) and pushes. */
export function commitPush(world: World, files: Array<[string | Buffer, string | Buffer | null]>, message: string, opts: { author?: string } = {}): string {
  for (const [name, content] of files) {
    const full = Buffer.concat([Buffer.from(`${world.ws.work}/`), Buffer.isBuffer(name) ? name : Buffer.from(name)]);
    fs.rmSync(full, { force: true, recursive: true });
    if (content === null) continue;
    const dir = full.subarray(0, full.lastIndexOf(0x2f));
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(full, content);
  }
  execFileSync('git', ['-C', world.ws.work, 'add', '--all', '--force']);
  const env = { ...process.env, ...(opts.author ? { GIT_AUTHOR_NAME: opts.author, GIT_COMMITTER_NAME: opts.author } : {}) };
  execFileSync('git', ['-C', world.ws.work, 'commit', '--quiet', '--allow-empty', '-m', message], { env });
  world.ws.push();
  return head(world);
}

export function rewind(world: World, base: string): void {
  world.ws.git(world.ws.work, ['reset', '--quiet', '--hard', base]);
  world.ws.push(true);
}

export { tarOf, zipOf } from '../helpers/archives.js';

/** Every file under a directory whose bytes contain the needle (raw byte names, so non-UTF-8 names are read too). */
export function filesHolding(root: string, needle: string): string[] {
  if (!fs.existsSync(root)) return []; // never deployed
  const out: string[] = [];
  const walk = (dir: Buffer): void => {
    for (const name of fs.readdirSync(dir, { encoding: 'buffer' })) {
      const full = Buffer.concat([dir, Buffer.from('/'), name]);
      const st = fs.lstatSync(full);
      if (st.isDirectory()) walk(full);
      else if (st.isFile() && fs.readFileSync(full).includes(needle)) out.push(full.toString('latin1'));
    }
  };
  walk(Buffer.from(root));
  return out;
}
