/**
 * The training plan: mixture → sampler → packing → sharding, for every epoch, as flat arrays
 * (docs/cache-format.md, "The plan directory"). Pure and deterministic: the same table,
 * options and seed give the same bytes on every node.
 */
import { createHash } from "node:crypto";
import { mkdir, rename, rm } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { writeFileAtomic } from "../util/atomic.ts";
import { namedWriteError, UserError } from "../util/errors.ts";
import { IntVec, Rng } from "./arrays.ts";
import { type ColumnSpec, writeColumn } from "./columns.ts";
import { canonicalJson, updateArray } from "./fingerprint.ts";
import { epochMixture, type MixtureDataset } from "./mixture.ts";
import { type PackingKind, pack, Rows } from "./packing.ts";
import { groupByLength, groupByModalityLength, type SamplerKind } from "./samplers.ts";
import { shard } from "./sharding.ts";

export const PLAN_VERSION = 1;

/** What the planner needs of the cache: one entry per sample, as typed arrays. */
export interface SampleTable {
  fingerprint: string;
  datasets: MixtureDataset[];
  lengths: Int32Array;
  learned: Int32Array;
  tiles: Int32Array;
  images: Int32Array;
  multimodal: Uint8Array;
  /** concat packing: learned tokens of a piece [start, end) (labels after its first token, which
   * has nothing before it in its row) and tiles inside it. */
  learnedIn?: (sample: number, start: number, end: number) => number;
  tilesIn?: (sample: number, start: number, end: number) => number;
  /** sequence parallelism: tiles whose context tokens meet [start, end) of a sample (tile by tile,
   * where tilesIn counts whole images). */
  tileSpanIn?: (sample: number, start: number, end: number) => number;
  cacheDir?: string;
}

export interface PlanOptions {
  /** Ranks in all; the data-parallel world is worldSize / (spSize × ringSize). */
  worldSize: number;
  /** Sequence parallelism: each row is cut into spSize × ringSize equal shards, one per rank of
   * its group (Ulysses over spSize ranks, ring attention over ringSize groups of them). */
  spSize?: number;
  ringSize?: number;
  /** Rows (packs, or samples without packing) per micro-batch. */
  microBatchSize: number;
  /** Micro-batches per step per rank; or give globalBatchSize (rows per step, all ranks). */
  gradAccum?: number;
  globalBatchSize?: number;
  /** Epochs (a fraction plans part of the last one); maxSteps overrides. */
  epochs?: number;
  maxSteps?: number;
  sampler: SamplerKind;
  packing: PackingKind;
  packMaxLength?: number;
  maxTilesPerPack?: number;
  /** soft packing's shuffle window in samples (default 4096). */
  window?: number;
  seed: number;
}

export interface PlanStats {
  /** Mixture entries over the planned epochs (samples after repeat_time). */
  samples: number;
  /** Rows: packs with packing, samples without. */
  packs: number;
  tokens: number;
  /** tokens / (packs × pack_max_length); without packing, tokens / padded tokens. */
  fill_ratio: number;
  padding_waste: number;
  steps: number;
  steps_per_epoch: number[];
  tokens_per_step: number;
  images_per_pack: number;
  tiles_per_pack: number;
  max_tiles_per_pack: number;
  samples_per_pack: number;
  /** Over steps: (most tokens on a rank) / (mean tokens per rank); 1 is perfect. */
  rank_balance_mean: number;
  rank_balance_worst: number;
  empty_micro_batches: number;
  split_samples: number;
  /** Sequence parallelism only: real tokens of a rank's shard (mean, max), tiles a rank runs
   * for one shard (mean, max), and the padding added at rows' ends. */
  shard_tokens_mean?: number;
  shard_tokens_max?: number;
  shard_tiles_mean?: number;
  shard_tiles_max?: number;
  shard_padding?: number;
}

/** How every row is cut across the ranks of its sequence-parallel group (absent without one). */
export interface RowShards {
  /** ranks per row: spSize × ringSize */
  ranks: number;
  /** per row: its length padded at the end to a multiple of `ranks`; shard k of the row holds
   * tokens [k·padded/ranks, (k+1)·padded/ranks) */
  padded: Int32Array;
  /** per row × shard: real (unpadded) tokens, learned tokens (targets predicted from the
   * shard's positions) and tiles its rank runs (those whose context tokens it holds) */
  tokens: Int32Array;
  learned: Int32Array;
  tiles: Int32Array;
}

