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

export class FastByteLevelBpe {
  private readonly byteChar = byteAlphabet();
  private readonly encoder = new TextEncoder();
  private cache = new Map<string, number[]>();

  private constructor(
    private readonly vocab: Map<string, number>,
    private readonly ranks: Map<string, number>,
    private readonly split: RegExp,
    private readonly nfc: boolean,
    private readonly ignoreMerges: boolean,
    /** Texts matching this contain an added token: the native tokenizer handles them. */
    readonly addedToken: RegExp | null,
    private readonly cacheSize: number,
  ) {}

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
  }

  /** True when this encoder handles the text (no added token inside). */
  handles(text: string): boolean {
    return this.addedToken === null || !this.addedToken.test(text);
  }

  /** Ids of a text without added tokens; null when a piece is missing from the vocabulary. */
  encode(text: string): number[] | null {
    // Pure ASCII is already NFC; skipping ICU there is most of the normalizer's cost.
    const s = this.nfc && !isAscii(text) ? text.normalize("NFC") : text;
    const out: number[] = [];
    const re = this.split;
    let last = 0;
    re.lastIndex = 0;
    for (let m = re.exec(s); m !== null; m = re.exec(s)) {
      const piece = m[0];
      if (m.index > last && !this.word(s.slice(last, m.index), out)) return null;
      if (piece.length === 0) {
        re.lastIndex++;
        continue;
      }
      if (!this.word(piece, out)) return null;
      last = m.index + piece.length;
    }
    if (last < s.length && !this.word(s.slice(last), out)) return null;
    return out;
  }

  private word(piece: string, out: number[]): boolean {
    const hit = this.cache.get(piece);
    if (hit) {
      for (const id of hit) out.push(id);
      return true;
    }
    let mapped = "";
    for (const b of this.encoder.encode(piece)) mapped += this.byteChar[b];
    const ids = this.bpe(mapped);
    if (!ids) return false;
    if (this.cache.size >= this.cacheSize) this.cache.clear();
    this.cache.set(piece, ids);
    for (const id of ids) out.push(id);
    return true;
  }

  private bpe(word: string): number[] | null {
    if (this.ignoreMerges) {
      const whole = this.vocab.get(word);
      if (whole !== undefined) return [whole];
    }
    const syms = [...word];
    // Merge the lowest-ranked adjacent pair, leftmost first, until none is left (HF's order).
    for (;;) {
      let best = Number.POSITIVE_INFINITY;
      let at = -1;
      for (let i = 0; i < syms.length - 1; i++) {
        const r = this.ranks.get(`${syms[i]} ${syms[i + 1]}`);
        if (r !== undefined && r < best) {
          best = r;
          at = i;
        }
      }
      if (at < 0) break;
      syms.splice(at, 2, syms[at] + syms[at + 1]);
    }
    const ids: number[] = [];
    for (const sym of syms) {
      const id = this.vocab.get(sym);
      if (id === undefined) return null;
      ids.push(id);
    }
    return ids;
  }
}
