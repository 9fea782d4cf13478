/**
 * The official InternVL fine-tuning script's arguments (internvl_chat_finetune.py: its model
 * and data arguments, and the Hugging Face training arguments its shell scripts pass), taken
 * as they are by `tessera train`, in both spellings (`--model_name_or_path` and
 * `--model-name-or-path`). Each maps onto tessera's settings; one that tessera cannot honour
 * is refused by name with what to do instead, never dropped.
 */
import { existsSync, readFileSync } from "node:fs";
import { basename, resolve } from "node:path";
import type { Command } from "commander";
import { loadModelInfo, type ModelInfo } from "../text/model-info.ts";
import { UserError } from "../util/errors.ts";

/** A model setting that tessera takes from the model folder: the flag must agree with it. */
export interface ModelCheck {
  flag: string;
  value: number | boolean | string;
  field: "tileSize" | "downsampleRatio" | "minDynamicPatch" | "dynamicImageSize" | "useThumbnail";
}

/** What official arguments come to: settings, and what is left for the resolver. */
export interface OfficialSettings {
  settings: Record<string, unknown>;
  /** --gradient_accumulation_steps: global_batch_size once the world size is known. */
  gradAccum?: number;
  modelChecks: ModelCheck[];
  /** One line each, for arguments taken with a remark (e.g. --deepspeed). */
  notes: string[];
}

type Kind = "str" | "int" | "float" | "bool" | "list";
type Value = string | number | boolean | string[];

interface OfficialFlag {
  name: string;
  kind: Kind;
  help: string;
  apply: (v: Value, out: OfficialSettings, cwd: string, flag: string) => void;
}

function refuse(flag: string, v: Value, why: string): never {
  throw new UserError(`--${flag} ${String(v)}: ${why}`);
}

const set =
  (key: string, map: (v: Value) => unknown = (v) => v) =>
  (v: Value, out: OfficialSettings) => {
    out.settings[key] = map(v);
  };

const modelCheck =
  (field: ModelCheck["field"]) => (v: Value, out: OfficialSettings, _cwd: string, flag: string) => {
    out.modelChecks.push({ flag, value: v as number | boolean, field });
  };

/** ZeRO stage of a DeepSpeed config: from the file when it is there, else from its name. */
function deepspeedStage(path: string, cwd: string): number | undefined {
  const abs = resolve(cwd, path);
  if (existsSync(abs)) {
    try {
      const stage = JSON.parse(readFileSync(abs, "utf8"))?.zero_optimization?.stage;
      if (typeof stage === "number") return stage;
    } catch {
      // an unreadable file: fall back to its name
    }
  }
  const m = /(?:stage|zero)[_-]?(\d)/i.exec(basename(path));
  return m ? Number(m[1]) : undefined;
}

