/**
 * Planning preference pairs. A pair is one unit: chosen and rejected share the prompt and
 * the images, so the planner packs, samples, shards and balances whole pairs (by the tokens
 * of both sides), then writes each pair as two consecutive pieces of the same row, chosen
 * first. Both sides are whole sequences of their own in the pack (no shared-prefix trick):
 * attention stays the packed forward's, exact by construction.
 *
 * The cache holds pair k of a preference dataset as its samples 2k and 2k+1 (pair-batch.ts),
 * so unit u of the pair table is global samples 2u and 2u+1.
 */
import { UserError } from "../util/errors.ts";
import {
  buildPlan,
  type Plan,
  type PlanOptions,
  planFingerprint,
  type SampleTable,
} from "./plan.ts";

export type TrainMethod = "sft" | "dpo" | "mpo";

/** Which datasets of a cache are preference datasets (from its manifest). */
export interface PreferenceInfo {
  preference: boolean[];
}

/**
 * The plan of a run: pairs for `dpo`/`mpo`, samples for `sft`. Refuses a method that does not
 * fit the data (pairs without a preference method, conversations with one).
 */
export function planForMethod(
  table: SampleTable & { manifest: { datasets: { name: string; preference?: boolean }[] } },
  options: PlanOptions,
  method: TrainMethod = "sft",
): Plan {
  const ds = table.manifest.datasets;
  const pref = ds.filter((d) => d.preference);
  if (method === "sft") {
    if (pref.length)
      throw new UserError(
        `dataset "${pref[0].name}" holds preference pairs: train it with --method mpo or --method dpo`,
      );
    return buildPlan(table, options);
  }
  const plain = ds.filter((d) => !d.preference);
  if (plain.length)
    throw new UserError(
      `--method ${method} trains on preference pairs (question, chosen, rejected), but dataset "${plain[0].name}" holds conversations`,
    );
  return buildPairPlan(table, options);
}

/** The table of pairs: unit u is samples 2u (chosen) and 2u+1 (rejected). */
export function pairTable(table: SampleTable): SampleTable {
  const n = table.lengths.length;
  if (n % 2 !== 0)
    throw new UserError("a preference cache must hold whole pairs (an even sample count)");
  const u = n / 2;
  const lengths = new Int32Array(u);
  const learned = new Int32Array(u);
  const tiles = new Int32Array(u);
  const images = new Int32Array(u);
  const multimodal = new Uint8Array(u);
  for (let k = 0; k < u; k++) {
    const c = 2 * k;
    lengths[k] = table.lengths[c] + table.lengths[c + 1];
    learned[k] = table.learned[c] + table.learned[c + 1];
    tiles[k] = table.tiles[c] + table.tiles[c + 1];
    images[k] = table.images[c] + table.images[c + 1];
    multimodal[k] = table.multimodal[c];
  }
  return {
    fingerprint: table.fingerprint,
    cacheDir: table.cacheDir,
    datasets: table.datasets.map((d) => {
      if (d.first % 2 || d.count % 2)
        throw new UserError(`dataset "${d.name}": a preference dataset must hold whole pairs`);
      return { ...d, first: d.first / 2, count: d.count / 2 };
    }),
    lengths,
    learned,
    tiles,
    images,
    multimodal,
  };
}

/**
 * Plan the pairs as units, then write each unit as its two sequences. With packing, a pair
 * is two pieces of one row; without (`packing: none`), two rows of the same micro-batch.
 */
export function buildPairPlan(table: SampleTable, options: PlanOptions): Plan {
  if (options.packing === "concat")
    throw new UserError(
      "packing concat cuts sequences across rows, which would split a pair: use soft, first_fit, next_fit or none",
    );
  if ((options.spSize ?? 1) * (options.ringSize ?? 1) > 1)
    throw new UserError(
      "preference training does not run with sequence parallelism yet: set sp_size and ring_size to 1",
    );
  const unit = buildPlan(pairTable(table), options);
  const none = unit.options.packing === "none";
  const P = unit.pieceSample.length;
  const pieceSample = new Int32Array(2 * P);
  const pieceStart = new Int32Array(2 * P);
  const pieceLength = new Int32Array(2 * P);
  const pieceLearned = new Int32Array(2 * P);
  for (let p = 0; p < P; p++) {
    const u = unit.pieceSample[p];
    for (let side = 0; side < 2; side++) {
      const s = 2 * u + side;
      pieceSample[2 * p + side] = s;
      pieceLength[2 * p + side] = table.lengths[s];
      pieceLearned[2 * p + side] = table.learned[s];
    }
  }
  let rowOffset: Int32Array;
  let rowTokens: Int32Array;
  let rowTiles: Int32Array;
  let mbOffset: Int32Array;
  if (none) {
    // Each unit row (one pair) becomes two rows, chosen then rejected.
    const R = unit.rowTokens.length;
    rowOffset = new Int32Array(2 * R + 1);
    rowTokens = new Int32Array(2 * R);
    rowTiles = new Int32Array(2 * R);
    for (let r = 0; r < 2 * R; r++) {
      rowOffset[r + 1] = r + 1;
      rowTokens[r] = pieceLength[r];
      rowTiles[r] = table.tiles[pieceSample[r]];
    }
    mbOffset = unit.mbOffset.map((x) => 2 * x);
  } else {
    rowOffset = unit.rowOffset.map((x) => 2 * x);
    rowTokens = unit.rowTokens;
    rowTiles = unit.rowTiles;
    mbOffset = unit.mbOffset;
  }
  // Per-step totals over pieces (the sequences), and the pairs' own.
  const W = unit.options.worldSize;
  const A = unit.options.gradAccum;
  const G = unit.totalSteps;
  const stepSamples = new Int32Array(G);
  const stepLearnedSamples = new Int32Array(G);
  const stepSqrtLearned = new Float64Array(G);
  const stepPairs = new Int32Array(G);
  const stepChosenLearned = new Float64Array(G);
  for (let g = 0; g < G; g++) {
    const m0 = g * W * A;
    const m1 = (g + 1) * W * A;
    for (let r = mbOffset[m0]; r < mbOffset[m1]; r++)
      for (let p = rowOffset[r]; p < rowOffset[r + 1]; p++) {
        const n = pieceLearned[p];
        stepSamples[g]++;
        if (n > 0) {
          stepLearnedSamples[g]++;
          stepSqrtLearned[g] += Math.sqrt(n);
        }
        if (p % 2 === 0) {
          stepPairs[g]++;
          stepChosenLearned[g] += n;
        }
      }
  }
  const plan: Plan = {
    ...unit,
    mbOffset,
    rowOffset,
    rowTokens,
    rowTiles,
    pieceSample,
    pieceStart,
    pieceLength,
    pieceLearned,
    stepSamples,
    stepLearnedSamples,
    stepSqrtLearned,
    pairs: { stepPairs, stepChosenLearned },
    stats: {
      ...unit.stats,
      samples: 2 * unit.stats.samples,
      packs: rowTokens.length,
      samples_per_pack: rowTokens.length ? (2 * P) / rowTokens.length : 0,
    },
  };
  plan.fingerprint = planFingerprint(plan);
  return plan;
}
