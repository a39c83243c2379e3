import type { RunReport, VmReport } from '../sync/types.js';
import { vmBlock, vmText } from '../remote/untrusted.js';

/*
 * Each output channel makes text safe on its own terms, whatever the remote
 * layer already cleaned: messages and notes embed text a VM or a commit's tree
 * controls (a rev, a lock owner, a file name, stderr), and one missed spot
 * must not reach a terminal as an escape sequence, the job summary as HTML,
 * or GITHUB_OUTPUT as megabytes.
 */

/** Longest line vm-sync prints to a terminal or a job log for one message. */
export const LINE_MAX = 4000;

// Characters a culture-aware string search may skip as if absent: format
// characters (soft hyphen, zero-width and bidi marks), variation selectors,
// the combining grapheme joiner.
const IGNORABLE = /[\p{Cf}\p{Variation_Selector}\u034f]/gu;

/**
 * `line` (one line, already free of control characters) as the Actions runner
 * can never read it as a workflow command. The runner takes `::name::` at the
 * start of any line it logs once leading whitespace is trimmed, and the legacy
 * `##[name]` anywhere in a line (actions/runner, ActionCommandManager); a
 * `##[stop-commands]` would silence every annotation and mask sent after it.
 * So `##[` becomes `## [`, a leading `::` becomes `: :`, and characters its
 * search could skip become `?`. It matters for the CLI too: it runs in
 * workflow steps.
 */
export function noWorkflowCommand(line: string): string {
  const out = line.replace(IGNORABLE, '?').replace(/##\[/g, '## [');
  return out.trimStart().startsWith('::') ? out.replace('::', ': :') : out;
}

/**
 * One line for a terminal or the Actions log: no control characters (so no
 * escape sequences, no carriage return overwriting what was printed), bounded,
 * and never a workflow command ({@link noWorkflowCommand}).
 */
export function terminalLine(text: string, max: number = LINE_MAX): string {
  return noWorkflowCommand(vmText(text, max));
}

/** A character as JSON escapes (`\uXXXX` per UTF-16 unit). */
function jsonEscape(c: string): string {
  return Array.from({ length: c.length }, (_, i) => `\\u${c.charCodeAt(i).toString(16).padStart(4, '0')}`).join('');
}

/**
 * JSON vmSync prints (`--json`, `--log-format json`): the same value for a
 * JSON reader, but no line of it a workflow command for the Actions runner:
 * `[` after `##` and the characters the runner's search could skip are
 * written as `\uXXXX` escapes (JSON puts `#` only inside strings, and no line
 * of it starts with `::`).
 */
export function jsonText(value: unknown, indent?: number): string {
  return JSON.stringify(value, null, indent).replace(/##\[/g, '##\\u005b').replace(IGNORABLE, jsonEscape);
}

// Backslash first, so the escapes added after it are not escaped again.
const MARKDOWN_SPECIAL = /[\\`*_[\]|~]/g;
const HTML_SPECIAL: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;' };

/**
 * Text for the job summary (GitHub-flavoured markdown with HTML), inline: one
 * line, bounded, with HTML and every markdown construct that text could start
 * (links, images, emphasis, code, tables, headings) escaped, so it renders as
 * the literal characters.
 */
export function markdownText(text: string, max: number): string {
  const escaped = vmText(text, max)
    .replace(/[&<>]/g, (c) => HTML_SPECIAL[c])
    .replace(MARKDOWN_SPECIAL, (c) => `\\${c}`);
  // A heading, quote or list marker only counts at the start of a line.
  return escaped.replace(/^([#+-])/, '\\$1').replace(/^(\d{1,9})([.)])(?=\s|$)/, '$1\\$2');
}

/**
 * A code span for the job summary. Inside backticks markdown escapes are shown
 * literally, so instead the text loses any backtick (it could close the span)
 * and keeps `\|` (GitHub's table parser needs it even inside code).
 */
export function markdownCode(text: string, max: number): string {
  return `\`${vmText(text, max).replace(/`/g, "'").replace(/\|/g, '\\|')}\``;
}

/** GitHub's limit on a commit status or deployment status description. */
export const DESCRIPTION_MAX = 140;

/**
 * A commit status or deployment status description: one line, no control
 * characters, at most 140 UTF-16 units (GitHub rejects longer ones), never
 * cutting a surrogate pair in half.
 */
export function githubDescription(text: string): string {
  // Only the start can be shown: never clean megabytes to keep 140 characters.
  const line = vmText(text.slice(0, 1000), 1000);
  if (line.length <= DESCRIPTION_MAX) return line;
  let cut = line.slice(0, DESCRIPTION_MAX - 1);
  if (/[\uD800-\uDBFF]$/.test(cut)) cut = cut.slice(0, -1);
  return `${cut}…`;
}

