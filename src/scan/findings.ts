/**
 * A secret-scan finding, reduced to what may be shown anywhere: rule, file,
 * line, commit, author and fingerprint. The matched text, the secret and the
 * commit message never leave the gitleaks report file, which is deleted after
 * parsing.
 */
export interface Finding {
  rule: string;
  file: string;
  line: number;
  /** Short commit hash; null for a finding in the deployed tree. */
  commit: string | null;
  author: string | null;
  /** gitleaks' fingerprint (`commit:file:rule:line`, or `file:rule:line` in the tree): what `.gitleaksignore` takes. */
  fingerprint: string;
  /** Where it was found: in the history being deployed, or in the tree itself. */
  source: 'commits' | 'tree';
}

/** The gitleaks JSON report fields vm-sync reads (all others are ignored on purpose). */
interface RawFinding {
  RuleID?: unknown;
  File?: unknown;
  StartLine?: unknown;
  Commit?: unknown;
  Author?: unknown;
  Fingerprint?: unknown;
}

const str = (v: unknown): string => (typeof v === 'string' ? v : '');

// Control characters (terminal escapes, newlines) and invisible or
// direction-changing characters: a file name or author comes from the
// commit, and must not be able to rewrite what a terminal or summary shows.
// eslint-disable-next-line no-control-regex
const UNPRINTABLE = /[\u0000-\u001f\u007f-\u009f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]/g;

/** Text from a commit or tree made safe to print: each unprintable character becomes `\u{hex}`. */
export function printable(text: string): string {
  return text.replace(UNPRINTABLE, (c) => `\\u{${c.codePointAt(0)?.toString(16)}}`);
}

/**
 * Keeps only the safe fields of gitleaks findings and removes duplicates
 * (with `-m`, a merge reports a finding once per parent).
 */
export function sanitizeFindings(raw: unknown, source: Finding['source']): Finding[] {
  if (!Array.isArray(raw)) throw new Error('gitleaks report is not a JSON array');
  const seen = new Map<string, Finding>();
  for (const item of raw as RawFinding[]) {
    const finding: Finding = {
      rule: printable(str(item.RuleID)) || 'unknown-rule',
      file: printable(str(item.File)),
      line: typeof item.StartLine === 'number' ? item.StartLine : 0,
      commit: str(item.Commit) ? printable(str(item.Commit).slice(0, 12)) : null,
      author: printable(str(item.Author)) || null,
      fingerprint: printable(str(item.Fingerprint)),
      source,
    };
    seen.set(finding.fingerprint || `${finding.file}:${finding.rule}:${finding.line}:${finding.commit}`, finding);
  }
  return [...seen.values()];
}

/**
 * A finding rebuilt from its fingerprint (`file:rule:line`, or
 * `commit:file:rule:line`): what is left of one that gitleaks dropped because
 * an ignore file vm-sync does not trust listed it.
 */
export function findingFromFingerprint(fingerprint: string, source: Finding['source']): Finding {
  const parts = fingerprint.split(':');
  const line = Number(parts.pop());
  const rule = parts.pop() ?? 'unknown-rule';
  const commit = parts.length > 1 && /^[0-9a-f]{40}$/.test(parts[0]) ? (parts.shift() as string) : null;
  return {
    rule: printable(rule),
    file: printable(parts.join(':')),
    line: Number.isInteger(line) ? line : 0,
    commit: commit ? commit.slice(0, 12) : null,
    author: null,
    fingerprint: printable(fingerprint),
    source,
  };
}

/** One line per finding, for logs and tables. */
export function describeFinding(f: Finding): string {
  return `${f.rule} in ${f.file}:${f.line}${f.commit ? ` (commit ${f.commit}${f.author ? ` by ${f.author}` : ''})` : ' (deployed tree)'} fingerprint ${f.fingerprint}`;
}

/**
 * A SARIF 2.1.0 log of the findings, for GitHub code scanning. Built from the
 * sanitised findings only (not gitleaks' own SARIF, which carries the matched
 * snippet), so it cannot contain a secret.
 */
export function renderSarif(findings: Finding[]): string {
  const rules = [...new Set(findings.map((f) => f.rule))].sort();
  const sarif = {
    $schema: 'https://json.schemastore.org/sarif-2.1.0.json',
    version: '2.1.0',
    runs: [
      {
        tool: {
          driver: {
            name: 'vm-sync secret scan (gitleaks)',
            informationUri: 'https://github.com/gitleaks/gitleaks',
            rules: rules.map((id) => ({ id, shortDescription: { text: `gitleaks rule ${id}` } })),
          },
        },
        results: findings.map((f) => ({
          ruleId: f.rule,
          level: 'error',
          message: { text: `Possible secret (${f.rule})${f.commit ? ` added in commit ${f.commit}` : ''}. Rotate it, remove it from the repository, or add the fingerprint to .gitleaksignore if it is not a secret.` },
          locations: [{ physicalLocation: { artifactLocation: { uri: f.file }, region: { startLine: Math.max(1, f.line) } } }],
          partialFingerprints: { gitleaksFingerprint: f.fingerprint },
        })),
      },
    ],
  };
  return `${JSON.stringify(sarif, null, 2)}\n`;
}
