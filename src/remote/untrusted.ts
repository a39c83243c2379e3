import { count } from '../words.js';

/**
 * Text that a VM controls (its `.sync_rev`, a lock owner, error output, paths
 * its `$HOME` expands to) is untrusted: it may hold terminal escapes, markdown
 * or HTML, or be megabytes long. Everything read from a VM passes through
 * {@link vmText} once, where it is parsed; each output channel then applies its
 * own escaping on top (markdown in the summary, JSON in `--json`).
 */

// C0 controls except tab and newline, DEL, and the C1 range (U+0080–U+009F:
// U+009B is a one-character CSI on some terminals).
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g;
// eslint-disable-next-line no-control-regex
const CONTROL_OR_NEWLINE = /[\u0000-\u001f\u007f-\u009f]/g;

/** The default bound for one value read from a VM (a path, a rev, an owner). */
export const VM_VALUE_MAX = 300;

/**
 * One line of VM-controlled text made safe to store and print: control
 * characters (escape sequences above all) become `?`, newlines become spaces,
 * and anything past `max` characters is cut with a note of how much was cut.
 */
export function vmText(value: string, max: number = VM_VALUE_MAX): string {
  const clean = value.replace(CONTROL_OR_NEWLINE, (c) => (c === '\n' || c === '\r' || c === '\t' ? ' ' : '?'));
  return clip(clean, max);
}

/** Like {@link vmText} but keeps newlines (command output shown as a block). */
export function vmBlock(value: string, max: number): string {
  return clip(value.replace(/\r\n?/g, '\n').replace(CONTROL, '?'), max);
}

function clip(text: string, max: number): string {
  if (text.length <= max) return text;
  return `${text.slice(0, max)}… (${count(text.length - max, 'more character')} cut)`;
}

// Terminal escape sequences whole (CSI, OSC, and two-character ESC sequences),
// so a coloured line reads as its text rather than as `?[31m...`.
// eslint-disable-next-line no-control-regex
const ESCAPES = /\u001b\[[0-?]*[ -/]*[@-~]|\u001b\][^\u0007\u001b]*(?:\u0007|\u001b\\)?|\u001b[@-_]|\u009b[0-?]*[ -/]*[@-~]/g;
/** What a cut of the start of a command's output looks like (BoundedText's notice). */
const CUT_NOTICE = /^\n?\[\.\.\. (\d+) characters? not kept \.\.\.\]\n/;

/** What follows the first line of `text`: nothing when it is all one line (a fragment, dropped whole). */
function afterFirstLine(text: string): string {
  const newline = text.indexOf('\n');
  return newline < 0 ? '' : text.slice(newline + 1);
}

/**
 * The end of a command's output (post_sync_command) as vm-sync keeps it: escape
 * sequences removed, other control characters made `?`, `\r\n` and lone `\r`
 * as newlines, then its last `maxLines` lines of at most `maxChars` in all. A
 * line cut by an earlier bound (the first one after a cut) is dropped whole,
 * and the text says how many lines or characters came before.
 */
export function commandOutputTail(raw: string, maxLines: number, maxChars: number): string {
  let text = raw;
  let cut = false;
  const notice = CUT_NOTICE.exec(text);
  if (notice) {
    // The first line after the cut is a fragment: a secret cut in half would no longer look like one.
    text = afterFirstLine(text.slice(notice[0].length));
    cut = true;
  }
  const clean = text.replace(ESCAPES, '').replace(/\r\n?/g, '\n').replace(CONTROL, '?').replace(/\n+$/, '');
  let lines = clean === '' ? [] : clean.split('\n');
  if (lines.length > maxLines) {
    lines = lines.slice(-maxLines);
    cut = true;
  }
  let out = lines.join('\n');
  if (out.length > maxChars) {
    out = afterFirstLine(out.slice(-maxChars));
    cut = true;
  }
  return cut ? `[… earlier output not kept]\n${out}` : out;
}
