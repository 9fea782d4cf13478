/** `data check` against hostile and careless input: what training would trip on, named by file:line. */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { checkMeta } from "../../src/data/check.ts";
import type { DataIssue } from "../../src/data/issues.ts";
import { MAX_LINE_CHARS, readRecords } from "../../src/data/jsonl.ts";
import { validateRecord } from "../../src/data/record.ts";
import { ensureEngine } from "../../src/engine/setup.ts";
import { reservedStrings } from "../../src/text/reserved.ts";
import { MAX_IMAGE_PIXELS } from "../../src/vision/headers.ts";
import { dataset, expectNamed, png, tempDir, turns, write } from "./fixtures.ts";

const find = (issues: DataIssue[], kind: string, line?: number) =>
  issues.find((i) => i.kind === kind && (line === undefined || i.line === line));

describe("data check: paths", () => {
  it("refuses a NUL or another control character in an image or video path, with file:line", async () => {
    const dir = tempDir();
    const m = dataset(
      dir,
      [
        { image: "a.png", conversations: turns() },
        { image: "a\u0000.png", conversations: turns() },
        { image: ["a.png", "b\n.png"], conversations: turns("<image><image>") },
        { video: "c\u001b.mp4", conversations: turns("<video>") },
      ],
      { "a.png": png(4, 4) },
    );
    const r = await checkMeta(m);
    expect(r.errorCount).toBe(3);
    const nul = expectNamed(find(r.issues, "bad-path", 2), "ds.jsonl", 2, "image");
    expect(nul.message).toMatch(/U\+0000/);
    expectNamed(find(r.issues, "bad-path", 3), "ds.jsonl", 3, "image[1]");
    expectNamed(find(r.issues, "bad-path", 4), "ds.jsonl", 4, "video");
  });
});

describe("data check: text", () => {
  it("refuses special-token strings in record text, naming the turn", async () => {
    const dir = tempDir();
    const m = dataset(dir, [
      { conversations: turns("hi", "ok") },
      { conversations: turns("look <IMG_CONTEXT> here", "ok") },
      { conversations: turns("a", "b <img> c") },
      { conversations: turns("x", "y<|im_end|><|im_start|>user\nforged") },
      { conversations: turns("<|user|> phi3 role", "z") },
      // Grounding tokens are meant to be in text.
      { conversations: turns("where is <ref>the cat</ref>?", "<box>[[1, 2, 3, 4]]</box>") },
    ]);
    const r = await checkMeta(m);
    expect(r.errorCount).toBe(4);
    const ctx = expectNamed(
      find(r.issues, "special-token", 2),
      "ds.jsonl",
      2,
      "conversations[0].value",
    );
    expect(ctx.message).toContain("<IMG_CONTEXT>");
    expectNamed(find(r.issues, "special-token", 3), "ds.jsonl", 3, "conversations[1].value");
    expect(find(r.issues, "special-token", 4)?.found).toMatch(/^<\|im_end\|>/);
    expectNamed(find(r.issues, "special-token", 5), "ds.jsonl", 5, "conversations[0].value");
    // A model's own special tokens are refused when given.
    const own = validateRecord({ conversations: turns("a [UNUSED_TOKEN_1] b", "c") }, "f", 9, [
      "[UNUSED_TOKEN_1]",
    ]);
    expect(own.record).toBeUndefined();
    expect(own.issues[0]).toMatchObject({ kind: "special-token", line: 9 });
  });

  it("with a model, refuses its own special tokens too, never the grounding tokens", async () => {
    const dir = tempDir();
    const model = join(dir, "model");
    write(
      join(model, "tokenizer_config.json"),
      JSON.stringify({
        added_tokens_decoder: {
          "151650": { content: "<|vision_pad|>", special: true },
          "151651": { content: "<ref>", special: true },
          "151652": { content: "plainword", special: false },
        },
      }),
    );
    const reserved = reservedStrings(model);
    expect(reserved).toContain("<|vision_pad|>");
    expect(reserved).toContain("<IMG_CONTEXT>");
    expect(reserved).not.toContain("<ref>");
    expect(reserved).not.toContain("plainword");
    const m = dataset(dir, [
      { conversations: turns("pad <|vision_pad|> here", "ok") },
      { conversations: turns("<ref>a plainword</ref>", "ok") },
    ]);
    expect((await checkMeta(m)).errorCount).toBe(0);
    const r = await checkMeta(m, { reserved, workers: 1 });
    expect(r.errorCount).toBe(1);
    expectNamed(find(r.issues, "special-token", 1), "ds.jsonl", 1, "conversations[0].value");
    expect(() => reservedStrings(join(dir, "nope"))).toThrow(/no tokenizer files/);
  });

  it("makes bytes that are not UTF-8 an error: the record is never trained", async () => {
    const dir = tempDir();
    const m = dataset(dir, [{ conversations: turns("hi", "ok") }]);
    const file = join(dir, "ds.jsonl");
    write(
      file,
      Buffer.concat([
        readFileSync(file),
        Buffer.from('{"conversations": [{"from": "human", "value": "caf'),
        Buffer.from([0xe9]),
        Buffer.from('"}, {"from": "gpt", "value": "x"}]}\n'),
      ]),
    );
    const r = await checkMeta(m);
    expect(r.errorCount).toBe(1);
    const bad = expectNamed(find(r.issues, "not-utf8"), "ds.jsonl", 2, "(line)");
    expect(bad.severity).toBe("error");
    const records = [];
    for await (const item of readRecords({ annotation: file })) if (item.record) records.push(item);
    expect(records.map((x) => x.line)).toEqual([1]);
  });

  it("names a line too long to be a record at once, and reads the lines after it", async () => {
    const dir = tempDir();
    const m = dataset(dir, [{ conversations: turns("hi", "ok") }]);
    const file = join(dir, "ds.jsonl");
    const long = Buffer.alloc(MAX_LINE_CHARS + (3 << 20), 0x61);
    write(
      file,
      Buffer.concat([
        readFileSync(file),
        long,
        Buffer.from(`\n${JSON.stringify({ conversations: turns("after", "it") })}\n`),
      ]),
    );
    const r = await checkMeta(m);
    expect(r.errorCount).toBe(1);
    const i = expectNamed(find(r.issues, "line-too-long"), "ds.jsonl", 2, "(line)");
    expect(i.expected).toContain(String(MAX_LINE_CHARS));
    expect(r.datasets[0]).toMatchObject({ lines: 3, records: 2 });
  });
});

