import { describe, expect, it } from "vitest";
import {
  asciiPieceEnd,
  FastByteLevelBpe,
  mergeAll,
  translatePattern,
} from "../../src/text/fast-bpe.ts";
import { loadTokenizer } from "../../src/text/tokenizer.ts";
import { makeModelFolder } from "../helpers/model-folder.ts";
import { rng } from "./strings.ts";

const QWEN2 =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const LLAMA3 = QWEN2.replace("|\\p{N}|", "|\\p{N}{1,3}|");

// ASCII pieces that exercise every alternative: contractions, letters, digit runs, punctuation,
// white-space runs with and without line breaks, control characters.
const PARTS = [
  "'s",
  "'S",
  "'t",
  "'re",
  "'RE",
  "'ve",
  "'m",
  "'ll",
  "'Ll",
  "'d",
  "'x",
  "'",
  "''",
  "a",
  "Word",
  "xyz",
  "7",
  "42",
  "12345",
  "1234567",
  ".",
  ",",
  "!?",
  "(",
  ")",
  "-",
  "_",
  "#",
  "$",
  "\\",
  "`",
  "~",
  "\u0000",
  "\u0001",
  "\u001f",
  "\u007f",
  " ",
  "  ",
  "   ",
  "\t",
  "\n",
  "\r",
  "\r\n",
  "\n\n",
  " \n",
  "\n ",
  "\t \n \t",
  "\u000b",
  "\u000c",
];

function asciiStrings(n: number, seed: number): string[] {
  const r = rng(seed);
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    let s = "";
    const k = 1 + Math.floor(r() * 12);
    for (let j = 0; j < k; j++)
      s +=
        r() < 0.15
          ? String.fromCharCode(Math.floor(r() * 128))
          : PARTS[Math.floor(r() * PARTS.length)];
    out.push(s);
  }
  return out;
}

function regexPieces(re: RegExp, s: string): string[] {
  return [...s.matchAll(re)].map((m) => m[0]);
}

function scannedPieces(s: string, digits: number): string[] {
  const out: string[] = [];
  for (let i = 0; i < s.length; ) {
    const j = asciiPieceEnd(s, i, digits);
    if (j <= i) throw new Error(`no progress at ${i} of ${JSON.stringify(s)}`);
    out.push(s.slice(i, j));
    i = j;
  }
  return out;
}

describe("byte-level BPE fast path", () => {
  it("splits ASCII text by hand exactly as the Qwen2 and Llama-3 patterns do", () => {
    const texts = [
      ...asciiStrings(20_000, 5),
      "",
      "a",
      " ",
      "  x",
      "x  ",
      "\n",
      "I'M HE'S",
      "don't",
    ];
    for (const [pattern, digits] of [
      [QWEN2, 1],
      [LLAMA3, 3],
    ] as const) {
      const re = translatePattern(pattern);
      if (!re) throw new Error("pattern not translated");
      let differ = 0;
      for (const s of texts) {
        const a = regexPieces(re, s);
        const b = scannedPieces(s, digits);
        if (JSON.stringify(a) !== JSON.stringify(b)) {
          differ++;
          expect(b, JSON.stringify(s)).toEqual(a);
        }
      }
      expect(differ).toBe(0);
    }
  });

  it("encodes ASCII text as the native tokenizer, through a small word cache that overflows", async () => {
    const dir = makeModelFolder({ vocab: "qwen2" });
    const tk = await loadTokenizer(dir, { fastPath: false });
    const json = JSON.parse(
      (await import("node:fs")).readFileSync(tk.source.path, "utf8"),
    ) as Record<string, unknown>;
    const fast = FastByteLevelBpe.fromJson(json, 50);
    if (!fast) throw new Error("no fast path");
    const texts = asciiStrings(3000, 9).filter((t) => fast.handles(t));
    const native = await tk.native.encodeBatch(texts, { addSpecialTokens: false });
    // Twice: the second pass reads words from the cache (cleared whenever 50 are held).
    for (let pass = 0; pass < 2; pass++)
      texts.forEach((t, i) => {
        expect(fast.encode(t), JSON.stringify(t)).toEqual(native[i].getIds());
      });
  });

  it("merges as a rescan for the lowest-ranked, leftmost pair does, on random words", async () => {
    const dir = makeModelFolder({ vocab: "qwen2" });
    const tk = await loadTokenizer(dir, { fastPath: false });
    const json = JSON.parse((await import("node:fs")).readFileSync(tk.source.path, "utf8")) as {
      model: { merges: (string | string[])[] };
    };
    const ranks = new Map<string, number>();
    json.model.merges.forEach((m, i) => {
      const [a, b] = Array.isArray(m) ? m : m.split(" ");
      ranks.set(`${a} ${b}`, i);
    });
    // The quadratic algorithm this replaces, kept here as the reference.
    const rescan = (syms: string[]) => {
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
        if (at < 0) return syms;
        syms.splice(at, 2, syms[at] + syms[at + 1]);
      }
    };
    const r = rng(17);
    const alphabets = ["ab", "xyz ", "ACGT", "abcdefghijklmnopqrstuvwxyz", "0123456789abcdef+/="];
    for (let k = 0; k < 3000; k++) {
      const abc = alphabets[k % alphabets.length];
      const len = 1 + Math.floor(r() * (k % 10 === 0 ? 400 : 24));
      let w = "";
      for (let i = 0; i < len; i++) w += abc[Math.floor(r() * abc.length)];
      const syms = [...w.replaceAll(" ", "Ġ")];
      const got = mergeAll([...syms], ranks).filter((x) => x !== "");
      expect(got, w).toEqual(rescan([...syms]));
    }
  });

  it("encodes 100,000-character words (DNA, base64, one letter) as the native tokenizer", async () => {
    const dir = makeModelFolder({ vocab: "qwen2" });
    const fast = await loadTokenizer(dir);
    const native = await loadTokenizer(dir, { fastPath: false });
    expect(fast.fast).not.toBeNull();
    const r = rng(3);
    const pick = (abc: string) => {
      let s = "";
      for (let i = 0; i < 100_000; i++) s += abc[Math.floor(r() * abc.length)];
      return s;
    };
    const words = [
      "x".repeat(100_000),
      pick("ACGT"),
      pick("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"),
      "é".repeat(100_000),
    ];
    for (const w of words) {
      const a = await fast.encode(w);
      const b = await native.encode(w);
      expect(a.length).toBe(b.length);
      expect(Buffer.from(a.buffer).equals(Buffer.from(b.buffer))).toBe(true);
    }
  });
});
