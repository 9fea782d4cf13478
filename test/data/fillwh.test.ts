import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { checkMeta } from "../../src/data/check.ts";
import { fillWh, fillWhOutputPath } from "../../src/data/fillwh.ts";
import { dataset, expectNamed, jpegHeader, png, tempDir, turns, write } from "./fixtures.ts";

describe("data fill-wh", () => {
  it("writes image_wh from headers into x_wh.jsonl, keeps every other line, and gives a meta file that checks clean", async () => {
    const dir = tempDir();
    const lines = [
      { id: 0, image: "a.png", conversations: turns(), source: "kept" },
      {
        id: 1,
        image: ["a.png", "b.jpg"],
        image_wh: [[1, 1]],
        conversations: turns("<image><image>", "x"),
      },
      { id: 2, conversations: turns("hi", "ho") },
      { id: 3, image: "b.jpg", image_wh: [[300, 200]], conversations: turns() },
    ];
    const m = dataset(
      dir,
      lines,
      { "a.png": png(40, 30), "b.jpg": jpegHeader(300, 200) },
      { repeat_time: 2 },
    );
    const before = readFileSync(join(dir, "ds.jsonl"), "utf8");
    const metaOut = join(dir, "out", "meta_wh.json");
    const r = await fillWh(m, { metaOut });
    expect(r.errorCount).toBe(0);
    expect(r.datasets[0]).toMatchObject({ filled: 3, changed: 2, failed: 0, lines: 4 });
    expect(readFileSync(join(dir, "ds.jsonl"), "utf8")).toBe(before);
    const out = readFileSync(join(dir, "ds_wh.jsonl"), "utf8")
      .trimEnd()
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(out[0]).toEqual({ ...lines[0], image_wh: [[40, 30]] });
    expect(out[1].image_wh).toEqual([
      [40, 30],
      [300, 200],
    ]);
    expect(out[2]).toEqual(lines[2]);
    expect(out[3]).toEqual(lines[3]);
    expect(r.meta).toEqual({
      ds: { media_root: "../images", annotation: "../ds_wh.jsonl", repeat_time: 2 },
    });
    write(metaOut, JSON.stringify(r.meta));
    const check = await checkMeta(metaOut);
    expect(check.errorCount).toBe(0);
    expect(check.datasets[0].missingImageWh).toBe(0);
  });

  it("reports images it cannot read, naming file, line and field, and leaves those lines as written", async () => {
    const dir = tempDir();
    const m = dataset(
      dir,
      [
        { image: ["a.png", "gone.png"], conversations: turns("<image><image>", "x") },
        "{not json",
        { image: "a.png", conversations: turns() },
      ],
      {
        "a.png": png(8, 8),
      },
    );
    const r = await fillWh(m);
    expect(r.errorCount).toBe(2);
    expectNamed(r.issues[0], "ds.jsonl", 1, "image[1]");
    expectNamed(r.issues[1], "ds.jsonl", 2, "(line)");
    const out = readFileSync(join(dir, "ds_wh.jsonl"), "utf8").split("\n");
    expect(JSON.parse(out[0]).image_wh).toBeUndefined();
    expect(out[1]).toBe("{not json");
    expect(JSON.parse(out[2]).image_wh).toEqual([[8, 8]]);
    // Without --meta-out the new meta names absolute paths.
    expect((r.meta.ds as { annotation: string }).annotation).toBe(join(dir, "ds_wh.jsonl"));
  });

  it("writes nothing for a pure-text dataset and refuses to overwrite its input", async () => {
    const dir = tempDir();
    const m = dataset(dir, [{ conversations: turns("a", "b") }]);
    const r = await fillWh(m);
    expect(r.datasets[0].output).toBeUndefined();
    expect(existsSync(join(dir, "ds_wh.jsonl"))).toBe(false);
    expect((r.meta.ds as { annotation: string }).annotation).toBe(join(dir, "ds.jsonl"));
    await expect(fillWh(m, { outSuffix: "" })).rejects.toThrow(/never overwrites/);
    await expect(fillWh(m, { metaOut: m })).rejects.toThrow(/never overwrites/);
    expect(fillWhOutputPath("/d/x.jsonl", "_wh")).toBe("/d/x_wh.jsonl");
  });
});
