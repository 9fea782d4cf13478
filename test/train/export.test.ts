/** `tessera export`: what a path is (checkpoint, work dir, model folder), and a model folder
 * exported through the engine in the native format with a chosen dtype. */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { exportModel, resolveExportSource } from "../../src/cli/export.ts";
import { ensureEngine } from "../../src/engine/setup.ts";
import { UserError } from "../../src/util/errors.ts";
import { buildTinyModel } from "../helpers/tiny-model.ts";

let python: string;
let root: string;
let model: string;

beforeAll(async () => {
  python = await ensureEngine({ quiet: true });
  root = mkdtempSync(join(tmpdir(), "tessera-export-"));
  model = join(root, "model");
  await buildTinyModel(python, model);
}, 240_000);

describe("tessera export", () => {
  it("finds a run's checkpoint, its latest one, or a model folder", () => {
    const work = join(root, "run");
    const ckpt = join(work, "checkpoints", "step-00000007");
    mkdirSync(ckpt, { recursive: true });
    expect(() => resolveExportSource(work, "native")).toThrow(/no complete checkpoint/);
    writeFileSync(join(ckpt, "meta.json"), "{}");
    expect(() => resolveExportSource(ckpt, "native")).toThrow(/config\.yaml is missing/);
    writeFileSync(join(work, "config.yaml"), `model: ${model}\nllm_lora_rank: 4\n`);
    for (const path of [ckpt, work]) {
      const s = resolveExportSource(path, "native");
      expect(s.checkpoint).toBe(ckpt);
      expect(s.model).toBe(model);
      expect(s.config?.llm_lora_rank).toBe(4);
      expect(s.defaultOut).toBe(join(work, "export-step-7-native"));
    }
    expect(resolveExportSource(model, "original")).toEqual({ model });
    expect(() => resolveExportSource(join(root, "nothing"), "native")).toThrow(UserError);
    expect(() => resolveExportSource(root, "native")).toThrow(/neither a checkpoint/);
  });

  it("writes a model folder natively in bf16, and refuses what cannot be", async () => {
    const out = join(root, "native");
    const r = await exportModel(model, { python, format: "native", dtype: "bf16", out });
    expect(r.dir).toBe(out);
    expect(r.dtype).toBe("bfloat16");
    const cfg = JSON.parse(readFileSync(join(out, "config.json"), "utf8"));
    expect(cfg.model_type).toBe("internvl");
    for (const f of ["processor_config.json", "preprocessor_config.json", "tokenizer.json"])
      expect(existsSync(join(out, f)), f).toBe(true);
    await expect(exportModel(model, { python, format: "native", out })).rejects.toThrow(
      /exists and is not empty/,
    );
    await expect(
      exportModel(model, { python, format: "adapter", out: join(root, "ad") }),
    ).rejects.toThrow(/no adapter/);
    await expect(exportModel(model, { python, format: "native" })).rejects.toThrow(/--out/);
  }, 240_000);
});
