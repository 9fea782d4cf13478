/**
 * Record → sample throughput: short multimodal records (one image with image_wh, a question
 * and a short answer, unique texts) through the real Qwen2 BPE tokenizer and the Hermes-2
 * template, in batches as `data prepare` feeds them. Target: 50,000 records/s on 2 cores.
 */

import { mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { cpus, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { pathToFileURL } from "node:url";
import { isMainThread, parentPort, Worker, workerData } from "node:worker_threads";
import type { DataRecord } from "../src/data/record.ts";
import { defaultPrepareWorkers, PREPARE_BATCH_SIZE, prepareCache } from "../src/plan/cache.ts";
import { makeBatch, type SampleMaker } from "../src/plan/sample-batch.ts";
import { createSampleMaker } from "../src/plan/sample-maker.ts";
import { loadModelInfo } from "../src/text/model-info.ts";
import { makeSampleContext, recordsToSamples, recordToSample } from "../src/text/sample.ts";
import { loadTokenizer } from "../src/text/tokenizer.ts";
import { makeModelFolder } from "../test/helpers/model-folder.ts";

const QUESTIONS = [
  "What is the date mentioned in this letter?",
  "How many people are in the picture?",
  "Describe the chart.",
  "What colour is the car?",
  "Read the title of the document.",
];
/** Image files that exist (prepare resolves each image path and checks it for symlinks). */
const IMAGE_FILES = 100;
const SUFFIX = "\nAnswer the question using a single word or phrase.";

function records(n: number, seed: number): DataRecord[] {
  const out: DataRecord[] = [];
  for (let i = 0; i < n; i++) {
    const k = (i * 7919 + seed) >>> 0;
    out.push({
      id: i,
      conversations: [
        {
          from: "human",
          value: `<image>\n${QUESTIONS[k % QUESTIONS.length]} (item ${k % 100000})${SUFFIX}`,
        },
        { from: "gpt", value: `answer ${(k * 31) % 99991} ${k % 2 ? "yes" : "no"}` },
      ],
      images: [`img/${i % IMAGE_FILES}.jpg`],
      imageWh: [[200 + (k % 1800), 200 + ((k * 13) % 1800)]],
      extra: {},
    });
  }
  return out;
}

/** Bytes of the files under a folder. */
function du(dir: string): number {
  let n = 0;
  for (const e of readdirSync(dir, { withFileTypes: true }))
    n += e.isDirectory() ? du(join(dir, e.name)) : statSync(join(dir, e.name)).size;
  return n;
}

const TSX_API = pathToFileURL(
  join(
    dirname(createRequire(import.meta.url).resolve("tsx/package.json")),
    "dist/esm/api/index.mjs",
  ),
).href;

async function context(dir: string) {
  const tokenizer = await loadTokenizer(dir);
  return makeSampleContext({ tokenizer, model: loadModelInfo(dir), mediaRoot: "/data" });
}

/** prepare's record → sample step: the default sample maker, batches made as a worker makes them. */
function prepareMaker(dir: string, mediaRoot: string): Promise<SampleMaker> {
  return createSampleMaker({
    model: dir,
    maxLength: 8192,
    dataset: {
      name: "bench",
      mediaRoot,
      annotation: "/data/bench.jsonl",
      metaPath: "/data/meta.json",
      repeatTime: 1,
      extra: {},
    },
  });
}

async function prepareBatches(
  recs: DataRecord[],
  maker: SampleMaker,
  tokensPerTile: number,
): Promise<number> {
  let tokens = 0;
  for (let i = 0, seq = 0; i < recs.length; i += BATCH) {
    const items = recs.slice(i, i + BATCH).map((record, k) => ({ line: i + k + 1, record }));
    tokens += (await makeBatch(seq++, items, maker, tokensPerTile)).inputIds.length;
  }
  return tokens;
}

const N = 60_000;
/** Records of the end-to-end prepare run: enough that start-up (loading the tokenizer) is a small part. */
const PREPARE_N = 240_000;
/** What prepare sends a worker at a time. */
const BATCH = PREPARE_BATCH_SIZE;

if (!isMainThread) {
  // One worker of the two-core run: its share of records, timed from a common start signal.
  const { dir, media, seed, n } = workerData as {
    dir: string;
    media: string;
    seed: number;
    n: number;
  };
  const maker = await prepareMaker(dir, media);
  const tpt = loadModelInfo(dir).tokensPerTile;
  await prepareBatches(records(4096, 1), maker, tpt);
  const recs = records(n, seed);
  parentPort?.postMessage("ready");
  parentPort?.once("message", async () => {
    await prepareBatches(recs, maker, tpt);
    parentPort?.postMessage("done");
  });
} else {
  const dir = makeModelFolder({ vocab: "qwen2", template: "Hermes-2", maxDynamicPatch: 6 });
  const media = mkdtempSync(join(tmpdir(), "tessera-bench-media-"));
  mkdirSync(join(media, "img"));
  for (let i = 0; i < IMAGE_FILES; i++) writeFileSync(join(media, "img", `${i}.jpg`), "");
  const ctx = await context(dir);
  console.log(
    `cores: ${cpus().length}; ${N} short multimodal records, Qwen2 BPE, Hermes-2, batches of ${BATCH}`,
  );
  await recordsToSamples(records(4096, 1), ctx); // warm-up
  for (let rep = 0; rep < 2; rep++) {
    const recs = records(N, 100 + rep);
    const t0 = performance.now();
    const c0 = process.cpuUsage();
    let tokens = 0;
    for (let i = 0; i < recs.length; i += BATCH)
      for (const s of await recordsToSamples(recs.slice(i, i + BATCH), ctx))
        tokens += s?.length ?? 0;
    const s = (performance.now() - t0) / 1000;
    const c = process.cpuUsage(c0);
    const cpu = (c.user + c.system) / 1e6;
    // CPU seconds make the figure comparable on a shared machine; wall time is what a user waits.
    console.log(
      `recordsToSamples, 1 thread: ${Math.round(N / s).toLocaleString("en")} records/s wall, ${Math.round(N / cpu).toLocaleString("en")} records per CPU-second (${Math.round(tokens / s).toLocaleString("en")} tokens/s wall)`,
    );
  }
  {
    // What prepare runs per worker: makeBatch with the default maker (one call per batch,
    // samples copied into the batch's arrays).
    const maker = await prepareMaker(dir, media);
    const tpt = loadModelInfo(dir).tokensPerTile;
    await prepareBatches(records(4096, 2), maker, tpt);
    for (let rep = 0; rep < 2; rep++) {
      const recs = records(N, 200 + rep);
      const t0 = performance.now();
      const c0 = process.cpuUsage();
      await prepareBatches(recs, maker, tpt);
      const s = (performance.now() - t0) / 1000;
      const c = process.cpuUsage(c0);
      console.log(
        `makeBatch (prepare's path), 1 thread: ${Math.round(N / s).toLocaleString("en")} records/s wall, ${Math.round(N / ((c.user + c.system) / 1e6)).toLocaleString("en")} records per CPU-second`,
      );
    }
  }
  {
    const recs = records(5000, 7);
    const t0 = performance.now();
    const c0 = process.cpuUsage();
    for (const r of recs) await recordToSample(r, ctx);
    const s = (performance.now() - t0) / 1000;
    const c = process.cpuUsage(c0);
    console.log(
      `recordToSample, one at a time: ${Math.round(recs.length / s).toLocaleString("en")} records/s wall, ${Math.round(recs.length / ((c.user + c.system) / 1e6)).toLocaleString("en")} per CPU-second`,
    );
  }
  {
    // One worker per core, as data prepare runs them.
    const workers = cpus().length;
    const per = Math.ceil(N / workers);
    const ws = Array.from(
      { length: workers },
      (_, k) =>
        // Register tsx's loader inside the worker, then load this file (as src/plan/cache.ts does).
        new Worker(
          `import(${JSON.stringify(TSX_API)}).then((m) => { m.register(); return import(${JSON.stringify(import.meta.url)}); })`,
          { eval: true, workerData: { dir, media, seed: 300 + k, n: per } },
        ),
    );
    await Promise.all(ws.map((w) => new Promise((res) => w.once("message", res))));
    const t0 = performance.now();
    const done = Promise.all(ws.map((w) => new Promise((res) => w.once("message", res))));
    for (const w of ws) w.postMessage("go");
    await done;
    const s = (performance.now() - t0) / 1000;
    console.log(
      `makeBatch (prepare's path), ${workers} worker threads: ${Math.round((per * workers) / s).toLocaleString("en")} records/s wall`,
    );
    await Promise.all(ws.map((w) => w.terminate()));
  }
  {
    // All of `data prepare`: read and validate the JSONL, make samples in the default worker
    // pool, write the cache columns (each record is ~1,380 ids and labels: ~11 KB on disk).
    const work = mkdtempSync(join(tmpdir(), "tessera-bench-prepare-"));
    const lines = records(PREPARE_N, 400).map((r) =>
      JSON.stringify({
        id: r.id,
        image: r.images[0],
        image_wh: r.imageWh,
        conversations: r.conversations,
      }),
    );
    writeFileSync(join(work, "bench.jsonl"), `${lines.join("\n")}\n`);
    writeFileSync(
      join(work, "meta.json"),
      JSON.stringify({ bench: { media_root: media, annotation: join(work, "bench.jsonl") } }),
    );
    const t0 = performance.now();
    const r = await prepareCache({
      meta: join(work, "meta.json"),
      model: dir,
      maxLength: 8192,
      cacheDir: join(work, "cache"),
    });
    const s = (performance.now() - t0) / 1000;
    const stored = r.manifest.datasets.reduce((a, d) => a + d.stored_tokens, 0);
    const bytes = du(join(work, "cache"));
    console.log(
      `prepareCache end to end, ${PREPARE_N.toLocaleString("en")} records (default workers: ${defaultPrepareWorkers()} + the reader): ${Math.round(PREPARE_N / s).toLocaleString("en")} records/s wall; ${(r.manifest.tokens / 1e6).toFixed(1)} M tokens, ${(stored / 1e6).toFixed(1)} M stored; cache ${(bytes / 2 ** 20).toFixed(1)} MiB (${((bytes + (r.manifest.tokens - stored) * 8) / 2 ** 20).toFixed(0)} MiB with the context runs stored)`,
    );
    rmSync(work, { recursive: true, force: true });
  }
}
