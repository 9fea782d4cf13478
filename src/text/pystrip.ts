/**
 * Python's `str.strip()`, `lstrip()` and `rstrip()` (no argument), which the official
 * preprocessing and the slow tokenizers use wherever they strip text. JavaScript's `trim()`
 * differs on four code points' worth of rules: Python strips U+001C–U+001F and U+0085 and keeps
 * U+FEFF; JavaScript does the opposite. Every template and tokenizer rule that strips comes here.
 */

/** The code points for which Python's `str.isspace()` is true (CPython's Unicode database). */
const PY_SPACE =
  "\t\n\u000b\u000c\r\u001c\u001d\u001e\u001f \u0085\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000";
const SPACE = new Set<number>([...PY_SPACE].map((c) => c.charCodeAt(0)));

/** True when Python's `str.isspace()` is true for this UTF-16 code unit (all are in the BMP). */
export function isPySpace(code: number): boolean {
  return SPACE.has(code);
}

export function pyLstrip(s: string): string {
  let i = 0;
  while (i < s.length && SPACE.has(s.charCodeAt(i))) i++;
  return i === 0 ? s : s.slice(i);
}

export function pyRstrip(s: string): string {
  let j = s.length;
  while (j > 0 && SPACE.has(s.charCodeAt(j - 1))) j--;
  return j === s.length ? s : s.slice(0, j);
}

export function pyStrip(s: string): string {
  return pyRstrip(pyLstrip(s));
}
