import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import {
  IMG_CONTEXT,
  INTERNVL_SPECIAL_TOKENS,
  loadTokenizer,
  type TextTokenizer,
} from "../../src/text/tokenizer.ts";
import { makeModelFolder, type Vocab } from "../helpers/model-folder.ts";
import { askPython } from "./reference.ts";
import { randomStrings } from "./strings.ts";

const cacheDir = mkdtempSync(join(tmpdir(), "tessera-tokcache-"));
const vocabs: Vocab[] = ["qwen2", "llama2", "llama3"];
const texts = randomStrings(1500, 11);
const spTexts = randomStrings(3000, 12, false);

// Small SentencePiece BPE models trained here, one per normalizer style of the InternVL2 family.
const spmStyles: Record<string, Record<string, unknown>> = {
  // InternLM2: identity normalization, no dummy prefix, whitespace kept, byte fallback.
  internlm2: {
    normalization_rule_name: "identity",
    add_dummy_prefix: false,
    remove_extra_whitespaces: false,
    split_digits: true,
    allow_whitespace_only_pieces: true,
  },
  // Llama / Phi-3 / Yi: dummy prefix.
  llama: {
    normalization_rule_name: "identity",
    add_dummy_prefix: true,
    remove_extra_whitespaces: false,
    split_digits: true,
  },
  // SentencePiece's defaults: NFKC and whitespace runs collapsed.
  nfkc: { add_dummy_prefix: true, remove_extra_whitespaces: true },
};

