import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { formatStats } from "../../src/cli/data-stats.ts";
import { computeStats, histogram, renderHistogram, summarize } from "../../src/data/stats.ts";
import { tokenLengths } from "../../src/data/stats-tokens.ts";
import { makeModelFolder } from "../helpers/model-folder.ts";
import { dataset, png, tempDir, turns, write } from "./fixtures.ts";

const f64 = (xs: number[]) => Float64Array.from(xs);

describe("summaries and histograms", () => {
  it("gives nearest-rank percentiles, weighting groups", () => {
    const s = summarize([{ values: f64([5, 1, 3, 2, 4]), weight: 1 }]);
    expect(s).toEqual({ count: 5, min: 1, max: 5, mean: 3, p50: 3, p90: 5, p95: 5, p99: 5 });
    // A group repeated 3 times outweighs a single one.
    const w = summarize([
      { values: f64([10]), weight: 3 },
      { values: f64([20]), weight: 1 },
    ]);
    expect(w).toMatchObject({ count: 4, p50: 10, p90: 20, mean: 12.5 });
    expect(summarize([{ values: f64([Number.NaN]), weight: 1 }])).toBeUndefined();
  });

  it("bins integers into integer-wide bins and renders bars", () => {
    const h = histogram(
      [{ values: f64([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 100]), weight: 1 }],
      4,
    );
    expect(h?.edges).toEqual([0, 26, 52, 78, 104]);
    expect(h?.counts).toEqual([12, 0, 0, 1]);
    const lines = renderHistogram(h!, 12);
    expect(lines[0]).toMatch(/0–26 │█{12} 12$/);
    expect(lines[3]).toMatch(/78–104 │█ 1$/);
    expect(histogram([{ values: f64([7, 7]), weight: 2 }])).toEqual({ edges: [7, 8], counts: [4] });
  });
});

describe("data stats", () => {
  function twoDatasets(): string {
    const dir = tempDir();
    write(join(dir, "img", "a.png"), png(100, 50));
    const mm = [
      { image: "a.png", image_wh: [[100, 50]], conversations: turns() },
      {
        image: ["a.png", "a.png"],
        image_wh: [
          [200, 100],
          [300, 100],
        ],
        conversations: [...turns("<image><image>", "x"), ...turns("more", "y")],
      },
      { image: "a.png", conversations: turns() },
    ];
    const text = Array.from({ length: 10 }, (_, i) => ({
      id: i,
      conversations: turns(`q${i}`, `a${i}`),
    }));
    write(join(dir, "mm.jsonl"), `${mm.map((x) => JSON.stringify(x)).join("\n")}\n{broken\n`);
    write(join(dir, "text.jsonl"), `${text.map((x) => JSON.stringify(x)).join("\n")}\n`);
    return write(
      join(dir, "meta.json"),
      JSON.stringify({
        mm: { media_root: "img", annotation: "mm.jsonl", repeat_time: 2 },
        text: { annotation: "text.jsonl", repeat_time: 0.35 },
      }),
    );
  }

  it("counts records after repeat_time, images per record, sizes and turns, per dataset and weighted overall", async () => {
    const r = await computeStats(twoDatasets());
    const [mm, text] = r.datasets;
    expect(mm).toMatchObject({
      records: 3,
      selected: 6,
      invalid: 1,
      multimodal: 3,
      text: 0,
      imagesPerRecord: { 1: 4, 2: 2 },
      imagesWithoutSize: 2,
    });
    expect(mm.width).toMatchObject({ count: 6, min: 100, max: 300, p50: 200 });
    expect(mm.turns).toMatchObject({ min: 2, max: 4 });
    expect(text).toMatchObject({ records: 10, selected: 3, text: 10, imagesPerRecord: { 0: 3 } });
    expect(text.width).toBeUndefined();
    expect(r.overall).toMatchObject({
      records: 13,
      selected: 9,
      imagesPerRecord: { 0: 3, 1: 4, 2: 2 },
    });
    expect(r.overall.turns?.count).toBe(9);
    const text2 = formatStats(r);
    expect(text2).toContain("13 in the files → 9 per epoch");
    expect(text2).toContain("2 images have no size");
  });

  it("--headers reads the sizes image_wh does not give", async () => {
    const r = await computeStats(twoDatasets(), { headers: true });
    expect(r.datasets[0].imagesWithoutSize).toBe(0);
    expect(r.datasets[0].width).toMatchObject({ count: 8, min: 100 });
  });

  it("adds token lengths from the text layer, with a histogram", async () => {
    const dir = tempDir();
    const m = dataset(
      dir,
      [
        { image: "a.png", image_wh: [[448, 448]], conversations: turns() },
        { image: "a.png", image_wh: [[1695, 2025]], conversations: turns() },
        { conversations: turns("hello there", "general kenobi") },
      ],
      { "a.png": png(4, 4) },
    );
    // The smallest real vocabulary keeps this test quick; lengths differ only in their text part.
    const model = makeModelFolder({ vocab: "llama2", maxDynamicPatch: 6 });
    const lengthsOf = await tokenLengths(model);
    const r = await computeStats(m, { lengthsOf });
    const t = r.datasets[0].tokens!;
    expect(t.count).toBe(3);
    // 448×448 is one tile; 1695×2025 with max 6 is 2×2 + thumbnail = 5 tiles: 4 more tiles of 256 tokens.
    expect(t.max - t.p50).toBe(4 * 256);
    expect(t.min).toBeLessThan(100);
    expect(r.datasets[0].tokenHistogram?.counts.reduce((a, b) => a + b, 0)).toBe(3);
    expect(formatStats(r)).toMatch(/token lengths:/);
    // A per-dataset max_dynamic_patch in the meta file wins over the model's.
    const m12 = dataset(
      tempDir(),
      [{ image: "a.png", image_wh: [[1695, 2025]], conversations: turns() }],
      { "a.png": png(4, 4) },
      { max_dynamic_patch: 12 },
    );
    const r12 = await computeStats(m12, { lengthsOf });
    expect(r12.datasets[0].tokens!.max - t.max).toBe(8 * 256);
  }, 30_000);
});
