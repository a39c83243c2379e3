import { optionForVersion } from '../../src/git/merge-diffs.js';

describe('how history reads merges (first parent from git 2.31, every parent before)', () => {
  test.each([
    ['git version 2.39.5', '--diff-merges=first-parent'],
    ['git version 2.31.0', '--diff-merges=first-parent'],
    ['git version 2.47.1.windows.1', '--diff-merges=first-parent'],
    ['git version 3.0.0', '--diff-merges=first-parent'],
    ['git version 2.30.2', '-m'],
    ['git version 1.9.5', '-m'],
    ['', '-m'],
    ['not git at all', '-m'],
  ])('%j → %s', (text, option) => {
    expect(optionForVersion(text)).toBe(option);
  });
});