const FLAGS: OfficialFlag[] = [
  // Model arguments.
  { name: "model_name_or_path", kind: "str", help: "model folder (model)", apply: set("model") },
  {
    name: "freeze_backbone",
    kind: "bool",
    help: "freeze the vision tower (freeze_vit)",
    apply: set("freeze_vit"),
  },
  {
    name: "freeze_llm",
    kind: "bool",
    help: "freeze the LLM (freeze_llm)",
    apply: set("freeze_llm"),
  },
  {
    name: "freeze_mlp",
    kind: "bool",
    help: "freeze the projector (freeze_mlp)",
    apply: set("freeze_mlp"),
  },
  {
    name: "unfreeze_vit_layers",
    kind: "int",
    help: "only 0: tessera trains all of the vision tower or none of it",
    apply: (v) => {
      if (v !== 0)
        refuse(
          "unfreeze_vit_layers",
          v,
          "tessera trains the whole vision tower or none of it. Remove it and give --freeze_backbone False (freeze_vit: false) to train all of it, or --use_backbone_lora N for LoRA on it.",
        );
    },
  },
  {
    name: "unfreeze_lm_head",
    kind: "bool",
    help: "only False: the head learns with the LLM (freeze_llm false)",
    apply: (v) => {
      if (v === true)
        refuse(
          "unfreeze_lm_head",
          v,
          "tessera does not train the LM head alone. Remove it; to train the head, train the LLM (--freeze_llm False) or use --use_llm_lora N.",
        );
    },
  },
  {
    name: "use_backbone_lora",
    kind: "int",
    help: "LoRA rank on the vision tower, alpha 2 × rank (vit_lora_rank)",
    apply: set("vit_lora_rank"),
  },
  {
    name: "use_llm_lora",
    kind: "int",
    help: "LoRA rank on the LLM, alpha 2 × rank (llm_lora_rank)",
    apply: set("llm_lora_rank"),
  },
  {
    name: "vision_select_layer",
    kind: "int",
    help: "only -1 (the last layer), as InternVL2 uses",
    apply: (v) => {
      if (v !== -1)
        refuse(
          "vision_select_layer",
          v,
          "tessera takes the vision tower's last layer (-1), as every InternVL2 model does. Remove it or set it to -1.",
        );
    },
  },
  {
    name: "grad_checkpoint",
    kind: "bool",
    help: "gradient checkpointing (gradient_checkpointing)",
    apply: set("gradient_checkpointing"),
  },
  {
    name: "drop_path_rate",
    kind: "float",
    help: "only 0: tessera applies no drop path in the vision tower",
    apply: (v) => {
      if (v !== 0)
        refuse(
          "drop_path_rate",
          v,
          "tessera does not apply drop path (stochastic depth) in the vision tower. Remove it or set it to 0; with a frozen vision tower (--freeze_backbone True) it has no effect on what is learned in the other parts beyond that noise.",
        );
    },
  },
  {
    name: "ps_version",
    kind: "str",
    help: "only v2 (the InternVL2 pixel shuffle)",
    apply: (v) => {
      if (v !== "v2")
        refuse("ps_version", v, "tessera runs the v2 pixel shuffle of InternVL2. Use v2.");
    },
  },
  {
    name: "use_fast_tokenizer",
    kind: "bool",
    help: "accepted: tessera has one tokenizer, equal to the model's",
    apply: () => {},
  },
  // Data arguments.
  { name: "meta_path", kind: "str", help: "meta file (meta)", apply: set("meta") },
  { name: "conv_style", kind: "str", help: "chat template (template)", apply: set("template") },
  {
    name: "max_seq_length",
    kind: "int",
    help: "longest sample in tokens (max_length)",
    apply: set("max_length"),
  },
  {
    name: "force_image_size",
    kind: "int",
    help: "must equal the model's tile size",
    apply: modelCheck("tileSize"),
  },
  {
    name: "down_sample_ratio",
    kind: "float",
    help: "must equal the model's downsample_ratio",
    apply: modelCheck("downsampleRatio"),
  },
  {
    name: "max_dynamic_patch",
    kind: "int",
    help: "tiles per image at most (max_dynamic_patch)",
    apply: set("max_dynamic_patch"),
  },
  {
    name: "min_dynamic_patch",
    kind: "int",
    help: "must equal the model's min_dynamic_patch",
    apply: modelCheck("minDynamicPatch"),
  },
  {
    name: "dynamic_image_size",
    kind: "bool",
    help: "must equal the model's dynamic_image_size",
    apply: modelCheck("dynamicImageSize"),
  },
  {
    name: "use_thumbnail",
    kind: "bool",
    help: "must equal the model's use_thumbnail",
    apply: modelCheck("useThumbnail"),
  },
  {
    name: "pad2square",
    kind: "bool",
    help: "only False",
    apply: (v) => {
      if (v === true)
        refuse(
          "pad2square",
          v,
          "tessera tiles images dynamically and does not pad them to a square. Remove it.",
        );
    },
  },
  {
    name: "normalize_type",
    kind: "str",
    help: "only imagenet (InternVL2's)",
    apply: (v) => {
      if (v !== "imagenet")
        refuse("normalize_type", v, "tessera normalizes pixels as InternVL2 does (imagenet).");
    },
  },
  {
    name: "use_data_resampling",
    kind: "bool",
    help: "only False: the mixture follows repeat_time",
    apply: (v) => {
      if (v === true)
        refuse(
          "use_data_resampling",
          v,
          "tessera mixes datasets by their repeat_time in the meta file. Remove it and set repeat_time per dataset.",
        );
    },
  },
  {
    name: "use_packed_ds",
    kind: "bool",
    help: "packing: True → soft, False → none",
    apply: set("packing", (v) => (v ? "soft" : "none")),
  },
  {
    name: "max_packed_tokens",
    kind: "int",
    help: "tokens per packed sequence (pack_max_length)",
    apply: set("pack_max_length"),
  },
  ...["num_images_expected", "max_buffer_size", "log_freq", "strict_mode", "replacement"].map(
    (name): OfficialFlag => ({
      name,
      kind: name === "strict_mode" || name === "replacement" ? "bool" : "int",
      help: "accepted: tessera plans whole packs before training",
      apply: (v, out) =>
        out.notes.push(
          `--${name} ${String(v)}: not used; tessera plans whole packs before training (see \`tessera data plan\`)`,
        ),
    }),
  ),
  {
    name: "allow_overflow",
    kind: "bool",
    help: "only False: a sample longer than a pack is truncated or dropped (truncate)",
    apply: (v) => {
      if (v === true)
        refuse(
          "allow_overflow",
          v,
          "a pack never holds more than pack_max_length tokens in tessera. Remove it; set truncate: truncate or drop for long samples.",
        );
    },
  },
  {
    name: "loss_reduction",
    kind: "str",
    help: "token | sample | square (loss_reduction)",
    apply: set("loss_reduction"),
  },
  {
    name: "loss_reduction_all_gather",
    kind: "bool",
    help: "accepted: tessera normalises the loss over all ranks",
    apply: () => {},
  },
  // Training arguments (Hugging Face TrainingArguments) the official scripts pass.
  { name: "output_dir", kind: "str", help: "work dir (work_dir)", apply: set("work_dir") },
  {
    name: "overwrite_output_dir",
    kind: "bool",
    help: "accepted: tessera starts fresh or --resume continues",
    apply: () => {},
  },
  { name: "do_train", kind: "bool", help: "accepted", apply: () => {} },
  { name: "learning_rate", kind: "float", help: "peak learning rate (lr)", apply: set("lr") },
  {
    name: "weight_decay",
    kind: "float",
    help: "AdamW weight decay (weight_decay)",
    apply: set("weight_decay"),
  },
  {
    name: "warmup_ratio",
    kind: "float",
    help: "warm-up fraction (warmup_ratio)",
    apply: set("warmup_ratio"),
  },
  {
    name: "warmup_steps",
    kind: "int",
    help: "only 0: use --warmup_ratio",
    apply: (v) => {
      if (v !== 0)
        refuse(
          "warmup_steps",
          v,
          "tessera warms up over a fraction of the run. Give --warmup_ratio (warm-up steps ÷ total steps) instead.",
        );
    },
  },
  {
    name: "lr_scheduler_type",
    kind: "str",
    help: "only cosine",
    apply: (v) => {
      if (v !== "cosine")
        refuse(
          "lr_scheduler_type",
          v,
          "tessera's schedule is linear warm-up then cosine decay to min_lr. Use --lr_scheduler_type cosine.",
        );
    },
  },
  {
    name: "num_train_epochs",
    kind: "float",
    help: "epochs over the mixture (epochs)",
    apply: set("epochs"),
  },
  {
    name: "max_steps",
    kind: "int",
    help: "optimizer steps, -1: by epochs (steps)",
    apply: (v, out) => {
      if ((v as number) > 0) out.settings.steps = v;
    },
  },
  {
    name: "per_device_train_batch_size",
    kind: "int",
    help: "samples per GPU per forward (micro_batch_size)",
    apply: set("micro_batch_size"),
  },
  {
    name: "gradient_accumulation_steps",
    kind: "int",
    help: "global_batch_size = this × micro_batch_size × GPUs",
    apply: (v, out) => {
      if (!Number.isInteger(v) || (v as number) < 1)
        refuse("gradient_accumulation_steps", v, "must be a whole number ≥ 1.");
      out.gradAccum = v as number;
    },
  },
  {
    name: "gradient_checkpointing",
    kind: "bool",
    help: "gradient checkpointing (gradient_checkpointing)",
    apply: set("gradient_checkpointing"),
  },
  {
    name: "max_grad_norm",
    kind: "float",
    help: "gradient clipping (max_grad_norm)",
    apply: set("max_grad_norm"),
  },
  {
    name: "save_strategy",
    kind: "str",
    help: "only steps (or no)",
    apply: (v, out) => {
      if (v === "no") out.settings.checkpoint_interval = 0;
      else if (v !== "steps")
        refuse(
          "save_strategy",
          v,
          "tessera checkpoints every checkpoint_interval steps. Use --save_strategy steps with --save_steps N.",
        );
    },
  },
  {
    name: "save_steps",
    kind: "int",
    help: "steps between checkpoints (checkpoint_interval)",
    apply: set("checkpoint_interval"),
  },
  {
    name: "save_total_limit",
    kind: "int",
    help: "checkpoints kept (checkpoint_keep)",
    apply: set("checkpoint_keep"),
  },
  {
    name: "save_only_model",
    kind: "bool",
    help: "weights only (checkpoint_drop_optimizer)",
    apply: set("checkpoint_drop_optimizer"),
  },
  {
    name: "evaluation_strategy",
    kind: "str",
    help: "only no (held-out data: eval_meta)",
    apply: (v) => {
      if (v !== "no")
        refuse(
          "evaluation_strategy",
          v,
          "the official fine-tuning script evaluates nothing. Remove it; for held-out data set eval_meta and eval_interval.",
        );
    },
  },
  {
    name: "logging_steps",
    kind: "int",
    help: "steps between metric lines (log_interval)",
    apply: set("log_interval"),
  },
  {
    name: "bf16",
    kind: "bool",
    help: "True → precision bf16, False → fp32",
    apply: set("precision", (v) => (v ? "bf16" : "fp32")),
  },
  {
    name: "fp16",
    kind: "bool",
    help: "only False: tessera trains in bf16 or fp32",
    apply: (v) => {
      if (v === true) refuse("fp16", v, "tessera trains in bf16 or fp32. Use --bf16 True instead.");
    },
  },
  { name: "seed", kind: "int", help: "seed (seed)", apply: set("seed") },
  {
    name: "dataloader_num_workers",
    kind: "int",
    help: "loader workers per rank (num_workers)",
    apply: set("num_workers"),
  },
  {
    name: "group_by_length",
    kind: "bool",
    help: "True → sampler length",
    apply: set("sampler", (v) => (v ? "length" : "random")),
  },
  {
    name: "report_to",
    kind: "list",
    help: "tensorboard, wandb or none (report_to)",
    apply: (v, out) => {
      const list = (v as string[]).flatMap((s) => s.split(",")).map((s) => s.trim());
      for (const x of list)
        if (!["tensorboard", "wandb", "none"].includes(x))
          refuse(
            "report_to",
            x,
            "tessera reports to tensorboard and wandb (none: metrics.jsonl only). Name those.",
          );
      out.settings.report_to = list.includes("none") ? [] : list;
    },
  },
  {
    name: "deepspeed",
    kind: "str",
    help: "ZeRO stage → shard_strategy (1, 2: zero2; 3: zero3)",
    apply: (v, out, cwd) => {
      const stage = deepspeedStage(String(v), cwd);
      if (stage === undefined)
        refuse(
          "deepspeed",
          v,
          "cannot tell its ZeRO stage (the file is not there and its name does not say). Give --shard-strategy zero2 or zero3 instead.",
        );
      const strategy = stage === 3 ? "zero3" : stage === 0 ? "ddp" : "zero2";
      out.settings.shard_strategy = strategy;
      out.notes.push(
        `--deepspeed ${String(v)} (ZeRO stage ${stage}) → shard_strategy ${strategy}: tessera shards with PyTorch FSDP; the rest of the DeepSpeed file is not read`,
      );
    },
  },
];

