#!/usr/bin/env node
// Writes the README's input and output tables from action.yml, so they never
// drift: `node scripts/action-docs.mjs` rewrites the block between the
// action-docs markers; `--check` exits 1 (with the expected text) when it is stale.
import fs from 'node:fs';
import path from 'node:path';
import { parse } from 'yaml';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const action = parse(fs.readFileSync(path.join(root, 'action.yml'), 'utf8'));
const cell = (text) => String(text ?? '').replace(/\|/g, '\\|').replace(/\s*\n\s*/g, ' ').trim();

const lines = ['| input | default | description |', '|---|---|---|'];
for (const [name, input] of Object.entries(action.inputs ?? {})) {
  const fallback = input.default === undefined || input.default === '' ? '' : `\`${cell(input.default)}\``;
  lines.push(`| \`${name}\` | ${fallback} | ${cell(input.description)} |`);
}
lines.push('', '| output | description |', '|---|---|');
for (const [name, output] of Object.entries(action.outputs ?? {})) lines.push(`| \`${name}\` | ${cell(output.description)} |`);

const START = '<!-- action-docs:start (generated from action.yml by scripts/action-docs.mjs) -->';
const END = '<!-- action-docs:end -->';
const readmePath = path.join(root, 'README.md');
const readme = fs.readFileSync(readmePath, 'utf8');
const begin = readme.indexOf(START);
const end = readme.indexOf(END);
if (begin < 0 || end < begin) {
  console.error(`README.md has no ${START} ... ${END} block`);
  process.exit(1);
}
const updated = `${readme.slice(0, begin + START.length)}\n${lines.join('\n')}\n${readme.slice(end)}`;
if (process.argv.includes('--check')) {
  if (updated !== readme) {
    console.error('README.md action tables are stale: run node scripts/action-docs.mjs');
    process.exit(1);
  }
  console.log('README.md action tables match action.yml');
} else {
  fs.writeFileSync(readmePath, updated);
  console.log('README.md action tables written from action.yml');
}
