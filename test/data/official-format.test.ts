/**
 * The official InternVL meta format (`root`, `data_augment`, `length`) and record sizes
 * (`width`/`height`, `width_list`/`height_list`) read next to tessera's own, and lone JSONLs.
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { checkMeta } from "../../src/data/check.ts";
import { fillWh } from "../../src/data/fillwh.ts";
import { loadMeta, loadMetaChecked } from "../../src/data/meta.ts";
import { validateRecord } from "../../src/data/record.ts";
import { openCacheTable, prepareCache } from "../../src/plan/cache.ts";
import { buildPlan, type Plan } from "../../src/plan/plan.ts";
import { CHAR_MAKER, removeTemp, tinyModel, track } from "../plan/helpers.ts";
import { png, tempDir, write } from "./fixtures.ts";

let model: string;
beforeAll(() => {
  model = tinyModel();
});
afterAll(removeTemp);

const SIZES: [number, number][] = [
  [40, 90],
  [120, 30],
  [64, 64],
  [200, 50],
];

/**
 * One folder holding the same three datasets twice: official style (meta in shell/data,
 * `root` and `annotation` relative to the working directory `work`) and tessera style.
 */
function twoStyles(): { work: string; official: string; today: string } {
  const work = track(tempDir("tessera-official-"));
  for (let i = 0; i < SIZES.length; i++)
    write(join(work, "playground/data/docs", `${i}.png`), png(...SIZES[i]));
  const single: Record<string, unknown>[] = [];
  const multi: Record<string, unknown>[] = [];
  const text: Record<string, unknown>[] = [];
  for (let i = 0; i < 12; i++) {
    const k = i % SIZES.length;
    single.push({
      id: i,
      image: `${k}.png`,
      conversations: [
        { from: "human", value: `<image>\nwhat is ${"x".repeat(i)}?` },
        { from: "gpt", value: `answer ${i}` },
      ],
      width: SIZES[k][0],
      height: SIZES[k][1],
    });
    const pair = [k, (k + 1) % SIZES.length];
    multi.push({
      id: i,
      image: pair.map((j) => `${j}.png`),
      conversations: [
        { from: "human", value: `<image>\n<image>\ncompare ${i}` },
        { from: "gpt", value: "y".repeat(i + 1) },
      ],
      width_list: pair.map((j) => SIZES[j][0]),
      height_list: pair.map((j) => SIZES[j][1]),
    });
    text.push({
      id: i,
      conversations: [
        { from: "human", value: `tell ${i}` },
        { from: "gpt", value: "z".repeat(2 * i + 1) },
      ],
    });
  }
  const jsonl = (rows: Record<string, unknown>[]) =>
    `${rows.map((r) => JSON.stringify(r)).join("\n")}\n`;
  write(join(work, "playground/opensource/single.jsonl"), jsonl(single));
  write(join(work, "playground/opensource/multi.jsonl"), jsonl(multi));
  write(join(work, "playground/opensource/text.jsonl"), jsonl(text));
  const official = write(
    join(work, "shell/data/finetune.json"),
    JSON.stringify(
      {
        single: {
          root: "playground/data/docs/",
          annotation: "playground/opensource/single.jsonl",
          data_augment: false,
          repeat_time: 1,
          length: 12,
        },
        multi: {
          root: "playground/data/docs/",
          annotation: "playground/opensource/multi.jsonl",
          data_augment: false,
          max_dynamic_patch: 4,
          repeat_time: 2,
          length: 12,
        },
        text: {
          root: "",
          annotation: "playground/opensource/text.jsonl",
          data_augment: false,
          repeat_time: 0.5,
          length: 12,
        },
      },
      null,
      2,
    ),
  );
  // tessera's style: image_wh, paths relative to the meta file.
  const toWh = (r: Record<string, unknown>) => {
    const { width, height, width_list, height_list, ...rest } = r;
    if (width !== undefined) return { ...rest, image_wh: [[width, height]] };
    if (width_list !== undefined)
      return {
        ...rest,
        image_wh: (width_list as number[]).map((w, j) => [w, (height_list as number[])[j]]),
      };
    return rest;
  };
  write(join(work, "today/single.jsonl"), jsonl(single.map(toWh)));
  write(join(work, "today/multi.jsonl"), jsonl(multi.map(toWh)));
  write(join(work, "today/text.jsonl"), jsonl(text));
  const today = write(
    join(work, "today/meta.json"),
    JSON.stringify({
      single: { media_root: "../playground/data/docs", annotation: "single.jsonl" },
      multi: {
        media_root: "../playground/data/docs",
        annotation: "multi.jsonl",
        max_dynamic_patch: 4,
        repeat_time: 2,
      },
      text: { media_root: "", annotation: "text.jsonl", repeat_time: 0.5 },
    }),
  );
  return { work, official, today };
}