// internvl_chat_mpo.py's own arguments (the preference settings, docs/preference.md).
FLAGS.push(
  {
    name: "loss_type",
    kind: "str",
    help: "preference loss terms (sigmoid, bco_pair, ipo, hinge; comma-separated) → loss_type",
    apply: set("loss_type"),
  },
  {
    name: "sigmoid_loss_weight",
    kind: "float",
    help: "weight of the sigmoid term → sigmoid_loss_weight",
    apply: set("sigmoid_loss_weight"),
  },
  {
    name: "bco_pair_loss_weight",
    kind: "float",
    help: "weight of the bco_pair term → bco_pair_loss_weight",
    apply: set("bco_pair_loss_weight"),
  },
  {
    name: "rpo_alpha",
    kind: "float",
    help: "weight of the NLL term on the chosen answers → rpo_alpha",
    apply: set("rpo_alpha"),
  },
  { name: "beta", kind: "float", help: "preference beta → beta", apply: set("beta") },
  {
    name: "label_smoothing",
    kind: "float",
    help: "label smoothing of the sigmoid term → label_smoothing",
    apply: set("label_smoothing"),
  },
);

const BY_NAME = new Map(FLAGS.map((f) => [f.name, f]));
const kebab = (s: string) => s.replaceAll("_", "-");
const camel = (s: string) => s.replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());

