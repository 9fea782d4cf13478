import { describe, expect, it } from "vitest";
import type { DataRecord } from "../../src/data/record.ts";
import { makeBatch, type SampleMaker } from "../../src/plan/sample-batch.ts";
import { createSampleMaker } from "../../src/plan/sample-maker.ts";
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
    // The same maker without its batch path: one record per call.
    const single: SampleMaker = (r, line) => maker(r, line);
    const recs = records(60);
    const items = recs.map((record, i) => ({ line: i + 1, record }));
    const batched = await makeBatch(3, items, maker);
    const oneByOne = await makeBatch(3, items, single);
    expect(batched).toEqual(oneByOne);
    expect(batched.count).toBeGreaterThan(10);
    expect(batched.dropped).toBeGreaterThan(0); // some are over max_length
    expect(batched.inputIds.length).toBe(batched.length.reduce((a, b) => a + b, 0));

    // Batches made at the same time (as a worker's pending messages are) do not share buffers,
    // and a later batch leaves an earlier one as it was.
    const rest = items.slice(10);
    const [again, other] = await Promise.all([
      makeBatch(5, items, maker),
      makeBatch(6, rest, maker),
    ]);
    expect(again).toEqual({ ...oneByOne, seq: 5 });
    expect(other).toEqual(await makeBatch(6, rest, single));
    expect(batched).toEqual(oneByOne);

    // Line 8 has no image_wh: the batch call throws, every other record still becomes a sample.
    const bad = recs.map((r, i) => (i === 7 ? { ...r, imageWh: undefined } : r));
    const withError = await makeBatch(
      4,
      bad.map((record, i) => ({ line: i + 1, record })),
      maker,
    );
    expect(withError.errors).toHaveLength(1);
    expect(withError.errors[0].line).toBe(8);
    expect(withError.errors[0].message).toMatch(/image_wh/);
    expect(withError.count).toBe(batched.count - (batched.line.includes(8) ? 1 : 0));
  });
});
