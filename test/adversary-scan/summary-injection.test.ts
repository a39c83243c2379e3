import { World } from '../helpers/world.js';
import { renderSummary } from '../../src/report/summary.js';
import { commitPush, head, leaked, line, outputs, rewind } from './helpers.js';

/* VM- or repo-controlled text in the job summary must render literally. */
let world: World;

beforeAll(async () => {
  world = await World.create(['vm01']);
  world.ws.commit({ 'README.md': '# app\n' }, 'clean start');
  world.ws.push();
  expect((await world.cli(['sync'])).code).toBe(0);
});
afterAll(() => world?.destroy());

test('a finding whose file name and author carry HTML/markdown: the summary shows them literally', async () => {
  const base = head(world);
  const file = 'notes/a`<img src=x onerror=alert(1)><details open><summary>[Approve](https:evil.example)`.env';
  commitPush(world, [[file, line]], 'token', { author: '**Security team** ![pixel](https://evil.example/p.png) [approved](https://evil.example)' });
  const scan = await world.cli(['scan', '--range', `${base}..${head(world)}`]);
  rewind(world, base);
  expect(scan.code).toBe(3);
  const summary = renderSummary(scan.json, { runUrl: '', failure: null });
  expect(leaked(...outputs(scan))).toBeNull();
  expect(summary).not.toContain('<img');
  expect(summary).not.toContain('<details open><summary>[');
  // Escaped brackets (`\]`) form no link: only an unescaped `](` would.
  expect(summary).not.toMatch(/(?<!\\)\]\(https:\/\/evil\.example/);
  expect(summary).not.toContain('**Security team**');
});