/** HfArgumentParser's reading of a boolean: yes/no, true/false, t/f, y/n, 1/0. */
export function parseBool(v: unknown, flag: string): boolean {
  if (typeof v === "boolean") return v;
  const s = String(v).toLowerCase();
  if (["yes", "true", "t", "y", "1"].includes(s)) return true;
  if (["no", "false", "f", "n", "0"].includes(s)) return false;
  throw new UserError(`${flag}: expected true or false, got ${JSON.stringify(v)}`);
}

function typed(f: OfficialFlag, raw: unknown, spelled: string): Value {
  switch (f.kind) {
    case "bool":
      return raw === undefined ? true : parseBool(raw, spelled);
    case "int": {
      const n = Number(raw);
      if (!Number.isInteger(n))
        throw new UserError(`${spelled}: expected a whole number, got ${JSON.stringify(raw)}`);
      return n;
    }
    case "float": {
      const n = Number(raw);
      if (!Number.isFinite(n))
        throw new UserError(`${spelled}: expected a number, got ${JSON.stringify(raw)}`);
      return n;
    }
    case "list":
      return Array.isArray(raw) ? raw.map(String) : [String(raw)];
    default:
      return String(raw);
  }
}

function emptySettings(): OfficialSettings {
  return { settings: {}, modelChecks: [], notes: [] };
}

