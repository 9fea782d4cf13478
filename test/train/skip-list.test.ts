import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { SkipList } from "../../src/train/driver.ts";

const bad = (sample: number, path: string) => ({
  event: "bad_sample",
  sample,
  path,
  dataset: "d",
  file: "/data/d.jsonl",
  line: sample + 1,
  step: 2,
  reason: "OSError: image file is truncated",
});

describe("the skip list", () => {
  it("records each bad image once, keeps its plan's lines on resume and starts over otherwise", () => {
    const path = join(mkdtempSync(join(tmpdir(), "tessera-skips-")), "skipped.jsonl");
    const first = new SkipList(path, "plan-a", false);
    expect(first.add(bad(4, "/m/a.png"))).toBe(true);
    expect(first.add(bad(4, "/m/a.png"))).toBe(false); // seen again in a later epoch
    expect(first.add(bad(9, "/m/a.png"))).toBe(true);
    expect(first.size).toBe(2);
    const lines = readFileSync(path, "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(lines[0]).toMatchObject({ plan: "plan-a", sample: 4, path: "/m/a.png", line: 5 });

    // A resume of the same plan passes the skips back to the engine.
    expect(new SkipList(path, "plan-a", true).entries()).toEqual([
      { sample: 4, path: "/m/a.png" },
      { sample: 9, path: "/m/a.png" },
    ]);
    // Another plan's skips do not apply; a fresh run empties the list.
    expect(new SkipList(path, "plan-b", true).size).toBe(0);
    expect(new SkipList(path, "plan-a", false).size).toBe(0);
    expect(readFileSync(path, "utf8")).toBe("");

    writeFileSync(path, '{"plan": "plan-a", "sample": 1, "path": "x"}\nnot json\n');
    expect(() => new SkipList(path, "plan-a", true)).toThrow(/skipped\.jsonl:2: not a JSON line/);
  });
});
