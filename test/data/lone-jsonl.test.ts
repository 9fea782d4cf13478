/**
 * A lone JSONL (plus --media-root) where a meta file is expected: every data command and the
 * questions of eval.
 */
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadQuestions } from "../../src/eval/eval.ts";
import { startExplorer } from "../../src/explore/server.ts";
import { loadModelInfo } from "../../src/text/model-info.ts";
import { loadTokenizer } from "../../src/text/tokenizer.ts";
import { PACKAGE_ROOT } from "../../src/util/paths.ts";
import { makeModelFolder } from "../helpers/model-folder.ts";
import { removeTemp, track } from "../plan/helpers.ts";
import { png, tempDir, write } from "./fixtures.ts";

const run = promisify(execFile);
const BIN = join(PACKAGE_ROOT, "bin", "tessera.mjs");

async function tessera(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [BIN, ...args], { cwd: PACKAGE_ROOT });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, stdout: x.stdout, stderr: x.stderr };
  }
}

let dir: string;
let jsonl: string;
let images: string;
let model: string;

beforeAll(() => {
  dir = track(tempDir("tessera-lone-"));
  images = join(dir, "pictures");
  write(join(images, "a.png"), png(60, 20));
  write(join(images, "b.png"), png(20, 50));
  const recs = [
    {
      id: "r0",
      image: "a.png",
      conversations: [
        { from: "human", value: "<image>\nwhat colour?" },
        { from: "gpt", value: "grey" },
      ],
    },
    {
      id: "r1",
      image: ["a.png", "b.png"],
      conversations: [
        { from: "human", value: "<image>\n<image>\nsame?" },
        { from: "gpt", value: "no" },
      ],
    },
    {
      id: "r2",
      conversations: [
        { from: "human", value: "hi" },
        { from: "gpt", value: "hello" },
      ],
    },
  ];
  // No image_wh: the images live in another folder than the JSONL.
  jsonl = write(
    join(dir, "data", "vqa.jsonl"),
    `${recs.map((r) => JSON.stringify(r)).join("\n")}\n`,
  );
  model = track(makeModelFolder({ vocab: "qwen2", maxDynamicPatch: 4 }));
});
afterAll(removeTemp);

describe("a lone JSONL with --media-root", () => {
  it("check: clean with --media-root; without it, a missing image says how to point at the images", async () => {
    const ok = await tessera(["data", "check", jsonl, "--media-root", images, "--json"]);
    expect(ok.code, ok.stderr).toBe(0);
    const r = JSON.parse(ok.stdout);
    expect(r.errorCount).toBe(0);
    expect(r.datasets[0]).toMatchObject({ name: "vqa", records: 3, images: 3 });

    const lost = await tessera(["data", "check", jsonl, "--json"]);
    expect(lost.code).toBe(1);
    const issue = JSON.parse(lost.stdout).issues[0];
    expect(issue.kind).toBe("missing-image");
    expect(issue.message).toContain("--media-root");
  });

  it("fill-wh writes sizes and a meta file that checks clean; a meta file with --media-root is refused", async () => {
    const metaOut = join(dir, "vqa_meta.json");
    const f = await tessera([
      "data",
      "fill-wh",
      jsonl,
      "--media-root",
      images,
      "--meta-out",
      metaOut,
    ]);
    expect(f.code, f.stderr).toBe(0);
    expect(f.stderr).toContain("2 records filled");
    const meta = JSON.parse(readFileSync(metaOut, "utf8"));
    expect(meta).toEqual({ vqa: { media_root: "pictures", annotation: "data/vqa_wh.jsonl" } });
    const lines = readFileSync(join(dir, "data", "vqa_wh.jsonl"), "utf8")
      .trim()
      .split("\n");
    expect(JSON.parse(lines[1]).image_wh).toEqual([
      [60, 20],
      [20, 50],
    ]);
    const c = await tessera(["data", "check", metaOut]);
    expect(c.code, c.stdout).toBe(0);

    const refused = await tessera(["data", "check", metaOut, "--media-root", images]);
    expect(refused.code).toBe(1);
    expect(refused.stdout).toContain("--media-root is for a lone JSONL");
  });

  it("stats, preview, prepare and plan read it", async () => {
    const s = await tessera([
      "data",
      "stats",
      jsonl,
      "--media-root",
      images,
      "--headers",
      "--json",
    ]);
    expect(s.code, s.stderr).toBe(0);
    const stats = JSON.parse(s.stdout);
    expect(stats.datasets[0].records).toBe(3);
    expect(stats.datasets[0].imagesWithoutSize).toBe(0);

    // preview needs no --dataset (the JSONL is the only one) and reads image sizes from the
    // headers when the record has none.
    const p = await tessera([
      "data",
      "preview",
      jsonl,
      "--media-root",
      images,
      "--model",
      model,
      "--index",
      "1",
      "--json",
    ]);
    expect(p.code, p.stderr).toBe(0);
    const shown = JSON.parse(p.stdout);
    expect(shown.images.map((im: { wh: number[] }) => im.wh)).toEqual([
      [60, 20],
      [20, 50],
    ]);
    expect(shown.length).toBeGreaterThan(shown.imageContextTokens);

    const filled = join(dir, "data", "vqa_wh.jsonl");
    const cache = join(dir, "cache");
    const prep = await tessera([
      "data",
      "prepare",
      filled,
      "--media-root",
      images,
      "--model",
      model,
      "--cache-dir",
      cache,
      "--workers",
      "0",
      "--json",
    ]);
    expect(prep.code, prep.stderr).toBe(0);
    expect(JSON.parse(prep.stdout).samples).toBe(3);

    const plan = await tessera([
      "data",
      "plan",
      filled,
      "--media-root",
      images,
      "--model",
      model,
      "--cache-dir",
      cache,
      "--pack-max-length",
      "4096",
      "--workers",
      "0",
      "--json",
    ]);
    expect(plan.code, plan.stderr).toBe(0);
    expect(JSON.parse(plan.stdout).samples).toBe(3);
  });

  it("explore serves its records", async () => {
    const info = loadModelInfo(model);
    const e = await startExplorer({
      meta: jsonl,
      mediaRoot: images,
      model: info,
      tokenizer: await loadTokenizer(info.dir),
      port: 0,
    });
    try {
      const ds = await (await fetch(new URL("/api/datasets", e.url))).json();
      expect(ds.datasets.map((d: { name: string }) => d.name)).toEqual(["vqa"]);
      const sample = await (await fetch(new URL("/api/sample?dataset=vqa&index=0", e.url))).json();
      expect(sample.preview.images[0].wh).toEqual([60, 20]);
    } finally {
      await e.close();
    }
  });

  it("eval: questions from a lone JSONL, image sizes read from the headers (no fill-wh needed)", async () => {
    const q = await loadQuestions(jsonl, { mediaRoot: images });
    expect(q.questions.map((x) => [x.id, x.type, x.answer])).toEqual([
      ["r0", "questions", "grey"],
      ["r1", "questions", "no"],
      ["r2", "questions", "hello"],
    ]);
    expect(q.questions[1].record.imageWh).toEqual([
      [60, 20],
      [20, 50],
    ]);
    // Without --media-root the image is not where the JSONL is: named before any model loads.
    await expect(loadQuestions(jsonl)).rejects.toThrow(
      /question r0 \(questions\): image .*data\/a\.png: .*does not exist/,
    );
  });
});
