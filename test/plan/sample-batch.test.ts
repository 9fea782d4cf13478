import { describe, expect, it } from "vitest";
import type { DataRecord } from "../../src/data/record.ts";
import { makeBatch, type SampleMaker } from "../../src/plan/sample-batch.ts";
import { createSampleMaker } from "../../src/plan/sample-maker.ts";
import { loadModelInfo } from "../../src/text/model-info.ts";
import { makeModelFolder } from "../helpers/model-folder.ts";

function records(n: number): DataRecord[] {
  return Array.from({ length: n }, (_, i) => ({
    id: i,
    conversations: [
      { from: "human", value: `<image>\nWhat is in picture ${i}? ${"word ".repeat(i % 7)}` },
      { from: "gpt", value: `\nIt shows ${i * 37} things.` },
      { from: "human", value: `And ${i}?` },
      { from: "gpt", value: "Nothing." },
    ],
    images: [`img/${i}.jpg`],
    imageWh: [[100 + 37 * i, 80 + 53 * (i % 11)]],
    extra: {},
  }));
}

describe("sample batches", () => {
  it("makes a batch in one call exactly as record by record, and a failing record only fails its line", async () => {
    const model = makeModelFolder({ vocab: "qwen2", template: "Hermes-2", maxDynamicPatch: 6 });
    const maker = await createSampleMaker({
      model,
      maxLength: 1500,
      dataset: {
        name: "d",
        mediaRoot: "/data",
        annotation: "/data/a.jsonl",
        metaPath: "/data/meta.json",
        repeatTime: 1,
        extra: {},
      },
    });
    expect(maker.columns).toBeTypeOf("function");
    const tpt = loadModelInfo(model).tokensPerTile;
    // The same maker without its batch path: one record per call.
    const single: SampleMaker = (r, line) => maker(r, line);
    const recs = records(60);
    const items = recs.map((record, i) => ({ line: i + 1, record }));
    const batched = await makeBatch(3, items, maker, tpt);
    const oneByOne = await makeBatch(3, items, single, tpt);
    expect(batched).toEqual(oneByOne);
    expect(batched.count).toBeGreaterThan(10);
    expect(batched.dropped).toBeGreaterThan(0); // some are over max_length
    // Stored form: each sample's length less its images' context runs.
    expect(batched.inputIds.length).toBe(batched.stored.reduce((a, b) => a + b, 0));
    let img = 0;
    for (let k = 0; k < batched.count; k++) {
      let context = 0;
      for (let j = 0; j < batched.imgCount[k]; j++) context += batched.imgTiles[img++] * tpt;
      expect(batched.stored[k]).toBe(batched.length[k] - context);
    }

    // Batches made at the same time (as a worker's pending messages are) do not share buffers,
    // and a later batch leaves an earlier one as it was.
    const rest = items.slice(10);
    const [again, other] = await Promise.all([
      makeBatch(5, items, maker, tpt),
      makeBatch(6, rest, maker, tpt),
    ]);
    expect(again).toEqual({ ...oneByOne, seq: 5 });
    expect(other).toEqual(await makeBatch(6, rest, single, tpt));
    expect(batched).toEqual(oneByOne);

    // Line 8 has no image_wh: the batch call throws, every other record still becomes a sample.
    const bad = recs.map((r, i) => (i === 7 ? { ...r, imageWh: undefined } : r));
    const withError = await makeBatch(
      4,
      bad.map((record, i) => ({ line: i + 1, record })),
      maker,
      tpt,
    );
    expect(withError.errors).toHaveLength(1);
    expect(withError.errors[0].line).toBe(8);
    expect(withError.errors[0].message).toMatch(/image_wh/);
    expect(withError.count).toBe(batched.count - (batched.line.includes(8) ? 1 : 0));

    // A maker whose image context run disagrees with tiles × tokens per tile cannot be stored
    // (readers put the runs back from the tile counts): that line fails, the others are kept.
    const lying: SampleMaker = async (r, line) => {
      const s = await maker(r, line);
      if (s && line === 3) s.images[0] = { ...s.images[0], tiles: s.images[0].tiles + 1 };
      return s;
    };
    const checked = await makeBatch(7, items.slice(0, 6), lying, tpt);
    expect(checked.errors.map((e) => e.line)).toEqual([3]);
    expect(checked.errors[0].message).toMatch(/image 1: .*context/);
    expect(batched.line).toContain(3);
    expect(Array.from(checked.line)).toEqual(
      Array.from(batched.line).filter((l) => l <= 6 && l !== 3),
    );
  });
});