function applyOne(
  out: OfficialSettings,
  f: OfficialFlag,
  raw: unknown,
  spelled: string,
  cwd: string,
) {
  f.apply(typed(f, raw, spelled), out, cwd, f.name);
}

/**
 * Registers every official argument on a command in both spellings. A kebab spelling that is
 * already tessera's own flag (e.g. --seed, --freeze-llm) is that flag: same meaning.
 */
export function addOfficialOptions(cmd: Command): Command {
  for (const f of FLAGS) {
    const arg = f.kind === "bool" ? "[bool]" : f.kind === "list" ? "<list>" : "<value>";
    const help = `official argument: ${f.help}`;
    for (const spelled of [f.name, kebab(f.name)]) {
      if (cmd.options.some((o) => o.long === `--${spelled}`)) continue;
      cmd.option(`--${spelled} ${arg}`, help);
    }
  }
  return cmd;
}

/**
 * The official arguments among commander's parsed options (either spelling). A kebab spelling
 * that is tessera's own flag maps to the same setting, so reading it here too changes nothing.
 */
export function officialFromOptions(
  opts: Record<string, unknown>,
  cwd = process.cwd(),
): OfficialSettings {
  const out = emptySettings();
  for (const f of FLAGS) {
    const keys = new Set([f.name, camel(kebab(f.name))]);
    for (const key of keys) {
      const v = opts[key];
      if (v !== undefined && v !== false)
        applyOne(out, f, v, key === f.name ? `--${f.name}` : `--${kebab(f.name)}`, cwd);
    }
  }
  return out;
}

