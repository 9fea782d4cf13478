import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Command } from "commander";
import { describe, expect, it } from "vitest";
import {
  accumulationSteps,
  addConfigOptions,
  CONFIG_KEYS,
  flagsToConfig,
  resolveConfig,
} from "../../src/train/config.ts";
import { UserError } from "../../src/util/errors.ts";

function parseFlags(argv: string[]) {
  const cmd = addConfigOptions(new Command("train").exitOverride().argument("[config]"));
  cmd.parse(argv, { from: "user" });
  return flagsToConfig(cmd.opts());
}

const dir = mkdtempSync(join(tmpdir(), "tessera-config-"));
function file(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

describe("train config", () => {
  it("fills defaults and derived settings, and resolves paths against the config file", () => {
    const p = file("a.yaml", "model: models/tiny\nmeta: data/meta.json\nwork_dir: out\n");
    const c = resolveConfig(p, {});
    expect(c.model).toBe(join(dir, "models/tiny"));
    expect(c.meta).toBe(join(dir, "data/meta.json"));
    expect(c.cache_dir).toBe(join(dir, "out", "cache"));
    expect(c.pack_max_length).toBe(c.max_length);
    expect(c.freeze_vit).toBe(true);
    expect(c.shard_strategy).toBe("zero2");
  });

  it("rejects unknown keys, naming the key and the file", () => {
    const p = file("b.yaml", "model: m\nmeta: x.json\nlearning_rate: 0.1\n");
    expect(() => resolveConfig(p, {})).toThrow(UserError);
    expect(() => resolveConfig(p, {})).toThrow(/b\.yaml: unknown setting "learning_rate"/);
  });

  it("names the field of a wrongly typed value", () => {
    const p = file("c.yaml", "model: m\nmeta: x.json\nlr: fast\n");
    expect(() => resolveConfig(p, {})).toThrow(/c\.yaml: lr:/);
  });

  it("reads the evaluation and logger settings; save_best needs held-out data", () => {
    const p = file(
      "e.yaml",
      "model: m\nmeta: x.json\neval_meta: data/held.jsonl\nsave_best: eval_loss\n",
    );
    const c = resolveConfig(
      p,
      parseFlags(["--report-to", "tensorboard,wandb", "--eval-interval", "5"]),
    );
    expect(c.eval_meta).toBe(join(dir, "data/held.jsonl"));
    expect(c.eval_interval).toBe(5);
    expect(c.report_to).toEqual(["tensorboard", "wandb"]);
    expect(() =>
      resolveConfig(undefined, { model: "m", meta: "x", save_best: "eval_loss" }),
    ).toThrow(/save_best eval_loss needs eval_meta/);
    expect(() =>
      resolveConfig(undefined, {
        model: "m",
        meta: "x",
        eval_meta: "h",
        save_best: "eval_exact_match",
      }),
    ).toThrow(/eval_generate > 0/);
    expect(() =>
      resolveConfig(
        undefined,
        parseFlags(["--model", "m", "--meta", "x", "--report-to", "mlflow"]),
      ),
    ).toThrow(/report_to/);
  });

  it("requires model and meta", () => {
    expect(() => resolveConfig(undefined, {})).toThrow(/model and meta required/);
  });

  it("has one flag per setting; flags override the file", () => {
    const cmd = addConfigOptions(new Command("train"));
    for (const key of CONFIG_KEYS)
      expect(cmd.options.some((o) => o.long === `--${key.replaceAll("_", "-")}`)).toBe(true);
    const p = file("d.yaml", "model: m\nmeta: x.json\nlr: 0.001\nfreeze_vit: true\n");
    const flags = parseFlags([
      "--lr",
      "0.5",
      "--no-freeze-vit",
      "--llm-lora-targets",
      "q_proj, v_proj",
    ]);
    const c = resolveConfig(p, flags);
    expect(c.lr).toBe(0.5);
    expect(c.freeze_vit).toBe(false);
    expect(c.llm_lora_targets).toEqual(["q_proj", "v_proj"]);
  });

  it("maps the seed launcher's flags onto the same settings", () => {
    const flags = parseFlags([
      "--model",
      "m",
      "--meta",
      "x.json",
      "--freeze-vit",
      "--global-batch-size",
      "32",
      "--mirco-batch-size",
      "2",
      "--lr",
      "2e-5",
      "--warmup-ratio",
      "0.05",
      "--checkpoint-interval",
      "100",
      "--checkpoint-drop-optimizer",
      "--shard-strategy",
      "zero3",
      "--dset-pack",
      "--group-by-length",
      "--max-length",
      "2048",
      "--pack-max-length",
      "8192",
      "--dset-cache-dir",
      "/tmp/cache",
    ]);
    const c = resolveConfig(undefined, flags, "/work");
    expect(c).toMatchObject({
      freeze_vit: true,
      global_batch_size: 32,
      micro_batch_size: 2,
      lr: 2e-5,
      warmup_ratio: 0.05,
      checkpoint_interval: 100,
      checkpoint_drop_optimizer: true,
      shard_strategy: "zero3",
      packing: "soft",
      sampler: "length",
      max_length: 2048,
      pack_max_length: 8192,
      cache_dir: "/tmp/cache",
      model: "/work/m",
    });
    expect(accumulationSteps(c)).toBe(16);
    expect(
      resolveConfig(
        undefined,
        parseFlags(["--model", "m", "--meta", "x", "--micro-batch-size", "4"]),
      ).micro_batch_size,
    ).toBe(4);
    expect(
      resolveConfig(undefined, parseFlags(["--model", "m", "--meta", "x", "--concat-before-pack"]))
        .packing,
    ).toBe("concat");
    expect(
      resolveConfig(
        undefined,
        parseFlags(["--model", "m", "--meta", "x", "--group-by-modality-length"]),
      ).sampler,
    ).toBe("modality_length");
  });

  it("takes --sp-size and --ring-size as settings", () => {
    expect(parseFlags(["--sp-size", "2", "--ring-size", "4"])).toEqual({
      sp_size: 2,
      ring_size: 4,
    });
  });

  it("rejects a shard choice outside zero2|zero3|ddp and inconsistent batch sizes", () => {
    expect(() =>
      resolveConfig(
        undefined,
        parseFlags(["--model", "m", "--meta", "x", "--shard-strategy", "zero1"]),
      ),
    ).toThrow(/shard_strategy/);
    expect(() =>
      resolveConfig(
        undefined,
        parseFlags([
          "--model",
          "m",
          "--meta",
          "x",
          "--global-batch-size",
          "6",
          "--micro-batch-size",
          "4",
        ]),
      ),
    ).toThrow(/multiple of micro_batch_size/);
  });

  it("refuses a run where nothing learns", () => {
    expect(() =>
      resolveConfig(
        undefined,
        parseFlags(["--model", "m", "--meta", "x", "--freeze-vit", "--freeze-llm", "--freeze-mlp"]),
      ),
    ).toThrow(/nothing would learn/);
  });
});
