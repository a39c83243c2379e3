import fs from 'node:fs';
import path from 'node:path';
import { VmSyncError } from '../errors.js';
import type { ResultsSource } from './merge.js';
import { vmText } from '../remote/untrusted.js';

/** A path for a message: names under the results directory come from other jobs' artifacts. */
const shown = (p: string): string => vmText(p, 1000);

/** A results file larger than this is not one vm-sync wrote (a 1,000-VM report is a few MB). */
const MAX_FILE_BYTES = 64 * 1024 * 1024;
/** More files than this under one directory is not a set of shard results. */
const MAX_FILES = 10_000;

/**
 * The results documents under each path: a file as it is, a directory
 * searched for `*.json` at any depth (actions/download-artifact puts each
 * artifact in its own subdirectory), in a stable order. Symlinks are not
 * followed: an artifact cannot point the merge at another file of the runner.
 * A path that does not exist is an error unless `allowMissing` (the Action:
 * when every shard failed, no artifact was downloaded, and each is reported missing).
 */
export function readResultsFiles(paths: readonly string[], options: { allowMissing?: boolean } = {}): ResultsSource[] {
  const files: string[] = [];
  const walk = (dir: string): void => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) walk(full);
      else if (entry.isFile() && entry.name.endsWith('.json')) files.push(full);
      if (files.length > MAX_FILES) throw new VmSyncError('results_invalid', `${shown(dir)}: more than ${MAX_FILES} .json files; point the merge at the directory of the shards' results`);
    }
  };
  for (const p of paths) {
    let stat: fs.Stats;
    try {
      stat = fs.lstatSync(p);
    } catch {
      if (options.allowMissing) continue;
      throw new VmSyncError('config_invalid', `results path ${shown(p)} does not exist: give the results files (or a directory of them) that the shards wrote`);
    }
    if (stat.isDirectory()) walk(p);
    else if (stat.isFile()) files.push(p);
    else throw new VmSyncError('config_invalid', `results path ${shown(p)} is not a file or a directory`);
  }
  return files.map((file) => {
    const size = fs.statSync(file).size;
    if (size > MAX_FILE_BYTES) throw new VmSyncError('results_invalid', `${shown(file)} is ${size} bytes: not a vm-sync results file`);
    return { source: file, text: fs.readFileSync(file, 'utf8') };
  });
}
