import { spawnSync } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { PACKAGE_ROOT } from "../../src/util/paths.ts";
import { makeModelFolder } from "../helpers/model-folder.ts";
import { removeTemp, track, writeDatasets } from "./helpers.ts";

function tessera(args: string[]) {
  const r = spawnSync(process.execPath, [join(PACKAGE_ROOT, "bin/tessera.mjs"), ...args], {
    encoding: "utf8",
    timeout: 120_000,
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

describe("data prepare / data plan", () => {
  const { root, meta } = writeDatasets([
    { name: "chat", n: 120, kind: "text" },
    { name: "vqa", n: 80, kind: "image", repeat: 3 },
    { name: "docs", n: 40, kind: "multi", repeat: 0.5 },
  ]);
  const model = track(makeModelFolder({ vocab: "qwen2", maxDynamicPatch: 6 }));

  it("data plan META --model … --json prints samples, packs, fill_ratio and steps", () => {
    const r = tessera([
      "data",
      "plan",
      meta,
      "--model",
      model,
      "--pack-max-length",
      "8192",
      "--world-size",
      "2",
      "--workers",
      "0",
      "--json",
      "--out",
      join(root, "plan"),
    ]);
    expect(r.err).toBe("");
    expect(r.code).toBe(0);
    const j = JSON.parse(r.out);
    expect(j.samples).toBe(120 + 240 + 20);
    expect(j.packs).toBeGreaterThan(0);
    expect(j.fill_ratio).toBeGreaterThan(0.5);
    expect(j.fill_ratio).toBeLessThanOrEqual(1);
    expect(j.steps).toBe(Math.ceil(j.packs / 2));
    expect(j.fingerprint).toMatch(/^[0-9a-f]{64}$/);
    expect(existsSync(join(root, "plan", "plan.json"))).toBe(true);
    expect(existsSync(join(root, ".tessera-cache", "manifest.json"))).toBe(true);
  });

  it("data plan --sp-size 2 --ring-size 2 shows what each rank of a row holds", () => {
    const r = tessera([
      "data",
      "plan",
      meta,
      "--model",
      model,
      "--pack-max-length",
      "8192",
      "--world-size",
      "8",
      "--sp-size",
      "2",
      "--ring-size",
      "2",
      "--workers",
      "0",
    ]);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/sequence parallel: sp 2 × ring 2 = 4 ranks per row · data parallel 2/);
    expect(r.out).toMatch(/per rank and row: tokens mean [\d,]+, max [\d,]+/);
    // row 0: four shards of tokens/learned/tiles that add up to the row's tokens
    const m = r.out.match(/row 0: ([\d,]+) tokens → ranks (.*) \(tokens/);
    expect(m).not.toBeNull();
    const shards = m![2].split(" | ").map((x) => Number(x.split("t/")[0]));
    expect(shards).toHaveLength(4);
    expect(shards.reduce((a, b) => a + b, 0)).toBe(Number(m![1].replaceAll(",", "")));
    const bad = tessera([
      "data",
      "plan",
      meta,
      "--model",
      model,
      "--pack-max-length",
      "8192",
      "--world-size",
      "6",
      "--sp-size",
      "4",
      "--workers",
      "0",
    ]);
    expect(bad.code).not.toBe(0);
    expect(bad.err).toMatch(/sp size × ring size = 4 × 1 = 4 must divide the world size 6/);
  });

  it("data prepare CONFIG writes the cache; data plan CONFIG keeps it and plans it", () => {
    const cfg = join(root, "train.yaml");
    writeFileSync(
      cfg,
      `model: ${model}\nmeta: ${meta}\nmax_length: 8192\ncache_dir: cache\nwork_dir: run\nsampler: modality_length\nglobal_batch_size: 4\n`,
    );
    const a = tessera(["data", "prepare", cfg, "--workers", "0", "--json"]);
    expect(a.code, a.err).toBe(0);
    const ja = JSON.parse(a.out);
    expect(ja.rebuilt).toEqual(["chat", "vqa", "docs"]);
    expect(ja.samples).toBe(240);
    const p = tessera(["data", "plan", cfg, "--workers", "0"]);
    expect(p.code, p.err).toBe(0);
    expect(p.err).toMatch(/chat: unchanged, kept/); // nothing changed since prepare: kept
    expect(p.out).toMatch(/samples 380 \(after repeat_time/);
    expect(p.out).toMatch(/accumulation 4/);
    expect(p.out).toMatch(/fill \d+\.\d+%/);
  });
});

afterAll(removeTemp);
