/**
 * The training configuration: one zod schema holds every setting. A YAML file, the
 * command line's flags (one per setting) and the seed launcher's flags all resolve to it.
 */
import { readFileSync } from "node:fs";
import { dirname, isAbsolute, resolve } from "node:path";
import type { Command } from "commander";
import { parse as parseYaml } from "yaml";
import { z } from "zod";
import { DEFAULT_VIDEO_FRAMES } from "../text/types.ts";
import { UserError } from "../util/errors.ts";
import {
  addOfficialOptions,
  checkModelSettings,
  type ModelCheck,
  officialFromOptions,
  parseBool,
} from "./official.ts";
import {
  OFFICIAL_PREFERENCE_FLAGS,
  PREFERENCE_CONFIG_SHAPE,
  resolvePreference,
} from "./preference.ts";

const posInt = z.number().int().positive();
const nonNegInt = z.number().int().nonnegative();

export const LORA_DEFAULT_LLM_TARGETS = [
  "q_proj",
  "k_proj",
  "v_proj",
  "o_proj",
  "gate_proj",
  "up_proj",
  "down_proj",
];
export const LORA_DEFAULT_VIT_TARGETS = [
  "q_proj",
  "k_proj",
  "v_proj",
  "projection_layer",
  "fc1",
  "fc2",
];

