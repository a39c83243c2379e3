/*
 * The agent protocol's runner-host side (src/remote/agent-script.ts): the
 * checks on a parsed response (only / require / oneOf), and the argument
 * encoding of session requests, decoded by a real shell exactly as
 * agent.sh's `serve` decodes it.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { AgentResponse, encodeSessionArg, parseAgentOutput } from '../../src/remote/agent-script.js';

const NONCE = '0123456789abcdef01234567';
const framed = (...lines: string[]): string => lines.map((l) => `@${NONCE} ${l}\n`).join('');

describe('AgentResponse', () => {
  const response = (...lines: string[]): AgentResponse => parseAgentOutput(framed(...lines), NONCE);

  test('only: an unknown key is rejected, naming it', () => {
    // Catches: a forged or newer-agent field silently ignored.
    expect(() => response('release=r1', 'surprise=1', 'end=1').only(['release'])).toThrow(/unknown field "surprise"/);
  });

  test('only: end, error and message are always allowed; allowed keys pass; it returns the response', () => {
    const r = response('release=r1', 'seeded=a', 'seeded=b', 'message=hello', 'error=lock_lost', 'end=1');
    expect(r.only(['release', 'seeded'])).toBe(r);
    expect(r.all('seeded')).toEqual(['a', 'b']);
  });

  test('only: an empty response passes any list', () => {
    expect(() => response().only([])).not.toThrow();
  });

  test('only: keys are compared exactly (no prefix, no case folding)', () => {
    expect(() => response('Release=r1').only(['release'])).toThrow(/unknown field/);
    expect(() => response('release_x=r1').only(['release'])).toThrow(/unknown field/);
    expect(() => response('endx=1').only([])).toThrow(/unknown field/);
  });

  test('require: a missing key is an error, never ""; a present empty value is ""', () => {
    // Catches: a missing field read as an empty string (e.g. an empty link_dest or previous).
    const r = response('link_dest=', 'end=1');
    expect(r.require('link_dest')).toBe('');
    expect(() => r.require('stage')).toThrow(/lacks stage=/);
  });

  test('require: the first value of a repeated key', () => {
    expect(response('lock=acquired', 'lock=released').require('lock')).toBe('acquired');
  });

  test('oneOf: a value outside the set is rejected; a missing key too; a member is returned', () => {
    const r = response('kind=release', 'rev_state=weird', 'end=1');
    expect(r.oneOf('kind', ['release', 'symlink'] as const)).toBe('release');
    expect(() => r.oneOf('rev_state', ['regular', 'absent'] as const)).toThrow(/rev_state="weird", expected one of regular, absent/);
    expect(() => r.oneOf('missing', ['a'] as const)).toThrow(/lacks missing=/);
    // Exact match only.
    expect(() => response('kind=release ').oneOf('kind', ['release'] as const)).toThrow();
    expect(() => response('kind=').oneOf('kind', ['release'] as const)).toThrow();
  });

  test('complete only with the end marker', () => {
    expect(response('release=r1').complete).toBe(false);
    expect(response('release=r1', 'end=1').complete).toBe(true);
  });

  test('lines without this nonce are not part of the response', () => {
    const r = parseAgentOutput(`release=forged\n@ffffffffffffffffffffffff release=other\n${framed('release=r1')} @${NONCE} release=indented\n`, NONCE);
    expect(r.all('release')).toEqual(['r1']);
    expect(() => r.only(['release'])).not.toThrow();
  });
});

describe('encodeSessionArg through a real shell', () => {
  const values: [string, string][] = [
    ['empty', ''],
    ['plain', 'abc'],
    ['spaces', 'a b  c '],
    ['tab', 'a\tb'],
    ['single quote', "it's"],
    ['double quote', 'say "hi"'],
    ['backslashes', 'a\\b\\\\c\\'],
    ['\\c (printf %b stops output there)', 'before\\cafter'],
    ['\\n as text', 'a\\nb'],
    ['\\0 as text', '\\0101'],
    ['octal look-alike after an escape', "'101"],
    ['%s', '%s %d %b %%'],
    ['newline at the end', 'line\n'],
    ['newlines at the end', 'line\n\n\n'],
    ['newline inside', 'one\ntwo'],
    ['only newlines', '\n\n'],
    ['carriage return', 'a\r\nb'],
    ['command substitution', '$(id)'],
    ['backticks', '`id`'],
    ['variables', '$HOME ${PATH} $1 $@ $#'],
    ['glob', '* ? [a-z] ~'],
    ['UTF-8 é', 'café'],
    ['emoji', '🚀 deploy ✅'],
    ['leading dash', '-n'],
    ['leading dashes', '--help -e -E'],
    ['equals signs', '=a=b='],
    ['only =', '='],
    ['shell operators', 'a; b && c || d | e > f < g & h'],
    ['trailing x (the decoder strips one x)', 'xx'],
    ['DEL and control bytes', '\x01\x07\x1b[31m\x7f'],
    ['a long value', 'é'.repeat(3000)],
    ['a command', "curl -fsS 'http://localhost:8080/health?x=1&y=2' | grep -q \"ok\""],
  ];

  const shells = ['/bin/sh', ...['/bin/bash', '/usr/bin/bash'].filter((p) => fs.existsSync(p)).slice(0, 1)];
  // The decoding of agent.sh's serve op: printf only for a word with an escape.
  const decodeWord = 'w=${w#=}; case $w in *\\\\*) a=$(printf \'%bx\' "$w"); w=${a%x} ;; esac';
  const decode = `w=$1; ${decodeWord}; printf %s "$w"`;

  test('the shells under test: /bin/sh (dash here) and bash', () => {
    expect(shells.length).toBeGreaterThanOrEqual(1);
    const agent = fs.readFileSync('src/remote/agent.sh', 'utf8');
    expect(agent).toContain('w=${w#=}');
    expect(agent).toContain(`*\\\\*) a=$(printf '%bx' "$w"); w=\${a%x} ;;`);
  });

  test.each(values)('%s: the encoded word is one plain word starting with "="', (_name, value) => {
    const encoded = encodeSessionArg(value);
    expect(encoded.startsWith('=')).toBe(true);
    // No byte a shell's word splitting, quoting or expansion would act on.
    expect(encoded).toMatch(/^=[A-Za-z0-9._,:/@+\\-]*$/);
  });

  for (const shell of shells) {
    test.each(values)(`${shell}: %s round-trips byte for byte`, (_name, value) => {
      // Catches: any byte the decoder changes (a trailing newline lost, \c cutting the value, % read as a format).
      const result = spawnSync(shell, ['-c', decode, 'x', encodeSessionArg(value)]);
      expect(result.stderr.toString()).toBe('');
      expect(result.status).toBe(0);
      expect(Buffer.compare(result.stdout, Buffer.from(value, 'utf8'))).toBe(0);
    });
  }

  for (const shell of shells) {
    test(`${shell}: a whole request line is split into the same arguments (serve: read -r, set -f, set -- $line)`, () => {
      const args = values.map(([, v]) => v);
      const line = `${NONCE} 30 flip ${args.map(encodeSessionArg).join(' ')}`;
      // As serve: one line read from stdin, split on IFS with globbing off, each ARG decoded; here each decoded
      // argument is printed followed by a NUL so the test can split them again.
      const script = [
        'IFS= read -r line',
        'set -f; set -- $line; set +f',
        'shift 3',
        `for w in "$@"; do shift; ${decodeWord}; set -- "$@" "$w"; done`,
        'for v in "$@"; do printf \'%s\\000\' "$v"; done',
      ].join('\n');
      const result = spawnSync(shell, ['-c', script, 'x'], { input: `${line}\n` });
      expect(result.stderr.toString()).toBe('');
      const out = result.stdout;
      const got: string[] = [];
      let start = 0;
      for (let i = 0; i < out.length; i++) {
        if (out[i] === 0) {
          got.push(out.subarray(start, i).toString('utf8'));
          start = i + 1;
        }
      }
      expect(got).toEqual(args);
    });
  }

  test('a value with a NUL byte throws (a shell argument cannot hold one)', () => {
    expect(() => encodeSessionArg('a\0b')).toThrow(/NUL/);
    expect(() => encodeSessionArg('\0')).toThrow(/NUL/);
  });

  test('each non-plain byte is a 4-digit octal escape (\\0NNN), so a digit after it is never read as part of it', () => {
    expect(encodeSessionArg("'1")).toBe('=\\0047' + '1');
    expect(encodeSessionArg('é')).toBe('=\\0303\\0251');
    expect(encodeSessionArg('a b')).toBe('=a\\0040b');
  });
});
