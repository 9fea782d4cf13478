/**
 * The mixture: each dataset's samples taken per its repeat_time, then one seeded shuffle per
 * epoch. Samples are global cache indices; a dataset occupies [first, first + count).
 */
import { selectedRecordCount, selectedRecordIndex } from "../data/meta.ts";
import { Rng } from "./arrays.ts";

export interface MixtureDataset {
  name: string;
  /** Global index of the dataset's first sample in the cache. */
  first: number;
  /** Samples of the dataset in the cache (every valid record once). */
  count: number;
  repeatTime: number;
}

/** Entries of one epoch: Σ selectedRecordCount(count, repeat_time). */
export function mixtureSize(datasets: MixtureDataset[]): number {
  let n = 0;
  for (const d of datasets) n += selectedRecordCount(d.count, d.repeatTime);
  return n;
}

/**
 * The epoch's sample list before shuffling, in dataset order: a fraction keeps the first
 * floor(n·r) records, an integer k repeats the whole dataset k times.
 */
export function mixtureList(datasets: MixtureDataset[]): Int32Array {
  const out = new Int32Array(mixtureSize(datasets));
  let at = 0;
  for (const d of datasets) {
    const m = selectedRecordCount(d.count, d.repeatTime);
    for (let i = 0; i < m; i++) out[at++] = d.first + selectedRecordIndex(i, d.count, d.repeatTime);
  }
  return out;
}

/** The epoch's list shuffled with a stream drawn from (seed, epoch). */
export function epochMixture(datasets: MixtureDataset[], seed: number, epoch: number): Int32Array {
  return new Rng(seed, epoch, 0x6d6978).shuffle(mixtureList(datasets));
}
