/**
 * The model's own tokenizer, loaded from its folder: `tokenizer.json` directly through
 * Hugging Face's Rust `tokenizers` (same results as Python's), or, for folders that ship only
 * `vocab.json` + `merges.txt` or a SentencePiece `tokenizer.model`, a `tokenizer.json`
 * converted once by the engine (transformers' converters; docs/tokenizers.md) and cached by
 * the source files' hash.
 */
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { homedir } from "node:os";
import { join, resolve } from "node:path";
import { Tokenizer } from "tokenizers";
import { runEngine } from "../engine/protocol.ts";
import { ensureEngine } from "../engine/setup.ts";
import { UserError } from "../util/errors.ts";
import { FastByteLevelBpe, IdBuffer } from "./fast-bpe.ts";
import { isPySpace, pyLstrip, pyRstrip } from "./pystrip.ts";

/** Tokens InternVL2 adds to every LLM tokenizer. */
export const IMG_START = "<img>";
export const IMG_END = "</img>";
export const IMG_CONTEXT = "<IMG_CONTEXT>";
export const INTERNVL_SPECIAL_TOKENS = [
  IMG_START,
  IMG_END,
  IMG_CONTEXT,
  "<quad>",
  "</quad>",
  "<ref>",
  "</ref>",
  "<box>",
  "</box>",
];

/** Bump when the conversion changes, so cached conversions are redone. */
const CONVERTER_VERSION = "2";

export function cacheRoot(): string {
  return resolve(process.env.TESSERA_CACHE ?? join(homedir(), ".cache", "tessera"));
}

export interface LoadTokenizerOptions {
  /** Where converted tokenizers are kept (default: $TESSERA_CACHE or ~/.cache/tessera). */
  cacheDir?: string;
  /** Python of the engine's venv, for conversions (default: ensureEngine()). */
  python?: string;
  /** Entries kept in the per-segment encoding cache (0 turns it off). */
  segmentCacheSize?: number;
  /**
   * Encode byte-level BPE tokenizers (Qwen2, Llama-3) in JavaScript, where the native
   * tokenizer stays only for texts with added tokens (default true; TESSERA_NATIVE_TOKENIZER=1
   * turns it off).
   */
  fastPath?: boolean;
}

type Obj = Record<string, unknown>;
const readJson = (p: string): Obj =>
  existsSync(p) ? (JSON.parse(readFileSync(p, "utf8")) as Obj) : {};
const tokenContent = (v: unknown): string | undefined =>
  typeof v === "string"
    ? v
    : typeof v === "object" && v && typeof (v as Obj).content === "string"
      ? ((v as Obj).content as string)
      : undefined;

/** An added token's flags, as tokenizer_config.json (or tokenizer.json) gives them. */
export interface AddedTokenFlags {
  id: number;
  content: string;
  lstrip: boolean;
  rstrip: boolean;
  singleWord: boolean;
}

/** Unicode White_Space, what the Rust `tokenizers` strips beside an lstrip/rstrip added token. */
const isUnicodeSpace = (c: number) => c === 0x85 || (isPySpace(c) && (c < 0x1c || c > 0x1f));

const escapeRe = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

/**
 * How the slow (Python) tokenizers that the official training uses (`use_fast=False`) split a
 * text on added tokens: `PreTrainedTokenizer.tokenize`. Longest token first, then each token's
 * flags, in order: `rstrip` strips Python whitespace from the text on its right, `lstrip` from
 * the text on its left, and a `single_word` token not bordered by a space is glued to its
 * neighbour and tokenized as text. The pieces that are added tokens become their ids; the rest
 * are text segments, each encoded on its own.
 */
export class SlowSplitter {
  private readonly re: RegExp | null;
  private readonly byContent: Map<string, AddedTokenFlags>;

  constructor(tokens: readonly AddedTokenFlags[]) {
    this.byContent = new Map(tokens.map((t) => [t.content, t]));
    const sorted = [...this.byContent.keys()].sort((a, b) => b.length - a.length);
    this.re = sorted.length ? new RegExp(sorted.map(escapeRe).join("|"), "g") : null;
  }

  /** True when the text holds no added token (one segment, as it is). */
  plain(text: string): boolean {
    if (!this.re) return true;
    this.re.lastIndex = 0;
    return !this.re.test(text);
  }

