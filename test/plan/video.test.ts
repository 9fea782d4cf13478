import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { prepareCache } from "../../src/plan/cache.ts";
import { makeModelFolder } from "../helpers/model-folder.ts";

function column(dir: string, file: string): Int32Array {
  return new Int32Array(Uint8Array.from(readFileSync(join(dir, file))).buffer);
}

describe("video records in the prepared cache", () => {
  it("plan the run's frame count per video, or the dataset's own, one tile each", async () => {
    const root = mkdtempSync(join(tmpdir(), "tessera-video-"));
    const model = makeModelFolder({ vocab: "qwen2", template: "Hermes-2", imageSize: 56 });
    mkdirSync(join(root, "v"));
    const records = Array.from({ length: 5 }, (_, i) => {
      writeFileSync(join(root, "v", `${i}.mp4`), "");
      return JSON.stringify({
        id: i,
        video: `${i}.mp4`,
        conversations: [
          { from: "human", value: "What happens?" },
          { from: "gpt", value: `Scene ${i}.` },
        ],
      });
    });
    writeFileSync(join(root, "a.jsonl"), `${records.join("\n")}\n`);
    const text = [
      { from: "human", value: "Hi" },
      { from: "gpt", value: "Hello" },
    ];
    writeFileSync(join(root, "t.jsonl"), `${JSON.stringify({ conversations: text })}\n`);
    const media = join(root, "v");
    const meta = join(root, "meta.json");
    writeFileSync(
      meta,
      JSON.stringify({
        run: { media_root: media, annotation: "a.jsonl" },
        own: { media_root: media, annotation: "a.jsonl", video_frames: 2 },
        text: { annotation: "t.jsonl" },
      }),
    );
    const o = { meta, model, maxLength: 4096, workers: 0 };
    const r = await prepareCache({ ...o, cacheDir: join(root, "c"), videoFrames: 4 });
    const [run, own] = r.manifest.datasets;
    expect(run.images).toBe(5 * 4);
    expect(own.images).toBe(5 * 2);
    const d = join(root, "c", run.dir);
    expect(Array.from(column(d, "img_frame.i32").subarray(0, 8))).toEqual([0, 1, 2, 3, 0, 1, 2, 3]);
    expect(Array.from(column(d, "img_tiles.i32")).every((t) => t === 1)).toBe(true);
    const paths = readFileSync(join(d, "img_paths.u8"), "utf8");
    expect(paths.startsWith(`${join(media, "0.mp4")}`.repeat(4))).toBe(true);
    // Each frame is "FrameK: <img>…</img>": 2 more frames cost 2 tiles of tokens and a label.
    const lenRun = column(d, "length.i32")[0];
    const lenOwn = column(join(root, "c", own.dir), "length.i32")[0];
    expect(lenRun - lenOwn).toBeGreaterThanOrEqual(2 * (4 + 2));
    expect([run.videos, own.videos, r.manifest.datasets[2].videos]).toEqual([5, 5, 0]);
    // A new frame count rebuilds the datasets it changes: with videos and no count of their own.
    const again = await prepareCache({ ...o, cacheDir: join(root, "c"), videoFrames: 3 });
    expect(again.rebuilt).toEqual(["run"]);
    expect(again.reused).toEqual(["own", "text"]);
    expect(again.manifest.datasets[0].images).toBe(5 * 3);
    // A bad per-dataset value names the meta file and the dataset.
    writeFileSync(
      meta,
      JSON.stringify({ own: { media_root: media, annotation: "a.jsonl", video_frames: 0 } }),
    );
    await expect(prepareCache({ ...o, cacheDir: join(root, "c") })).rejects.toThrow(
      /meta\.json:1: .*own\.video_frames.*at least 1/s,
    );
  });
});