describe("tokenizers", () => {
  const dirs = Object.fromEntries(vocabs.map((v) => [v, makeModelFolder({ vocab: v })])) as Record<
    Vocab,
    string
  >;
  const bpeFolder = makeModelFolder({ vocab: "qwen2", tokenizerFiles: "vocab+merges" });
  const spmRoot = mkdtempSync(join(tmpdir(), "tessera-spm-"));
  let answers: unknown[];
  const tk = {} as Record<Vocab, TextTokenizer>;

  beforeAll(async () => {
    const corpus = randomStrings(4000, 13, false).map((s) => s.replace(/[\r\n]/g, " "));
    const q: { op: string; [k: string]: unknown }[] = vocabs.map((v) => ({
      op: "encode",
      dir: dirs[v],
      texts,
    }));
    for (const [name, o] of Object.entries(spmStyles)) {
      q.push({
        op: "spm_train",
        dir: join(spmRoot, name),
        corpus,
        options: {
          vocab_size: 800,
          model_type: "bpe",
          byte_fallback: true,
          character_coverage: 0.9995,
          ...o,
        },
      });
      q.push({ op: "spm_encode", model: join(spmRoot, name, "tokenizer.model"), texts: spTexts });
    }
    answers = await askPython(q);
    for (const v of vocabs) tk[v] = await loadTokenizer(dirs[v], { cacheDir });
  });

  it("encodes like transformers on real vocabularies (Qwen2, Llama-2, Llama-3)", async () => {
    for (const [i, v] of vocabs.entries()) {
      const ours = (await tk[v].encodeMany(texts)).map((a) => Array.from(a));
      expect(ours.length).toBe(1500);
      expect(ours).toEqual(answers[i]);
    }
  });

  it("encodes byte-level BPE in JavaScript exactly as the native tokenizer (Qwen2, Llama-3)", async () => {
    expect(tk.qwen2.fast).not.toBeNull();
    expect(tk.llama3.fast).not.toBeNull();
    expect(tk.llama2.fast).toBeNull(); // SentencePiece-style: always native
    const odd = [
      "a\u0085b \ufeff c",
      "x\u2028y",
      "   \n\n  z",
      "I'M HE'S",
      "𝔘𝔫𝔦 ﬁ ｶﾀｶﾅ",
      "e\u0301",
      "\u0000\u0001",
      "x<ref>y</ref>",
    ];
    const many = [...randomStrings(4000, 21), ...odd];
    for (const v of ["qwen2", "llama3"] as const) {
      const fast = tk[v].fast;
      if (!fast) throw new Error("no fast path");
      const native = await tk[v].native.encodeBatch(many, { addSpecialTokens: false });
      let handled = 0;
      many.forEach((t, i) => {
        if (!fast.handles(t)) return; // texts with added tokens always go native
        handled++;
        expect(fast.encode(t), JSON.stringify(t)).toEqual(native[i].getIds());
      });
      expect(handled).toBeGreaterThan(2000);
      expect(fast.handles("x<ref>y")).toBe(false);
    }
  });

  it("knows the InternVL tokens as special tokens and finds BOS/EOS", async () => {
    for (const v of vocabs) {
      for (const t of INTERNVL_SPECIAL_TOKENS) expect(tk[v].tokenId(t)).toBeGreaterThan(0);
      // An image token inside text is matched whole, never split.
      const ids = await tk[v].encode(`a${IMG_CONTEXT}${IMG_CONTEXT}b`);
      expect(Array.from(ids).filter((x) => x === tk[v].tokenId(IMG_CONTEXT))).toHaveLength(2);
    }
    expect(tk.qwen2.addBos).toBe(false);
    expect(tk.qwen2.eosId).toBe(tk.qwen2.tokenId("<|im_end|>"));
    expect(tk.llama2.addBos).toBe(true);
    expect(tk.llama2.bosId).toBe(1);
    expect(() => tk.qwen2.requireId("<nope>")).toThrow(/no token <nope>/);
    expect(await tk.qwen2.decode(await tk.qwen2.encode("你好 world"))).toBe("你好 world");
  });

  it("converts vocab.json + merges.txt once, equal to the original tokenizer.json, cached by hash", async () => {
    const conv = await loadTokenizer(bpeFolder, { cacheDir });
    expect(conv.source.kind).toBe("vocab+merges");
    expect(conv.source.path.startsWith(cacheDir)).toBe(true);
    const ours = (await conv.encodeMany(texts)).map((a) => Array.from(a));
    expect(ours).toEqual(answers[0]);
    expect(conv.tokenId(IMG_CONTEXT)).toBe(tk.qwen2.tokenId(IMG_CONTEXT));
    // A second folder with the same files reuses the cached conversion (no engine run).
    const again = await loadTokenizer(
      makeModelFolder({ vocab: "qwen2", tokenizerFiles: "vocab+merges" }),
      {
        cacheDir,
        python: "/nonexistent/python",
      },
    );
    expect(again.source.path).toBe(conv.source.path);
  });

  it(`converts SentencePiece models exactly (${Object.keys(spmStyles).length} normalizer styles × ${spTexts.length} strings)`, async () => {
    let k = vocabs.length;
    for (const name of Object.keys(spmStyles)) {
      const model = answers[k++] as string;
      const expected = answers[k++] as number[][];
      const folder = makeModelFolder({
        vocab: "llama2",
        tokenizerFiles: "none",
        tokenizerModel: model,
      });
      const conv = await loadTokenizer(folder, { cacheDir });
      expect(conv.source.kind).toBe("sentencepiece");
      const ours = (await conv.encodeMany(spTexts)).map((a) => Array.from(a));
      let same = 0;
      for (let i = 0; i < ours.length; i++)
        if (JSON.stringify(ours[i]) === JSON.stringify(expected[i])) same++;
      expect(`${name}: ${same}/${ours.length}`).toBe(`${name}: ${ours.length}/${ours.length}`);
      expect(conv.addBos).toBe(true); // SentencePiece folders without tokenizer_config: BOS from the model
    }
    expect(readdirSync(join(cacheDir, "tokenizers")).length).toBeGreaterThanOrEqual(4);
  });

  it("registers tokens from added_tokens.json with the folder's ids, and refuses conflicting ids", async () => {
    const dir = makeModelFolder({ vocab: "qwen2" });
    const tokPath = join(dir, "tokenizer.json");
    const json = JSON.parse(readFileSync(tokPath, "utf8"));
    const mine = json.added_tokens.filter((t: { content: string }) =>
      INTERNVL_SPECIAL_TOKENS.includes(t.content),
    );
    json.added_tokens = json.added_tokens.filter(
      (t: { content: string }) => !INTERNVL_SPECIAL_TOKENS.includes(t.content),
    );
    writeFileSync(tokPath, JSON.stringify(json));
    writeFileSync(join(dir, "tokenizer_config.json"), JSON.stringify({ eos_token: "<|im_end|>" }));
    writeFileSync(
      join(dir, "added_tokens.json"),
      JSON.stringify(
        Object.fromEntries(mine.map((t: { content: string; id: number }) => [t.content, t.id])),
      ),
    );
    const t = await loadTokenizer(dir, { cacheDir });
    for (const m of mine) expect(t.tokenId(m.content)).toBe(m.id);
    expect(Array.from(await t.encode(`x${IMG_CONTEXT}y`))).toContain(t.tokenId(IMG_CONTEXT));
    // An id that is already taken by another token: the files disagree.
    writeFileSync(join(dir, "added_tokens.json"), JSON.stringify({ "<|im_end|>": 5 }));
    await expect(loadTokenizer(dir, { cacheDir })).rejects.toThrow(
      /<\|im_end\|> is id \d+ .* but 5 in the added tokens/,
    );
  });

  it("names the folder when there is no tokenizer", async () => {
    const empty = mkdtempSync(join(tmpdir(), "tessera-empty-"));
    mkdirSync(empty, { recursive: true });
    await expect(loadTokenizer(empty, { cacheDir })).rejects.toThrow(/no tokenizer found/);
    expect(existsSync(join(empty, "tokenizer.json"))).toBe(false);
  });
});