/** Every setting of a training run. Keys are snake_case in files and kebab-case as flags. */
export const TrainConfigSchema = z
  .object({
    // What to train on.
    model: z.string().min(1).describe("model folder (original InternVL2 format)"),
    meta: z
      .string()
      .min(1)
      .describe("meta file naming the datasets (tessera's or the official style), or a lone JSONL"),
    media_root: z
      .string()
      .optional()
      .describe("with a lone JSONL as meta: the folder its media paths are relative to"),
    template: z
      .string()
      .optional()
      .describe("chat template override (default: the model's config.json)"),
    work_dir: z
      .string()
      .default("tessera-run")
      .describe("where the config, metrics, checkpoints and export go"),
    cache_dir: z.string().optional().describe("prepared cache folder (default: WORK_DIR/cache)"),
    init_from: z
      .string()
      .min(1)
      .optional()
      .describe(
        "start from the weights of a checkpoint (or a run's work dir: its latest) with a new plan",
      ),

    // Lengths, packing, sampling.
    max_length: posInt.default(4096).describe("longest sample in tokens"),
    pack_max_length: posInt.optional().describe("tokens per packed sequence (default: max_length)"),
    packing: z.enum(["none", "soft", "concat"]).default("soft").describe("none | soft | concat"),
    max_tiles_per_pack: posInt.optional().describe("cap on image tiles per pack"),
    sampler: z
      .enum(["random", "length", "modality_length"])
      .default("random")
      .describe("random | length | modality_length"),
    max_dynamic_patch: posInt
      .optional()
      .describe("tiles per image at most (default: the model's config)"),
    video_frames: posInt
      .default(DEFAULT_VIDEO_FRAMES)
      .describe("frames taken from each video, one tile each (a dataset's video_frames wins)"),
    truncate: z
      .enum(["truncate", "drop"])
      .default("truncate")
      .describe("what to do with samples over max_length"),

    // Batches and schedule.
    micro_batch_size: posInt.default(1).describe("packed sequences per forward"),
    global_batch_size: posInt
      .default(16)
      .describe("packed sequences per optimizer step, over all ranks"),
    lr: z.number().positive().default(4e-5).describe("peak learning rate"),
    min_lr: z.number().nonnegative().default(0).describe("learning rate at the end of the cosine"),
    weight_decay: z
      .number()
      .nonnegative()
      .default(0.05)
      .describe("AdamW weight decay (never on norms and biases)"),
    warmup_ratio: z
      .number()
      .min(0)
      .max(1)
      .default(0.03)
      .describe("fraction of steps spent warming up"),
    max_grad_norm: z.number().nonnegative().default(1).describe("gradient clipping norm (0: off)"),
    epochs: z.number().positive().default(1).describe("epochs over the mixture"),
    steps: posInt.optional().describe("optimizer steps (overrides epochs)"),
    seed: nonNegInt.default(42).describe("seed of the plan and the model's random parts"),
    loss_reduction: z
      .enum(["token", "sample", "square"])
      .default("token")
      .describe("token | sample | square"),

    // What learns.
    freeze_vit: z.boolean().default(true).describe("freeze the vision tower"),
    freeze_llm: z.boolean().default(false).describe("freeze the language model"),
    freeze_mlp: z.boolean().default(false).describe("freeze the vision-to-language projector"),
    llm_lora_rank: nonNegInt.default(0).describe("LoRA rank on the language model (0: off)"),
    llm_lora_alpha: z
      .number()
      .positive()
      .optional()
      .describe("LoRA alpha on the language model (default: 2 × rank)"),
    llm_lora_targets: z
      .array(z.string().min(1))
      .default(LORA_DEFAULT_LLM_TARGETS)
      .describe("LLM linear layers given LoRA"),
    vit_lora_rank: nonNegInt.default(0).describe("LoRA rank on the vision tower (0: off)"),
    vit_lora_alpha: z
      .number()
      .positive()
      .optional()
      .describe("LoRA alpha on the vision tower (default: 2 × rank)"),
    vit_lora_targets: z
      .array(z.string().min(1))
      .default(LORA_DEFAULT_VIT_TARGETS)
      .describe("vision linear layers given LoRA"),
    lora_export: z
      .enum(["merged", "adapter"])
      .default("merged")
      .describe("merged | adapter (a PEFT adapter for the native model)"),
    lora_dropout: z.number().min(0).max(1).default(0).describe("dropout on the LoRA input (PEFT)"),
    lora_rslora: z
      .boolean()
      .default(false)
      .describe("rank-stabilised LoRA: scale alpha / sqrt(rank)"),
    lora_dora: z.boolean().default(false).describe("DoRA: weight-decomposed LoRA (PEFT)"),

    // How it runs.
    gradient_checkpointing: z
      .boolean()
      .default(true)
      .describe("recompute each layer's activations in backward"),
    shard_strategy: z
      .enum(["zero2", "zero3", "ddp"])
      .default("zero2")
      .describe("zero2 | zero3 | ddp"),
    precision: z
      .enum(["auto", "bf16", "fp32"])
      .default("auto")
      .describe("auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32"),
    device: z.enum(["auto", "cpu", "cuda"]).default("auto").describe("auto | cpu | cuda"),
    num_workers: nonNegInt.default(2).describe("data loader worker processes per rank"),
    bad_sample_policy: z
      .enum(["skip", "stop"])
      .default("skip")
      .describe(
        "a sample whose image or video cannot be loaded: skip (masked, counted, in WORK_DIR/skipped.jsonl) | stop the run",
      ),
    nproc_per_node: posInt.default(1).describe("processes (GPUs) per node"),
    nnodes: posInt.default(1).describe("nodes"),
    node_rank: nonNegInt.default(0).describe("this node's rank"),
    master_addr: z.string().default("127.0.0.1").describe("address of node 0"),
    master_port: z.number().int().min(1).max(65535).default(29500).describe("port on node 0"),
    sp_size: posInt
      .default(1)
      .describe("sequence parallel (Ulysses) ranks per row: attention heads are split over them"),
    ring_size: posInt
      .default(1)
      .describe("ring attention ranks per row, inside each sequence-parallel group"),

    // Checkpoints, logs, export.
    checkpoint_interval: nonNegInt
      .default(500)
      .describe("steps between checkpoints (0: only at the end)"),
    checkpoint_keep: posInt.default(2).describe("checkpoints kept (the last ones)"),
    checkpoint_drop_optimizer: z
      .boolean()
      .default(false)
      .describe("save weights only (no exact resume)"),
    log_interval: posInt.default(1).describe("steps between metric lines"),
    print_interval: z
      .number()
      .positive()
      .default(30)
      .describe("seconds between progress lines when the output is not a terminal"),
    report_to: z
      .array(z.enum(["tensorboard", "wandb", "none"]))
      .default([])
      .describe("loggers besides metrics.jsonl: tensorboard, wandb (none: only metrics.jsonl)"),

    // Evaluation during training.
    eval_meta: z
      .string()
      .min(1)
      .optional()
      .describe("held-out data (meta file or JSONL), planned like the training data"),
    eval_interval: nonNegInt
      .default(0)
      .describe("steps between evaluations on eval_meta (0: at the start and the end only)"),
    eval_generate: nonNegInt
      .default(0)
      .describe("held-out questions answered by generation for exact match at each evaluation"),
    save_best: z
      .enum(["eval_loss", "eval_exact_match"])
      .optional()
      .describe("keep the best checkpoint by this metric (checkpoints/best)"),
    export: z
      .enum(["original", "native", "none"])
      .default("original")
      .describe("format of the final model"),
    export_dtype: z
      .enum(["auto", "bf16", "fp16", "fp32"])
      .default("auto")
      .describe("dtype of the exported weights (auto: the source model's)"),

    // Preference optimization (src/train/preference.ts).
    ...PREFERENCE_CONFIG_SHAPE,
  })
  .strict();

