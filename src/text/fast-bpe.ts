/**
 * A JavaScript encoder for byte-level BPE tokenizer.json files (Qwen2, Llama-3): NFC or no
 * normalizer, a Split regex pre-tokenizer, byte-level mapping, BPE merges, with a cache of
 * pre-tokens. It exists for speed (no native round trip per text, and most words repeat);
 * the Rust tokenizer stays the reference: only texts without added tokens take this path,
 * tokenizers of any other shape never do, and tests compare both on many strings.
 */

type Obj = Record<string, unknown>;

/** True when every UTF-16 unit is ASCII (such a text is already NFC). */
function isAscii(s: string): boolean {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) > 0x7f) return false;
  return true;
}

// Oniguruma's \s is Unicode White_Space; JavaScript's differs (it adds U+FEFF, lacks U+0085).
const WS =
  "\\t\\n\\v\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";

/** Translate the tokenizer's (Oniguruma) pattern to a JavaScript regex, or null if unsure. */
export function translatePattern(src: string): RegExp | null {
  let out = "";
  let inClass = false;
  for (let i = 0; i < src.length; i++) {
    const c = src[i];
    if (c === "\\") {
      const n = src[i + 1];
      i++;
      if (n === "s") out += inClass ? WS : `[${WS}]`;
      else if (n === "S") {
        if (inClass) return null;
        out += `[^${WS}]`;
      } else if (n === "p" || n === "P") {
        const m = /^\{[A-Za-z_]+\}/.exec(src.slice(i + 1));
        if (!m) return null;
        out += `\\${n}${m[0]}`;
        i += m[0].length;
      } else if ("rntvf\\/[]().|?*+{}^$-'".includes(n)) out += `\\${n}`;
      else return null;
      continue;
    }
    if (inClass) {
      if (c === "]") inClass = false;
      out += c;
      continue;
    }
    if (c === "[") {
      inClass = true;
      out += c;
      if (src[i + 1] === "^") {
        out += "^";
        i++;
      }
      continue;
    }
    if (c === "(" && src.startsWith("(?i:", i)) {
      // A case-insensitive group of literal alternatives ('s|'t|...): spell the cases out.
      const end = src.indexOf(")", i);
      const body = src.slice(i + 4, end);
      if (!/^[A-Za-z'|]+$/.test(body)) return null;
      out += `(?:${body
        .split("|")
        .map((alt) =>
          [...alt]
            .map((ch) => (/[A-Za-z]/.test(ch) ? `[${ch.toLowerCase()}${ch.toUpperCase()}]` : ch))
            .join(""),
        )
        .join("|")})`;
      i = end;
      continue;
    }
    if (
      c === "(" &&
      src[i + 1] === "?" &&
      !src.startsWith("(?:", i) &&
      !src.startsWith("(?!", i) &&
      !src.startsWith("(?=", i)
    )
      return null;
    out += c;
  }
  try {
    return new RegExp(out, "gu");
  } catch {
    return null;
  }
}

function byteAlphabet(): string[] {
  // GPT-2's byte → printable character table.
  const bs: number[] = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++)
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n++);
    }
  const table: string[] = new Array(256);
  bs.forEach((b, i) => {
    table[b] = String.fromCodePoint(cs[i]);
  });
  return table;
}

/** The Qwen2 pre-tokenizer pattern; Llama-3's is the same with `\p{N}{1,3}` for `\p{N}`. */
const QWEN2_SPLIT =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const LLAMA3_SPLIT = QWEN2_SPLIT.replace("|\\p{N}|", "|\\p{N}{1,3}|");

// ASCII character classes of the pattern: letter (\p{L}), digit (\p{N}), white space (\s).
const C_OTHER = 0;
const C_LETTER = 1;
const C_DIGIT = 2;
const C_SPACE = 3;
const ASCII_CLASS = new Uint8Array(128);
for (let c = 0; c < 128; c++)
  ASCII_CLASS[c] =
    (c >= 65 && c <= 90) || (c >= 97 && c <= 122)
      ? C_LETTER
      : c >= 48 && c <= 57
        ? C_DIGIT
        : c === 9 || c === 10 || c === 11 || c === 12 || c === 13 || c === 32
          ? C_SPACE
          : C_OTHER;

/**
 * End of the pre-token that starts at `i` of the pure-ASCII text `s`, exactly as the Qwen2 /
 * Llama-3 pattern matches it (alternatives tried in order, greedy, with the same backtracking).
 * `maxDigits` is 1 (Qwen2) or 3 (Llama-3).
 */
