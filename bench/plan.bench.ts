/**
 * Planning a 10,000,000-sample mixture: time, peak memory and fill per packing strategy.
 *
 * The length distribution (InternVL2 tiling: 256 tokens per tile, thumbnails on; lengths capped
 * at max_length 16384; text lengths log-normal, given as median and σ of ln):
 *   40%  single-image VQA     tiles 1/3/5/7 (20/15/25/40%)      + text median 60,   σ 0.8
 *   10%  documents / OCR      13 tiles (max_dynamic_patch 12)    + text median 400,  σ 0.9
 *   10%  multi-image          2–6 images, max(1, 12 // n) tiles each (+thumbnail) + text median 200, σ 0.8
 *    5%  video                8 frames × 1 tile                  + text median 100,  σ 0.7
 *   30%  text chat            text median 350,  σ 1.0
 *    5%  long text documents  text median 5000, σ 0.6
 * Learned tokens: 30% of a sample's text tokens. Five datasets with repeat_time 1 (the mixture
 * is the 10M samples shuffled). Plan: world 8, micro-batch 1, accumulation 4, seed 1.
 *
 * Each strategy runs in its own process so peak memory (max RSS) is its own; generating the
 * lengths is not counted in the planning time but is in the peak memory.
 */
import { spawnSync } from "node:child_process";
import { cpus, loadavg } from "node:os";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Rng } from "../src/plan/arrays.ts";
import { PACKING_KINDS, type PackingKind } from "../src/plan/packing.ts";
import { buildPlan, type SampleTable } from "../src/plan/plan.ts";

const N = Number(process.env.PLAN_BENCH_SAMPLES ?? 10_000_000);
const PML = 16384;

function lognormal(r: Rng, median: number, sigma: number): number {
  // Box–Muller
  const u = Math.max(r.next(), 1e-12);
  const v = r.next();
  return median * Math.exp(sigma * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v));
}

export function syntheticMixture(n: number): SampleTable {
  const r = new Rng(2024);
  const lengths = new Int32Array(n);
  const learned = new Int32Array(n);
  const tiles = new Int32Array(n);
  const images = new Int32Array(n);
  const multimodal = new Uint8Array(n);
  const kinds = [0.4, 0.1, 0.1, 0.05, 0.3, 0.05];
  const counts = [0, 0, 0, 0, 0, 0];
  // datasets are contiguous: kind by position so each dataset is one kind
  const bounds: number[] = [];
  let acc = 0;
  for (const k of kinds) {
    acc += k;
    bounds.push(Math.round(acc * n));
  }
  let kind = 0;
  for (let i = 0; i < n; i++) {
    while (i >= bounds[kind]) kind++;
    counts[kind]++;
    let t = 0;
    let im = 0;
    let text: number;
    switch (kind) {
      case 0: {
        const u = r.next();
        t = u < 0.2 ? 1 : u < 0.35 ? 3 : u < 0.6 ? 5 : 7;
        im = 1;
        text = lognormal(r, 60, 0.8);
        break;
      }
      case 1:
        t = 13;
        im = 1;
        text = lognormal(r, 400, 0.9);
        break;
      case 2: {
        im = 2 + r.int(5);
        const per = Math.max(1, Math.floor(12 / im));
        for (let k = 0; k < im; k++)
          t += per === 1 ? 1 : 1 + (r.next() < 0.5 ? per : Math.max(1, per - 1));
        text = lognormal(r, 200, 0.8);
        break;
      }
      case 3:
        t = 8;
        im = 8;
        text = lognormal(r, 100, 0.7);
        break;
      case 4:
        text = lognormal(r, 350, 1.0);
        break;
      default:
        text = lognormal(r, 5000, 0.6);
    }
    const textTokens = Math.max(10, Math.round(text));
    const len = Math.min(PML, t * 256 + im * 2 + textTokens);
    lengths[i] = len;
    tiles[i] = t;
    images[i] = im;
    multimodal[i] = im > 0 ? 1 : 0;
    learned[i] = Math.max(1, Math.round(0.3 * Math.max(1, len - t * 256 - im * 2)));
  }
  let first = 0;
  const names = ["vqa", "docs", "multi_image", "video", "chat", "long_text"];
  return {
    fingerprint: `bench-${n}`,
    datasets: counts.map((c, k) => {
      const d = { name: names[k], first, count: c, repeatTime: 1 };
      first += c;
      return d;
    }),
    lengths,
    learned,
    tiles,
    images,
    multimodal,
    // synthetic layout: images first, then text; learned tokens at the end
    learnedIn: (s, a, b) =>
      Math.max(0, Math.min(b, lengths[s]) - Math.max(a, lengths[s] - learned[s])),
    tilesIn: (s, a) => (a < tiles[s] * 256 ? tiles[s] : 0),
  };
}