export type TrainConfig = z.infer<typeof TrainConfigSchema>;
export type TrainConfigInput = z.input<typeof TrainConfigSchema>;
export type ConfigKey = keyof TrainConfig;

/** Settings that name files; relative ones resolve against the config file's folder. */
const PATH_KEYS = [
  "model",
  "meta",
  "media_root",
  "work_dir",
  "cache_dir",
  "eval_meta",
  "init_from",
] as const;

/** The zod type of a key with its wrappers (optional, default) removed. */
function innerType(t: z.ZodType): z.ZodType {
  let cur: z.ZodType = t;
  for (;;) {
    const def = (cur as unknown as { def: { type: string; innerType?: z.ZodType } }).def;
    if (
      (def.type === "optional" || def.type === "default" || def.type === "nullable") &&
      def.innerType
    )
      cur = def.innerType;
    else return cur;
  }
}

function kindOf(key: ConfigKey): "boolean" | "number" | "string" | "array" {
  const t = innerType(TrainConfigSchema.shape[key] as unknown as z.ZodType);
  const type = (t as unknown as { def: { type: string } }).def.type;
  if (type === "boolean") return "boolean";
  if (type === "number") return "number";
  if (type === "array") return "array";
  return "string";
}

export const CONFIG_KEYS = Object.keys(TrainConfigSchema.shape) as ConfigKey[];
const flagOf = (key: string) => key.replaceAll("_", "-");
const camel = (flag: string) => flag.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());

/**
 * The seed launcher's flags. Each maps onto a setting of the schema; values come through
 * `seedFlags` below. Flags that are the schema's own (e.g. --lr, --max-length) need no entry.
 */
type SeedFlag = {
  flags: string;
  description: string;
  apply: (v: unknown) => Partial<TrainConfigInput>;
};
const SEED_FLAGS: SeedFlag[] = [
  {
    flags: "--mirco-batch-size <n>",
    description: "seed spelling of --micro-batch-size",
    apply: (v) => ({ micro_batch_size: num(v, "--mirco-batch-size") }),
  },
  {
    flags: "--dset-pack",
    description: "seed: soft packing (packing: soft)",
    apply: () => ({ packing: "soft" }),
  },
  {
    flags: "--concat-before-pack",
    description: "seed: concatenate then split (packing: concat)",
    apply: () => ({ packing: "concat" }),
  },
  {
    flags: "--group-by-length",
    description: "seed: length-grouped sampler (sampler: length)",
    apply: () => ({ sampler: "length" }),
  },
  {
    flags: "--group-by-modality-length",
    description: "seed: modality-and-length sampler (sampler: modality_length)",
    apply: () => ({ sampler: "modality_length" }),
  },
  {
    flags: "--dset-cache-dir <dir>",
    description: "seed: prepared cache folder (cache_dir)",
    apply: (v) => ({ cache_dir: String(v) }),
  },
  ...(OFFICIAL_PREFERENCE_FLAGS as SeedFlag[]),
];

