/**
 * Samplers: the order in which an epoch's (already shuffled) samples are batched.
 * docs/samplers.md describes the algorithms.
 */
import { IntVec, type Rng, sortByKeyDesc } from "./arrays.ts";

export type SamplerKind = "random" | "length" | "modality_length";

/**
 * Group by length: cut the shuffled list into mega-batches of `megaBatch` samples
 * (world_size × micro_batch_size), sort each by length, longest first; the mega-batch holding
 * the longest sample goes first so an out-of-memory shows at step one.
 */
export function groupByLength(
  order: Int32Array,
  lengths: Int32Array,
  megaBatch: number,
): Int32Array {
  const out = order.slice();
  const abs = (i: number) => Math.abs(lengths[i]);
  const scratch = new Float64Array(megaBatch);
  let longestAt = 0;
  let longest = -1;
  for (let s = 0; s < out.length; s += megaBatch) {
    const mb = out.subarray(s, Math.min(out.length, s + megaBatch));
    sortByKeyDesc(mb, abs, scratch);
    if (abs(mb[0]) > longest) {
      longest = abs(mb[0]);
      longestAt = s;
    }
  }
  if (longestAt !== 0) {
    // swap the first mega-batch with the longest one (both full, or the longest is the last)
    const a = out.slice(0, Math.min(megaBatch, out.length));
    const b = out.slice(longestAt, Math.min(out.length, longestAt + megaBatch));
    if (a.length === b.length) {
      out.set(b, 0);
      out.set(a, longestAt);
    } else {
      // the longest sits in the short last mega-batch: swap just it to the front
      const t = out[0];
      out[0] = out[longestAt];
      out[longestAt] = t;
    }
  }
  return out;
}

export interface Groups {
  /** Samples in batch order. */
  order: Int32Array;
  /** Start of each group in `order` (plus the end): a group never mixes modalities. */
  groupOffsets: Int32Array;
}

/**
 * Group by modality and length (lengths of pure-text samples negative by convention):
 * multimodal and text samples are grouped by length separately, cut into mega-batches,
 * and the full mega-batches of both kinds shuffled together; the two remainders follow
 * at the end, each its own group, so no mega-batch mixes modalities.
 */
export function groupByModalityLength(
  order: Int32Array,
  signedLengths: Int32Array,
  megaBatch: number,
  rng: Rng,
): Groups {
  const mm = new IntVec(order.length);
  const text = new IntVec(order.length);
  for (let i = 0; i < order.length; i++) (signedLengths[order[i]] < 0 ? text : mm).push(order[i]);
  const parts = [
    groupByLength(mm.view(), signedLengths, megaBatch),
    groupByLength(text.view(), signedLengths, megaBatch),
  ];
  const full: Int32Array[] = [];
  const rest: Int32Array[] = [];
  for (const p of parts) {
    const nFull = Math.floor(p.length / megaBatch);
    for (let k = 0; k < nFull; k++) full.push(p.subarray(k * megaBatch, (k + 1) * megaBatch));
    if (p.length > nFull * megaBatch) rest.push(p.subarray(nFull * megaBatch));
  }
  const perm = rng.shuffle(Int32Array.from(full.keys()));
  const out = new Int32Array(order.length);
  const offsets = new IntVec(full.length + 3);
  let at = 0;
  for (const k of perm) {
    offsets.push(at);
    out.set(full[k], at);
    at += full[k].length;
  }
  for (const r of rest) {
    offsets.push(at);
    out.set(r, at);
    at += r.length;
  }
  offsets.push(at);
  return { order: out, groupOffsets: offsets.take() };
}

/** Signed lengths: positive for multimodal samples, negative for pure text. */
export function signedLengths(lengths: Int32Array, multimodal: Uint8Array): Int32Array {
  const out = new Int32Array(lengths.length);
  for (let i = 0; i < lengths.length; i++) out[i] = multimodal[i] ? lengths[i] : -lengths[i];
  return out;
}