export function asciiPieceEnd(s: string, i: number, maxDigits: number): number {
  const n = s.length;
  const c = s.charCodeAt(i);
  const k = ASCII_CLASS[c];
  // (?i:'s|'t|'re|'ve|'m|'ll|'d)
  if (c === 39 && i + 1 < n) {
    const a = s.charCodeAt(i + 1) | 32;
    if (a === 115 || a === 116 || a === 109 || a === 100) return i + 2; // s t m d
    if (i + 2 < n) {
      const b = s.charCodeAt(i + 2) | 32;
      if ((a === 114 && b === 101) || (a === 118 && b === 101) || (a === 108 && b === 108))
        return i + 3; // re ve ll
    }
  }
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (k === C_LETTER) {
    let j = i + 1;
    while (j < n && ASCII_CLASS[s.charCodeAt(j)] === C_LETTER) j++;
    return j;
  }
  if (
    k !== C_DIGIT &&
    c !== 10 &&
    c !== 13 &&
    i + 1 < n &&
    ASCII_CLASS[s.charCodeAt(i + 1)] === C_LETTER
  ) {
    let j = i + 2;
    while (j < n && ASCII_CLASS[s.charCodeAt(j)] === C_LETTER) j++;
    return j;
  }
  // \p{N} or \p{N}{1,3}
  if (k === C_DIGIT) {
    let j = i + 1;
    while (j < n && j - i < maxDigits && ASCII_CLASS[s.charCodeAt(j)] === C_DIGIT) j++;
    return j;
  }
  //  ?[^\s\p{L}\p{N}]+[\r\n]*
  let p = -1;
  if (k === C_OTHER) p = i;
  else if (c === 32 && i + 1 < n && ASCII_CLASS[s.charCodeAt(i + 1)] === C_OTHER) p = i + 1;
  if (p >= 0) {
    let j = p + 1;
    while (j < n && ASCII_CLASS[s.charCodeAt(j)] === C_OTHER) j++;
    while (j < n && (s.charCodeAt(j) === 10 || s.charCodeAt(j) === 13)) j++;
    return j;
  }
  // Only white space is left: \s*[\r\n]+ ends after the run's last line break.
  let end = i + 1;
  while (end < n && ASCII_CLASS[s.charCodeAt(end)] === C_SPACE) end++;
  for (let j = end - 1; j >= i; j--) {
    const d = s.charCodeAt(j);
    if (d === 10 || d === 13) return j + 1;
  }
  // \s+(?!\S): the whole run at the end of the text, else all but its last character; then \s+.
  if (end === n || end - i === 1) return end;
  return end - 1;
}

/** The first UTF-16 unit that every string starts with, or null. */
function sharedFirst(contents: readonly string[]): string | null {
  const c = contents[0]?.[0];
  if (c === undefined || contents.some((t) => t[0] !== c)) return null;
  return c;
}

