import { findingFromFingerprint, printable } from '../../src/scan/findings.js';
import { goUnquote, readSkip, readSuppressed } from '../../src/scan/gitleaks.js';
import { isIgnored, parseIgnore, settingsChanges, type CommitSettings } from '../../src/scan/settings.js';

// Lines as gitleaks 8.30.1 writes them with --log-level debug --no-color (copied from real runs).
describe('reading gitleaks debug logs', () => {
  test.each([
    ['4:06AM DBG skipping directory: global allowlist path=node_modules', { kind: 'allowlist-dir', path: 'node_modules', detail: 'path allowlist' }],
    ['4:07AM DBG skipping file: global allowlist path="a b.png"', { kind: 'allowlist-file', path: 'a b.png', detail: 'path allowlist' }],
    ['4:07AM DBG skipping file: global allowlist path="nl\\nx.png"', { kind: 'allowlist-file', path: 'nl\nx.png', detail: 'path allowlist' }],
    ['4:07AM DBG skipping file: global allowlist path="q\\"x.png"', { kind: 'allowlist-file', path: 'q"x.png', detail: 'path allowlist' }],
    ['4:07AM DBG skipping file: global allowlist path="é=ü.png"', { kind: 'allowlist-file', path: 'é=ü.png', detail: 'path allowlist' }],
    ['4:07AM DBG skipping file: global allowlist path="\\xff\\u00e9.png"', { kind: 'allowlist-file', path: '\ufffdé.png', detail: 'path allowlist' }],
    ['4:06AM DBG skipping binary file mime_type=application/gzip path=pkg.tgz', { kind: 'binary', path: 'pkg.tgz', detail: 'application/gzip' }],
    ['4:11AM DBG skipping binary file mime_type=application/gzip path=outer2.zip!in.tgz', { kind: 'binary', path: 'outer2.zip!in.tgz', detail: 'application/gzip' }],
    ['4:07AM WRN skipping file: too large max_size=1MB, size=2MB path=big.txt', { kind: 'too-large', path: 'big.txt', detail: 'larger than gitleaks accepts' }],
    ['\u001b[90m4:07AM\u001b[0m WRN skipping unknown archive type path=x.lz', { kind: 'archive-unknown', path: 'x.lz', detail: 'an archive type gitleaks cannot open' }],
  ])('%s', (line, skip) => {
    expect(readSkip(line)).toEqual(skip);
  });

  test.each([
    '4:07AM DBG skipping empty file path=empty.txt',
    '4:07AM DBG skipping symlink: follow symlinks disabled path=link',
    // Decoded content is logged quoted on one line: it cannot pose as a skip.
    '4:06AM DBG segment found: original=[4,68] pos=[4,68]: "x" -> "\\n4:06AM DBG skipping file: global allowlist path=config/prod.env" decoder=base64',
    'skipping file: global allowlist path=no-time-or-level.env',
    '4:06AM INF skipping file: global allowlist path=wrong-level.env',
  ])('not a coverage gap: %s', (line) => {
    expect(readSkip(line)).toBeNull();
  });

  test('ignored fingerprints are read from both forms of the message', () => {
    expect(readSuppressed('4:06AM DBG skipping finding: global fingerprint finding=REDACTED fingerprint=a.env:github-pat:1')).toBe('a.env:github-pat:1');
    expect(readSuppressed(`4:06AM DBG skipping finding: fingerprint finding=REDACTED fingerprint="${'a'.repeat(40)}:x y.env:github-pat:3"`)).toBe(`${'a'.repeat(40)}:x y.env:github-pat:3`);
    expect(readSuppressed('4:06AM DBG skipping finding: baseline finding=REDACTED fingerprint=a.env:github-pat:1')).toBeNull();
  });

  test('Go-quoted values decode to the bytes gitleaks had', () => {
    expect(goUnquote('plain')).toBe('plain');
    expect(goUnquote('"tab\\there\\\\"')).toBe('tab\there\\');
    expect(goUnquote('"\\u00e9\\U0001f600\\x41\\101"')).toBe('é😀AA');
  });
});

describe('ignore lists and scan settings', () => {
  test('.gitleaksignore entries are normalised as gitleaks does, and match by either fingerprint form', () => {
    const entries = parseIgnore(`# comment\n\n  dir\\file.env:github-pat:2  \n${'b'.repeat(40)}:a\\b.env:aws-access-token:1\nnonsense\n`);
    expect([...entries]).toEqual(['dir/file.env:github-pat:2', `${'b'.repeat(40)}:a/b.env:aws-access-token:1`, 'nonsense']);
    expect(isIgnored(entries, { fingerprint: `${'c'.repeat(40)}:dir/file.env:github-pat:2` })).toBe(true);
    expect(isIgnored(entries, { fingerprint: 'a/b.env:aws-access-token:1' })).toBe(false);
  });

  test('a change to the settings files is seen by blob, whichever way it goes', () => {
    const at = (config: string | null, ignore: string | null): CommitSettings => ({
      commit: 'x',
      config: config ? { path: '.gitleaks.toml', oid: config, text: '' } : null,
      ignore: ignore ? { path: '.gitleaksignore', oid: ignore, text: '' } : null,
    });
    expect(settingsChanges(at('a', null), at('a', null))).toEqual([]);
    expect(settingsChanges(at(null, 'i'), at('a', null))).toEqual([
      { path: '.gitleaks.toml', change: 'added' },
      { path: '.gitleaksignore', change: 'deleted' },
    ]);
    expect(settingsChanges(at('a', 'i'), at('b', 'i'))).toEqual([{ path: '.gitleaks.toml', change: 'modified' }]);
  });
});

describe('what reaches a screen', () => {
  test('control and direction characters from a commit are escaped', () => {
    expect(printable('a\u001b[31mred\u202egnp.exe\nx')).toBe('a\\u{1b}[31mred\\u{202e}gnp.exe\\u{a}x');
    expect(printable('dir/ünïcode file.env')).toBe('dir/ünïcode file.env');
  });

  test('a finding is rebuilt from a fingerprint, with or without a commit', () => {
    expect(findingFromFingerprint('a:b.env:github-pat:3', 'tree')).toEqual({ rule: 'github-pat', file: 'a:b.env', line: 3, commit: null, author: null, fingerprint: 'a:b.env:github-pat:3', source: 'tree' });
    expect(findingFromFingerprint(`${'d'.repeat(40)}:x.env:aws-access-token:1`, 'commits')).toMatchObject({ commit: 'd'.repeat(12), file: 'x.env', rule: 'aws-access-token', line: 1 });
  });
});