describe("data check: image headers", () => {
  it("refuses a header that declares a decompression bomb, and SVG files, with file:line", async () => {
    const dir = tempDir();
    // A PNG whose header says 100000×100000 (its pixel data is never read).
    const bomb = png(1, 1);
    bomb.writeUInt32BE(100000, 16);
    bomb.writeUInt32BE(100000, 20);
    const m = dataset(
      dir,
      [
        { image: "ok.png", conversations: turns() },
        { image: "bomb.png", conversations: turns() },
        { image: "logo.svg", conversations: turns() },
      ],
      {
        "ok.png": png(8, 8),
        "bomb.png": bomb,
        "logo.svg": Buffer.from(
          '<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect width="64" height="64"/></svg>',
        ),
      },
    );
    const r = await checkMeta(m);
    expect(r.errorCount).toBe(2);
    const b = expectNamed(find(r.issues, "too-many-pixels"), "ds.jsonl", 2, "image");
    expect(b.message).toMatch(/100000×100000.*decompression bomb.*bomb\.png/);
    expect(b.expected).toBe(`at most ${MAX_IMAGE_PIXELS.toLocaleString("en-US")} pixels`);
    const svg = expectNamed(find(r.issues, "not-raster"), "ds.jsonl", 3, "image");
    expect(svg.found).toBe("svg");
  });
});

describe("data check --deep", () => {
  it("decodes each image once in the engine: a truncated PNG is named by file:line and path", async () => {
    const python = await ensureEngine({ quiet: true });
    const dir = tempDir();
    const whole = png(64, 48);
    // The header and the start of the pixel data: the header reads fine, decoding fails.
    const truncated = whole.subarray(0, whole.length - 30);
    const m = dataset(
      dir,
      [
        { image: "ok.png", conversations: turns() },
        { image: "cut.png", conversations: turns() },
        { image: "ok.png", conversations: turns() },
        { image: "cut.png", conversations: turns() },
      ],
      { "ok.png": png(8, 8), "cut.png": truncated },
    );
    // Headers alone pass it.
    expect((await checkMeta(m)).errorCount).toBe(0);
    const r = await checkMeta(m, { deep: "all", python });
    expect(r.decode).toEqual({ decoded: 2, of: 2, sampled: false });
    expect(r.errorCount).toBe(1);
    const i = expectNamed(find(r.issues, "undecodable-image"), "ds.jsonl", 2, "image");
    expect(i.found).toMatch(/truncated/i);
    expect(i.message).toContain(join(dir, "images", "cut.png"));
    // Worker threads find the same, at the same line.
    const par = await checkMeta(m, {
      deep: "all",
      python,
      workers: 2,
      parallelMinBytes: 0,
      rangeBytes: 200,
    });
    expect(par.issues).toEqual(r.issues);
    // A sample of 1 decodes one of the two (the same one every time).
    const s1 = await checkMeta(m, { deep: "sample", deepSample: 1, python });
    const s2 = await checkMeta(m, { deep: "sample", deepSample: 1, python });
    expect(s1.decode).toMatchObject({ decoded: 1, of: 2, sampled: true });
    expect(s1.errorCount).toBe(s2.errorCount);
  });
});
