import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  loadMeta,
  loadMetaChecked,
  selectedRecordCount,
  selectedRecordIndex,
} from "../../src/data/meta.ts";
import { UserError } from "../../src/util/errors.ts";
import { expectNamed, tempDir, write } from "./fixtures.ts";

function meta(doc: unknown, files: string[] = ["a.jsonl"]): string {
  const dir = tempDir();
  for (const f of files) write(join(dir, f), "");
  return write(
    join(dir, "meta.json"),
    typeof doc === "string" ? doc : JSON.stringify(doc, null, 2),
  );
}

describe("loadMeta", () => {
  it("resolves paths against the meta file's folder and keeps extra fields", async () => {
    const p = meta({
      a: { media_root: "img/", annotation: "a.jsonl", repeat_time: 3, max_dynamic_patch: 6 },
      b: { media_root: "", annotation: "a.jsonl" },
    });
    const dir = join(p, "..");
    write(join(dir, "img", ".keep"), "");
    const specs = await loadMeta(p);
    expect(specs).toEqual([
      {
        name: "a",
        metaPath: p,
        mediaRoot: join(dir, "img"),
        annotation: join(dir, "a.jsonl"),
        repeatTime: 3,
        extra: { max_dynamic_patch: 6 },
      },
      {
        name: "b",
        metaPath: p,
        mediaRoot: dir,
        annotation: join(dir, "a.jsonl"),
        repeatTime: 1,
        extra: {},
      },
    ]);
  });

  it.each([
    [0, /greater than 0/],
    [-2, /greater than 0/],
    [2.5, /integer when above 1/],
  ])("rejects repeat_time %s, naming the dataset key, line and field", async (rt, msg) => {
    const p = meta({
      good: { annotation: "a.jsonl" },
      docvqa: { media_root: "", annotation: "a.jsonl", repeat_time: rt },
    });
    const { specs, issues } = await loadMetaChecked(p);
    expect(specs.map((s) => s.name)).toEqual(["good"]);
    const i = expectNamed(issues[0], "meta.json", 8, "docvqa.repeat_time");
    expect(i.message).toMatch(msg);
    expect(i.message).toContain('"docvqa"');
    await expect(loadMeta(p)).rejects.toThrow(UserError);
    await expect(loadMeta(p)).rejects.toThrow(/meta\.json:8: .*docvqa\.repeat_time/);
  });

  it("reports an annotation path that does not exist", async () => {
    const p = meta({
      ok: { annotation: "a.jsonl" },
      gone: { annotation: "missing/b.jsonl", repeat_time: 1 },
    });
    const { specs, issues } = await loadMetaChecked(p);
    expect(specs).toHaveLength(1);
    const i = expectNamed(issues[0], "meta.json", 6, "gone.annotation");
    expect(i.kind).toBe("meta-annotation-missing");
    expect(i.found).toMatch(/missing\/b\.jsonl$/);
  });

  it("reports a media_root that is not a folder", async () => {
    const { issues } = await loadMetaChecked(
      meta({ x: { media_root: "nowhere", annotation: "a.jsonl" } }),
    );
    expectNamed(issues[0], "meta.json", 3, "x.media_root");
  });

  it("reports a meta file that is not an object", async () => {
    for (const doc of ["[1, 2]", '"datasets"', "null"]) {
      const { specs, issues } = await loadMetaChecked(meta(doc));
      expect(specs).toEqual([]);
      expect(expectNamed(issues[0], "meta.json", 1, "(file)").kind).toBe("meta-not-object");
    }
    const bad = await loadMetaChecked(meta('{\n  "a": {\n    "annotation": "a.jsonl",\n  }\n}'));
    expect(bad.issues[0].kind).toBe("meta-invalid-json");
    expect(bad.issues[0].line).toBe(4);
  });

  it("reports wrong types of a dataset entry and its fields", async () => {
    const p = meta({ a: "a.jsonl", b: { annotation: 5, media_root: 3 } });
    const { issues } = await loadMetaChecked(p);
    expectNamed(
      issues.find((i) => i.field === "a"),
      "meta.json",
      2,
      "a",
    );
    expectNamed(
      issues.find((i) => i.field === "b.annotation"),
      "meta.json",
      4,
      "b.annotation",
    );
    expectNamed(
      issues.find((i) => i.field === "b.media_root"),
      "meta.json",
      5,
      "b.media_root",
    );
    // tessera's per-dataset settings are checked too, by line.
    const q = meta({ c: { annotation: "a.jsonl", video_frames: 0, max_dynamic_patch: 2.5 } });
    const more = (await loadMetaChecked(q)).issues;
    expectNamed(
      more.find((i) => i.field === "c.video_frames"),
      "meta.json",
      4,
      "c.video_frames",
    );
    expect(more.find((i) => i.field === "c.video_frames")?.message).toMatch(/at least 1/);
    expectNamed(
      more.find((i) => i.field === "c.max_dynamic_patch"),
      "meta.json",
      5,
      "c.max_dynamic_patch",
    );
  });
});

describe("meta limits", () => {
  it("refuses absurd values with their limit, by line", async () => {
    const p = meta({
      c: { annotation: "a.jsonl", repeat_time: 1e308, max_dynamic_patch: 1e9, video_frames: 1e9 },
    });
    const { specs, issues } = await loadMetaChecked(p);
    expect(specs).toEqual([]);
    for (const [field, line, limit] of [
      ["c.repeat_time", 4, "10000"],
      ["c.max_dynamic_patch", 5, "256"],
      ["c.video_frames", 6, "1024"],
    ] as const) {
      const i = issues.find((x) => x.field === field);
      expectNamed(i, "meta.json", line, field);
      expect(i?.severity).toBe("error");
      expect(i?.message).toContain(`at most ${limit}`);
    }
    await expect(loadMeta(p)).rejects.toThrow(/repeat_time must be at most 10000/);
  });
});

describe("repeat_time", () => {
  it("repeats integers and takes the first floor(n·r) records for fractions", () => {
    expect(selectedRecordCount(10, 1)).toBe(10);
    expect(selectedRecordCount(10, 5)).toBe(50);
    expect(selectedRecordCount(10, 0.3)).toBe(3);
    expect(selectedRecordCount(7, 0.5)).toBe(3);
    // The same double arithmetic as Python's int(100 * 0.29) == 28.
    expect(selectedRecordCount(100, 0.29)).toBe(28);
    expect(() => selectedRecordCount(10, 0)).toThrow();
    expect(() => selectedRecordCount(10, 1.5)).toThrow();
  });

  it("maps epoch positions to record indices", () => {
    expect(Array.from({ length: 6 }, (_, i) => selectedRecordIndex(i, 3, 2))).toEqual([
      0, 1, 2, 0, 1, 2,
    ]);
    expect(Array.from({ length: 3 }, (_, i) => selectedRecordIndex(i, 10, 0.3))).toEqual([0, 1, 2]);
    expect(() => selectedRecordIndex(3, 10, 0.3)).toThrow(RangeError);
  });
});
