/**
 * The cache stores tokens without the images' context runs: every reader must see the sample
 * the text layer made. Here with a real tokenizer and 4 tokens per tile (runs of 4 to 28).
 */
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { readRecords } from "../../src/data/jsonl.ts";
import { loadMeta } from "../../src/data/meta.ts";
import { openCacheTable, prepareCache } from "../../src/plan/cache.ts";
import { loadModelInfo } from "../../src/text/model-info.ts";
import { makeSampleContext, recordsToSamples } from "../../src/text/sample.ts";
import { loadTokenizer } from "../../src/text/tokenizer.ts";
import { IGNORE_INDEX, type Sample } from "../../src/text/types.ts";
import { makeModelFolder } from "../helpers/model-folder.ts";

describe("stored tokens", () => {
  it("count the learned labels of any token range as the whole sample does", async () => {
    const root = mkdtempSync(join(tmpdir(), "tessera-stored-"));
    const model = makeModelFolder({ vocab: "qwen2", imageSize: 56, maxDynamicPatch: 6 });
    const lines = Array.from({ length: 30 }, (_, i) => {
      const n = 1 + (i % 3);
      return JSON.stringify({
        id: i,
        image: Array.from({ length: n }, (_, k) => `${k}.png`),
        image_wh: Array.from({ length: n }, (_, k) => [60 + 37 * i, 40 + 23 * k]),
        conversations: [
          { from: "human", value: `${"<image>\n".repeat(n)}Question ${i}?` },
          { from: "gpt", value: `Answer ${i} ${"word ".repeat(i % 5)}` },
          { from: "human", value: "And?" },
          { from: "gpt", value: `More ${i}.` },
        ],
      });
    });
    writeFileSync(join(root, "a.jsonl"), `${lines.join("\n")}\n`);
    const meta = join(root, "meta.json");
    writeFileSync(meta, JSON.stringify({ a: { media_root: root, annotation: "a.jsonl" } }));
    await prepareCache({ meta, model, maxLength: 4096, cacheDir: join(root, "c"), workers: 0 });
    const table = openCacheTable(join(root, "c"));

    const [spec] = await loadMeta(meta);
    const records = [];
    for await (const it of readRecords(spec)) if (it.record) records.push(it.record);
    const info = loadModelInfo(model);
    expect(info.tokensPerTile).toBe(4);
    const ctx = makeSampleContext({
      tokenizer: await loadTokenizer(model),
      model: info,
      mediaRoot: root,
    });
    const samples = (await recordsToSamples(records, ctx)) as Sample[];

    let checked = 0;
    samples.forEach((s, i) => {
      expect(table.lengths[i]).toBe(s.length);
      const learned = (a: number, b: number) => {
        let n = 0;
        for (let t = a + 1; t < b; t++) if (s.labels[t] !== IGNORE_INDEX) n++;
        return n;
      };
      // Cuts at every edge of every context run, and a sweep of ranges.
      const cuts = [0, s.length];
      s.contextStarts.forEach((c, k) => {
        const end = c + s.images[k].tiles * info.tokensPerTile;
        cuts.push(c - 1, c, c + 1, end - 1, end, end + 1);
      });
      for (let a = 0; a < s.length; a += 7) cuts.push(a);
      for (const a of cuts)
        for (const b of cuts)
          if (0 <= a && a < b && b <= s.length) {
            expect(table.learnedIn!(i, a, b), `sample ${i} [${a}, ${b})`).toBe(learned(a, b));
            checked++;
          }
    });
    expect(checked).toBeGreaterThan(1000);
  });
});
