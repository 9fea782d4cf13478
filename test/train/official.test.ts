/**
 * The official fine-tuning script's arguments on `tessera train`: each maps to the same
 * resolved config as its tessera spelling, in both of its own spellings; what tessera cannot
 * honour is refused by name; an official shell script imports to a config.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Command } from "commander";
import { afterAll, describe, expect, it } from "vitest";
import { parse as parseYaml } from "yaml";
import { addConfigOptions, flagsToConfig, resolveConfig } from "../../src/train/config.ts";
import { importScript } from "../../src/train/official.ts";
import { PACKAGE_ROOT } from "../../src/util/paths.ts";
import { makeModelFolder } from "../helpers/model-folder.ts";
import { removeTemp, track } from "../plan/helpers.ts";

afterAll(removeTemp);

const dir = track(mkdtempSync(join(tmpdir(), "tessera-official-flags-")));
// An InternVL2-shaped config: 448-pixel tiles, patch 14, downsample 0.5, thumbnails on.
const model = track(
  makeModelFolder({
    tokenizerFiles: "none",
    imageSize: 448,
    patchSize: 14,
    downsampleRatio: 0.5,
    maxDynamicPatch: 12,
    useThumbnail: true,
    dynamicImageSize: true,
  }),
);
const meta = join(dir, "meta.json");
const stage1 = join(dir, "ds_stage1.json");
writeFileSync(stage1, JSON.stringify({ zero_optimization: { stage: 1 } }));

function resolved(argv: string[]) {
  const cmd = addConfigOptions(new Command("train").exitOverride().argument("[config]"));
  cmd.parse(["--model", model, "--meta", meta, ...argv], { from: "user" });
  // Every value went to its flag: none was taken for the config file.
  expect(cmd.args).toEqual([]);
  return resolveConfig(undefined, flagsToConfig(cmd.opts(), dir), dir);
}

/** The kebab spelling of the official arguments in an argv (values untouched). */
const kebab = (argv: string[]) =>
  argv.map((a) => (a.startsWith("--") ? a.replaceAll("_", "-") : a));

