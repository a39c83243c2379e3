import fs from 'node:fs';
import { SourceMap } from 'node:module';
import path from 'node:path';

/*
 * Stack traces of the bundle, in the sources' terms. dist/cli.js is one file
 * that Node has already compiled by the time any of its code runs, so
 * `process.setSourceMapsEnabled(true)` comes too late for it (Node reads a
 * file's map only when it loads the file; verified on Node 20 and 24). The
 * build ships dist/cli.js.map instead, and a trace shown with -v is mapped
 * here, frame by frame, through node:module's SourceMap.
 */

const maps = new Map<string, SourceMap | null>();

function mapOf(file: string): SourceMap | null {
  if (!maps.has(file)) {
    let map: SourceMap | null = null;
    try {
      map = new SourceMap(JSON.parse(fs.readFileSync(`${file}.map`, 'utf8')));
    } catch {
      // No map beside it (run from the sources, or a copy without its map): frames stay as they are.
    }
    maps.set(file, map);
  }
  return maps.get(file) ?? null;
}

// `    at fn (/path/file.js:12:34)` or `    at /path/file.js:12:34`
const FRAME = /^(\s*at (?:.*? \()?)(\/[^():]+):(\d+):(\d+)(\)?)$/;

/**
 * `trace` with every frame in `bundle` (default: the running program) replaced
 * by the source file and line it was built from (`src/cli.ts:42:7`); frames
 * elsewhere, and every frame when the bundle has no map, are unchanged.
 */
export function readableStack(trace: string, bundle: string | undefined = process.argv[1]): string {
  if (!bundle) return trace;
  const file = path.resolve(bundle);
  return trace
    .split('\n')
    .map((line) => {
      const frame = FRAME.exec(line);
      if (!frame || path.resolve(frame[2]) !== file) return line;
      const map = mapOf(file);
      const entry = map?.findEntry(Number(frame[3]) - 1, Number(frame[4]) - 1) as { originalSource?: string; originalLine?: number; originalColumn?: number } | undefined;
      if (!entry?.originalSource || entry.originalLine === undefined) return line;
      // The map names sources relative to dist/ (`../src/cli.ts`): shown from the repository root.
      const source = entry.originalSource.replace(/^(?:webpack:\/\/\/?|file:\/\/)/, '').replace(/^(?:\.{1,2}\/)+/, '');
      return `${frame[1]}${source}:${entry.originalLine + 1}:${(entry.originalColumn ?? 0) + 1}${frame[5]}`;
    })
    .join('\n');
}