function num(v: unknown, flag: string): number {
  const n = typeof v === "number" ? v : Number(v);
  if (!Number.isFinite(n))
    throw new UserError(`${flag}: expected a number, got ${JSON.stringify(v)}`);
  return n;
}

/**
 * What the command line gives: settings, plus what only the resolver can settle (the official
 * --gradient_accumulation_steps needs the world size; model settings are checked against the
 * model folder) and remarks to print.
 */
export type ConfigFlags = Partial<TrainConfigInput> & {
  gradient_accumulation_steps?: number;
  model_checks?: ModelCheck[];
  notes?: string[];
};

/**
 * Add one flag per setting, the seed launcher's flags, the official script's arguments (both
 * spellings), and the refused ones, to a command.
 */
export function addConfigOptions(cmd: Command): Command {
  for (const key of CONFIG_KEYS) {
    const flag = flagOf(key);
    const desc = TrainConfigSchema.shape[key].description ?? key;
    switch (kindOf(key)) {
      case "boolean":
        // An optional value, so the official spelling `--freeze-llm True` works too.
        cmd.option(`--${flag} [bool]`, desc);
        cmd.option(`--no-${flag}`, `do not: ${desc}`);
        break;
      case "array":
        cmd.option(`--${flag} <list>`, `${desc} (comma-separated)`);
        break;
      default:
        cmd.option(`--${flag} <value>`, desc);
    }
  }
  for (const s of SEED_FLAGS)
    if (!cmd.options.some((o) => o.long === s.flags.split(" ")[0]))
      // A switch takes an optional true/false, as the official spellings pass them.
      cmd.option(s.flags.includes(" ") ? s.flags : `${s.flags} [bool]`, s.description);
  addOfficialOptions(cmd);
  return cmd;
}

/** The settings the command line gave (only those given), from commander's parsed options. */
export function flagsToConfig(opts: Record<string, unknown>, cwd = process.cwd()): ConfigFlags {
  // The official arguments first: tessera's own spelling of a setting wins over them.
  const official = officialFromOptions(opts, cwd);
  const out: Record<string, unknown> = { ...official.settings };
  for (const s of SEED_FLAGS) {
    const name = s.flags.split(" ")[0];
    const v = opts[camel(name.slice(2))];
    if (v === undefined || v === false) continue;
    if (!s.flags.includes(" ") && !parseBool(v, name)) continue;
    Object.assign(out, s.apply(v));
  }
  for (const key of CONFIG_KEYS) {
    const v = opts[camel(flagOf(key))];
    if (v === undefined) continue;
    const flag = `--${flagOf(key)}`;
    switch (kindOf(key)) {
      case "boolean":
        out[key] = parseBool(v, flag);
        break;
      case "number":
        out[key] = num(v, flag);
        break;
      case "array":
        out[key] = String(v)
          .split(",")
          .map((s) => s.trim())
          .filter(Boolean);
        break;
      default:
        out[key] = String(v);
    }
  }
  if (official.gradAccum !== undefined) out.gradient_accumulation_steps = official.gradAccum;
  if (official.modelChecks.length) out.model_checks = official.modelChecks;
  if (official.notes.length) out.notes = official.notes;
  return out as ConfigFlags;
}

function formatIssues(err: z.ZodError, where: string): string {
  return err.issues
    .map((i) => {
      if (i.code === "unrecognized_keys") {
        const keys = (i as unknown as { keys: string[] }).keys;
        return `${where}: unknown setting${keys.length > 1 ? "s" : ""} ${keys.map((k) => `"${k}"`).join(", ")} (known: see tessera train --help)`;
      }
      const field = i.path.join(".") || "(top level)";
      return `${where}: ${field}: ${i.message}`;
    })
    .join("\n");
}

