import fs from 'node:fs';
import path from 'node:path';
import { makeScratchDir, removeScratchDirLater } from '../../src/local/scratch.js';

describe('removeScratchDirLater', () => {
  test('returns before the tree is gone (the report is not kept waiting), and the tree does go', async () => {
    const dir = makeScratchDir('export');
    for (let i = 0; i < 200; i++) {
      fs.mkdirSync(path.join(dir, 'tree', String(i % 10)), { recursive: true });
      fs.writeFileSync(path.join(dir, 'tree', String(i % 10), `f${i}`), 'x');
    }
    removeScratchDirLater(dir);
    // Synchronously after the call the tree is still there: nothing was removed on the caller's path.
    expect(fs.existsSync(path.join(dir, 'tree'))).toBe(true);
    for (let i = 0; i < 200 && fs.existsSync(dir); i++) await new Promise((r) => setTimeout(r, 25));
    expect(fs.existsSync(dir)).toBe(false);
  });
});