export interface Plan {
  fingerprint: string;
  cacheFingerprint: string;
  cacheDir?: string;
  options: Required<
    Pick<PlanOptions, "worldSize" | "microBatchSize" | "sampler" | "packing" | "seed">
  > & {
    gradAccum: number;
    spSize: number;
    ringSize: number;
    /** worldSize / (spSize × ringSize): the ranks that get different rows */
    dataParallel: number;
    packMaxLength: number | null;
    maxTilesPerPack: number | null;
    window: number;
    epochs: number;
    maxSteps: number | null;
  };
  epochs: number;
  epochSteps: number[];
  epochFirstStep: number[];
  totalSteps: number;
  mbOffset: Int32Array;
  rowOffset: Int32Array;
  rowTokens: Int32Array;
  rowTiles: Int32Array;
  pieceSample: Int32Array;
  pieceStart: Int32Array;
  pieceLength: Int32Array;
  pieceLearned: Int32Array;
  mbTokens: Int32Array;
  mbTiles: Int32Array;
  mbLearned: Int32Array;
  stepTokens: Float64Array;
  stepLearned: Float64Array;
  stepSamples: Int32Array;
  stepLearnedSamples: Int32Array;
  stepSqrtLearned: Float64Array;
  shards?: RowShards;
  stats: PlanStats;
  /** A preference plan (src/plan/pairs.ts): its per-step pair totals. */
  pairs?: PairTotals;
}

/** Per-step totals of a preference plan, over all ranks and micro-batches. */
export interface PairTotals {
  /** Pairs of the step: the denominator of the preference losses. */
  stepPairs: Int32Array;
  /** Learned tokens of the chosen sides: the denominator of the rpo_alpha (NLL) term. */
  stepChosenLearned: Float64Array;
}

function normalize(table: SampleTable, o: PlanOptions): Plan["options"] {
  const world = o.worldSize;
  const B = o.microBatchSize;
  if (!(Number.isInteger(world) && world >= 1))
    throw new UserError(`world size must be a positive integer, got ${world}`);
  const sp = o.spSize ?? 1;
  const ring = o.ringSize ?? 1;
  if (!(Number.isInteger(sp) && sp >= 1 && Number.isInteger(ring) && ring >= 1))
    throw new UserError(`sp size and ring size must be positive integers, got ${sp} and ${ring}`);
  if (world % (sp * ring) !== 0)
    throw new UserError(
      `sp size × ring size = ${sp} × ${ring} = ${sp * ring} must divide the world size ${world}`,
    );
  if (sp * ring > 1 && B !== 1)
    throw new UserError(
      `micro batch size ${B}: with sequence parallelism a micro-batch is one row cut across ${sp * ring} ranks; use 1`,
    );
  // Everything below deals rows to the data-parallel ranks; a row's sp × ring ranks share it.
  const W = world / (sp * ring);
  if (!(Number.isInteger(B) && B >= 1))
    throw new UserError(`micro batch size must be a positive integer, got ${B}`);
  let A = o.gradAccum;
  if (A === undefined) {
    const gbs = o.globalBatchSize ?? W * B;
    if (gbs % (W * B) !== 0)
      throw new UserError(
        `global batch size ${gbs} must be a multiple of micro batch size × world size = ${B} × ${W}`,
      );
    A = gbs / (W * B);
  }
  if (!(Number.isInteger(A) && A >= 1))
    throw new UserError(`gradient accumulation must be a positive integer, got ${A}`);
  const packed = o.packing !== "none";
  let maxLen = 0;
  for (let i = 0; i < table.lengths.length; i++)
    if (table.lengths[i] > maxLen) maxLen = table.lengths[i];
  const pml = packed ? (o.packMaxLength ?? maxLen) : null;
  if (packed && !(pml !== null && pml >= 1))
    throw new UserError(`pack_max_length must be a positive integer`);
  const epochs = o.epochs ?? 1;
  if (!(epochs > 0)) throw new UserError(`epochs must be above 0, got ${epochs}`);
  return {
    worldSize: world,
    microBatchSize: B,
    gradAccum: A,
    spSize: sp,
    ringSize: ring,
    dataParallel: W,
    sampler: o.sampler,
    packing: o.packing,
    seed: o.seed,
    packMaxLength: pml,
    maxTilesPerPack: packed ? (o.maxTilesPerPack ?? null) : null,
    window: o.window ?? 4096,
    epochs,
    maxSteps: o.maxSteps ?? null,
  };
}