/** FNV-1a over the UTF-16 units of s[from, to). */
function hashRange(s: string, from: number, to: number): number {
  let h = 0x811c9dc5 | 0;
  for (let i = from; i < to; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h;
}

/**
 * Pre-token → ids, without building a string per lookup: open addressing keyed by the hash of
 * a range of the text, entries compared unit by unit; ids kept in one pool.
 */
class WordCache {
  private slots: Int32Array; // entry index + 1, 0 = empty
  private keys: string[] = [];
  private hashes: Int32Array;
  private starts: Int32Array;
  private lens: Int32Array;
  pool: Int32Array;
  private poolLen = 0;
  size = 0;

  constructor(private readonly capacity: number) {
    let slots = 1024;
    while (slots < capacity * 2 && slots < 1 << 22) slots *= 2;
    this.slots = new Int32Array(slots);
    const first = Math.min(capacity, 4096);
    this.hashes = new Int32Array(first);
    this.starts = new Int32Array(first);
    this.lens = new Int32Array(first);
    this.pool = new Int32Array(first * 4);
  }

  /** Entry of s[from, to) with hash h, or -1. */
  find(s: string, from: number, to: number, h: number): number {
    const mask = this.slots.length - 1;
    const len = to - from;
    for (let at = h & mask; ; at = (at + 1) & mask) {
      const e = this.slots[at] - 1;
      if (e < 0) return -1;
      if (this.hashes[e] !== h) continue;
      const key = this.keys[e];
      if (key.length !== len) continue;
      let k = 0;
      while (k < len && key.charCodeAt(k) === s.charCodeAt(from + k)) k++;
      if (k === len) return e;
    }
  }

  start(e: number): number {
    return this.starts[e];
  }
  len(e: number): number {
    return this.lens[e];
  }

  add(key: string, h: number, ids: readonly number[]): number {
    if (this.size >= this.capacity || this.size * 2 >= this.slots.length) this.clear();
    const e = this.size++;
    if (e === this.hashes.length) {
      const cap = e * 2;
      this.hashes = grow(this.hashes, cap);
      this.starts = grow(this.starts, cap);
      this.lens = grow(this.lens, cap);
    }
    if (this.poolLen + ids.length > this.pool.length)
      this.pool = grow(this.pool, Math.max(this.pool.length * 2, this.poolLen + ids.length));
    this.keys.push(key);
    this.hashes[e] = h;
    this.starts[e] = this.poolLen;
    this.lens[e] = ids.length;
    for (let k = 0; k < ids.length; k++) this.pool[this.poolLen++] = ids[k];
    const mask = this.slots.length - 1;
    let at = h & mask;
    while (this.slots[at] !== 0) at = (at + 1) & mask;
    this.slots[at] = e + 1;
    return e;
  }

  clear(): void {
    this.slots.fill(0);
    this.keys = [];
    this.size = 0;
    this.poolLen = 0;
  }
}

function grow(a: Int32Array, cap: number): Int32Array {
  const b = new Int32Array(cap);
  b.set(a);
  return b;
}

/** A growable Int32 buffer that encoders append ids to. */
export class IdBuffer {
  data: Int32Array;
  length = 0;
  constructor(capacity = 4096) {
    this.data = new Int32Array(Math.max(16, capacity));
  }
  reserve(extra: number): void {
    const need = this.length + extra;
    if (need <= this.data.length) return;
    let cap = this.data.length * 2;
    while (cap < need) cap *= 2;
    const next = new Int32Array(cap);
    next.set(this.data.subarray(0, this.length));
    this.data = next;
  }
  push(id: number): void {
    if (this.length === this.data.length) this.reserve(1);
    this.data[this.length++] = id;
  }
  pushAll(ids: ArrayLike<number>): void {
    this.reserve(ids.length);
    for (let k = 0; k < ids.length; k++) this.data[this.length++] = ids[k];
  }
}

/** Words of up to this many symbols merge by rescanning (faster than the heap when short). */
const SHORT_WORD = 24;

/** mergeAll's result for a short word, by a rescan per merge (merged symbols are removed). */
function mergeShort(syms: string[], ranks: Map<string, number>): void {
  for (;;) {
    let best = Number.POSITIVE_INFINITY;
    let at = -1;
    for (let i = 0; i < syms.length - 1; i++) {
      const r = ranks.get(`${syms[i]} ${syms[i + 1]}`);
      if (r !== undefined && r < best) {
        best = r;
        at = i;
      }
    }
    if (at < 0) return;
    syms.splice(at, 2, syms[at] + syms[at + 1]);
  }
}

/** A binary min-heap of (rank, position) pairs, ordered by rank, then position. */
class PairHeap {
  private rank: Int32Array;
  private pos: Int32Array;
  size = 0;
  constructor(capacity: number) {
    this.rank = new Int32Array(Math.max(4, capacity));
    this.pos = new Int32Array(Math.max(4, capacity));
  }
  private less(a: number, b: number): boolean {
    const r = this.rank;
    return r[a] < r[b] || (r[a] === r[b] && this.pos[a] < this.pos[b]);
  }
  private swap(a: number, b: number): void {
    const r = this.rank;
    const p = this.pos;
    const tr = r[a];
    r[a] = r[b];
    r[b] = tr;
    const tp = p[a];
    p[a] = p[b];
    p[b] = tp;
  }
  push(rank: number, pos: number): void {
    if (this.size === this.rank.length) {
      this.rank = grow(this.rank, this.size * 2);
      this.pos = grow(this.pos, this.size * 2);
    }
    let i = this.size++;
    this.rank[i] = rank;
    this.pos[i] = pos;
    while (i > 0) {
      const up = (i - 1) >> 1;
      if (!this.less(i, up)) break;
      this.swap(i, up);
      i = up;
    }
  }
  /** Remove the smallest pair; its rank and position are left in `topRank` / `topPos`. */
  topRank = 0;
  topPos = 0;
  pop(): void {
    this.topRank = this.rank[0];
    this.topPos = this.pos[0];
    const last = --this.size;
    this.rank[0] = this.rank[last];
    this.pos[0] = this.pos[last];
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= last) break;
      const m = l + 1 < last && this.less(l + 1, l) ? l + 1 : l;
      if (!this.less(m, i)) break;
      this.swap(i, m);
      i = m;
    }
  }
}