const TABLE: [string[], string[]][] = [
  [
    ["--model_name_or_path", model],
    ["--model", model],
  ],
  [
    ["--meta_path", meta],
    ["--meta", meta],
  ],
  [
    ["--output_dir", "out"],
    ["--work-dir", "out"],
  ],
  [
    ["--conv_style", "Hermes-2"],
    ["--template", "Hermes-2"],
  ],
  [["--freeze_backbone", "True"], ["--freeze-vit"]],
  [["--freeze_backbone", "False"], ["--no-freeze-vit"]],
  [["--freeze_llm", "True"], ["--freeze-llm"]],
  [["--freeze_mlp", "True"], ["--freeze-mlp"]],
  [["--unfreeze_vit_layers", "0"], []],
  [["--unfreeze_lm_head", "False"], []],
  [
    ["--use_backbone_lora", "8"],
    ["--vit-lora-rank", "8"],
  ],
  [
    ["--use_llm_lora", "16"],
    ["--llm-lora-rank", "16"],
  ],
  [["--vision_select_layer", "-1"], []],
  [["--force_image_size", "448"], []],
  [["--down_sample_ratio", "0.5"], []],
  [
    ["--max_dynamic_patch", "6"],
    ["--max-dynamic-patch", "6"],
  ],
  [["--min_dynamic_patch", "1"], []],
  [["--dynamic_image_size", "True"], []],
  [["--use_thumbnail", "True"], []],
  [
    ["--max_seq_length", "2048"],
    ["--max-length", "2048"],
  ],
  [
    ["--use_packed_ds", "True", "--max_packed_tokens", "8192"],
    ["--packing", "soft", "--pack-max-length", "8192"],
  ],
  [
    ["--use_packed_ds", "False"],
    ["--packing", "none"],
  ],
  [["--grad_checkpoint", "False"], ["--no-gradient-checkpointing"]],
  [["--drop_path_rate", "0.0"], []],
  [
    ["--loss_reduction", "square"],
    ["--loss-reduction", "square"],
  ],
  [
    ["--learning_rate", "2e-5"],
    ["--lr", "2e-5"],
  ],
  [
    ["--weight_decay", "0.01"],
    ["--weight-decay", "0.01"],
  ],
  [
    ["--warmup_ratio", "0.1"],
    ["--warmup-ratio", "0.1"],
  ],
  [["--lr_scheduler_type", "cosine"], []],
  [
    ["--num_train_epochs", "2"],
    ["--epochs", "2"],
  ],
  [
    ["--max_steps", "30"],
    ["--steps", "30"],
  ],
  [["--max_steps", "-1"], []],
  [
    ["--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2"],
    ["--micro-batch-size", "4", "--global-batch-size", "8"],
  ],
  [
    [
      "--nproc-per-node",
      "2",
      "--per_device_train_batch_size",
      "2",
      "--gradient_accumulation_steps",
      "4",
    ],
    ["--nproc-per-node", "2", "--micro-batch-size", "2", "--global-batch-size", "16"],
  ],
  [
    ["--save_steps", "200"],
    ["--checkpoint-interval", "200"],
  ],
  [
    ["--save_total_limit", "1"],
    ["--checkpoint-keep", "1"],
  ],
  [
    ["--logging_steps", "5"],
    ["--log-interval", "5"],
  ],
  [
    ["--bf16", "True"],
    ["--precision", "bf16"],
  ],
  [
    ["--seed", "7"],
    ["--seed", "7"],
  ],
  [
    ["--report_to", "tensorboard"],
    ["--report-to", "tensorboard"],
  ],
  [
    ["--deepspeed", "zero_stage3_config.json"],
    ["--shard-strategy", "zero3"],
  ],
  [
    ["--deepspeed", stage1],
    ["--shard-strategy", "zero2"],
  ],
  [
    ["--dataloader_num_workers", "4"],
    ["--num-workers", "4"],
  ],
  [
    ["--group_by_length", "True"],
    ["--sampler", "length"],
  ],
  [["--overwrite_output_dir", "True", "--do_train", "True"], []],
];

describe("official arguments on tessera train", () => {
  it.each(TABLE)("%j resolves as %j, in both spellings", (official, own) => {
    const want = resolved(own);
    expect(resolved(official)).toEqual(want);
    expect(resolved(kebab(official))).toEqual(want);
  });

  it("changes what it names: the table is not trivially equal", () => {
    const base = resolved([]);
    expect(resolved(["--use_llm_lora", "16"]).llm_lora_rank).toBe(16);
    expect(resolved(["--deepspeed", "zero_stage3_config.json"]).shard_strategy).toBe("zero3");
    expect(resolved(["--learning_rate", "2e-5"]).lr).not.toBe(base.lr);
  });

  it.each([
    [["--unfreeze_vit_layers", "4"], /--unfreeze_vit_layers 4: .*--freeze_backbone False/],
    [["--unfreeze_lm_head", "True"], /--unfreeze_lm_head true: /],
    [["--drop_path_rate", "0.4"], /--drop_path_rate 0\.4: .*drop path/],
    [["--vision_select_layer", "-4"], /--vision_select_layer -4: .*last layer/],
    [["--force_image_size", "224"], /--force_image_size 224: .*config\.json has 448/],
    [["--down-sample-ratio", "0.25"], /--down_sample_ratio 0\.25: .*has 0\.5/],
    [["--use_thumbnail", "False"], /--use_thumbnail false: .*has true/],
    [["--lr_scheduler_type", "linear"], /--lr_scheduler_type linear: .*cosine/],
    [["--fp16", "True"], /--fp16 true: .*--bf16 True/],
    [["--use_data_resampling", "True"], /--use_data_resampling true: .*repeat_time/],
    [["--report_to", "all"], /--report_to all: /],
    [["--deepspeed", "ds.json"], /--deepspeed ds\.json: cannot tell its ZeRO stage/],
  ])("refuses %j by name, saying what to do", (argv, msg) => {
    expect(() => resolved(argv)).toThrow(msg);
  });
});

