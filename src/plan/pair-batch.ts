/**
 * Preference pairs in `prepare`: a pair record becomes two consecutive samples, chosen then
 * rejected, which share the prompt and images; a pair with a side that cannot be stored
 * (too long, failed) is left out whole, so the cache of a preference dataset always holds
 * 2k samples: pair k is samples 2k and 2k+1 of the dataset.
 */
import { pairConversations } from "../data/pairs.ts";
import type { DataRecord } from "../data/record.ts";
import type { SampleBatch } from "./sample-batch.ts";

/** Pair records split into their two sides (same line); other records as they are. */
export function expandPairs(items: { line: number; record: DataRecord }[]): {
  items: { line: number; record: DataRecord }[];
  pairs: number;
} {
  let pairs = 0;
  for (const it of items) if (it.record.pair) pairs++;
  if (pairs === 0) return { items, pairs };
  const out: { line: number; record: DataRecord }[] = [];
  for (const it of items) {
    if (!it.record.pair) {
      out.push(it);
      continue;
    }
    const [c, r] = pairConversations(it.record);
    out.push({ line: it.line, record: c }, { line: it.line, record: r });
  }
  return { items: out, pairs };
}

/**
 * Keeps the samples of lines that gave exactly two (both sides of a pair), in order; the
 * errors of a line are reported once. `dropped` counts pairs left out without an error.
 */
export function keepWholePairs(b: SampleBatch, pairLines: Set<number>): SampleBatch {
  const n = b.count;
  const perLine = new Map<number, number>();
  for (let k = 0; k < n; k++) perLine.set(b.line[k], (perLine.get(b.line[k]) ?? 0) + 1);
  const keep = new Uint8Array(n);
  let kept = 0;
  for (let k = 0; k < n; k++)
    if (!pairLines.has(b.line[k]) || perLine.get(b.line[k]) === 2) {
      keep[k] = 1;
      kept++;
    }
  const seen = new Set<string>();
  const errors = b.errors.filter((e) => {
    const key = `${e.line}\u0000${e.message}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
  const errLines = new Set(errors.map((e) => e.line));
  let droppedPairs = 0;
  for (const l of pairLines) if (perLine.get(l) !== 2 && !errLines.has(l)) droppedPairs++;
  // A preference dataset holds only pairs (prepare refuses a mix), so its drops are pairs.
  const dropped = pairLines.size ? droppedPairs : b.dropped;
  if (kept === n) return { ...b, errors, dropped };
  return { ...selectSamples(b, keep, kept), errors, dropped };
}

/** The batch restricted to the samples with keep[k] = 1 (their tokens and images copied). */
function selectSamples(b: SampleBatch, keep: Uint8Array, kept: number): SampleBatch {
  let tokens = 0;
  let images = 0;
  for (let k = 0; k < b.count; k++)
    if (keep[k]) {
      tokens += b.stored[k];
      images += b.imgCount[k];
    }
  const i32 = (m: number) => new Int32Array(m);
  const out: SampleBatch = {
    ...b,
    count: kept,
    line: i32(kept),
    length: i32(kept),
    learned: i32(kept),
    flags: new Uint8Array(kept),
    imgCount: i32(kept),
    stored: i32(kept),
    inputIds: i32(tokens),
    labels: i32(tokens),
    imgW: i32(images),
    imgH: i32(images),
    imgCols: i32(images),
    imgRows: i32(images),
    imgTiles: i32(images),
    imgThumb: new Uint8Array(images),
    imgFrame: i32(images),
    imgContext: i32(images),
    imgPaths: [],
  };
  let s = 0;
  let tokIn = 0;
  let tokOut = 0;
  let imgIn = 0;
  let imgOut = 0;
  for (let k = 0; k < b.count; k++) {
    const nt = b.stored[k];
    const ni = b.imgCount[k];
    if (keep[k]) {
      out.line[s] = b.line[k];
      out.length[s] = b.length[k];
      out.learned[s] = b.learned[k];
      out.flags[s] = b.flags[k];
      out.imgCount[s] = ni;
      out.stored[s] = nt;
      out.inputIds.set(b.inputIds.subarray(tokIn, tokIn + nt), tokOut);
      out.labels.set(b.labels.subarray(tokIn, tokIn + nt), tokOut);
      for (const [from, to] of [
        [b.imgW, out.imgW],
        [b.imgH, out.imgH],
        [b.imgCols, out.imgCols],
        [b.imgRows, out.imgRows],
        [b.imgTiles, out.imgTiles],
        [b.imgFrame, out.imgFrame],
        [b.imgContext, out.imgContext],
      ] as const)
        to.set(from.subarray(imgIn, imgIn + ni), imgOut);
      out.imgThumb.set(b.imgThumb.subarray(imgIn, imgIn + ni), imgOut);
      for (let j = 0; j < ni; j++) out.imgPaths.push(b.imgPaths[imgIn + j]);
      s++;
      tokOut += nt;
      imgOut += ni;
    }
    tokIn += nt;
    imgIn += ni;
  }
  return out;
}