/**
 * BPE merges of one word's symbols, in place: the lowest-ranked adjacent pair first, the
 * leftmost among equals (Hugging Face's order), until no pair has a merge. A heap of candidate
 * pairs and a linked list of live symbols make it O(n log n) in the word's length (a rescan
 * per merge would be quadratic: a 100k-character word would take minutes). A symbol merged
 * into the one before it is left as "".
 */
export function mergeAll(syms: string[], ranks: Map<string, number>): string[] {
  const n = syms.length;
  if (n < 2) return syms;
  const next = new Int32Array(n);
  const prev = new Int32Array(n);
  const heap = new PairHeap(n);
  for (let i = 0; i < n; i++) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
    if (i + 1 < n) {
      const r = ranks.get(`${syms[i]} ${syms[i + 1]}`);
      if (r !== undefined) heap.push(r, i);
    }
  }
  while (heap.size > 0) {
    heap.pop();
    const pos = heap.topPos;
    const nx = next[pos];
    // Stale candidates (a side was merged since) no longer name the pair of their rank.
    if (syms[pos] === "" || nx < 0) continue;
    if (ranks.get(`${syms[pos]} ${syms[nx]}`) !== heap.topRank) continue;
    syms[pos] += syms[nx];
    syms[nx] = "";
    const after = next[nx];
    next[pos] = after;
    if (after >= 0) prev[after] = pos;
    const before = prev[pos];
    if (before >= 0) {
      const r = ranks.get(`${syms[before]} ${syms[pos]}`);
      if (r !== undefined) heap.push(r, before);
    }
    if (after >= 0) {
      const r = ranks.get(`${syms[pos]} ${syms[after]}`);
      if (r !== undefined) heap.push(r, pos);
    }
  }
  return syms;
}

export class FastByteLevelBpe {
  private readonly byteChar = byteAlphabet();
  private readonly encoder = new TextEncoder();
  private readonly cache: WordCache;
  /** The first character of every added token when they all share one, else null. */
  private addedFirst: string | null = null;
  /** 1 or 3 for the two known patterns (scanned by hand on ASCII texts), 0 for others. */
  private readonly asciiDigits: number;

  private constructor(
    private readonly vocab: Map<string, number>,
    private readonly ranks: Map<string, number>,
    private readonly split: RegExp,
    private readonly nfc: boolean,
    private readonly ignoreMerges: boolean,
    /** Texts matching this contain an added token: the native tokenizer handles them. */
    readonly addedToken: RegExp | null,
    cacheSize: number,
    pattern: string,
    private readonly addedContents: string[],
  ) {
    this.addedFirst = sharedFirst(addedContents);
    this.cache = new WordCache(Math.max(1, cacheSize));
    this.asciiDigits = pattern === QWEN2_SPLIT ? 1 : pattern === LLAMA3_SPLIT ? 3 : 0;
  }

  /** An encoder for this tokenizer.json, or null when its pipeline is not the supported shape. */
  static fromJson(json: Obj, cacheSize = 500_000): FastByteLevelBpe | null {
    const model = json.model as Obj | undefined;
    if (model?.type !== "BPE" || model.dropout != null || model.byte_fallback) return null;
    if (model.continuing_subword_prefix || model.end_of_word_suffix) return null;
    const norm = json.normalizer as Obj | null;
    if (norm != null && norm.type !== "NFC") return null;
    const pre = json.pre_tokenizer as Obj | null;
    if (pre?.type !== "Sequence") return null;
    const steps = pre.pretokenizers as Obj[];
    if (steps.length !== 2) return null;
    const [sp, bl] = steps;
    if (sp.type !== "Split" || sp.behavior !== "Isolated" || sp.invert) return null;
    if (bl.type !== "ByteLevel" || bl.add_prefix_space || bl.use_regex) return null;
    const pattern = (sp.pattern as Obj)?.Regex;
    if (typeof pattern !== "string") return null;
    const split = translatePattern(pattern);
    if (!split) return null;
    const vocab = new Map(Object.entries(model.vocab as Record<string, number>));
    const ranks = new Map<string, number>();
    (model.merges as (string | string[])[]).forEach((m, i) => {
      const [a, b] = Array.isArray(m) ? m : m.split(" ");
      ranks.set(`${a} ${b}`, i);
    });
    const added = ((json.added_tokens as Obj[]) ?? []).map((t) => String(t.content));
    for (const t of (json.added_tokens as Obj[]) ?? []) {
      // Added tokens that strip or match single words change splitting: leave those to native.
      if (t.lstrip || t.rstrip || t.single_word) return null;
    }
    const addedToken = added.length
      ? new RegExp(
          added
            .sort((a, b) => b.length - a.length)
            .map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"))
            .join("|"),
          "u",
        )
      : null;
    return new FastByteLevelBpe(
      vocab,
      ranks,
      split,
      norm != null,
      model.ignore_merges === true,
      addedToken,
      cacheSize,
      pattern,
      added,
    );
  }

