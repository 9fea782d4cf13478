import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseRecordLine } from "../../src/data/jsonl.ts";
import { LineIndex } from "../../src/explore/lines.ts";
import { type Explorer, startExplorer } from "../../src/explore/server.ts";
import { loadModelInfo } from "../../src/text/model-info.ts";
import { renderPreview } from "../../src/text/preview.ts";
import { makeSampleContext } from "../../src/text/sample.ts";
import { loadTokenizer, type TextTokenizer } from "../../src/text/tokenizer.ts";
import { makeModelFolder } from "../helpers/model-folder.ts";

let root: string;
let model: string;
let tokenizer: TextTokenizer;
let explorer: Explorer;
const records = [
  {
    id: "a",
    image: "img/a.png",
    image_wh: [[300, 100]],
    conversations: [
      { from: "human", value: "<image>\nWhat is written?" },
      { from: "gpt", value: "Hello there." },
    ],
  },
  { id: "b", image: "img/a.png", conversations: [{ from: "human", value: "no answer" }] },
  {
    id: "c",
    video: "clip.mp4",
    conversations: [
      { from: "human", value: "What happens?" },
      { from: "gpt", value: "A fade." },
    ],
  },
];

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), "tessera-explore-"));
  model = makeModelFolder({ vocab: "qwen2", imageSize: 56, maxDynamicPatch: 6 });
  tokenizer = await loadTokenizer(model);
  mkdirSync(join(root, "media", "img"), { recursive: true });
  writeFileSync(join(root, "media", "img", "a.png"), "not really a png");
  writeFileSync(join(root, "media", "clip.mp4"), "not really a video");
  // CRLF, a blank line and no final newline: lines are still found by number.
  writeFileSync(
    join(root, "a.jsonl"),
    `${records
      .slice(0, 2)
      .map((r) => JSON.stringify(r))
      .join("\r\n")}\r\n\r\n${JSON.stringify(records[2])}`,
  );
  writeFileSync(
    join(root, "meta.json"),
    JSON.stringify({
      docs: { media_root: "media", annotation: "a.jsonl", video_frames: 2 },
      // The same lines with the dataset's own tile budget, which prepare would plan with.
      small: { media_root: "media", annotation: "a.jsonl", max_dynamic_patch: 2 },
    }),
  );
  explorer = await startExplorer({
    meta: join(root, "meta.json"),
    model: loadModelInfo(model),
    tokenizer,
  });
});

afterAll(() => explorer?.close());

const get = (path: string) => fetch(new URL(path, explorer.url));

describe("data explore", () => {
  it("indexes lines of big files for random access", async () => {
    const idx = await LineIndex.build(join(root, "a.jsonl"));
    expect(idx.count).toBe(4);
    expect(JSON.parse(idx.line(1)).id).toBe("b");
    expect(idx.line(2)).toBe("");
    expect(JSON.parse(idx.line(3)).id).toBe("c");
  });

  it("serves the page and the datasets", async () => {
    expect(await (await get("/")).text()).toContain("tessera explorer");
    const d = await (await get("/api/datasets")).json();
    expect(d.datasets.map((x: { name: string }) => x.name)).toEqual(["docs", "small"]);
  });

  it("shows a record as data preview does: segments, counts, tile grid", async () => {
    const r = await (await get("/api/sample?dataset=docs&index=0")).json();
    expect(r).toMatchObject({ dataset: "docs", index: 0, of: 4, line: 1, issues: [] });
    const info = loadModelInfo(model);
    const ctx = makeSampleContext({ tokenizer, model: info, mediaRoot: join(root, "media") });
    const cli = JSON.parse(
      await renderPreview(
        parseRecordLine({ line: 1, text: JSON.stringify(records[0]), unterminated: false }, "a")
          .record!,
        { ctx, model: info, tokenizer },
        "json",
      ),
    );
    expect(r.preview.text).toBe(cli.text);
    expect(r.preview.segments).toEqual(cli.segments);
    expect([r.preview.length, r.preview.learned]).toEqual([cli.length, cli.learned]);
    expect(r.preview.images[0]).toMatchObject({ cols: 3, rows: 1, thumbnail: true, tiles: 4 });
    expect(r.preview.inputIds).toBeUndefined(); // the page needs no ids
    // A dataset's own max_dynamic_patch: 300×100 in at most 2 tiles.
    const small = await (await get("/api/sample?dataset=small&index=0")).json();
    expect(small.preview.images[0]).toMatchObject({ cols: 2, rows: 1, thumbnail: true, tiles: 3 });
  });

  it("shows a bad record's problems, a video's frames, and refuses lines past the end", async () => {
    const bad = await (await get("/api/sample?dataset=docs&index=1")).json();
    expect(bad.preview).toBeUndefined();
    expect(bad.issues.some((i: { field: string }) => i.field.startsWith("conversations"))).toBe(
      true,
    );
    const blank = await (await get("/api/sample?dataset=docs&index=2")).json();
    expect(blank.issues[0].message).toMatch(/empty line/);
    const video = await (await get("/api/sample?dataset=docs&index=3")).json();
    expect(video.preview.images.map((im: { frame: number }) => im.frame)).toEqual([0, 1]);
    const past = await get("/api/sample?dataset=docs&index=4");
    expect(past.status).toBe(404);
    expect((await past.json()).error).toMatch(/4 lines/);
  });

  it("serves media inside media_root only", async () => {
    const ok = await get(
      `/media?dataset=docs&path=${encodeURIComponent(join(root, "media", "img", "a.png"))}`,
    );
    expect(ok.status).toBe(200);
    expect(ok.headers.get("content-type")).toBe("image/png");
    expect(await ok.text()).toBe(readFileSync(join(root, "media", "img", "a.png"), "utf8"));
    const out = await get(`/media?dataset=docs&path=${encodeURIComponent(join(root, "a.jsonl"))}`);
    expect(out.status).toBe(403);
    const missing = await get(
      `/media?dataset=docs&path=${encodeURIComponent(join(root, "media", "x.png"))}`,
    );
    expect(missing.status).toBe(404);
  });
});

describe("data explore on a changing disk", () => {
  it("refuses a symlink swapped in after the file was served", async () => {
    const media = join(root, "media", "img");
    writeFileSync(join(media, "b.png"), "inside");
    writeFileSync(join(root, "secret.txt"), "outside media_root");
    const url = `/media?dataset=docs&path=${encodeURIComponent(join(root, "media", "img", "b.png"))}`;
    // Looked at often enough for any per-directory shortcut to set in.
    for (let i = 0; i < 70; i++) expect((await get(url)).status).toBe(200);
    rmSync(join(media, "b.png"));
    symlinkSync(join(root, "secret.txt"), join(media, "b.png"));
    const r = await get(url);
    expect(r.status).toBe(403);
    expect(await r.text()).not.toContain("outside media_root");
    // a directory swapped for a link is refused the same way
    mkdirSync(join(root, "elsewhere"));
    writeFileSync(join(root, "elsewhere", "c.png"), "outside media_root");
    symlinkSync(join(root, "elsewhere"), join(root, "media", "sub"));
    const viaDir = await get(
      `/media?dataset=docs&path=${encodeURIComponent(join(root, "media", "sub", "c.png"))}`,
    );
    expect(viaDir.status).toBe(403);
  });
});