/** The row order of one epoch: mixture, sampler, packing (rows appended to `rows`). */
function epochRows(
  table: SampleTable,
  opt: Plan["options"],
  epoch: number,
  rows: Rows,
): Int32Array {
  const order = epochMixture(table.datasets, opt.seed, epoch);
  const rng = new Rng(opt.seed, epoch, 0x73616d70);
  const mega = opt.dataParallel * opt.microBatchSize;
  const packOpts = {
    packMaxLength: opt.packMaxLength ?? 0,
    maxTilesPerPack: opt.maxTilesPerPack ?? undefined,
    window: opt.window,
  };
  const src = { lengths: table.lengths, tiles: table.tiles, tilesIn: table.tilesIn };
  const first = rows.rows;
  if (opt.packing === "none") {
    let o2 = order;
    if (opt.sampler === "length") o2 = groupByLength(order, table.lengths, mega);
    else if (opt.sampler === "modality_length") {
      const signed = new Int32Array(table.lengths.length);
      for (let i = 0; i < signed.length; i++)
        signed[i] = table.multimodal[i] ? table.lengths[i] : -table.lengths[i];
      o2 = groupByModalityLength(order, signed, mega, rng).order;
    }
    pack("none", o2, src, packOpts, rows);
    const ids = new Int32Array(rows.rows - first);
    for (let k = 0; k < ids.length; k++) ids[k] = first + k;
    return ids;
  }
  if (opt.sampler === "modality_length") {
    // Pack each modality on its own so no pack mixes them, then group the packs.
    const mm = new IntVec(order.length);
    const text = new IntVec(order.length);
    for (const s of order) (table.multimodal[s] ? mm : text).push(s);
    pack(opt.packing, mm.view(), src, packOpts, rows);
    const mid = rows.rows;
    pack(opt.packing, text.view(), src, packOpts, rows);
    const ids = new Int32Array(rows.rows - first);
    const signed = new Int32Array(rows.rows);
    for (let k = 0; k < ids.length; k++) {
      const r = first + k;
      ids[k] = r;
      signed[r] = r < mid ? rows.rowTokens(r) : -rows.rowTokens(r);
    }
    return groupByModalityLength(ids, signed, mega, rng).order;
  }
  pack(opt.packing, order, src, packOpts, rows);
  const ids = new Int32Array(rows.rows - first);
  for (let k = 0; k < ids.length; k++) ids[k] = first + k;
  if (opt.sampler === "length") {
    const tok = new Int32Array(rows.rows);
    for (const r of ids) tok[r] = rows.rowTokens(r);
    return groupByLength(ids, tok, mega);
  }
  // Packing sorts by length inside each window, so packs close roughly in length order (and,
  // where lengths follow the dataset, in dataset runs): shuffle them so steps mix sources.
  // The last step's worth of packs (the window's leftovers, made of many small samples)
  // stays last, where sharding may split them to fill every slot.
  const keep = Math.min(ids.length, mega * opt.gradAccum);
  return rng.shuffle(ids, 0, ids.length - keep);
}