  /** Add tokens registered after loading (they must go to the native path too). */
  withAddedTokens(contents: string[]): void {
    if (!contents.length) return;
    const src = [
      this.addedToken?.source,
      ...contents.map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")),
    ]
      .filter(Boolean)
      .join("|");
    (this as { addedToken: RegExp | null }).addedToken = new RegExp(src, "u");
    this.addedContents.push(...contents);
    this.addedFirst = sharedFirst(this.addedContents);
  }

  /** True when this encoder handles the text (no added token inside). */
  handles(text: string): boolean {
    const re = this.addedToken;
    if (re === null) return true;
    // Most texts hold no added token's first character (`<` for Qwen2 and Llama-3).
    const first = this.addedFirst;
    if (first !== null && text.indexOf(first) === -1) return true;
    return !re.test(text);
  }

  /** Ids of a text without added tokens; null when a piece is missing from the vocabulary. */
  encode(text: string): number[] | null {
    const buf = new IdBuffer(64);
    if (!this.encodeInto(text, buf)) return null;
    return Array.from(buf.data.subarray(0, buf.length));
  }

  /**
   * Append the ids of a text without added tokens to `out`; false (and `out` as it was) when a
   * piece is missing from the vocabulary.
   */
  encodeInto(text: string, out: IdBuffer): boolean {
    const mark = out.length;
    if (this.asciiDigits && isAscii(text)) {
      // Pure ASCII (already NFC): the known pattern, scanned by hand.
      const digits = this.asciiDigits;
      for (let i = 0; i < text.length; ) {
        const j = asciiPieceEnd(text, i, digits);
        if (!this.word(text, i, j, out)) {
          out.length = mark;
          return false;
        }
        i = j;
      }
      return true;
    }
    // Pure ASCII is already NFC; skipping ICU there is most of the normalizer's cost.
    const s = this.nfc && !isAscii(text) ? text.normalize("NFC") : text;
    const re = this.split;
    let last = 0;
    re.lastIndex = 0;
    let ok = true;
    for (let m = re.exec(s); m !== null; m = re.exec(s)) {
      const len = m[0].length;
      if (m.index > last && !this.word(s, last, m.index, out)) {
        ok = false;
        break;
      }
      if (len === 0) {
        re.lastIndex++;
        continue;
      }
      if (!this.word(s, m.index, m.index + len, out)) {
        ok = false;
        break;
      }
      last = m.index + len;
    }
    if (ok && last < s.length && !this.word(s, last, s.length, out)) ok = false;
    if (!ok) out.length = mark;
    return ok;
  }

  /** Append the ids of the pre-token s[from, to). */
  private word(s: string, from: number, to: number, out: IdBuffer): boolean {
    const cache = this.cache;
    const h = hashRange(s, from, to);
    let e = cache.find(s, from, to, h);
    if (e < 0) {
      const piece = s.slice(from, to);
      let mapped = "";
      for (const b of this.encoder.encode(piece)) mapped += this.byteChar[b];
      const ids = this.bpe(mapped);
      if (!ids) return false;
      e = cache.add(piece, h, ids);
    }
    const start = cache.start(e);
    const n = cache.len(e);
    out.reserve(n);
    const pool = cache.pool;
    const data = out.data;
    let at = out.length;
    for (let k = 0; k < n; k++) data[at++] = pool[start + k];
    out.length = at;
    return true;
  }

  private bpe(word: string): number[] | null {
    if (this.ignoreMerges) {
      const whole = this.vocab.get(word);
      if (whole !== undefined) return [whole];
    }
    const syms = [...word];
    if (syms.length <= SHORT_WORD) mergeShort(syms, this.ranks);
    else mergeAll(syms, this.ranks);
    const ids: number[] = [];
    for (const sym of syms) {
      if (sym === "") continue; // merged into the symbol before it
      const id = this.vocab.get(sym);
      if (id === undefined) return null;
      ids.push(id);
    }
    return ids;
  }
}