function planArrays(p: Plan): Record<string, number[]> {
  return {
    mbOffset: [...p.mbOffset],
    rowOffset: [...p.rowOffset],
    pieceSample: [...p.pieceSample],
    pieceStart: [...p.pieceStart],
    pieceLength: [...p.pieceLength],
    pieceLearned: [...p.pieceLearned],
    rowTiles: [...p.rowTiles],
  };
}

describe("the official meta format", () => {
  it("checks clean and plans to the same samples as the same data in tessera's format", async () => {
    const { work, official, today } = twoStyles();
    const report = await checkMeta(official, { cwd: work, workers: 1 });
    expect(report.issues).toEqual([]);
    expect(report.errorCount).toBe(0);
    expect(report.datasets.map((d) => [d.name, d.records, d.missingImageWh])).toEqual([
      ["single", 12, 0],
      ["multi", 12, 0],
      ["text", 12, 0],
    ]);
    expect((await checkMeta(today, { workers: 1 })).errorCount).toBe(0);

    const a = await loadMeta(official, { cwd: work });
    const b = await loadMeta(today);
    expect(a.map((s) => [s.mediaRoot, s.annotation, s.repeatTime])).toEqual([
      [join(work, "playground/data/docs"), join(work, "playground/opensource/single.jsonl"), 1],
      [join(work, "playground/data/docs"), join(work, "playground/opensource/multi.jsonl"), 2],
      [work, join(work, "playground/opensource/text.jsonl"), 0.5],
    ]);
    expect(a[1].extra).toEqual({ data_augment: false, length: 12, max_dynamic_patch: 4 });

    const plans: Plan[] = [];
    for (const [specs, dir] of [
      [a, "cache-official"],
      [b, "cache-today"],
    ] as const) {
      const cacheDir = join(work, dir);
      const r = await prepareCache({
        meta: specs,
        model,
        maxLength: 4096,
        cacheDir,
        workers: 0,
        makerModule: CHAR_MAKER,
      });
      expect(r.manifest.samples).toBe(36);
      plans.push(
        buildPlan(openCacheTable(cacheDir), {
          worldSize: 2,
          microBatchSize: 1,
          gradAccum: 2,
          sampler: "length",
          packing: "soft",
          packMaxLength: 512,
          seed: 5,
          epochs: 1,
        }),
      );
    }
    expect(plans[0].totalSteps).toBeGreaterThan(0);
    // 12 + 2 × 12 + 6 samples in one epoch, with images tiled from width/height.
    expect(plans[0].stats).toEqual(plans[1].stats);
    expect(planArrays(plans[0])).toEqual(planArrays(plans[1]));
    const t0 = openCacheTable(join(work, "cache-official"));
    const t1 = openCacheTable(join(work, "cache-today"));
    expect([...t0.tiles]).toEqual([...t1.tiles]);
    expect([...t0.tiles].some((n) => n > 1)).toBe(true);
  });

  it("warns on data_augment, on a length that is not the line count, and on unknown keys, by line", async () => {
    const { work, official } = twoStyles();
    const doc = JSON.parse(readFileSync(official, "utf8"));
    doc.single.data_augment = true;
    doc.multi.length = 13;
    doc.text.sampling = "random";
    writeFileSync(official, JSON.stringify(doc, null, 2));
    const r = await checkMeta(official, { cwd: work, workers: 1 });
    expect(r.errorCount).toBe(0);
    const kinds = r.issues.map((i) => [i.kind, i.field, i.line, i.severity]);
    expect(kinds).toEqual([
      ["meta-data-augment", "single.data_augment", 5, "warning"],
      ["meta-length-mismatch", "multi.length", 15, "warning"],
      ["meta-unknown-key", "text.sampling", 23, "warning"],
    ]);
    expect(r.issues[1].message).toMatch(/length 13 differs from the 12 lines/);
    // Commands other than check print the warnings, one line each.
    const warned: string[] = [];
    await loadMeta(official, { cwd: work, warn: (l) => warned.push(l) });
    expect(warned).toHaveLength(2);
    expect(warned[0]).toMatch(/finetune\.json:5: warning .*no image augmentation/);
  });

  it("resolves root against the working directory and names both places when an image is missing", async () => {
    const { work, official } = twoStyles();
    // From another working directory the root is not there: the meta-relative place is named too.
    const elsewhere = track(tempDir("tessera-cwd-"));
    const { issues } = await loadMetaChecked(official, { cwd: elsewhere });
    expect(issues.map((i) => i.kind)).toContain("meta-annotation-missing");
    const miss = issues.find((i) => i.field === "single.root")!;
    expect(miss.message).toContain(join(elsewhere, "playground/data/docs"));
    expect(miss.message).toContain(join(work, "shell/data/playground/data/docs"));

    // Another working directory has the root folder but not the image: the error names the
    // place it looked (working directory) and the one relative to the meta file.
    const cwd2 = join(work, "other");
    mkdirSync(join(cwd2, "playground/data/docs"), { recursive: true });
    const doc = JSON.parse(readFileSync(official, "utf8"));
    doc.single.annotation = join(work, "playground/opensource/single.jsonl");
    writeFileSync(official, JSON.stringify({ single: doc.single }));
    const r = await checkMeta(official, { cwd: cwd2, workers: 1 });
    const img = r.issues.find((i) => i.kind === "missing-image")!;
    expect(img.found).toBe(join(cwd2, "playground/data/docs/0.png"));
    expect(img.message).toContain("working directory");
    expect(img.message).toContain(
      `relative to the meta file it would be ${join(work, "shell/data/playground/data/docs/0.png")}`,
    );
  });

  it("fill-wh writes a tessera-style meta file for an official one: root becomes media_root", async () => {
    const { work, official } = twoStyles();
    // Records without sizes: fill-wh reads them from the image headers.
    const single = join(work, "playground/opensource/single.jsonl");
    const stripped = readFileSync(single, "utf8")
      .trim()
      .split("\n")
      .map((l) => {
        const { width: _w, height: _h, ...r } = JSON.parse(l);
        return JSON.stringify(r);
      });
    writeFileSync(single, `${stripped.join("\n")}\n`);
    const r = await fillWh(official, { cwd: work });
    expect(r.errorCount).toBe(0);
    const entry = r.meta.single as Record<string, unknown>;
    expect(entry.root).toBeUndefined();
    expect(entry).toMatchObject({
      media_root: join(work, "playground/data/docs"),
      annotation: join(work, "playground/opensource/single_wh.jsonl"),
      data_augment: false,
      length: 12,
    });
    const out = write(join(work, "filled.json"), JSON.stringify(r.meta));
    const again = await checkMeta(out, { workers: 1 });
    expect(again.errorCount).toBe(0);
    expect(again.datasets[0].missingImageWh).toBe(0);
  });

  it("refuses root together with media_root", async () => {
    const { work, official } = twoStyles();
    const doc = JSON.parse(readFileSync(official, "utf8"));
    doc.single.media_root = "x";
    writeFileSync(official, JSON.stringify(doc, null, 2));
    const { specs, issues } = await loadMetaChecked(official, { cwd: work });
    expect(specs.map((s) => s.name)).toEqual(["multi", "text"]);
    expect(issues[0].kind).toBe("meta-root-and-media-root");
    expect(issues[0].line).toBe(3);
  });
});