/**
 * Official arguments as a script passes them (`--name value`, `--name=value`, a bare boolean),
 * in order; a later one wins. An argument tessera does not know is refused by name.
 */
export function officialFromArgs(
  args: string[],
  cwd: string,
  where: string,
  base: OfficialSettings = emptySettings(),
): OfficialSettings {
  const out = base;
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (!a.startsWith("--"))
      throw new UserError(`${where}: unexpected argument ${JSON.stringify(a)} (not --name value)`);
    const eq = a.indexOf("=");
    const name = (eq > 0 ? a.slice(2, eq) : a.slice(2)).replaceAll("-", "_");
    const f = BY_NAME.get(name);
    if (!f)
      throw new UserError(
        `${where}: --${name} is not an argument tessera can take from the official script. Remove it, or give the tessera setting it stands for (see tessera train --help).`,
      );
    let raw: unknown;
    if (eq > 0) raw = a.slice(eq + 1);
    else if (f.kind === "list") {
      const vals: string[] = [];
      while (i + 1 < args.length && !args[i + 1].startsWith("--")) vals.push(args[++i]);
      raw = vals;
    } else if (f.kind === "bool") {
      const next = args[i + 1];
      raw = next !== undefined && !next.startsWith("--") ? args[++i] : undefined;
    } else {
      if (i + 1 >= args.length) throw new UserError(`${where}: --${name} needs a value`);
      raw = args[++i];
    }
    applyOne(out, f, raw, `--${name}`, cwd);
  }
  return out;
}

/**
 * The defaults of the official script's arguments where tessera's differ: a script that leaves
 * them out trained with these, so an imported script does too.
 */
export const OFFICIAL_DEFAULTS: string[] = [
  "--freeze_backbone",
  "False",
  "--max_seq_length",
  "8192",
  "--use_packed_ds",
  "False",
  "--learning_rate",
  "5e-5",
  "--weight_decay",
  "0",
  "--warmup_ratio",
  "0",
  "--lr_scheduler_type",
  "linear",
  "--num_train_epochs",
  "3",
  "--per_device_train_batch_size",
  "8",
  "--gradient_accumulation_steps",
  "1",
  "--max_dynamic_patch",
  "12",
  "--conv_style",
  "internlm2-chat",
  "--force_image_size",
  "448",
  "--down_sample_ratio",
  "0.5",
  "--dynamic_image_size",
  "False",
  "--use_thumbnail",
  "False",
];

/** Checks the model settings that official flags named against the model folder. */
export function checkModelSettings(model: string, checks: ModelCheck[], where: string): void {
  if (!checks.length) return;
  let info: ModelInfo;
  try {
    info = loadModelInfo(model, { template: "-" });
  } catch (e) {
    throw new UserError(
      `${where}: ${checks.map((c) => `--${c.flag}`).join(", ")} can only be checked against the model's config.json: ${(e as Error).message}`,
    );
  }
  const seen = new Map<string, ModelCheck>();
  for (const c of checks) seen.set(c.flag, c); // the last one given wins
  for (const c of seen.values()) {
    const has = info[c.field];
    if (has !== c.value)
      throw new UserError(
        `${where}: --${c.flag} ${String(c.value)}: tessera takes this from the model (${info.dir}/config.json has ${String(has)}), and changing it would change the model. Remove --${c.flag} or set it to ${String(has)}.`,
      );
  }
}

/** What `tessera train --from-script` reads from an official shell script. */
export interface ImportedScript extends OfficialSettings {
  /** The launcher's own settings (torchrun or srun): processes per node, nodes, master. */
  launcher: Record<string, unknown>;
  /** The training script the launcher runs. */
  entry: string;
}

const ARITH = /^\$\(\((.*)\)\)$/s;

