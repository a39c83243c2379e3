import { gitBytes } from './bytes.js';

/** Whether a commit's tree uses `export-subst`, which makes `git archive` write the commit into files. */
export type ExportSubst = { kind: 'none' } | { kind: 'uses'; path: string } | { kind: 'unreadable'; why: string };

/**
 * Answers by commit: a commit's tree never changes, so one answer serves
 * every later question about it in this process (the export and the stream
 * of a run both ask, and so does the next run of a long-lived process). A
 * failed question is asked again.
 */
const answers = new Map<string, Promise<ExportSubst>>();

/**
 * Which `.gitattributes` of `commit` (at any depth) mentions `export-subst`,
 * read with two git processes whatever their number: `ls-tree` for their
 * blob ids, one `cat-file --batch` for their contents. (Each file read by a
 * git process of its own cost git/git's sixteen a quarter of a CPU-second of
 * spawning per deploy.) Paths are latin1, as git wrote them.
 */
export function exportSubstIn(repoDir: string, commit: string, env?: NodeJS.ProcessEnv): Promise<ExportSubst> {
  const key = `${repoDir}\0${commit}`;
  let answer = answers.get(key);
  if (!answer) {
    answer = ask(repoDir, commit, env);
    answers.set(key, answer);
    void answer.then((a) => a.kind === 'unreadable' && answers.delete(key));
  }
  return answer;
}

async function ask(repoDir: string, commit: string, env?: NodeJS.ProcessEnv): Promise<ExportSubst> {
  const git = (args: string[], input?: string): Promise<Buffer | null> => gitBytes(repoDir, args, { input, env, maxBuffer: 256 * 1024 * 1024 });
  const listing = await git(['ls-tree', '-r', '-z', commit]);
  if (!listing) return { kind: 'unreadable', why: `git cannot list ${commit.slice(0, 12)}` };
  const files = attributeFiles(listing);
  if (files.length === 0) return { kind: 'none' };
  const texts = batchContents(await git(['cat-file', '--batch'], files.map((f) => `${f.oid}\n`).join('')), files.length);
  if (!texts) return { kind: 'unreadable', why: `git cannot read the .gitattributes files of ${commit.slice(0, 12)}` };
  const using = files.find((_, i) => texts[i].includes('export-subst'));
  return using ? { kind: 'uses', path: using.path } : { kind: 'none' };
}

/** The `.gitattributes` files of an `ls-tree -r -z` listing (paths as latin1, as git wrote them). */
export function attributeFiles(listing: Buffer): Array<{ path: string; oid: string }> {
  const out: Array<{ path: string; oid: string }> = [];
  for (const record of listing.toString('latin1').split('\0')) {
    const tab = record.indexOf('\t');
    if (tab < 0) continue;
    const [, type, oid] = record.slice(0, tab).split(' ');
    const p = record.slice(tab + 1);
    if (type === 'blob' && (p === '.gitattributes' || p.endsWith('/.gitattributes'))) out.push({ path: p, oid });
  }
  return out;
}

/**
 * The contents in a `git cat-file --batch` answer, in order; null unless it
 * holds exactly `count` objects, each whole (a missing one fails it).
 */
export function batchContents(out: Buffer | null, count: number): Buffer[] | null {
  if (!out) return null;
  const texts: Buffer[] = [];
  let at = 0;
  while (at < out.length) {
    const eol = out.indexOf(0x0a, at);
    if (eol < 0) return null;
    const header = out.subarray(at, eol).toString('latin1').split(' ');
    const size = Number(header[2]);
    if (header.length !== 3 || !/^\d+$/.test(header[2]) || eol + 1 + size + 1 > out.length || out[eol + 1 + size] !== 0x0a) return null;
    texts.push(out.subarray(eol + 1, eol + 1 + size));
    at = eol + 1 + size + 1;
  }
  return texts.length === count ? texts : null;
}