  /** Text segments (strings, never empty) and added tokens (ids), in order. */
  split(text: string): (string | number)[] {
    const parts: string[] = [];
    if (this.re) {
      let last = 0;
      for (const m of text.matchAll(this.re)) {
        if (m.index > last) parts.push(text.slice(last, m.index));
        parts.push(m[0]);
        last = m.index + m[0].length;
      }
      if (last < text.length) parts.push(text.slice(last));
    } else if (text) parts.push(text);
    const tok = this.byContent;
    for (let i = 0; i < parts.length; i++) {
      const t = tok.get(parts[i]);
      if (!t) continue;
      const left = i > 0 ? parts[i - 1] : "";
      const right = i < parts.length - 1 ? parts[i + 1] : "";
      if (t.rstrip && right) parts[i + 1] = pyLstrip(right);
      if (t.lstrip && left) parts[i - 1] = pyRstrip(left);
      if (t.singleWord) {
        if (left && left[left.length - 1] !== " ") {
          parts[i - 1] += parts[i];
          parts[i] = "";
        } else if (right && right[0] !== " ") {
          parts[i + 1] = parts[i] + parts[i + 1];
          parts[i] = "";
        }
      }
    }
    const out: (string | number)[] = [];
    for (const p of parts) {
      if (!p) continue;
      const t = tok.get(p);
      out.push(t ? t.id : p);
    }
    return out;
  }
}

export class TextTokenizer {
  /** Whether a sequence starts with BOS (tokenizer_config `add_bos_token`, else the post-processor). */
  readonly addBos: boolean;
  readonly bosId: number | null;
  readonly eosId: number | null;
  readonly padId: number | null;
  readonly bosToken: string | null;
  readonly eosToken: string | null;
  /** tokenizer_config `add_eos_token` (never used for samples: the official training turns it off). */
  readonly addEos: boolean;
  /**
   * Slow-tokenizer semantics (SentencePiece folders): texts are split on added tokens here, as
   * `PreTrainedTokenizer.tokenize` does, and each segment is encoded by `segments`.
   */
  readonly slow: SlowSplitter | null = null;
  /** The converted tokenizer without its added tokens: encodes the segments `slow` splits off. */
  private readonly segments: Tokenizer | null = null;
  /**
   * `legacy: false` (LlamaTokenizer): one `▁` before the whole text instead of a dummy prefix
   * on every segment; dropped when the text starts with one of `allSpecial`.
   */
  readonly prefixFirst: boolean;
  /** The special tokens of the special-tokens map (bos, eos, unk, pad, ..., additional_special_tokens). */
  readonly allSpecial: ReadonlySet<string>;
  /** Added tokens with their lstrip/rstrip/single_word flags, by id. */
  readonly flags: ReadonlyMap<number, AddedTokenFlags>;
  /** Whitespace stripped beside an lstrip/rstrip token: Python's (slow tokenizers) or Unicode's (`tokenizers`). */
  readonly isStripSpace: (code: number) => boolean;
  private cache = new Map<string, Int32Array>();
  /** Where encodeFlat collects ids (reused from batch to batch). */
  private readonly scratch = new IdBuffer(1 << 16);

  constructor(
    readonly native: Tokenizer,
    readonly dir: string,
    /** Where the tokenizer.json came from: the folder itself, or a cached conversion. */
    readonly source: { kind: "tokenizer.json" | "vocab+merges" | "sentencepiece"; path: string },
    config: Obj,
    private readonly cacheSize = 200_000,
    /** The JavaScript byte-level BPE encoder, when the tokenizer has that shape. */
    readonly fast: FastByteLevelBpe | null = null,
    /** The tokenizer.json as loaded (for its added tokens), and the folder's special-tokens map. */
    json: Obj = {},
    specialMap: Obj = {},
  ) {
    this.bosToken = tokenContent(config.bos_token) ?? null;
    this.eosToken = tokenContent(config.eos_token) ?? null;
    this.bosId = this.bosToken != null ? (native.tokenToId(this.bosToken) ?? null) : null;
    this.eosId = this.eosToken != null ? (native.tokenToId(this.eosToken) ?? null) : null;
    const pad = tokenContent(config.pad_token);
    this.padId = pad != null ? (native.tokenToId(pad) ?? null) : null;
    if (typeof config.add_bos_token === "boolean")
      this.addBos = config.add_bos_token && this.bosId !== null;
    else this.addBos = false;
    this.addEos = config.add_eos_token === true && this.eosId !== null;
    this.flags = addedTokenFlags(json, config);
    const special = new Set<string>();
    for (const src of [specialMap, config]) {
      for (const k of [
        "bos_token",
        "eos_token",
        "unk_token",
        "sep_token",
        "pad_token",
        "cls_token",
        "mask_token",
      ]) {
        const c = tokenContent(src[k]);
        if (c) special.add(c);
      }
      for (const t of Array.isArray(src.additional_special_tokens)
        ? src.additional_special_tokens
        : []) {
        const c = tokenContent(t);
        if (c) special.add(c);
      }
    }
    this.allSpecial = special;
    const slow = source.kind === "sentencepiece";
    this.isStripSpace = slow ? isPySpace : isUnicodeSpace;
    this.prefixFirst = slow && config.legacy === false && config.add_prefix_space !== false;
    if (slow) {
      this.slow = new SlowSplitter([...this.flags.values()]);
      this.segments = Tokenizer.fromString(JSON.stringify({ ...json, added_tokens: [] }));
    }
  }