describe("tessera train --from-script", () => {
  // A script in the official form: variables with defaults, arithmetic, continuations, a pipe.
  const script = join(dir, "finetune_lora.sh");
  writeFileSync(
    script,
    `set -x

GPUS=\${GPUS:-4}
BATCH_SIZE=\${BATCH_SIZE:-32}
PER_DEVICE_BATCH_SIZE=\${PER_DEVICE_BATCH_SIZE:-2}
GRADIENT_ACC=$((BATCH_SIZE / PER_DEVICE_BATCH_SIZE / GPUS))

export PYTHONPATH="\${PYTHONPATH}:$(pwd)"
export MASTER_PORT=34229
OUTPUT_DIR='work_dirs/lora_run'

if [ ! -d "$OUTPUT_DIR" ]; then
  mkdir -p "$OUTPUT_DIR"
fi

# 4 GPUs, 2 per GPU, accumulation 4: 32 per step
torchrun \\
  --nnodes=1 \\
  --node_rank=0 \\
  --master_addr=127.0.0.1 \\
  --nproc_per_node=\${GPUS} \\
  --master_port=\${MASTER_PORT} \\
  internvl/train/internvl_chat_finetune.py \\
  --model_name_or_path "${model}" \\
  --conv_style "Hermes-2" \\
  --output_dir \${OUTPUT_DIR} \\
  --meta_path "${meta}" \\
  --overwrite_output_dir True \\
  --force_image_size 448 \\
  --max_dynamic_patch 6 \\
  --down_sample_ratio 0.5 \\
  --drop_path_rate 0.0 \\
  --freeze_llm True \\
  --freeze_mlp True \\
  --freeze_backbone True \\
  --use_llm_lora 16 \\
  --vision_select_layer -1 \\
  --dataloader_num_workers 4 \\
  --bf16 True \\
  --num_train_epochs 1 \\
  --per_device_train_batch_size \${PER_DEVICE_BATCH_SIZE} \\
  --gradient_accumulation_steps \${GRADIENT_ACC} \\
  --evaluation_strategy "no" \\
  --save_strategy "steps" \\
  --save_steps 200 \\
  --save_total_limit 1 \\
  --learning_rate 4e-5 \\
  --weight_decay 0.01 \\
  --warmup_ratio 0.03 \\
  --lr_scheduler_type "cosine" \\
  --logging_steps 1 \\
  --max_seq_length 4096 \\
  --do_train True \\
  --grad_checkpoint True \\
  --group_by_length True \\
  --dynamic_image_size True \\
  --use_thumbnail True \\
  --ps_version 'v2' \\
  --deepspeed "zero_stage1_config.json" \\
  --report_to "tensorboard" \\
  2>&1 | tee -a "\${OUTPUT_DIR}/training_log.txt"
`,
  );
  const equivalent = [
    "--nproc-per-node",
    "4",
    "--master-port",
    "34229",
    "--template",
    "Hermes-2",
    "--work-dir",
    "work_dirs/lora_run",
    "--max-dynamic-patch",
    "6",
    "--freeze-llm",
    "--freeze-mlp",
    "--freeze-vit",
    "--llm-lora-rank",
    "16",
    "--num-workers",
    "4",
    "--precision",
    "bf16",
    "--epochs",
    "1",
    "--micro-batch-size",
    "2",
    "--global-batch-size",
    "32",
    "--checkpoint-interval",
    "200",
    "--checkpoint-keep",
    "1",
    "--lr",
    "4e-5",
    "--weight-decay",
    "0.01",
    "--warmup-ratio",
    "0.03",
    "--log-interval",
    "1",
    "--max-length",
    "4096",
    "--gradient-checkpointing",
    "--sampler",
    "length",
    "--packing",
    "none",
    "--shard-strategy",
    "zero2",
    "--report-to",
    "tensorboard",
  ];

  it("imports the torchrun form to the config its tessera flags give; the environment's GPUS wins", async () => {
    const s = await importScript(script, {}, dir);
    expect(s.launcher).toMatchObject({ nproc_per_node: 4, nnodes: 1, master_port: 34229 });
    expect(s.gradAccum).toBe(4);
    expect(s.notes.join("\n")).toMatch(/--deepspeed zero_stage1_config\.json \(ZeRO stage 1\)/);

    const r = spawnSync(
      process.execPath,
      [join(PACKAGE_ROOT, "bin", "tessera.mjs"), "train", "--from-script", script],
      { cwd: dir, encoding: "utf8", env: { ...process.env, GPUS: "" } },
    );
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^# tessera config from .*finetune_lora\.sh\n# --deepspeed/);
    expect(parseYaml(r.stdout)).toEqual(JSON.parse(JSON.stringify(resolved(equivalent))));

    // GPUS=2 from the environment, as the shell would take it: accumulation 32 / 2 / 2 = 8.
    const two = await importScript(script, { GPUS: "2" }, dir);
    expect(two.launcher.nproc_per_node).toBe(2);
    expect(two.gradAccum).toBe(8);
  });

  it("imports the srun form and applies the official defaults the script leaves out", async () => {
    const srun = join(dir, "finetune_srun.sh");
    writeFileSync(
      srun,
      `PARTITION=\${PARTITION:-"gpu"}
GPUS=\${GPUS:-16}
GPUS_PER_NODE=\${GPUS_PER_NODE:-8}
SRUN_ARGS=\${SRUN_ARGS:-""}
srun -p \${PARTITION} \\
  --gres=gpu:\${GPUS_PER_NODE} \\
  --ntasks=\${GPUS} \\
  --ntasks-per-node=\${GPUS_PER_NODE} \\
  --kill-on-bad-exit=1 \\
  \${SRUN_ARGS} \\
  python -u internvl/train/internvl_chat_finetune.py \\
  --model_name_or_path ${model} --meta_path ${meta} --output_dir out \\
  --lr_scheduler_type cosine --dynamic_image_size True --use_thumbnail True --bf16 True
`,
    );
    const s = await importScript(srun, {}, dir);
    expect(s.launcher).toEqual({ nproc_per_node: 8, nnodes: 2 });
    // The official script's defaults where tessera's differ.
    expect(s.settings).toMatchObject({
      freeze_vit: false,
      max_length: 8192,
      packing: "none",
      lr: 5e-5,
      weight_decay: 0,
      warmup_ratio: 0,
      epochs: 3,
      micro_batch_size: 8,
      max_dynamic_patch: 12,
      template: "internlm2-chat",
    });
    expect(s.gradAccum).toBe(1);
  });

  it("refuses an argument it does not know, and a default it cannot honour, by name", async () => {
    const bad = join(dir, "bad.sh");
    writeFileSync(
      bad,
      `torchrun --nproc_per_node=1 internvl/train/internvl_chat_finetune.py --model_name_or_path ${model} --meta_path ${meta} --lr_scheduler_type cosine --dynamic_image_size True --use_thumbnail True --use_liger True\n`,
    );
    await expect(importScript(bad, {}, dir)).rejects.toThrow(
      /bad\.sh:1: --use_liger is not an argument/,
    );
    writeFileSync(
      bad,
      `torchrun --nproc_per_node=1 internvl/train/internvl_chat_finetune.py --model_name_or_path ${model} --meta_path ${meta}\n`,
    );
    await expect(importScript(bad, {}, dir)).rejects.toThrow(
      /official script's default.*--lr_scheduler_type linear/,
    );
  });
});