/** Read a YAML (or JSON) config file; relative paths in it resolve against its folder. */
export function readConfigFile(path: string): Partial<TrainConfigInput> {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    throw new UserError(`cannot read the config file ${path}: ${(e as Error).message}`);
  }
  let raw: unknown;
  try {
    raw = parseYaml(text) ?? {};
  } catch (e) {
    throw new UserError(`${path}: not valid YAML: ${(e as Error).message}`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw))
    throw new UserError(`${path}: expected a mapping of settings`);
  const obj = { ...(raw as Record<string, unknown>) };
  // Unknown keys and wrong types are reported against this file, before any merge.
  const check = TrainConfigSchema.partial().strict().safeParse(obj);
  if (!check.success) throw new UserError(formatIssues(check.error, path));
  const base = dirname(resolve(path));
  for (const k of PATH_KEYS) {
    const v = obj[k];
    if (typeof v === "string" && !isAbsolute(v)) obj[k] = resolve(base, v);
  }
  return obj as Partial<TrainConfigInput>;
}

/**
 * The resolved config: file, then flags over it, then defaults; paths absolute, derived
 * settings filled in. Errors name the file (or "command line") and the field.
 */
export function resolveConfig(
  file: string | undefined,
  allFlags: ConfigFlags,
  cwd = process.cwd(),
): TrainConfig {
  const {
    gradient_accumulation_steps: gradAccum,
    model_checks,
    notes: _notes,
    ...flags
  } = allFlags;
  const fromFile = file ? readConfigFile(file) : {};
  const merged: Record<string, unknown> = { ...fromFile };
  for (const [k, v] of Object.entries(flags)) {
    if (v === undefined) continue;
    merged[k] =
      (PATH_KEYS as readonly string[]).includes(k) && typeof v === "string" && !isAbsolute(v)
        ? resolve(cwd, v)
        : v;
  }
  if (merged.work_dir === undefined) merged.work_dir = resolve(cwd, "tessera-run");
  const where = file ? `${file} (with command-line flags)` : "command line";
  if (gradAccum !== undefined) {
    // The official batch: per-device batch × accumulation × GPUs over all nodes.
    const world = Number(merged.nproc_per_node ?? 1) * Number(merged.nnodes ?? 1);
    const global = gradAccum * Number(merged.micro_batch_size ?? 1) * world;
    if (flags.global_batch_size !== undefined && flags.global_batch_size !== global)
      throw new UserError(
        `${where}: --global-batch-size ${flags.global_batch_size} contradicts --gradient_accumulation_steps ${gradAccum} (× micro batch × processes = ${global}): give one of them`,
      );
    merged.global_batch_size = global;
  }
  const parsed = TrainConfigSchema.safeParse(merged);
  if (!parsed.success) {
    const missing = parsed.error.issues.filter(
      (i) =>
        i.path.length === 1 &&
        (i.path[0] === "model" || i.path[0] === "meta") &&
        i.code === "invalid_type",
    );
    if (missing.length) {
      throw new UserError(
        `${where}: ${missing.map((i) => String(i.path[0])).join(" and ")} required (--${missing.map((i) => String(i.path[0])).join(", --")} or in the config file)`,
      );
    }
    throw new UserError(formatIssues(parsed.error, where));
  }
  const c = parsed.data;
  // A preference pack holds both sides of a pair.
  c.pack_max_length ??= c.method === "sft" ? c.max_length : 2 * c.max_length;
  c.cache_dir ??= resolve(c.work_dir, "cache");
  if (c.llm_lora_rank > 0) c.llm_lora_alpha ??= 2 * c.llm_lora_rank;
  if (c.vit_lora_rank > 0) c.vit_lora_alpha ??= 2 * c.vit_lora_rank;
  resolvePreference(c, where);
  validate(c, where);
  if (model_checks) checkModelSettings(c.model, model_checks, where);
  return c;
}