  /** Finish construction: where the config is silent, ask the post-processor whether it adds BOS. */
  async init(config: Obj): Promise<this> {
    if (typeof config.add_bos_token !== "boolean") {
      const ids = (await this.native.encode("", null, { addSpecialTokens: true })).getIds();
      const first = ids[0];
      if (first !== undefined) {
        (this as { addBos: boolean }).addBos = true;
        if (this.bosId === null) {
          (this as { bosId: number | null }).bosId = first;
          (this as { bosToken: string | null }).bosToken = this.native.idToToken(first);
        }
      }
    }
    return this;
  }

  /** Id of a token (added or in the vocabulary), or undefined. */
  tokenId(token: string): number | undefined {
    return this.native.tokenToId(token) ?? undefined;
  }

  /** Id of a token the model must have; a UserError naming the folder otherwise. */
  requireId(token: string): number {
    const id = this.native.tokenToId(token);
    if (id == null) throw new UserError(`${this.dir}: the tokenizer has no token ${token}`);
    return id;
  }

  idToToken(id: number): string | null {
    return this.native.idToToken(id);
  }

  get vocabSize(): number {
    return this.native.getVocabSize(true);
  }

  /**
   * Token ids of a text, without BOS/EOS. Added tokens inside the text (e.g. `<ref>`) are
   * matched whole, and the text between them is encoded segment by segment, as the slow
   * tokenizers do.
   */
  async encode(text: string): Promise<Int32Array> {
    return (await this.encodeMany([text]))[0];
  }

  /**
   * encode() for many texts in one native batch (repeated and cached texts are encoded once).
   * `remember[i]` keeps text i in the text cache even on the JavaScript path (texts that recur).
   */
  async encodeMany(texts: readonly string[], remember?: readonly boolean[]): Promise<Int32Array[]> {
    const flat = await this.encodeFlat(texts, remember);
    const out: Int32Array[] = new Array(texts.length);
    for (let i = 0; i < texts.length; i++)
      out[i] = flat.ids.slice(flat.offsets[i], flat.offsets[i + 1]);
    return out;
  }

  /**
   * encodeMany() into one buffer: the ids of text i are `ids[offsets[i] .. offsets[i + 1])`.
   * No array per text, which is what makes batches of short texts fast.
   */
  async encodeFlat(
    texts: readonly string[],
    remember?: readonly boolean[],
  ): Promise<{ ids: Int32Array; offsets: Int32Array }> {
    const n = texts.length;
    const buf = this.scratch;
    buf.length = 0;
    const offsets = new Int32Array(n + 1);
    // Texts left to the native tokenizer: their slot in the output, filled in afterwards.
    let native: Int32Array[] | null = null;
    let todo: string[] | null = null;
    let where: Map<string, number> | null = null;
    let slot: Int32Array | null = null;
    const fast = this.fast;
    for (let i = 0; i < n; i++) {
      const t = texts[i];
      offsets[i] = buf.length;
      const keep = remember?.[i] === true;
      // Texts seen once (most of them) skip the text cache on the JavaScript path.
      const fastText = fast?.handles(t) === true;
      const hit = keep || !fastText ? this.cache.get(t) : undefined;
      if (hit) {
        buf.pushAll(hit);
        continue;
      }
      if (fast && fastText) {
        // Remembered only when asked (template text, system messages): the fast path caches
        // words, and most texts are seen once.
        const from = buf.length;
        if (fast.encodeInto(t, buf)) {
          if (keep) this.remember(t, buf.data.slice(from, buf.length));
          continue;
        }
      }
      todo ??= [];
      where ??= new Map();
      slot ??= new Int32Array(n).fill(-1);
      let k = where.get(t);
      if (k === undefined) {
        k = todo.length;
        where.set(t, k);
        todo.push(t);
      }
      slot[i] = k;
    }
    offsets[n] = buf.length;
    if (todo && slot) {
      const encoded = this.slow ? await this.encodeSlow(todo) : await this.encodeNative(todo);
      native = encoded.map((ids, k) => {
        this.remember((todo as string[])[k], ids);
        return ids;
      });
      // Rebuild with the native texts in place.
      const out = new IdBuffer(buf.length + native.reduce((a, x) => a + x.length, 0));
      for (let i = 0; i < n; i++) {
        const own = native[slot[i]];
        const from = offsets[i];
        const to = offsets[i + 1];
        offsets[i] = out.length;
        if (slot[i] >= 0) out.pushAll(own);
        else out.pushAll(buf.data.subarray(from, to));
      }
      offsets[n] = out.length;
      return { ids: out.data.slice(0, out.length), offsets };
    }
    return { ids: buf.data.slice(0, buf.length), offsets };
  }