export function buildPlan(table: SampleTable, options: PlanOptions): Plan {
  const opt = normalize(table, options);
  const W = opt.dataParallel;
  const A = opt.gradAccum;
  const rows = new Rows(Math.min(table.lengths.length * Math.ceil(opt.epochs) + 16, 1 << 26));
  const fullEpochs = Math.ceil(opt.epochs);
  const epochSteps: number[] = [];
  const epochFirstStep: number[] = [];
  const finalRows = new IntVec();
  const mbRows = new IntVec();
  let samples = 0;
  let totalSteps = 0;
  for (let e = 0; ; e++) {
    if (opt.maxSteps === null && e >= fullEpochs) break;
    if (opt.maxSteps !== null && totalSteps >= opt.maxSteps) break;
    const ids = epochRows(table, opt, e, rows);
    if (ids.length === 0) throw new UserError("the mixture is empty: no samples to plan");
    const tok = new Int32Array(rows.rows);
    for (const r of ids) tok[r] = rows.rowTokens(r);
    const sh = shard(rows, ids, (r) => (r < tok.length ? tok[r] : rows.rowTokens(r)), {
      world: W,
      perMicro: opt.microBatchSize,
      accum: A,
      splitToFill: opt.packing !== "none",
    });
    let steps = sh.steps;
    if (opt.maxSteps !== null) steps = Math.min(steps, opt.maxSteps - totalSteps);
    else if (e === fullEpochs - 1 && opt.epochs < fullEpochs)
      steps = Math.max(1, Math.round(sh.steps * (opt.epochs - e)));
    const nMb = steps * W * A;
    const base = finalRows.length;
    for (let m = 0; m < nMb; m++) mbRows.push(base + sh.mbOffset[m]);
    for (let k = 0; k < sh.mbOffset[nMb]; k++) finalRows.push(sh.rowOrder[k]);
    for (let k = 0; k < sh.mbOffset[nMb]; k++) {
      const r = sh.rowOrder[k];
      for (let p = rows.rowOffset.data[r]; p < rows.rowOffset.data[r + 1]; p++)
        if (rows.start.data[p] === 0) samples++;
    }
    epochFirstStep.push(totalSteps);
    epochSteps.push(steps);
    totalSteps += steps;
  }
  mbRows.push(finalRows.length);
  return assemble(
    table,
    opt,
    rows,
    finalRows.take(),
    mbRows.take(),
    epochSteps,
    epochFirstStep,
    totalSteps,
    samples,
  );
}

