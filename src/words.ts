/*
 * Counts in prose: "1 file", "2 files", "1 VM", "3 directories". Every
 * message with a number in it says the noun through here, so no output reads
 * "1 files" or hedges with "file(s)".
 */

/** Nouns whose plural is not the noun plus `s`. */
const IRREGULAR: Readonly<Record<string, string>> = {
  directory: 'directories',
  entry: 'entries',
  batch: 'batches',
  match: 'matches',
  'possible secret': 'possible secrets',
};

/** The plural of `noun` (`file` → `files`, `directory` → `directories`). */
export function plural(noun: string): string {
  if (IRREGULAR[noun]) return IRREGULAR[noun];
  if (/(s|x|z|ch|sh)$/.test(noun)) return `${noun}es`;
  if (/[^aeiou]y$/.test(noun)) return `${noun.slice(0, -1)}ies`;
  return `${noun}s`;
}

/** `noun` as the count `n` needs it: singular for exactly 1, plural otherwise (0 files, 1 file, 2 files). */
export function noun(n: number, singular: string, pluralForm?: string): string {
  return n === 1 ? singular : (pluralForm ?? plural(singular));
}

/**
 * A count with its noun: `count(1, 'file')` → `1 file`, `count(2, 'file')` →
 * `2 files`, `count(3, 'directory')` → `3 directories`. `pluralForm` for a
 * noun {@link plural} does not know. The number as digits only (`4847
 * files`), so logs stay easy to parse.
 */
export function count(n: number, singular: string, pluralForm?: string): string {
  return `${n} ${noun(n, singular, pluralForm)}`;
}

/** "is" or "are", as the count needs: `${count(n, 'file')} ${isAre(n)} unchanged`. */
export function isAre(n: number): string {
  return n === 1 ? 'is' : 'are';
}

/** "was" or "were", as the count needs. */
export function wasWere(n: number): string {
  return n === 1 ? 'was' : 'were';
}

/**
 * The first `max` items and, when there are more, how many were left out:
 * `a, b, c and 4 more`. `total` counts items not even passed in (a capped list).
 */
export function firstFew(items: readonly string[], max: number, total: number = items.length): string {
  const shown = items.slice(0, max);
  const rest = total - shown.length;
  if (rest <= 0) return shown.join(', ');
  return shown.length === 0 ? `${rest} more` : `${shown.join(', ')} and ${rest} more`;
}