  private async encodeNative(texts: string[]): Promise<Int32Array[]> {
    const encs = await this.native.encodeBatch(texts, { addSpecialTokens: false });
    return encs.map((e) => Int32Array.from(e.getIds()));
  }

  /** The slow tokenizer's way: split on added tokens here, encode all segments in one batch. */
  private async encodeSlow(texts: string[]): Promise<Int32Array[]> {
    const slow = this.slow as SlowSplitter;
    const splits = texts.map((t) => slow.split(t));
    const segs: string[] = [];
    for (const parts of splits) for (const p of parts) if (typeof p === "string") segs.push(p);
    const encs = segs.length
      ? await (this.segments as Tokenizer).encodeBatch(segs, { addSpecialTokens: false })
      : [];
    let k = 0;
    return splits.map((parts) => {
      const ids: number[] = [];
      for (const p of parts)
        if (typeof p === "number") ids.push(p);
        else for (const id of encs[k++].getIds()) ids.push(id);
      return Int32Array.from(ids);
    });
  }

  /**
   * A whole text as `tokenizer(text).input_ids` gives it: BOS and EOS as tokenizer_config says,
   * and, for `legacy: false`, the one `▁` before the text. (Samples are assembled from parts
   * instead; this is the same rule for one text.)
   */
  async encodeText(text: string): Promise<Int32Array> {
    let t = text;
    if (this.prefixFirst && t) {
      const first = this.slow?.split(t)[0];
      const startsSpecial =
        typeof first === "number" && this.allSpecial.has(this.idToToken(first) ?? "");
      if (!startsSpecial) t = `\u2581${t.replaceAll("\u2581", " ")}`;
    }
    const ids = Array.from(await this.encode(t));
    if (this.addBos && this.bosId !== null) ids.unshift(this.bosId);
    if (this.addEos && this.eosId !== null) ids.push(this.eosId);
    return Int32Array.from(ids);
  }

  /** Ids and the start of each token in code points of `text` (for the rare label boundary inside a token). */
  async encodeWithStarts(text: string): Promise<{ ids: Int32Array; starts: Int32Array }> {
    const tk = this.slow?.plain(text) && this.segments ? this.segments : this.native;
    const e = await tk.encode(text, null, { addSpecialTokens: false });
    return {
      ids: Int32Array.from(e.getIds()),
      starts: Int32Array.from(e.getOffsets().map((o) => o[0])),
    };
  }

  private remember(text: string, ids: Int32Array): void {
    if (this.cacheSize <= 0 || text.length > 2048) return;
    if (this.cache.size >= this.cacheSize) this.cache.clear(); // cheap bound: repeated texts come back quickly
    this.cache.set(text, ids);
  }

  async decode(ids: ArrayLike<number>, skipSpecialTokens = false): Promise<string> {
    return this.native.decode(Array.from(ids), skipSpecialTokens);
  }
}

/** Flags of every added token: tokenizer_config's `added_tokens_decoder` first, then tokenizer.json's. */
function addedTokenFlags(json: Obj, config: Obj): Map<number, AddedTokenFlags> {
  const out = new Map<number, AddedTokenFlags>();
  const put = (id: number, t: Obj) => {
    if (typeof t?.content !== "string" || out.has(id)) return;
    out.set(id, {
      id,
      content: t.content,
      lstrip: t.lstrip === true,
      rstrip: t.rstrip === true,
      singleWord: t.single_word === true,
    });
  };
  for (const [id, t] of Object.entries((config.added_tokens_decoder as Record<string, Obj>) ?? {}))
    put(Number(id), t);
  for (const t of (json.added_tokens as Obj[]) ?? []) put(Number(t.id), t);
  return out;
}

function hashFiles(dir: string, names: string[]): string {
  const h = createHash("sha256");
  h.update(`tessera-tokenizer-${CONVERTER_VERSION}\n`);
  for (const n of names) {
    const p = join(dir, n);
    h.update(`${n}\n`);
    if (existsSync(p)) h.update(readFileSync(p));
    h.update("\n");
  }
  return h.digest("hex");
}

