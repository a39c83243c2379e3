/*
 * Colour for the CLI: only where a person reads it. A pipe, a file or a CI
 * log gets plain text, so nothing downstream has to strip escape sequences.
 */

/** The tones the CLI uses: a VM's result, the error prefix. */
export type Tone = 'ok' | 'bad' | 'warn';

const CODES: Record<Tone, string> = { ok: '32', bad: '31', warn: '33' };

/**
 * Whether to colour a stream: never when `NO_COLOR` is set to anything
 * (no-color.org), always when `FORCE_COLOR` is set (except `0` or `false`),
 * otherwise only on a terminal that is not `TERM=dumb`.
 */
export function colourWanted(isTTY: boolean | undefined, env: NodeJS.ProcessEnv): boolean {
  if (env.NO_COLOR) return false;
  const force = env.FORCE_COLOR;
  if (force !== undefined && force !== '') return force !== '0' && force.toLowerCase() !== 'false';
  return Boolean(isTTY) && env.TERM !== 'dumb';
}

/** `text` in `tone` when `on`, else unchanged (the text itself must already be clean). */
export function paint(text: string, tone: Tone, on: boolean): string {
  return on ? `\u001b[${CODES[tone]}m${text}\u001b[0m` : text;
}