describe("record sizes in the official spellings", () => {
  const rec = (extra: Record<string, unknown>, image: unknown = "a.png") => ({
    image,
    conversations: [
      { from: "human", value: "q" },
      { from: "gpt", value: "a" },
    ],
    ...extra,
  });
  it("reads width/height and width_list/height_list; image_wh wins when both are there", () => {
    expect(validateRecord(rec({ width: 10, height: 20 }), "f", 1).record?.imageWh).toEqual([
      [10, 20],
    ]);
    expect(
      validateRecord(rec({ width_list: [1, 2], height_list: [3, 4] }, ["a", "b"]), "f", 1).record
        ?.imageWh,
    ).toEqual([
      [1, 3],
      [2, 4],
    ]);
    expect(
      validateRecord(rec({ width: 10, height: 20, image_wh: [[5, 6]] }), "f", 1).record?.imageWh,
    ).toEqual([[5, 6]]);
  });
  it.each([
    [{ width: 10 }, "a.png", "height", "bad-image-wh"],
    [{ width: 0, height: 2 }, "a.png", "width", "bad-image-wh"],
    [{ width: 3, height: 2 }, ["a", "b"], "width", "image-wh-count"],
    [{ width_list: [1], height_list: [2] }, ["a", "b"], "width_list", "image-wh-count"],
    [{ width_list: [1, 2] }, ["a", "b"], "height_list", "wrong-type"],
    [{ width_list: [1, -2], height_list: [2, 2] }, ["a", "b"], "width_list[1]", "bad-image-wh"],
  ])("names a bad size %j by field", (extra, image, field, kind) => {
    const v = validateRecord(rec(extra, image), "f.jsonl", 7);
    expect(v.record).toBeUndefined();
    expect(v.issues[0]).toMatchObject({ file: "f.jsonl", line: 7, field, kind });
  });
});