/**
 * Make sure the tokenizer knows every token the folder adds (tokenizer_config.json
 * `added_tokens_decoder`, added_tokens.json), with the ids the folder gives them.
 */
function withAddedTokens(path: string, dir: string): { native: Tokenizer; json: Obj } {
  const json = JSON.parse(readFileSync(path, "utf8")) as Obj;
  const cfg = readJson(join(dir, "tokenizer_config.json"));
  const wanted = new Map<number, { content: string; special: boolean; spec?: Obj }>();
  for (const [id, spec] of Object.entries((cfg.added_tokens_decoder as Record<string, Obj>) ?? {}))
    if (typeof spec?.content === "string")
      wanted.set(Number(id), { content: spec.content, special: spec.special !== false, spec });
  for (const [content, id] of Object.entries(readJson(join(dir, "added_tokens.json"))))
    if (typeof id === "number" && !wanted.has(id)) wanted.set(id, { content, special: true });
  const native = Tokenizer.fromFile(path);
  const missing = [...wanted.entries()]
    .filter(([, t]) => native.tokenToId(t.content) == null)
    .sort((a, b) => a[0] - b[0]);
  for (const [id, t] of wanted) {
    const have = native.tokenToId(t.content);
    if (have != null && have !== id)
      throw new UserError(
        `${dir}: token ${t.content} is id ${have} in ${path} but ${id} in the added tokens`,
      );
  }
  if (!missing.length) return { native, json };
  const added = json.added_tokens as Obj[];
  for (const [id, t] of missing)
    added.push({
      id,
      content: t.content,
      single_word: t.spec?.single_word === true,
      lstrip: t.spec?.lstrip === true,
      rstrip: t.spec?.rstrip === true,
      normalized: t.spec?.normalized === true,
      special: t.special,
    });
  const fixed = Tokenizer.fromString(JSON.stringify(json));
  for (const [id, t] of missing)
    if (fixed.tokenToId(t.content) !== id)
      throw new UserError(
        `${dir}: added token ${t.content} should be id ${id} but the vocabulary puts it at ${fixed.tokenToId(t.content)}`,
      );
  return { native: fixed, json };
}

/** Load the tokenizer of a model folder (converting and caching it when the folder has no tokenizer.json). */
export async function loadTokenizer(
  dir: string,
  opts: LoadTokenizerOptions = {},
): Promise<TextTokenizer> {
  const abs = resolve(dir);
  const config = readJson(join(abs, "tokenizer_config.json"));
  let path = join(abs, "tokenizer.json");
  let kind: TextTokenizer["source"]["kind"] = "tokenizer.json";
  if (!existsSync(path)) {
    const hasSpm = existsSync(join(abs, "tokenizer.model"));
    const hasBpe = existsSync(join(abs, "vocab.json")) && existsSync(join(abs, "merges.txt"));
    if (!hasSpm && !hasBpe)
      throw new UserError(
        `${abs}: no tokenizer found (expected tokenizer.json, tokenizer.model, or vocab.json + merges.txt)`,
      );
    kind = hasBpe ? "vocab+merges" : "sentencepiece";
    const sources = [
      "tokenizer.model",
      "vocab.json",
      "merges.txt",
      "tokenizer_config.json",
      "added_tokens.json",
      "special_tokens_map.json",
    ];
    const key = hashFiles(abs, sources);
    path = join(opts.cacheDir ?? cacheRoot(), "tokenizers", key, "tokenizer.json");
    if (!existsSync(path)) {
      const python = opts.python ?? (await ensureEngine({ quiet: true }));
      try {
        await runEngine({ kind: "tokenizer_convert", dir: abs, out: path }, { python });
      } catch (e) {
        throw new UserError(
          `${abs}: could not convert the tokenizer (${kind}): ${(e as Error).message}`,
        );
      }
    }
  }
  let loaded: { native: Tokenizer; json: Obj };
  try {
    loaded = withAddedTokens(path, abs);
  } catch (e) {
    if (e instanceof UserError) throw e;
    throw new UserError(`${path}: cannot load: ${(e as Error).message}`);
  }
  const useFast = (opts.fastPath ?? true) && process.env.TESSERA_NATIVE_TOKENIZER !== "1";
  const fast = useFast ? FastByteLevelBpe.fromJson(loaded.json) : null;
  return new TextTokenizer(
    loaded.native,
    abs,
    { kind, path },
    config,
    opts.segmentCacheSize,
    fast,
    loaded.json,
    readJson(join(abs, "special_tokens_map.json")),
  ).init(config);
}
