import { spawn } from "node:child_process";
import { existsSync, readdirSync, readFileSync, utimesSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openCacheTable, prepareCache } from "../../src/plan/cache.ts";
import { PACKAGE_ROOT } from "../../src/util/paths.ts";
import { CHAR_MAKER, removeTemp, tinyModel, writeDatasets } from "./helpers.ts";

let model: string;
beforeAll(() => {
  model = tinyModel();
});

/**
 * Every file of a cache folder, as bytes (dataset folders named by fingerprint); the times
 * files were written (recorded for the fast integrity check) left out.
 */
function cacheBytes(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const d of readdirSync(dir).sort()) {
    if (d === "manifest.json") out[d] = readFileSync(join(dir, d), "utf8");
    else
      for (const f of readdirSync(join(dir, d)).sort())
        out[`${d}/${f}`] =
          f === "dataset.json"
            ? readFileSync(join(dir, d, f), "utf8").replace(/"mtime_ns": "\d+"/g, "")
            : readFileSync(join(dir, d, f)).toString("base64");
  }
  return out;
}

describe("prepared cache", () => {
  it("writes the same bytes with worker threads as in one thread, and counts what it skipped", async () => {
    const { root, meta } = writeDatasets([
      { name: "text", n: 300, kind: "text", badAt: [7, 100] },
      { name: "image", n: 200, kind: "image" },
    ]);
    const a = await prepareCache({
      meta,
      model,
      maxLength: 4096,
      cacheDir: join(root, "a"),
      workers: 0,
      makerModule: CHAR_MAKER,
    });
    const b = await prepareCache({
      meta,
      model,
      maxLength: 4096,
      cacheDir: join(root, "b"),
      workers: 2,
      batchSize: 16,
      makerModule: CHAR_MAKER,
    });
    expect(a.manifest.samples).toBe(500);
    expect(b.manifest.fingerprint).toBe(a.manifest.fingerprint);
    expect(a.manifest.datasets[0].skipped).toBe(2);
    expect(a.manifest.datasets[1].images).toBe(200);
    expect(cacheBytes(join(root, "b"))).toEqual(cacheBytes(join(root, "a")));
    const t = openCacheTable(join(root, "a"));
    expect(t.multimodal[299]).toBe(0);
    expect(t.multimodal[300]).toBe(1);
    expect(t.tiles[300]).toBeGreaterThan(0);
    // lines are 1-based and count the bad lines: record 7 of "text" sits on line 9
    const line = new Int32Array(
      Uint8Array.from(readFileSync(join(root, "a", a.manifest.datasets[0].dir, "line.i32"))).buffer,
    );
    expect(Array.from(line.subarray(0, 9))).toEqual([1, 2, 3, 4, 5, 6, 7, 9, 10]);
  });

  it("reads BOM, CRLF line ends, blank lines and a missing final newline as data check does", async () => {
    const { root, meta } = writeDatasets([{ name: "image", n: 60, kind: "image" }]);
    const file = join(root, "image.jsonl");
    const lines = readFileSync(file, "utf8").trimEnd().split("\n");
    const opts = { model, maxLength: 4096, makerModule: CHAR_MAKER, batchSize: 16 };
    const clean = await prepareCache({ ...opts, meta, cacheDir: join(root, "clean"), workers: 1 });
    // BOM, CRLF everywhere and no newline after the last record: the same samples and lines.
    writeFileSync(file, `\uFEFF${lines.join("\r\n")}`);
    const crlf = await prepareCache({ ...opts, meta, cacheDir: join(root, "crlf"), workers: 1 });
    const cols = (r: typeof clean, dir: string) => {
      const d = join(root, dir, r.manifest.datasets[0].dir);
      return ["input_ids.i32", "labels.i32", "line.i32", "img_w.i32"].map((f) =>
        readFileSync(join(d, f)).toString("base64"),
      );
    };
    expect(crlf.manifest.samples).toBe(60);
    expect(cols(crlf, "crlf")).toEqual(cols(clean, "clean"));
    // A blank line is skipped with a warning, not counted as an error; later lines shift.
    writeFileSync(file, `${lines.slice(0, 10).join("\n")}\n\n${lines.slice(10).join("\n")}\n`);
    const blank = await prepareCache({ ...opts, meta, cacheDir: join(root, "blank"), workers: 0 });
    expect(blank.manifest.samples).toBe(60);
    expect(blank.manifest.datasets[0].skipped).toBe(0);
    const d = join(root, "blank", blank.manifest.datasets[0].dir);
    const line = new Int32Array(Uint8Array.from(readFileSync(join(d, "line.i32"))).buffer);
    expect(Array.from(line.subarray(8, 13))).toEqual([9, 10, 12, 13, 14]);
  });

  it("rebuilds only the datasets whose inputs changed", async () => {
    const { root, meta } = writeDatasets([
      { name: "one", n: 50, kind: "text" },
      { name: "two", n: 50, kind: "image" },
    ]);
    const cacheDir = join(root, "cache");
    const first = await prepareCache({
      meta,
      model,
      maxLength: 4096,
      cacheDir,
      workers: 0,
      makerModule: CHAR_MAKER,
    });
    expect(first.rebuilt).toEqual(["one", "two"]);
    const again = await prepareCache({
      meta,
      model,
      maxLength: 4096,
      cacheDir,
      workers: 0,
      makerModule: CHAR_MAKER,
    });
    expect(again.rebuilt).toEqual([]);
    expect(again.manifest.fingerprint).toBe(first.manifest.fingerprint);
    // touch "two": only it is rebuilt, and its old folder is gone
    const ann = join(root, "two.jsonl");
    const text = readFileSync(ann, "utf8");
    writeFileSync(ann, `${text}${text.split("\n")[0]}\n`);
    utimesSync(ann, new Date(), new Date(Date.now() + 5000));
    const third = await prepareCache({
      meta,
      model,
      maxLength: 4096,
      cacheDir,
      workers: 0,
      makerModule: CHAR_MAKER,
    });
    expect(third.rebuilt).toEqual(["two"]);
    expect(third.manifest.datasets[1].samples).toBe(51);
    expect(third.manifest.datasets[0].dir).toBe(first.manifest.datasets[0].dir);
    expect(existsSync(join(cacheDir, first.manifest.datasets[1].dir))).toBe(false);
    // a different max_length changes every dataset's fingerprint
    const fourth = await prepareCache({
      meta,
      model,
      maxLength: 2048,
      cacheDir,
      workers: 0,
      makerModule: CHAR_MAKER,
    });
    expect(fourth.rebuilt).toEqual(["one", "two"]);
  });

  it("a failed prepare leaves the old cache intact and names file:line", async () => {
    const { root, meta } = writeDatasets([{ name: "img", n: 40, kind: "image" }]);
    const cacheDir = join(root, "cache");
    const ok = await prepareCache({
      meta,
      model,
      maxLength: 4096,
      cacheDir,
      workers: 0,
      makerModule: CHAR_MAKER,
    });
    const before = cacheBytes(cacheDir);
    // a record without image_wh: the sample maker refuses it
    const ann = join(root, "img.jsonl");
    const lines = readFileSync(ann, "utf8").trimEnd().split("\n");
    const rec = JSON.parse(lines[30]);
    delete rec.image_wh;
    lines[30] = JSON.stringify(rec);
    writeFileSync(ann, `${lines.join("\n")}\n`);
    await expect(
      prepareCache({ meta, model, maxLength: 4096, cacheDir, workers: 0, makerModule: CHAR_MAKER }),
    ).rejects.toThrow(/img\.jsonl:31: image_wh is required/);
    expect(cacheBytes(cacheDir)).toEqual(before);
    expect(openCacheTable(cacheDir).manifest.fingerprint).toBe(ok.manifest.fingerprint);
  });

  it("a flipped byte in a cached column is refused on load, naming the file", async () => {
    const { root, meta } = writeDatasets([{ name: "t", n: 30, kind: "text" }]);
    const cacheDir = join(root, "cache");
    const r = await prepareCache({
      meta,
      model,
      maxLength: 4096,
      cacheDir,
      workers: 0,
      makerModule: CHAR_MAKER,
    });
    const dir = join(cacheDir, r.manifest.datasets[0].dir);
    const info = JSON.parse(readFileSync(join(dir, "dataset.json"), "utf8"));
    for (const c of Object.values(info.columns) as { sha256: string }[])
      expect(c.sha256).toMatch(/^[0-9a-f]{64}$/);
    const file = join(dir, info.columns.length.file);
    const raw = readFileSync(file);
    raw[5] ^= 0x01;
    writeFileSync(file, raw);
    expect(() => openCacheTable(cacheDir)).toThrow(
      new RegExp(`${info.columns.length.file}: its sha256 differs`),
    );
  });

  it("a prepare killed mid-write leaves the old cache readable; the next one cleans up", async () => {
    const { root, meta } = writeDatasets([{ name: "big", n: 50, kind: "text" }]);
    const cacheDir = join(root, "cache");
    const ok = await prepareCache({
      meta,
      model,
      maxLength: 100000,
      cacheDir,
      workers: 0,
      makerModule: CHAR_MAKER,
    });
    // grow the dataset so the next prepare takes a while, and kill it once its temporary folder exists
    const big = `${readFileSync(join(root, "big.jsonl"), "utf8").trimEnd()}\n`.repeat(400);
    writeFileSync(join(root, "big.jsonl"), big);
    const script = `import { prepareCache } from ${JSON.stringify(join(PACKAGE_ROOT, "src/plan/cache.ts"))};
      await prepareCache({ meta: ${JSON.stringify(meta)}, model: ${JSON.stringify(model)}, maxLength: 100000, cacheDir: ${JSON.stringify(cacheDir)}, workers: 0, batchSize: 8, makerModule: ${JSON.stringify(CHAR_MAKER)} });`;
    writeFileSync(join(root, "run.mts"), script);
    const child = spawn(process.execPath, ["--import", "tsx", join(root, "run.mts")], {
      cwd: PACKAGE_ROOT,
      stdio: "ignore",
    });
    const exited = new Promise((res) => child.on("exit", res));
    const t0 = Date.now();
    while (!readdirSync(cacheDir).some((f) => f.includes(".tmp-")) && Date.now() - t0 < 20000)
      await new Promise((r) => setTimeout(r, 20));
    child.kill("SIGKILL");
    await exited;
    expect(readdirSync(cacheDir).some((f) => f.includes(".tmp-"))).toBe(true);
    const t = openCacheTable(cacheDir);
    expect(t.manifest.fingerprint).toBe(ok.manifest.fingerprint);
    expect(t.lengths.length).toBe(50);
    const next = await prepareCache({
      meta,
      model,
      maxLength: 100000,
      cacheDir,
      workers: 0,
      makerModule: CHAR_MAKER,
    });
    expect(next.manifest.samples).toBe(50 * 400);
    expect(readdirSync(cacheDir).filter((f) => f.includes(".tmp-"))).toEqual([]);
  });
});

afterAll(removeTemp);
