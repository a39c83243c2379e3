// Bundles each entry point with ncc into one self-contained CommonJS file in
// dist/ (runs with plain `node`, no node_modules), plus the third-party licences.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

const entries = { cli: 'src/bin.ts', index: 'src/index.ts' };
const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const dist = path.join(root, 'dist');
const ncc = path.join(root, 'node_modules', '@vercel', 'ncc', 'dist', 'ncc', 'cli.js');
const stage = path.join(root, 'build', 'ncc');
// The VM agent is a shell file in the repository; the bundle carries it as a generated module.
execFileSync(process.execPath, [path.join(root, 'scripts', 'embed-agent.mjs')], { cwd: root, stdio: 'inherit' });
fs.rmSync(stage, { recursive: true, force: true });
fs.mkdirSync(dist, { recursive: true });
const licences = new Set();
for (const [name, entry] of Object.entries(entries)) {
  const out = path.join(stage, name);
  execFileSync(process.execPath, [ncc, 'build', entry, '-o', out, '--license', 'licenses.txt', '--target', 'es2022', '--quiet'], { cwd: root, stdio: 'inherit' });
  // ssh2 carries pagent.exe for Windows' Pageant agent; vm-sync never uses an agent.
  const produced = fs.readdirSync(out).filter((f) => !['index.js', 'licenses.txt', 'pagent.exe'].includes(f));
  if (produced.length > 0) throw new Error(`ncc emitted extra files for ${name} (a native addon?): ${produced.join(', ')}`);
  let code = fs.readFileSync(path.join(out, 'index.js'), 'utf8');
  if (!code.startsWith('#!')) code = `#!/usr/bin/env node\n${code}`;
  fs.writeFileSync(path.join(dist, `${name}.js`), code, { mode: 0o755 });
  licences.add(fs.readFileSync(path.join(out, 'licenses.txt'), 'utf8'));
}
fs.writeFileSync(path.join(dist, 'licenses.txt'), [...licences].join('\n'));
console.log(`built ${Object.keys(entries).map((n) => `dist/${n}.js`).join(', ')}`);