function assemble(
  table: SampleTable,
  opt: Plan["options"],
  rows: Rows,
  finalRows: Int32Array,
  mbOffset: Int32Array,
  epochSteps: number[],
  epochFirstStep: number[],
  totalSteps: number,
  samples: number,
): Plan {
  const W = opt.dataParallel;
  const A = opt.gradAccum;
  const R = finalRows.length;
  let P = 0;
  for (const r of finalRows) P += rows.rowOffset.data[r + 1] - rows.rowOffset.data[r];
  const rowOffset = new Int32Array(R + 1);
  const rowTokens = new Int32Array(R);
  const rowTiles = new Int32Array(R);
  const pieceSample = new Int32Array(P);
  const pieceStart = new Int32Array(P);
  const pieceLength = new Int32Array(P);
  const pieceLearned = new Int32Array(P);
  // learned and image counts side by side: one cache line per piece instead of two
  const perSample = new Int32Array(2 * table.learned.length);
  for (let i = 0; i < table.learned.length; i++) {
    perSample[2 * i] = table.learned[i];
    perSample[2 * i + 1] = table.images[i];
  }
  let at = 0;
  const concat = opt.packing === "concat";
  let splitSamples = 0;
  let images = 0;
  let maxTiles = 0;
  for (let k = 0; k < R; k++) {
    const r = finalRows[k];
    rowOffset[k] = at;
    let tok = 0;
    let til = 0;
    for (let p = rows.rowOffset.data[r]; p < rows.rowOffset.data[r + 1]; p++) {
      const s = rows.sample.data[p];
      const st = rows.start.data[p];
      const len = rows.length.data[p];
      pieceSample[at] = s;
      pieceStart[at] = st;
      pieceLength[at] = len;
      // only concat splits samples; other strategies' pieces are whole by construction
      const whole = !concat || (st === 0 && len === table.lengths[s]);
      if (!whole) {
        if (st === 0) splitSamples++;
        if (!table.learnedIn) throw new Error("concat packing needs the table's learnedIn");
      }
      pieceLearned[at] = whole ? perSample[2 * s] : table.learnedIn!(s, st, st + len);
      if (whole) images += perSample[2 * s + 1];
      tok += len;
      til += rows.tiles.data[p];
      at++;
    }
    rowTokens[k] = tok;
    rowTiles[k] = til;
    if (til > maxTiles) maxTiles = til;
  }
  rowOffset[R] = at;
  const M = totalSteps * W * A;
  const mbTokens = new Int32Array(M);
  const mbTiles = new Int32Array(M);
  const mbLearned = new Int32Array(M);
  const stepTokens = new Float64Array(totalSteps);
  const stepLearned = new Float64Array(totalSteps);
  const stepSamples = new Int32Array(totalSteps);
  const stepLearnedSamples = new Int32Array(totalSteps);
  const stepSqrtLearned = new Float64Array(totalSteps);
  const rankTok = new Float64Array(W);
  let empty = 0;
  let balSum = 0;
  let balWorst = 1;
  let padded = 0;
  for (let g = 0; g < totalSteps; g++) {
    rankTok.fill(0);
    for (let r = 0; r < W; r++) {
      for (let a = 0; a < A; a++) {
        const m = (g * W + r) * A + a;
        if (mbOffset[m] === mbOffset[m + 1]) empty++;
        let longest = 0;
        for (let k = mbOffset[m]; k < mbOffset[m + 1]; k++) {
          mbTokens[m] += rowTokens[k];
          mbTiles[m] += rowTiles[k];
          if (rowTokens[k] > longest) longest = rowTokens[k];
          for (let p = rowOffset[k]; p < rowOffset[k + 1]; p++) {
            const n = pieceLearned[p];
            mbLearned[m] += n;
            stepSamples[g]++;
            if (n > 0) {
              stepLearnedSamples[g]++;
              stepSqrtLearned[g] += Math.sqrt(n);
            }
          }
        }
        padded +=
          opt.packMaxLength !== null
            ? (mbOffset[m + 1] - mbOffset[m]) * opt.packMaxLength
            : (mbOffset[m + 1] - mbOffset[m]) * longest;
        stepTokens[g] += mbTokens[m];
        stepLearned[g] += mbLearned[m];
        rankTok[r] += mbTokens[m];
      }
    }
    let mx = 0;
    for (let r = 0; r < W; r++) if (rankTok[r] > mx) mx = rankTok[r];
    const bal = stepTokens[g] > 0 ? mx / (stepTokens[g] / W) : 1;
    balSum += bal;
    if (bal > balWorst) balWorst = bal;
  }
  let tokens = 0;
  for (const t of rowTokens) tokens += t;
  const fill = padded > 0 ? tokens / padded : 0;
  const shards =
    opt.spSize * opt.ringSize > 1
      ? cutRows(table, opt.spSize * opt.ringSize, rowOffset, pieceSample, pieceStart, pieceLength)
      : undefined;
  const stats: PlanStats = {
    samples,
    packs: R,
    tokens,
    fill_ratio: fill,
    padding_waste: 1 - fill,
    steps: totalSteps,
    steps_per_epoch: epochSteps,
    tokens_per_step: totalSteps ? tokens / totalSteps : 0,
    images_per_pack: R ? images / R : 0,
    tiles_per_pack: R ? rowTiles.reduce((a, b) => a + b, 0) / R : 0,
    max_tiles_per_pack: maxTiles,
    samples_per_pack: R ? P / R : 0,
    rank_balance_mean: totalSteps ? balSum / totalSteps : 1,
    rank_balance_worst: balWorst,
    empty_micro_batches: empty,
    split_samples: splitSamples,
    ...(shards ? shardStats(shards, rowTokens) : {}),
  };
  const plan: Plan = {
    fingerprint: "",
    cacheFingerprint: table.fingerprint,
    cacheDir: table.cacheDir,
    options: opt,
    epochs: epochSteps.length,
    epochSteps,
    epochFirstStep,
    totalSteps,
    mbOffset,
    rowOffset,
    rowTokens,
    rowTiles,
    pieceSample,
    pieceStart,
    pieceLength,
    pieceLearned,
    mbTokens,
    mbTiles,
    mbLearned,
    stepTokens,
    stepLearned,
    stepSamples,
    stepLearnedSamples,
    stepSqrtLearned,
    shards,
    stats,
  };
  plan.fingerprint = planFingerprint(plan);
  return plan;
}