function validate(c: TrainConfig, where: string): void {
  const world = c.nproc_per_node * c.nnodes;
  const perRow = c.sp_size * c.ring_size;
  if (world % perRow !== 0)
    throw new UserError(
      `${where}: sp_size × ring_size = ${c.sp_size} × ${c.ring_size} = ${perRow} must divide the processes (nproc_per_node × nnodes = ${world})`,
    );
  if (perRow > 1 && c.micro_batch_size !== 1)
    throw new UserError(
      `${where}: micro_batch_size ${c.micro_batch_size}: with sequence parallelism (sp_size × ring_size = ${perRow}) a micro-batch is one row cut across ranks; set micro_batch_size to 1`,
    );
  const dp = world / perRow;
  const perStep = dp * c.micro_batch_size;
  if (c.global_batch_size % perStep !== 0) {
    throw new UserError(
      perRow > 1
        ? `${where}: global_batch_size ${c.global_batch_size} must be a multiple of micro_batch_size × data-parallel ranks = ${c.micro_batch_size} × ${dp} = ${perStep} (processes ${world} / (sp_size × ring_size) ${perRow})`
        : `${where}: global_batch_size ${c.global_batch_size} must be a multiple of micro_batch_size × processes = ${c.micro_batch_size} × ${world} = ${perStep}`,
    );
  }
  if (c.node_rank >= c.nnodes)
    throw new UserError(`${where}: node_rank ${c.node_rank} must be below nnodes ${c.nnodes}`);
  if (
    c.packing !== "none" &&
    c.pack_max_length !== undefined &&
    c.pack_max_length < c.max_length &&
    c.packing === "soft"
  ) {
    throw new UserError(
      `${where}: pack_max_length ${c.pack_max_length} is below max_length ${c.max_length}: a sample could never fit a pack`,
    );
  }
  if (
    c.freeze_vit &&
    c.freeze_llm &&
    c.freeze_mlp &&
    c.llm_lora_rank === 0 &&
    c.vit_lora_rank === 0
  ) {
    throw new UserError(
      `${where}: freeze_vit, freeze_llm and freeze_mlp are all on and no LoRA is set: nothing would learn`,
    );
  }
  if (c.eval_meta && c.sp_size * c.ring_size > 1)
    throw new UserError(
      `${where}: eval_meta with sequence parallelism (sp_size × ring_size = ${c.sp_size * c.ring_size}) is not supported yet: evaluate after training with \`tessera eval\``,
    );
  if (c.eval_meta && c.method !== "sft")
    throw new UserError(
      `${where}: eval_meta measures held-out loss of supervised fine-tuning; method ${c.method} does not support it yet`,
    );
  if (c.save_best && !c.eval_meta)
    throw new UserError(`${where}: save_best ${c.save_best} needs eval_meta (the held-out data)`);
  if (c.save_best === "eval_exact_match" && c.eval_generate === 0)
    throw new UserError(
      `${where}: save_best eval_exact_match needs eval_generate > 0 (questions answered at each evaluation)`,
    );
  if (c.eval_generate > 0 && world > 1 && c.shard_strategy !== "ddp")
    throw new UserError(
      `${where}: eval_generate answers questions on each rank's whole model: use shard_strategy ddp, or evaluate after training with \`tessera eval\``,
    );
  if (c.min_lr > c.lr) throw new UserError(`${where}: min_lr ${c.min_lr} is above lr ${c.lr}`);
}

/** Data-parallel ranks: the processes over the ranks that share one row (sp × ring). */
export function dataParallelSize(c: TrainConfig): number {
  return (c.nproc_per_node * c.nnodes) / (c.sp_size * c.ring_size);
}

/** Gradient accumulation steps implied by the batch sizes. */
export function accumulationSteps(c: TrainConfig): number {
  return c.global_batch_size / (c.micro_batch_size * dataParallelSize(c));
}
