import fs from 'node:fs';
import path from 'node:path';
import { readableStack } from '../../src/report/stack.js';

/*
 * What the committed bundles carry: one copy of each library (no second
 * major of @actions/http-client dragged in by another @actions package),
 * only declared dependencies, and for the CLI a source map that turns a
 * bundle frame back into its src/*.ts line.
 */

const root = process.cwd();
const dist = (name: string): string => path.join(root, 'dist', name);
const count = (text: string, needle: string): number => text.split(needle).length - 1;

test('dist/index.js and dist/cli.js hold at most one copy of @actions/http-client', () => {
  // HttpClient.getAgentDispatcher is defined once per copy of the library (v3 and v4 alike).
  const marker = 'getAgentDispatcher(serverUrl) {';
  const action = fs.readFileSync(dist('index.js'), 'utf8');
  expect(count(action, marker)).toBe(1);
  expect(count(fs.readFileSync(dist('cli.js'), 'utf8'), marker)).toBeLessThanOrEqual(1);
});

test('every package the sources import at run time is a declared dependency, at the version the lockfile resolves', () => {
  const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
  const lock = JSON.parse(fs.readFileSync(path.join(root, 'package-lock.json'), 'utf8')) as { packages: Record<string, { version: string }> };
  const imported = new Set<string>();
  const walk = (dir: string): void => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) walk(full);
      else if (entry.name.endsWith('.ts')) {
        for (const match of fs.readFileSync(full, 'utf8').matchAll(/^import (?!type )[^;]*? from '([^'.][^']*)';/gm)) {
          const spec = match[1];
          if (spec.startsWith('node:')) continue;
          imported.add(spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0]);
        }
      }
    }
  };
  walk(path.join(root, 'src'));
  expect(imported.has('ssh2')).toBe(true);
  expect([...imported].filter((name) => !(name in pkg.dependencies))).toEqual([]);
  // ssh2 is pinned to the version node-ssh resolves, and only one copy is installed.
  expect(lock.packages['node_modules/ssh2'].version).toBe(pkg.dependencies.ssh2);
  expect(Object.keys(lock.packages).filter((p) => p.endsWith('node_modules/ssh2'))).toEqual(['node_modules/ssh2']);
  expect(Object.keys(lock.packages).filter((p) => p.endsWith('node_modules/@actions/http-client'))).toEqual(['node_modules/@actions/http-client']);
});

test("dist/cli.js.map maps a bundle frame to the TypeScript line it was built from", () => {
  const bundle = dist('cli.js');
  const code = fs.readFileSync(bundle, 'utf8').split('\n');
  expect(code[code.length - 2]).toBe('//# sourceMappingURL=cli.js.map');
  const map = JSON.parse(fs.readFileSync(`${bundle}.map`, 'utf8')) as { sources: string[]; sourcesContent?: unknown };
  expect(map.sources).toContain('../src/cli.ts');
  expect(map.sourcesContent).toBeUndefined();
  // Two functions far apart in two files: each frame must land on its own declaration.
  for (const [file, declaration] of [
    ['src/cli.ts', 'async function engineCommand('],
    ['src/sync/release.ts', 'export async function releaseFleet('],
  ]) {
    const bundleLine = code.findIndex((line) => line.includes(declaration.replace('export ', ''))) + 1;
    const sourceLine = fs.readFileSync(path.join(root, file), 'utf8').split('\n').findIndex((line) => line.includes(declaration)) + 1;
    expect([bundleLine > 0, sourceLine > 0]).toEqual([true, true]);
    const frame = `    at fn (${bundle}:${bundleLine}:3)`;
    expect(readableStack(`Error: x\n${frame}\n    at other (node:fs:1:1)`, bundle)).toBe(`Error: x\n    at fn (${file}:${sourceLine}:1)\n    at other (node:fs:1:1)`);
  }
  // A frame of another file is left as it is.
  expect(readableStack(`    at f (/elsewhere/x.js:3:4)`, bundle)).toBe(`    at f (/elsewhere/x.js:3:4)`);
});