/** Integer shell arithmetic on numbers already substituted: + - * / % and parentheses. */
function arithmetic(expr: string, where: string): number {
  if (!/^[\d\s+\-*/%()]+$/.test(expr))
    throw new UserError(`${where}: cannot evaluate $((${expr}))`);
  const tokens = expr.match(/\d+|[-+*/%()]/g) ?? [];
  let i = 0;
  const atom = (): number => {
    const t = tokens[i++];
    if (t === "(") {
      const v = sum();
      i++;
      return v;
    }
    if (t === "-") return -atom();
    if (t === "+") return atom();
    const n = Number(t);
    if (!Number.isFinite(n)) throw new UserError(`${where}: cannot evaluate $((${expr}))`);
    return n;
  };
  const product = (): number => {
    let v = atom();
    while (tokens[i] === "*" || tokens[i] === "/" || tokens[i] === "%") {
      const op = tokens[i++];
      const r = atom();
      if (op !== "*" && r === 0) throw new UserError(`${where}: division by zero in $((${expr}))`);
      v = op === "*" ? v * r : op === "/" ? Math.trunc(v / r) : v % r;
    }
    return v;
  };
  const sum = (): number => {
    let v = product();
    while (tokens[i] === "+" || tokens[i] === "-")
      v = tokens[i++] === "+" ? v + product() : v - product();
    return v;
  };
  return sum();
}

/**
 * Reads an official fine-tuning shell script: its variable assignments (with `${VAR:-default}`,
 * `$((...))` and the caller's environment), then the `torchrun ...` or `srun ... python -u ...`
 * line that runs internvl_chat_finetune.py, and maps its arguments. Arguments the script leaves
 * out take the official script's defaults where tessera's differ (OFFICIAL_DEFAULTS).
 */
export async function importScript(
  path: string,
  env: Record<string, string | undefined> = process.env,
  cwd = process.cwd(),
): Promise<ImportedScript> {
  const { parse } = await import("shell-quote");
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    throw new UserError(`cannot read the script ${path}: ${(e as Error).message}`);
  }
  const vars = new Map<string, string>();
  const lookup = (key: string): string => {
    // shell-quote hands `${NAME:-default}` over whole.
    const m = /^([A-Za-z_][A-Za-z0-9_]*)(:?-)(.*)$/s.exec(key);
    const name = m ? m[1] : key;
    const value = vars.get(name) ?? env[name];
    if (m && (value === undefined || (m[2] === ":-" && value === ""))) return expand(m[3]);
    return value ?? "";
  };
  const expand = (s: string): string =>
    s.replace(/\$\{([^}]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)/g, (_, a, b) => lookup(a ?? b));
  // Logical lines: continuations joined, numbered by their first physical line.
  const physical = text.split("\n");
  const logical: { line: number; text: string }[] = [];
  for (let i = 0; i < physical.length; i++) {
    const start = i;
    let cur = physical[i];
    while (/\\\s*$/.test(cur) && i + 1 < physical.length)
      cur = `${cur.replace(/\\\s*$/, " ")}${physical[++i]}`;
    logical.push({ line: start + 1, text: cur });
  }
  for (const { line, text: l } of logical) {
    const where = `${path}:${line}`;
    const t = l.trim();
    if (!t || t.startsWith("#")) continue;
    const assign = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$/s.exec(t);
    if (assign) {
      const [, name, rhs] = assign;
      const arith = ARITH.exec(rhs.trim());
      if (arith) {
        // Inside $((...)) a bare name is a variable (unset: 0).
        const expr = expand(arith[1]).replace(/[A-Za-z_][A-Za-z0-9_]*/g, (n) => lookup(n) || "0");
        vars.set(name, String(arithmetic(expr, where)));
      } else {
        const words = parse(rhs, (k) => lookup(k));
        vars.set(name, words.filter((w): w is string => typeof w === "string").join(" "));
      }
      continue;
    }
    const words = parse(t, (k) => lookup(k));
    const cut = words.findIndex((w) => typeof w !== "string");
    const argv = (cut < 0 ? words : words.slice(0, cut)) as string[];
    // `2>&1`: the file descriptor before a redirection is not an argument.
    const op = cut < 0 ? undefined : (words[cut] as { op?: string }).op;
    if (op?.startsWith(">") && /^\d+$/.test(argv[argv.length - 1] ?? "")) argv.pop();
    // Leading NAME=value words are the command's environment.
    while (argv.length && /^[A-Za-z_][A-Za-z0-9_]*=/.test(argv[0])) argv.shift();
    const launcherAt = argv.findIndex(
      (w) => w === "torchrun" || w === "srun" || /^python3?$/.test(w),
    );
    if (launcherAt < 0) continue;
    const scriptAt = argv.findIndex((w) => w.endsWith(".py"));
    if (scriptAt < 0) continue;
    const entry = argv[scriptAt];
    if (!/internvl_chat_(finetune|pretrain|mpo)\.py$/.test(entry))
      throw new UserError(
        `${where}: ${entry} is not the official fine-tuning script (internvl_chat_finetune.py) or the MPO one (internvl_chat_mpo.py); tessera imports those`,
      );
    const launcher = launcherSettings(argv.slice(launcherAt, scriptAt), where);
    const args = argv.slice(scriptAt + 1);
    const given = new Set(
      args
        .filter((a) => a.startsWith("--"))
        .map((a) => a.slice(2).split("=")[0].replaceAll("-", "_")),
    );
    const defaults: string[] = [];
    for (let i = 0; i < OFFICIAL_DEFAULTS.length; i += 2)
      if (!given.has(OFFICIAL_DEFAULTS[i].slice(2)))
        defaults.push(OFFICIAL_DEFAULTS[i], OFFICIAL_DEFAULTS[i + 1]);
    let out: OfficialSettings;
    try {
      out = officialFromArgs(defaults, cwd, where);
    } catch (e) {
      if (!(e instanceof UserError)) throw e;
      throw new UserError(
        `${where}: the script leaves this argument at the official script's default, which tessera cannot honour: ${e.message}`,
      );
    }
    officialFromArgs(args, cwd, where, out);
    // The MPO script trains on pairs with the recipe's loss unless its arguments say otherwise.
    if (/internvl_chat_mpo\.py$/.test(entry)) out.settings.method = "mpo";
    return { ...out, launcher, entry };
  }
  throw new UserError(
    `${path}: no \`torchrun ... internvl_chat_finetune.py\` or \`srun ... python -u internvl_chat_finetune.py\` line found`,
  );
}

