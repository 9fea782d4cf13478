import { readFileSync, statSync, symlinkSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { checkMeta } from "../../src/data/check.ts";
import type { DataIssue } from "../../src/data/issues.ts";
import { MediaPathError, resolveMediaPath } from "../../src/data/media.ts";
import { readImageHeader } from "../../src/vision/headers.ts";
import { dataset, expectNamed, jpegHeader, png, tempDir, turns, write } from "./fixtures.ts";

const byKind = (issues: DataIssue[], kind: string) => issues.filter((i) => i.kind === kind);

describe("image headers", () => {
  it("reads PNG and JPEG sizes from headers only", async () => {
    const dir = tempDir();
    expect(await readImageHeader(write(join(dir, "a.png"), png(37, 21)))).toEqual({
      width: 37,
      height: 21,
      type: "png",
    });
    expect(await readImageHeader(write(join(dir, "b.jpg"), jpegHeader(1695, 2025)))).toEqual({
      width: 1695,
      height: 2025,
      type: "jpg",
    });
    // A JPEG whose size comes after a large EXIF-like block is found by a second, larger read.
    const app1 = Buffer.alloc(40_000);
    app1.set([0xff, 0xe1, 0x9c, 0x3e], 0); // segment length 39998 (marker excluded)
    const big = Buffer.concat([Buffer.from([0xff, 0xd8]), app1, jpegHeader(640, 480).subarray(2)]);
    expect((await readImageHeader(write(join(dir, "c.jpg"), big))).width).toBe(640);
    await expect(readImageHeader(join(dir, "none.png"))).rejects.toMatchObject({ kind: "missing" });
    await expect(readImageHeader(write(join(dir, "d.png"), "not an image"))).rejects.toMatchObject({
      kind: "unreadable",
    });
    await expect(readImageHeader(write(join(dir, "e.png"), ""))).rejects.toMatchObject({
      kind: "unreadable",
    });
  });
});

describe("data check", () => {
  it("passes a clean multimodal, multi-image, video and text dataset and counts it", async () => {
    const dir = tempDir();
    write(join(dir, "images", "v.mp4"), "fake video");
    const m = dataset(
      dir,
      [
        { id: 0, image: "a.png", image_wh: [[40, 30]], conversations: turns() },
        {
          id: 1,
          image: ["a.png", "sub/b.jpg"],
          image_wh: [
            [40, 30],
            [800, 600],
          ],
          conversations: turns("<image> vs <image>?", "same"),
        },
        { id: 2, image: "a.png", conversations: turns("no placeholder", "ok") },
        { id: 3, video: "v.mp4", conversations: turns("<video>\nwhat happens?", "a dog runs") },
        { id: 4, conversations: turns("hi", "hello") },
      ],
      { "a.png": png(40, 30), "sub/b.jpg": jpegHeader(800, 600) },
      { repeat_time: 3 },
    );
    const r = await checkMeta(m);
    expect(r.issues).toEqual([]);
    expect(r.errorCount).toBe(0);
    expect(r.datasets[0]).toMatchObject({
      name: "ds",
      lines: 5,
      records: 5,
      selected: 15,
      multimodal: 4,
      video: 1,
      text: 1,
      images: 4,
      distinctImages: 2,
      missingImageWh: 1,
    });
  });

  it("reports a missing image, a header that disagrees with image_wh and an unreadable image, and keeps going", async () => {
    const dir = tempDir();
    const m = dataset(
      dir,
      [
        { image: "gone.png", image_wh: [[40, 30]], conversations: turns() },
        {
          image: ["a.png", "a.png"],
          image_wh: [
            [40, 30],
            [30, 40],
          ],
          conversations: turns("<image><image>", "x"),
        },
        { image: "broken.jpg", conversations: turns() },
        { image: "a.png", image_wh: [[41, 30]], conversations: turns() },
      ],
      { "a.png": png(40, 30), "broken.jpg": Buffer.from("this is not a jpeg at all") },
    );
    const r = await checkMeta(m);
    const missing = expectNamed(byKind(r.issues, "missing-image")[0], "ds.jsonl", 1, "image");
    expect(missing.found).toMatch(/images\/gone\.png$/);
    const mism = byKind(r.issues, "image-wh-mismatch");
    expect(mism).toHaveLength(2);
    const i = expectNamed(mism[0], "ds.jsonl", 2, "image_wh[1]");
    expect(i.expected).toBe("[40, 30] (header)");
    expect(i.found).toBe("[30, 40]");
    expectNamed(mism[1], "ds.jsonl", 4, "image_wh[0]");
    expectNamed(byKind(r.issues, "unreadable-image")[0], "ds.jsonl", 3, "image");
    expect(r.errorCount).toBe(4);
    expect(r.datasets[0].errors).toEqual({
      "missing-image": 1,
      "image-wh-mismatch": 2,
      "unreadable-image": 1,
    });
    expect(r.datasets[0].distinctImages).toBe(3);
  });

  it("refuses image and video paths that escape media_root: .., absolute, symlink out", async () => {
    const dir = tempDir();
    const outside = write(join(tempDir(), "secret.png"), png(5, 5));
    const m = dataset(
      dir,
      [
        { image: "../outside.png", conversations: turns() },
        { image: outside, conversations: turns() },
        { image: "link.png", conversations: turns() },
        { video: "../../clip.mp4", conversations: turns("<video>", "x") },
        { image: "sub/../a.png", image_wh: [[4, 4]], conversations: turns() },
      ],
      { "a.png": png(4, 4) },
    );
    symlinkSync(outside, join(dir, "images", "link.png"));
    const r = await checkMeta(m);
    const esc = byKind(r.issues, "path-escapes");
    expect(esc.map((i) => [i.line, i.field])).toEqual([
      [1, "image"],
      [2, "image"],
      [3, "image"],
      [4, "video"],
    ]);
    for (const i of esc) expectNamed(i, "ds.jsonl", i.line, i.field);
    expect(esc[1].message).toMatch(/absolute/);
    expect(esc[2].message).toMatch(/symlink/);
    expect(r.errorCount).toBe(4);
    // The opt-in escape hatch accepts them (the symlinked file then checks as a 5×5 image).
    const open = await checkMeta(m, { allowOutside: true });
    expect(byKind(open.issues, "path-escapes")).toEqual([]);
    expect(byKind(open.issues, "missing-image").length).toBe(1);
  });

  it("resolveMediaPath gives absolute paths inside media_root and throws for the others", () => {
    const root = tempDir();
    const spec = { mediaRoot: root };
    expect(resolveMediaPath(spec, "x/y.png")).toBe(join(root, "x", "y.png"));
    expect(() => resolveMediaPath(spec, "../y.png")).toThrow(MediaPathError);
    expect(() => resolveMediaPath(spec, "/etc/passwd")).toThrow(/absolute/);
    expect(resolveMediaPath(spec, "/etc/passwd", { allowOutside: true })).toBe("/etc/passwd");
  });

  it("reports a missing video file", async () => {
    const dir = tempDir();
    const m = dataset(dir, [{ video: "nope.mp4", conversations: turns("<video>\nwhat?", "x") }]);
    const r = await checkMeta(m);
    expectNamed(byKind(r.issues, "missing-video")[0], "ds.jsonl", 1, "video");
  });

  it("checks every dataset of the meta file and reports meta problems beside record problems", async () => {
    const dir = tempDir();
    dataset(dir, [{ conversations: turns("hi", "ho") }, "{oops"]);
    write(
      join(dir, "t.jsonl"),
      `${JSON.stringify({
        conversations: [
          { from: "human", value: "a" },
          { from: "human", value: "b" },
        ],
      })}\n`,
    );
    const m = write(
      join(dir, "meta.json"),
      JSON.stringify(
        {
          ds: { annotation: "ds.jsonl" },
          t: { annotation: "t.jsonl" },
          gone: { annotation: "x.jsonl" },
          neg: { annotation: "t.jsonl", repeat_time: -1 },
        },
        null,
        2,
      ),
    );
    const r = await checkMeta(m);
    expect(r.datasets.map((d) => d.name)).toEqual(["ds", "t"]);
    expect(r.issues.map((i) => `${i.file.split("/").pop()}:${i.line}:${i.field}`)).toEqual([
      "meta.json:9:gone.annotation",
      "meta.json:13:neg.repeat_time",
      "ds.jsonl:2:(line)",
      "t.jsonl:1:conversations[1].from",
    ]);
  });

  it("--fail-fast stops at the first error; --max-errors lists that many and counts all", async () => {
    const dir = tempDir();
    const bad = Array.from({ length: 30 }, (_, k) => `{bad ${k}`);
    const m = dataset(dir, [...bad, { conversations: turns("hi", "ho") }]);
    const ff = await checkMeta(m, { failFast: true });
    expect(ff.errorCount).toBe(1);
    expect(ff.stoppedEarly).toBe(true);
    expect(ff.datasets[0].lines).toBe(1);
    const few = await checkMeta(m, { maxErrors: 5 });
    expect(few.errorCount).toBe(30);
    expect(few.truncated).toBe(true);
    expect(few.issues.map((i) => i.line)).toEqual([1, 2, 3, 4, 5]);
    expect(few.datasets[0].records).toBe(1);
  });
});

describe("data check in parallel", () => {
  it("splits a file over worker threads and reports exactly what one pass reports", async () => {
    const dir = tempDir();
    const lines: (string | object)[] = [];
    for (let k = 0; k < 400; k++) {
      if (k === 37) lines.push("{broken");
      else if (k === 250)
        lines.push({ image: "a.png", image_wh: [[9, 9]], conversations: turns() });
      else if (k === 399) lines.push({ image: "gone.png", conversations: turns() });
      else if (k % 3 === 0) lines.push({ conversations: turns(`q${k}`, `a${k}`) });
      else
        lines.push({
          image: ["a.png", "b.jpg"],
          image_wh: [
            [40, 30],
            [300, 200],
          ],
          conversations: turns("<image><image>", "x"),
        });
    }
    const m = dataset(dir, lines, { "a.png": png(40, 30), "b.jpg": jpegHeader(300, 200) });
    // CRLF line ends throughout: noted once however the file is split.
    const p = join(dir, "ds.jsonl");
    write(p, readFileSync(p, "utf8").replaceAll("\n", "\r\n"));
    const one = await checkMeta(m, { workers: 1 });
    let progress = [0, 0];
    const par = await checkMeta(m, {
      workers: 2,
      parallelMinBytes: 1,
      rangeBytes: 4096,
      onProgress: (d, t) => (progress = [d, t]),
    });
    // Progress crosses from the workers and ends at the file's size.
    expect(progress[0]).toBe(statSync(p).size);
    expect(progress[1]).toBe(progress[0]);
    expect(one.errorCount).toBe(3);
    expect(par.issues).toEqual(one.issues);
    expect(par.errorCount).toBe(one.errorCount);
    expect(par.warningCount).toBe(one.warningCount);
    const { distinctImages: _a, ...a } = one.datasets[0];
    const { distinctImages: _b, ...b } = par.datasets[0];
    expect(b).toEqual(a);
    // Each worker reads each image once, however many ranges it checks.
    expect(par.datasets[0].distinctImages).toBeGreaterThanOrEqual(3);
    expect(par.datasets[0].distinctImages).toBeLessThanOrEqual(6);
    expect(par.issues.map((i) => [i.line, i.field])).toEqual([
      [1, "(line)"],
      [38, "(line)"],
      [251, "image_wh[0]"],
      [400, "image"],
    ]);
  }, 30_000);
});

describe("data check on a worker pool", () => {
  it("checks several datasets on shared workers and lists problems in meta order", async () => {
    const dir = tempDir();
    const rec = (k: number) => JSON.stringify({ id: k, conversations: turns(`q${k}`, `a${k}`) });
    const file = (bad: number) =>
      `${Array.from({ length: 300 }, (_, k) => (k === bad ? "{oops" : rec(k))).join("\n")}\n`;
    write(join(dir, "a.jsonl"), file(200));
    write(join(dir, "b.jsonl"), file(5));
    const m = write(
      join(dir, "meta.json"),
      JSON.stringify({
        a: { annotation: "a.jsonl" },
        b: { annotation: "b.jsonl", repeat_time: 2 },
      }),
    );
    const one = await checkMeta(m, { workers: 1 });
    const par = await checkMeta(m, { workers: 2, parallelMinBytes: 1, rangeBytes: 1000 });
    expect(par.issues).toEqual(one.issues);
    // Workers that load the sources through tsx (the fallback) find the same.
    const tsx = await checkMeta(m, {
      workers: 2,
      parallelMinBytes: 1,
      rangeBytes: 1000,
      workerEntry: "tsx",
    });
    expect(tsx.issues).toEqual(one.issues);
    expect(tsx.datasets).toEqual(par.datasets);
    expect(par.issues.map((i) => `${i.file.split("/").pop()}:${i.line}`)).toEqual([
      "a.jsonl:201",
      "b.jsonl:6",
    ]);
    expect(par.datasets.map((d) => [d.name, d.records, d.selected, d.lines])).toEqual([
      ["a", 299, 299, 300],
      ["b", 299, 598, 300],
    ]);
  }, 30_000);
});

describe("messages", () => {
  it("say what was expected and what was found for every problem in a file full of them", async () => {
    const dir = tempDir();
    const m = dataset(
      dir,
      [
        "{not json",
        "",
        "[1]",
        { conversations: [{ from: "user", value: 1 }] },
        {
          conversations: [
            { from: "human", value: "q" },
            { from: "human", value: "q" },
          ],
        },
        {
          conversations: [
            { from: "gpt", value: "hello" },
            { from: "human", value: "q" },
            { from: "gpt", value: "a" },
          ],
        },
        { conversations: turns("q", "a"), image: ["a.png", "b.png"], image_wh: [[0, 1]] },
        { conversations: turns("<image><image>", "a"), image: "a.png" },
        { conversations: turns(), image: "../x.png" },
        { conversations: turns(), image: "gone.png" },
        { conversations: turns(), image: "bad.png" },
        { conversations: turns(), image: "a.png", image_wh: [[1, 1]] },
        {
          conversations: [...turns(), { from: "human", value: "more" }],
          video: "nope.mp4",
          image: "a.png",
        },
        '{"conversations": [',
      ],
      { "a.png": png(3, 3), "bad.png": Buffer.from("junk") },
    );
    const r = await checkMeta(m);
    expect(r.issues.length).toBeGreaterThanOrEqual(15);
    for (const i of r.issues) {
      expect(i.expected, `${i.kind} has no expected`).toBeDefined();
      expect(i.found, `${i.kind} has no found`).toBeDefined();
      expect(i.line).toBeGreaterThan(0);
    }
    expect(new Set(r.issues.map((i) => i.kind))).toEqual(
      new Set([
        "invalid-json",
        "empty-line",
        "not-object",
        "bad-role",
        "wrong-type",
        "bad-alternation",
        "bad-image-wh",
        "image-wh-count",
        "placeholder-mismatch",
        "path-escapes",
        "missing-image",
        "unreadable-image",
        "image-wh-mismatch",
        "ends-on-human",
        "starts-with-gpt",
        "image-and-video",
      ]),
    );
  });
});