function child(kind: PackingKind): void {
  const t0 = performance.now();
  const table = syntheticMixture(N);
  const genS = (performance.now() - t0) / 1000;
  const t1 = performance.now();
  const c1 = process.cpuUsage();
  const plan = buildPlan(table, {
    worldSize: 8,
    microBatchSize: kind === "none" ? 4 : 1,
    gradAccum: 4,
    sampler: "random",
    packing: kind,
    packMaxLength: PML,
    seed: 1,
  });
  const planS = (performance.now() - t1) / 1000;
  const cpu = process.cpuUsage(c1);
  const planCpuS = (cpu.user + cpu.system) / 1e6;
  const maxRssMiB = process.resourceUsage().maxRSS / 1024;
  console.log(
    JSON.stringify({
      kind,
      samples: plan.stats.samples,
      packs: plan.stats.packs,
      fill: plan.stats.fill_ratio,
      steps: plan.stats.steps,
      generate_s: genS,
      plan_s: planS,
      plan_cpu_s: planCpuS,
      peak_mib: maxRssMiB,
      balance: plan.stats.rank_balance_mean,
      samples_per_pack: plan.stats.samples_per_pack,
      split: plan.stats.split_samples,
    }),
  );
}

const isMain =
  process.argv[1] !== undefined && fileURLToPath(import.meta.url) === resolve(process.argv[1]);
/** Prepare `n` records (text, image and multi-image) with the real Qwen2 tokenizer. */
async function prepareChild(n: number, workers: number): Promise<void> {
  const { writeDatasets } = await import("../test/plan/helpers.ts");
  const { makeModelFolder } = await import("../test/helpers/model-folder.ts");
  const { prepareCache } = await import("../src/plan/cache.ts");
  const third = Math.floor(n / 3);
  const { root, meta } = writeDatasets([
    { name: "chat", n: third, kind: "text" },
    { name: "vqa", n: third, kind: "image" },
    { name: "multi", n: n - 2 * third, kind: "multi" },
  ]);
  const model = makeModelFolder({ vocab: "qwen2", maxDynamicPatch: 6 });
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  const r = await prepareCache({
    meta,
    model,
    maxLength: 16384,
    cacheDir: `${root}/cache`,
    workers,
  });
  const s = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(c0);
  console.log(
    JSON.stringify({
      n,
      workers,
      s,
      cpu_s: (cpu.user + cpu.system) / 1e6,
      tokens: r.manifest.tokens,
      peak_mib: process.resourceUsage().maxRSS / 1024,
    }),
  );
}

const arg = process.argv.indexOf("--child");
const prep = process.argv.indexOf("--prepare");
if (!isMain) {
  // imported for its generator: run nothing
} else if (arg >= 0) child(process.argv[arg + 1] as PackingKind);
else if (prep >= 0)
  await prepareChild(Number(process.argv[prep + 1]), Number(process.argv[prep + 2]));
else {
  console.log(
    `plan: ${N.toLocaleString("en-US")} samples, pack_max_length ${PML}, world 8 × accumulation 4`,
  );
  console.log(
    `load average ${loadavg()[0].toFixed(1)} on ${cpus().length} CPUs: wall time suffers from load, CPU time much less`,
  );
  console.log(
    "strategy   | packs      | fill     | plan wall | plan CPU | peak RSS | samples/pack | rank balance",
  );
  const me = fileURLToPath(import.meta.url);
  for (const kind of PACKING_KINDS) {
    const r = spawnSync(
      process.execPath,
      ["--max-old-space-size=4096", "--import", "tsx", me, "--child", kind],
      { encoding: "utf8" },
    );
    const line = r.stdout.trim().split("\n").pop() ?? "";
    if (r.status !== 0 || !line.startsWith("{")) {
      console.log(
        `${kind.padEnd(10)} | failed: ${r.stderr.trim().split("\n").slice(-3).join(" ")}`,
      );
      continue;
    }
    const j = JSON.parse(line);
    const note =
      kind === "next_fit"
        ? "  (greedy, arrival order, one open pack)"
        : kind === "first_fit"
          ? "  (greedy first-fit, arrival order)"
          : kind === "none"
            ? "  (no packing: micro-batch 4, padded)"
            : "";
    console.log(
      `${kind.padEnd(10)} | ${String(j.packs).padStart(10)} | ${(100 * j.fill).toFixed(2).padStart(6)}% | ${j.plan_s.toFixed(1).padStart(7)} s | ${j.plan_cpu_s.toFixed(1).padStart(6)} s | ${j.peak_mib.toFixed(0).padStart(5)} MiB | ${j.samples_per_pack.toFixed(2).padStart(12)} | ${j.balance.toFixed(4)}${note}`,
    );
  }
  // Prepare: records per second with the real tokenizer, and peak memory at two sizes (it
  // should not grow with the record count: records stream in, columns stream out).
  const PREP = Number(process.env.PLAN_BENCH_PREPARE ?? 6000);
  console.log(
    `\nprepare (real Qwen2 tokenizer, text / image / multi-image thirds, 1 worker thread):`,
  );
  for (const n of [PREP, 3 * PREP]) {
    const r = spawnSync(process.execPath, ["--import", "tsx", me, "--prepare", String(n), "1"], {
      encoding: "utf8",
    });
    const line = r.stdout.trim().split("\n").pop() ?? "";
    if (r.status !== 0 || !line.startsWith("{")) {
      console.log(`${n} records: failed: ${r.stderr.trim().split("\n").slice(-3).join(" ")}`);
      continue;
    }
    const j = JSON.parse(line);
    console.log(
      `${String(n).padStart(7)} records: ${j.s.toFixed(1)} s wall (${Math.round(n / j.s)} records/s, ${Math.round(j.tokens / j.s)} tokens/s) · CPU (all threads) ${j.cpu_s.toFixed(1)} s · peak RSS ${j.peak_mib.toFixed(0)} MiB`,
    );
  }
}
