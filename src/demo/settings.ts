/**
 * The demo's chosen sizes and settings, measured on a 2-core CPU (docs/demo.md explains each).
 */
import type { QuestionType } from "./scenes.ts";

/** The tiny InternVL2-layout model (build-tiny job fields). */
export const DEMO_MODEL = {
  llm: "qwen2",
  vision: "300m",
  // 56 px tiles of 14 px patches: a 4×4 grid, pixel-shuffled to 4 tokens per tile.
  tile_size: 56,
  patch_size: 14,
  vision_hidden: 32,
  vision_layers: 2,
  vision_heads: 2,
  vision_intermediate: 64,
  llm_hidden: 64,
  llm_layers: 2,
  llm_heads: 4,
  llm_kv_heads: 2,
  llm_intermediate: 128,
  // As in Qwen2-0.5B (InternVL2-1B's LLM): one 151k × 64 table serves as embedding and head.
  tie_word_embeddings: true,
  max_dynamic_patch: 6,
} as const;

/** Records per question type. */
export const DEMO_TRAIN_COUNTS: Record<QuestionType, number> = {
  colour: 600,
  count: 300,
  word: 200,
  compare: 200,
  text: 400,
};
export const DEMO_EVAL_COUNTS: Record<QuestionType, number> = {
  colour: 60,
  count: 30,
  word: 20,
  compare: 20,
  text: 20,
};
/** Colour questions three times per epoch (an integer repeat), half the text ones (a fraction). */
export const DEMO_REPEAT: Partial<Record<QuestionType, number>> = { colour: 3, text: 0.5 };

/** Training settings (keys of the training config). */
export const DEMO_TRAIN = {
  // Everything learns, the vision tower included (a random one has nothing to keep).
  freeze_vit: false,
  freeze_mlp: false,
  freeze_llm: false,
  llm_lora_rank: 0,
  lr: 3e-3,
  min_lr: 0,
  warmup_ratio: 0.05,
  weight_decay: 0,
  max_grad_norm: 1,
  // Short packs, four per step. The packer fills a pack with samples of similar length (here:
  // of one question type) and emits packs in length order; the modality-aware length-grouped
  // sampler shuffles them (one pack per group), so each step mixes the types.
  max_length: 256,
  pack_max_length: 256,
  packing: "soft",
  sampler: "modality_length",
  micro_batch_size: 1,
  global_batch_size: 4,
  gradient_checkpointing: false,
  num_workers: 1,
  checkpoint_interval: 0,
  checkpoint_keep: 1,
  log_interval: 1,
  // the held-out loss every 40 steps (and before the first and after the last)
  eval_interval: 40,
  print_interval: 10,
  export: "original",
  steps: 250,
} as const;

/** The shortened run of --fast (tests). */
export const DEMO_FAST = {
  steps: 80,
  // As many distinct colour pictures as the full run (drawing them is cheap), so the shortened
  // run sees each at most once instead of memorising a few repeated ones.
  train: { colour: 600, count: 40, word: 20, compare: 20, text: 40 } as Record<
    QuestionType,
    number
  >,
  eval: { colour: 30, count: 10, word: 5, compare: 5, text: 5 } as Record<QuestionType, number>,
};
