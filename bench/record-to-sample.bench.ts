/**
 * Record → sample throughput: short multimodal records (one image with image_wh, a question
 * and a short answer, unique texts) through the real Qwen2 BPE tokenizer and the Hermes-2
 * template, in batches as `data prepare` feeds them. Target: 50,000 records/s on 2 cores.
 */
import { cpus } from "node:os";
import type { DataRecord } from "../src/data/record.ts";
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
      images: [`img/${i}.jpg`],
      imageWh: [[200 + (k % 1800), 200 + ((k * 13) % 1800)]],
      extra: {},
    });
  }
  return out;
}

const dir = makeModelFolder({ vocab: "qwen2", template: "Hermes-2", maxDynamicPatch: 6 });
const tokenizer = await loadTokenizer(dir);
const ctx = makeSampleContext({ tokenizer, model: loadModelInfo(dir), mediaRoot: "/data" });
const N = 60_000;
const BATCH = 2048;
console.log(
  `cores: ${cpus().length}; ${N} short multimodal records, Qwen2 BPE, Hermes-2, batches of ${BATCH}, text cache on`,
);

await recordsToSamples(records(4096, 1), ctx); // warm-up
for (let rep = 0; rep < 2; rep++) {
  const recs = records(N, 100 + rep);
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  let tokens = 0;
  for (let i = 0; i < recs.length; i += BATCH)
    for (const s of await recordsToSamples(recs.slice(i, i + BATCH), ctx)) tokens += s?.length ?? 0;
  const s = (performance.now() - t0) / 1000;
  const c = process.cpuUsage(c0);
  const cpu = (c.user + c.system) / 1e6;
  // CPU seconds make the figure comparable on a shared machine; wall time is what a user waits.
  console.log(
    `recordsToSamples: ${Math.round(N / s).toLocaleString("en")} records/s wall, ${Math.round(N / cpu).toLocaleString("en")} records per CPU-second (${Math.round(tokens / s).toLocaleString("en")} tokens/s wall)`,
  );
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