/**
 * Cut every row into `ranks` equal shards: the row is padded at its end to a multiple of
 * `ranks`, and shard k holds tokens [k·S, (k+1)·S) with S = padded / ranks. A shard learns the
 * targets predicted from its positions: the label at row position q+1 (same piece) for each of
 * its positions q, so a shard's last position may predict the next shard's first token.
 */
function cutRows(
  table: SampleTable,
  ranks: number,
  rowOffset: Int32Array,
  pieceSample: Int32Array,
  pieceStart: Int32Array,
  pieceLength: Int32Array,
): RowShards {
  if (!table.learnedIn || !table.tileSpanIn)
    throw new Error("sequence parallelism needs the table's learnedIn and tileSpanIn");
  const R = rowOffset.length - 1;
  const padded = new Int32Array(R);
  const tokens = new Int32Array(R * ranks);
  const learned = new Int32Array(R * ranks);
  const tiles = new Int32Array(R * ranks);
  for (let r = 0; r < R; r++) {
    let len = 0;
    for (let p = rowOffset[r]; p < rowOffset[r + 1]; p++) len += pieceLength[p];
    const S = Math.ceil(len / ranks);
    padded[r] = S * ranks;
    let ps = 0; // the piece's first row position
    for (let p = rowOffset[r]; p < rowOffset[r + 1]; p++) {
      const pe = ps + pieceLength[p];
      const s = pieceSample[p];
      const st = pieceStart[p];
      // shards the piece meets: its positions [ps, pe)
      for (let k = Math.floor(ps / S); k < ranks && k * S < pe; k++) {
        const a = Math.max(ps, k * S);
        const b = Math.min(pe, (k + 1) * S);
        const i = r * ranks + k;
        tokens[i] += b - a;
        tiles[i] += table.tileSpanIn(s, st + a - ps, st + b - ps);
        // labels at row positions [a+1, b+1) ∩ [ps+1, pe): sample tokens [x, y)
        const x = Math.max(a + 1, ps + 1) - ps + st;
        const y = Math.min(b + 1, pe) - ps + st;
        if (x < y) learned[i] += table.learnedIn(s, x - 1, y);
      }
      ps = pe;
    }
  }
  return { ranks, padded, tokens, learned, tiles };
}

function shardStats(sh: RowShards, rowTokens: Int32Array): Partial<PlanStats> {
  let tokMax = 0;
  let tilSum = 0;
  let tilMax = 0;
  let pad = 0;
  for (let i = 0; i < sh.tokens.length; i++) {
    if (sh.tokens[i] > tokMax) tokMax = sh.tokens[i];
    tilSum += sh.tiles[i];
    if (sh.tiles[i] > tilMax) tilMax = sh.tiles[i];
  }
  let tok = 0;
  for (let r = 0; r < rowTokens.length; r++) {
    tok += rowTokens[r];
    pad += sh.padded[r] - rowTokens[r];
  }
  const n = sh.tokens.length || 1;
  return {
    shard_tokens_mean: tok / n,
    shard_tokens_max: tokMax,
    shard_tiles_mean: tilSum / n,
    shard_tiles_max: tilMax,
    shard_padding: pad,
  };
}

