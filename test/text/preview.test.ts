import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Command } from "commander";
import { describe, expect, it } from "vitest";
import { addModelOptions, modelContextFromOptions } from "../../src/text/options.ts";
import { renderPreview } from "../../src/text/preview.ts";
import { PACKAGE_ROOT } from "../../src/util/paths.ts";
import { makeModelFolder } from "../helpers/model-folder.ts";

const record = {
  id: 0,
  conversations: [
    { from: "human" as const, value: "<image>\nwhat is the date?" },
    { from: "gpt" as const, value: "1/8/93" },
  ],
  images: ["1.png"],
  imageWh: [[640, 480]] as [number, number][],
  extra: {},
};

describe("data preview", () => {
  const model = makeModelFolder({ vocab: "qwen2", maxDynamicPatch: 12 });

  it("collapses image tokens, shows special tokens and marks learned spans", async () => {
    const pc = await modelContextFromOptions({ model, maxDynamicPatch: "6" });
    const text = await renderPreview(record, pc, { color: false });
    expect(text).toContain("<img><IMG_CONTEXT>×1792 (7 tiles: 3×2 + thumbnail)</img>");
    expect(text).toContain("<|im_start|>assistant\n«1/8/93<|im_end|>»");
    expect(text).toMatch(
      /total tokens \d+, image context tokens 1792 \(1 image, 7 tiles\), learned tokens \d+/,
    );
    const coloured = await renderPreview(record, pc, { color: true });
    expect(coloured).toContain("\x1b[32m1/8/93<|im_end|>\x1b[0m");
  });

  it("shares --model/--max-dynamic-patch/--template with every data command", async () => {
    const cmd = addModelOptions(new Command("x").exitOverride());
    cmd.parse(["--model", model, "--max-dynamic-patch", "2", "--template", "internvl2_5"], {
      from: "user",
    });
    const { model: info, ctx } = await modelContextFromOptions(cmd.opts());
    expect([info.maxDynamicPatch, ctx.template.name]).toEqual([2, "internvl2_5"]);
    await expect(modelContextFromOptions({ model, maxDynamicPatch: "0" })).rejects.toThrow(
      /--max-dynamic-patch must be a positive/,
    );
    expect(() =>
      addModelOptions(new Command("y").exitOverride()).parse([], { from: "user" }),
    ).toThrow(/--model/);
  });

  it("runs as `tessera data preview --json` with ids and labels", () => {
    const dir = mkdtempSync(join(tmpdir(), "tessera-preview-"));
    mkdirSync(join(dir, "imgs"));
    writeFileSync(
      join(dir, "meta.json"),
      JSON.stringify({
        docs: { media_root: "imgs/", annotation: "a.jsonl" },
        // The same lines with the dataset's own tile budget, which prepare would plan with.
        small: { media_root: "imgs/", annotation: "a.jsonl", max_dynamic_patch: 6 },
      }),
    );
    const line = {
      id: 0,
      image: "1.png",
      conversations: record.conversations,
      image_wh: record.imageWh,
    };
    writeFileSync(
      join(dir, "a.jsonl"),
      `${JSON.stringify({
        conversations: [
          { from: "human", value: "hi" },
          { from: "gpt", value: "yo" },
        ],
      })}\n${JSON.stringify(line)}\n`,
    );
    const run = (...args: string[]) => runOn("docs", ...args);
    const runOn = (dataset: string, ...args: string[]) =>
      spawnSync(
        process.execPath,
        [
          join(PACKAGE_ROOT, "bin", "tessera.mjs"),
          "data",
          "preview",
          join(dir, "meta.json"),
          "--model",
          model,
          "--dataset",
          dataset,
          ...args,
        ],
        {
          encoding: "utf8",
        },
      );
    const r = run("--index", "1", "--json");
    expect(r.stderr).toBe("");
    const j = JSON.parse(r.stdout);
    expect(j.images[0]).toMatchObject({
      cols: 4,
      rows: 3,
      thumbnail: true,
      tiles: 13,
      path: join(dir, "imgs", "1.png"),
    });
    expect(j.imageContextTokens).toBe(13 * 256);
    expect(j.inputIds).toHaveLength(j.length);
    expect(j.labels.filter((x: number) => x !== -100)).toHaveLength(j.learned);
    const small = JSON.parse(runOn("small", "--index", "1", "--json").stdout);
    expect(small.images[0]).toMatchObject({ cols: 3, rows: 2, thumbnail: true, tiles: 7 });
    const past = run("--index", "7");
    expect(past.status).not.toBe(0);
    expect(past.stderr).toMatch(/has 2 records; --index 7 is past the end/);
  });
});
