import { describe, expect, it } from "vitest";
import { selectedRecordCount } from "../../src/data/meta.ts";
import { demoDataFiles } from "../../src/demo/generate.ts";
import {
  answerOf,
  COLOURS,
  generateSplit,
  MAX_COUNT,
  QUESTION_TYPES,
  recordTiles,
  WORDS,
} from "../../src/demo/scenes.ts";

const counts = { colour: 120, count: 60, word: 30, compare: 40, text: 40 };
const opts = { seed: 7, tileSize: 56, maxDynamicPatch: 6, counts, prefix: "train/" };

describe("demo scenes", () => {
  it("is deterministic from the seed and changes with it", () => {
    const a = generateSplit(opts);
    const b = generateSplit(opts);
    expect(JSON.stringify(a)).toBe(JSON.stringify(b));
    const c = generateSplit({ ...opts, seed: 8 });
    expect(JSON.stringify(c.records.colour)).not.toBe(JSON.stringify(a.records.colour));
  });

  it("varies tiling from 1 to 6 tiles, with thumbnails", () => {
    const { records } = generateSplit(opts);
    const seen = new Set<number>();
    for (const t of QUESTION_TYPES)
      for (const r of records[t]) for (const n of recordTiles(r, opts)) seen.add(n);
    // 1 tile (no thumbnail) and 2..6 tiles + thumbnail = 3..7
    for (const n of [1, 3, 4, 5, 7]) expect(seen.has(n), `tiles ${n} in ${[...seen]}`).toBe(true);
    expect(Math.max(...seen)).toBeLessThanOrEqual(7);
  });

  it("answers what the scene shows", () => {
    const { records, scenes } = generateSplit(opts);
    const byPath = new Map(scenes.map((s) => [s.path, s]));
    for (const r of records.colour) {
      const s = byPath.get(r.image as string)!;
      expect(s.size).toEqual(r.image_wh![0]);
      expect(s.shapes).toHaveLength(1);
      const rgb = s.shapes[0].fill;
      // the nearest named colour is the answer
      const nearest = Object.entries(COLOURS).sort(
        (x, y) =>
          x[1].reduce((d, v, i) => d + (v - rgb[i]) ** 2, 0) -
          y[1].reduce((d, v, i) => d + (v - rgb[i]) ** 2, 0),
      )[0][0];
      expect(answerOf(r)).toBe(nearest);
      expect(r.conversations[0].value).toContain(`the ${s.shapes[0].shape}?`);
    }
    for (const r of records.count) {
      const s = byPath.get(r.image as string)!;
      expect(answerOf(r)).toBe(String(s.shapes.length));
      expect(s.shapes.length).toBeGreaterThanOrEqual(1);
      expect(s.shapes.length).toBeLessThanOrEqual(MAX_COUNT);
      // shapes never overlap and stay inside the image
      for (const [i, a] of s.shapes.entries()) {
        expect(a.box[0]).toBeGreaterThanOrEqual(0);
        expect(a.box[2]).toBeLessThan(s.size[0]);
        expect(a.box[3]).toBeLessThan(s.size[1]);
        for (const b of s.shapes.slice(i + 1))
          expect(
            a.box[2] < b.box[0] ||
              b.box[2] < a.box[0] ||
              a.box[3] < b.box[1] ||
              b.box[3] < a.box[1],
          ).toBe(true);
      }
    }
    for (const r of records.word) {
      const s = byPath.get(r.image as string)!;
      expect(WORDS).toContain(answerOf(r));
      expect(s.texts.map((t) => t.text)).toEqual([answerOf(r)]);
    }
    for (const r of records.compare) {
      const [a, b] = (r.image as string[]).map((p) => byPath.get(p)!.shapes.length);
      expect(a).not.toBe(b);
      expect(answerOf(r)).toBe(a > b ? "first" : "second");
      expect(r.image_wh).toHaveLength(2);
    }
    for (const r of records.text) {
      const [, x, y] = /What is (\d) plus (\d)/.exec(r.conversations[0].value)!;
      expect(answerOf(r)).toBe(String(Number(x) + Number(y)));
      expect(r.image).toBeUndefined();
    }
    // answers are single words, so exact match is fair
    for (const t of QUESTION_TYPES)
      for (const r of records[t]) expect(answerOf(r)).toMatch(/^\w+$/);
  });

  it("writes meta files with repeat_time both ways and a held-out split", () => {
    const d = demoDataFiles({
      seed: 3,
      tileSize: 56,
      maxDynamicPatch: 6,
      train: counts,
      eval: { colour: 20, count: 10, word: 10, compare: 10, text: 10 },
      repeatTime: { colour: 2, text: 0.5 },
    });
    const meta = JSON.parse(d.files.get("train.json")!);
    expect(meta.demo_colour.repeat_time).toBe(2);
    expect(meta.demo_text.repeat_time).toBe(0.5);
    expect(meta.demo_text.media_root).toBe("");
    expect(meta.demo_count.repeat_time).toBeUndefined();
    expect(selectedRecordCount(counts.colour, meta.demo_colour.repeat_time)).toBe(240);
    expect(selectedRecordCount(counts.text, meta.demo_text.repeat_time)).toBe(20);
    const evalMeta = JSON.parse(d.files.get("eval.json")!);
    expect(Object.keys(evalMeta)).toHaveLength(5);
    const trainPaths = new Set(d.train.scenes.map((s) => s.path));
    expect(d.eval.scenes.some((s) => trainPaths.has(s.path))).toBe(false);
    const lines = d.files.get("eval/colour.jsonl")!.trim().split("\n");
    expect(lines).toHaveLength(20);
    expect(JSON.parse(lines[0]).type).toBe("colour");
    expect(JSON.parse(lines[0]).image_wh).toHaveLength(1);
  });
});