/** torchrun's and srun's options that size the run; the others are the cluster's business. */
function launcherSettings(argv: string[], where: string): Record<string, unknown> {
  const opts = new Map<string, string>();
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith("-")) continue;
    const eq = a.indexOf("=");
    if (eq > 0) opts.set(a.slice(0, eq), a.slice(eq + 1));
    else if (i + 1 < argv.length && !argv[i + 1].startsWith("-")) opts.set(a, argv[++i]);
    else opts.set(a, "");
  }
  const int = (k: string): number | undefined => {
    const v = opts.get(k);
    if (v === undefined || v === "") return undefined;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0)
      throw new UserError(`${where}: ${k} ${v}: expected a whole number`);
    return n;
  };
  const out: Record<string, unknown> = {};
  if (argv[0] === "torchrun") {
    const nproc = int("--nproc_per_node") ?? int("--nproc-per-node");
    if (nproc !== undefined) out.nproc_per_node = nproc;
    const nnodes = int("--nnodes");
    if (nnodes !== undefined) out.nnodes = nnodes;
    const rank = int("--node_rank") ?? int("--node-rank");
    if (rank !== undefined) out.node_rank = rank;
    const addr = opts.get("--master_addr") ?? opts.get("--master-addr");
    if (addr) out.master_addr = addr;
    const port = int("--master_port") ?? int("--master-port");
    if (port !== undefined) out.master_port = port;
  } else if (argv[0] === "srun") {
    const perNode = int("--ntasks-per-node");
    const tasks = int("--ntasks") ?? int("-n");
    const nodes = int("--nodes") ?? int("-N");
    if (perNode !== undefined) out.nproc_per_node = perNode;
    if (nodes !== undefined) out.nnodes = nodes;
    else if (tasks !== undefined && perNode) out.nnodes = Math.max(1, Math.ceil(tasks / perNode));
  }
  return out;
}