/** Annotation (core.error/warning) message and title bounds. */
export const ANNOTATION_MAX = 2000;
export const ANNOTATION_TITLE_MAX = 200;

/** An annotation message or title: one line, no control characters, bounded. */
export function annotationText(text: string, max: number = ANNOTATION_MAX): string {
  return vmText(text, max);
}

/** The cap on the `results` output: GitHub allows 1 MB per output; stay under it with room for the other outputs. */
export const RESULTS_MAX_BYTES = 900 * 1024;

/** Per-string caps for `results`: generous first, tight when the document is still too big. */
const STRING_MAX = 2000;
const STRING_MAX_TIGHT = 200;
const NOTES_MAX = 20;
const FINDINGS_MAX = 1000;

/** A post_sync report with its output cut to its last `max` characters (a command says why it failed at its end). */
function endOf(post: NonNullable<VmReport['post_sync']>, max: number): VmReport['post_sync'] {
  if (post.output_tail.length <= max) return post;
  return { ...post, output_tail: `[…]${post.output_tail.slice(-(max - 10))}` };
}

/** Every string in a JSON value cleaned of control characters (newlines kept) and bounded. */
function capStrings<T>(value: T, max: number): T {
  if (typeof value === 'string') return vmBlock(value, max) as T;
  if (Array.isArray(value)) return value.map((v) => capStrings(v, max)) as T;
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, capStrings(v, max)])) as T;
  }
  return value;
}

/** What `results` holds: the report, or an error document when the run failed before it had one. */
export type ResultsDocument = (RunReport | Omit<RunReport, 'commit'> & { commit: string | null }) & {
  error?: { code: string; message: string };
  /** Present when the document had to be shortened to fit: how many VM rows the run had. */
  truncated?: { vms_total: number; vms_shown: number; reason: string };
};

/**
 * The `results` output as JSON that is always valid and at most `maxBytes`
 * (UTF-8): every string bounded and cleaned; if the document is still too
 * big, messages are shortened and notes and findings trimmed; if even that is
 * too big (a fleet of thousands), VM rows are cut from the end and
 * `truncated` says how many there were. `failed` and the other outputs keep
 * the full picture.
 */
export function boundedResults(doc: ResultsDocument, maxBytes: number = RESULTS_MAX_BYTES): string {
  const capped: ResultsDocument = capStrings(
    {
      ...doc,
      vms: doc.vms.map((vm) => ({ ...vm, notes: vm.notes.slice(0, NOTES_MAX), ...(vm.post_sync ? { post_sync: endOf(vm.post_sync, STRING_MAX) } : {}) })),
      scan: doc.scan ? { ...doc.scan, findings: doc.scan.findings.slice(0, FINDINGS_MAX) } : doc.scan,
    },
    STRING_MAX,
  );
  let text = JSON.stringify(capped);
  if (Buffer.byteLength(text) <= maxBytes) return text;

  const tight: ResultsDocument = capStrings(
    {
      ...capped,
      vms: capped.vms.map((vm) => ({ ...vm, notes: [], ...(vm.post_sync ? { post_sync: endOf(vm.post_sync, STRING_MAX_TIGHT) } : {}) })),
      scan: capped.scan ? { ...capped.scan, findings: capped.scan.findings.slice(0, 100) } : capped.scan,
    },
    STRING_MAX_TIGHT,
  );
  text = JSON.stringify(tight);
  if (Buffer.byteLength(text) <= maxBytes) return text;

  // Keep as many rows as fit (rows are similar in size: one pass, then trim).
  const total = tight.vms.length;
  const reason = `the full report is over ${Math.round(maxBytes / 1024)} KiB: see the job summary and log`;
  const fits = (shown: number): string | null => {
    const candidate = JSON.stringify({ ...tight, vms: tight.vms.slice(0, shown), truncated: { vms_total: total, vms_shown: shown, reason } });
    return Buffer.byteLength(candidate) <= maxBytes ? candidate : null;
  };
  // Binary search on the row count: a few serialisations, whatever the fleet size.
  let best = fits(0);
  let [lo, hi] = [1, total];
  while (lo <= hi) {
    const mid = Math.floor((lo + hi) / 2);
    const candidate = fits(mid);
    if (candidate === null) hi = mid - 1;
    else [best, lo] = [candidate, mid + 1];
  }
  return best ?? JSON.stringify({ command: doc.command, commit: doc.commit, vms: [], truncated: { vms_total: total, vms_shown: 0, reason } });
}