/** The plan's arrays as written: name → [dtype, data]. */
function planColumns(p: Plan): [string, ColumnSpec["dtype"], ArrayBufferView][] {
  return [
    ["mb_offset", "<i8", BigInt64Array.from(p.mbOffset, (x) => BigInt(x))],
    ["row_offset", "<i8", BigInt64Array.from(p.rowOffset, (x) => BigInt(x))],
    ["row_tokens", "<i4", p.rowTokens],
    ["row_tiles", "<i4", p.rowTiles],
    ["piece_sample", "<i4", p.pieceSample],
    ["piece_start", "<i4", p.pieceStart],
    ["piece_length", "<i4", p.pieceLength],
    ["piece_learned", "<i4", p.pieceLearned],
    ["mb_tokens", "<i4", p.mbTokens],
    ["mb_tiles", "<i4", p.mbTiles],
    ["mb_learned", "<i4", p.mbLearned],
    ["step_tokens", "<i8", BigInt64Array.from(p.stepTokens, (x) => BigInt(x))],
    ["step_learned", "<i8", BigInt64Array.from(p.stepLearned, (x) => BigInt(x))],
    ["step_samples", "<i4", p.stepSamples],
    ["step_learned_samples", "<i4", p.stepLearnedSamples],
    ["step_sqrt_learned", "<f8", p.stepSqrtLearned],
    ...(p.pairs
      ? ([
          ["step_pairs", "<i4", p.pairs.stepPairs],
          [
            "step_chosen_learned",
            "<i8",
            BigInt64Array.from(p.pairs.stepChosenLearned, (x) => BigInt(x)),
          ],
        ] as [string, ColumnSpec["dtype"], ArrayBufferView][])
      : []),
    ...(p.shards
      ? ([
          ["row_padded", "<i4", p.shards.padded],
          ["shard_tokens", "<i4", p.shards.tokens],
          ["shard_learned", "<i4", p.shards.learned],
          ["shard_tiles", "<i4", p.shards.tiles],
        ] as [string, ColumnSpec["dtype"], ArrayBufferView][])
      : []),
  ];
}

function planHeader(p: Plan) {
  return {
    format: "tessera-plan",
    version: PLAN_VERSION,
    cache_fingerprint: p.cacheFingerprint,
    world_size: p.options.worldSize,
    micro_batches_per_step: p.options.gradAccum,
    epochs: p.epochs,
    epoch_steps: p.epochSteps,
    epoch_first_step: p.epochFirstStep,
    total_steps: p.totalSteps,
    options: {
      sampler: p.options.sampler,
      packing: p.options.packing,
      pack_max_length: p.options.packMaxLength,
      max_tiles_per_pack: p.options.maxTilesPerPack,
      micro_batch_size: p.options.microBatchSize,
      window: p.options.window,
      seed: p.options.seed,
      epochs: p.options.epochs,
      max_steps: p.options.maxSteps,
      // only in preference plans, so other plans keep their fingerprints
      ...(p.pairs ? { preference: true } : {}),
      // only with sequence parallelism, so plans without it keep their bytes and fingerprints
      ...(p.options.spSize * p.options.ringSize > 1
        ? { sp_size: p.options.spSize, ring_size: p.options.ringSize }
        : {}),
    },
  };
}

export function planFingerprint(p: Plan): string {
  const h = createHash("sha256").update(canonicalJson(planHeader(p)));
  for (const [name, , data] of planColumns(p)) updateArray(h.update(name), data);
  return h.digest("hex");
}

/**
 * Write the plan directory atomically: arrays and plan.json into a temporary folder, then
 * one rename over the old plan (which is removed after).
 */
export async function writePlan(plan: Plan, dir: string): Promise<void> {
  const target = resolve(dir);
  await mkdir(dirname(target), { recursive: true });
  const tmp = join(dirname(target), `.${target.split("/").pop()}.tmp-${process.pid}-${Date.now()}`);
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { recursive: true });
  try {
    const columns: Record<string, ColumnSpec> = {};
    for (const [name, dtype, data] of planColumns(plan))
      columns[name] = await writeColumn(tmp, name, dtype, data);
    const header = {
      ...planHeader(plan),
      fingerprint: plan.fingerprint,
      cache_dir: plan.cacheDir ?? null,
      micro_batches: plan.mbTokens.length,
      rows: plan.rowTokens.length,
      pieces: plan.pieceSample.length,
      stats: plan.stats,
      columns,
    };
    await writeFileAtomic(join(tmp, "plan.json"), `${JSON.stringify(header, null, 2)}\n`);
    const old = `${tmp}.old`;
    let hadOld = false;
    try {
      await rename(target, old);
      hadOld = true;
    } catch {}
    await rename(tmp, target);
    if (hadOld) await rm(old, { recursive: true, force: true });
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    throw namedWriteError(e, `${tmp} (the plan; the partial folder was removed)`);
  }
}
