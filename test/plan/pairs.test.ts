import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { validateRecord } from "../../src/data/record.ts";
import { openCacheTable, prepareCache } from "../../src/plan/cache.ts";
import { buildPairPlan, planForMethod } from "../../src/plan/pairs.ts";
import { CHAR_MAKER, removeTemp, tinyModel, track } from "./helpers.ts";

let model: string;
beforeAll(() => {
  model = tinyModel();
});
afterAll(removeTemp);

/** n preference records (one image every other record), and a meta file naming them. */
function writePairs(
  n: number,
  extra: Record<string, unknown>[] = [],
): { root: string; meta: string } {
  const root = track(mkdtempSync(join(tmpdir(), "tessera-pairs-")));
  mkdirSync(join(root, "img"), { recursive: true });
  const lines: string[] = [];
  for (let i = 0; i < n; i++) {
    const rec: Record<string, unknown> = {
      id: i,
      question: `what colour? ${"q".repeat(i % 7)}`,
      chosen: `red${"!".repeat(i % 5)}`,
      rejected: `blue and a longer wrong answer ${"x".repeat(i % 11)}`,
    };
    if (i % 2 === 0) Object.assign(rec, { image: "img/a.png", width: 40 + i, height: 30 });
    lines.push(JSON.stringify(rec));
  }
  for (const e of extra) lines.push(JSON.stringify(e));
  writeFileSync(join(root, "pairs.jsonl"), `${lines.join("\n")}\n`);
  const meta = join(root, "meta.json");
  writeFileSync(
    meta,
    JSON.stringify({
      prefs: { media_root: root, annotation: join(root, "pairs.jsonl"), repeat_time: 2 },
    }),
  );
  return { root, meta };
}

describe("preference records", () => {
  it("validates the official layout: chosen conversation, both answers, width/height as image_wh", () => {
    const { record, issues } = validateRecord(
      { image: "a.png", width: 640, height: 480, question: "q?", chosen: "yes", rejected: "no" },
      "f.jsonl",
      3,
    );
    expect(issues).toEqual([]);
    expect(record?.conversations).toEqual([
      { from: "human", value: "q?" },
      { from: "gpt", value: "yes" },
    ]);
    expect(record?.pair).toEqual({ chosen: "yes", rejected: "no" });
    expect(record?.imageWh).toEqual([[640, 480]]);
    expect(record?.extra).toEqual({});
  });

  it("names the file, line and field of a bad pair", () => {
    const { record, issues } = validateRecord({ question: "q", chosen: 5 }, "f.jsonl", 9);
    expect(record).toBeUndefined();
    expect(issues.map((i) => [i.line, i.field, i.kind])).toEqual([
      [9, "chosen", "wrong-type"],
      [9, "rejected", "missing-field"],
    ]);
    const both = validateRecord(
      { question: "q", chosen: "a", rejected: "b", conversations: [] },
      "f.jsonl",
      2,
    );
    expect(both.issues[0].kind).toBe("pair-and-conversations");
  });
});

describe("preference cache and plan", () => {
  it("stores each pair as two samples (chosen, rejected) and plans whole pairs", async () => {
    const { root, meta } = writePairs(20);
    const cacheDir = join(root, "cache");
    const r = await prepareCache({
      meta,
      model,
      maxLength: 4096,
      cacheDir,
      workers: 0,
      makerModule: CHAR_MAKER,
    });
    const d = r.manifest.datasets[0];
    expect(d.preference).toBe(true);
    expect(d.samples).toBe(40);
    const table = openCacheTable(cacheDir);
    // chosen = "red…" (learned by character), rejected the longer wrong answer
    for (let k = 0; k < 20; k++) {
      expect(table.learned[2 * k]).toBe(3 + (k % 5));
      expect(table.learned[2 * k + 1]).toBe(31 + (k % 11));
      expect(table.images[2 * k]).toBe(table.images[2 * k + 1]);
    }
    const opts = {
      worldSize: 2,
      microBatchSize: 1,
      gradAccum: 2,
      sampler: "random" as const,
      packing: "soft" as const,
      packMaxLength: 400,
      seed: 3,
    };
    const plan = planForMethod(table, opts, "mpo");
    expect(plan.pairs).toBeDefined();
    // every pair is two consecutive pieces of one row, chosen (even sample) first
    const seen = new Map<number, number>();
    for (let r = 0; r < plan.rowTokens.length; r++) {
      const a = plan.rowOffset[r];
      const b = plan.rowOffset[r + 1];
      expect((b - a) % 2).toBe(0);
      let tokens = 0;
      for (let p = a; p < b; p += 2) {
        expect(plan.pieceSample[p] % 2).toBe(0);
        expect(plan.pieceSample[p + 1]).toBe(plan.pieceSample[p] + 1);
        seen.set(plan.pieceSample[p], (seen.get(plan.pieceSample[p]) ?? 0) + 1);
        tokens += plan.pieceLength[p] + plan.pieceLength[p + 1];
      }
      expect(tokens).toBe(plan.rowTokens[r]);
      expect(tokens).toBeLessThanOrEqual(400);
    }
    // repeat_time 2: every pair twice
    expect([...seen.values()].every((v) => v === 2)).toBe(true);
    expect(seen.size).toBe(20);
    // per-step pair totals: pairs and chosen learned tokens over all ranks and slots
    let pairs = 0;
    let chosen = 0;
    for (let g = 0; g < plan.totalSteps; g++) {
      pairs += plan.pairs!.stepPairs[g];
      chosen += plan.pairs!.stepChosenLearned[g];
      expect(plan.stepSamples[g]).toBe(2 * plan.pairs!.stepPairs[g]);
    }
    expect(pairs).toBe(40);
    let want = 0;
    for (let k = 0; k < 20; k++) want += 2 * table.learned[2 * k];
    expect(chosen).toBe(want);
    // without packing a pair is two rows of one micro-batch
    const none = buildPairPlan(table, { ...opts, packing: "none", packMaxLength: undefined });
    for (let m = 0; m + 1 < none.mbOffset.length; m++)
      expect((none.mbOffset[m + 1] - none.mbOffset[m]) % 2).toBe(0);
    expect(none.rowTokens.length).toBe(2 * 40);
    // the method must fit the data
    expect(() => planForMethod(table, opts, "sft")).toThrow(/--method mpo/);
    expect(() => buildPairPlan(table, { ...opts, packing: "concat" })).toThrow(/split a pair/);
  });

  it("refuses a dataset that mixes pairs and conversations, naming it", async () => {
    const { root, meta } = writePairs(3, [
      {
        conversations: [
          { from: "human", value: "q" },
          { from: "gpt", value: "a" },
        ],
      },
    ]);
    await expect(
      prepareCache({
        meta,
        model,
        maxLength: 4096,
        cacheDir: join(root, "cache"),
        workers: 0,
        makerModule: CHAR_MAKER,
      }),
    ).rejects.toThrow(/"prefs".*3 preference pair\(s\) and 1 conversation/);
  });
});
