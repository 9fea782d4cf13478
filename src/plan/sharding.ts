/**
 * Sharding: cut an epoch's rows (packs, or single samples without packing) into steps so that
 * every rank runs the same number of steps and carries about the same number of tokens.
 *
 * A step is `accum` micro-steps; a micro-step is `world × perMicro` consecutive rows of the
 * epoch's row order, dealt to ranks longest first, each to the rank with the fewest tokens
 * that still has room (the even split of the official length-grouped sampler, by tokens).
 */
import { IntVec, sortByKeyDesc } from "./arrays.ts";
import type { Rows } from "./packing.ts";

export interface ShardOptions {
  world: number;
  /** Rows per micro-batch (micro_batch_size). */
  perMicro: number;
  /** Micro-batches per step (gradient accumulation). */
  accum: number;
  /** Split rows of the last step (packs of several samples) so that no slot stays empty. */
  splitToFill: boolean;
}

export interface Sharded {
  steps: number;
  /** Row ids (into the epoch's Rows) in plan order: step, rank, micro-batch, row. */
  rowOrder: Int32Array;
  /** Per micro-batch (steps·world·accum + 1): offsets into rowOrder. */
  mbOffset: Int32Array;
}

/**
 * Split rows of the last, short step in two (the rows with most pieces first) until the step
 * has a row for every slot or nothing is left to split. Mutates `rows` (appends new rows).
 */
function fillLastStep(rows: Rows, order: IntVec, from: number, slots: number): void {
  for (;;) {
    const have = order.length - from;
    if (have >= slots) return;
    let best = -1;
    let bestPieces = 1;
    for (let k = from; k < order.length; k++) {
      const r = order.data[k];
      const np = rows.rowOffset.data[r + 1] - rows.rowOffset.data[r];
      if (np > bestPieces) {
        bestPieces = np;
        best = k;
      }
    }
    if (best < 0) return;
    // Rows are immutable slices of the piece arrays: copy the second half of the row's pieces
    // to the end as a new row, and shrink the old row by pointing it at a copy of its first half.
    const r = order.data[best];
    const lo = rows.rowOffset.data[r];
    const hi = rows.rowOffset.data[r + 1];
    const mid = lo + Math.floor((hi - lo) / 2);
    const copyRow = (a: number, b: number): number => {
      for (let p = a; p < b; p++)
        rows.add(rows.sample.data[p], rows.start.data[p], rows.length.data[p], rows.tiles.data[p]);
      rows.endRow();
      return rows.rows - 1;
    };
    const left = copyRow(lo, mid);
    const right = copyRow(mid, hi);
    order.data[best] = left;
    order.push(right);
  }
}

export function shard(
  rows: Rows,
  rowOrderIn: Int32Array,
  rowTokens: (r: number) => number,
  o: ShardOptions,
): Sharded {
  const W = o.world;
  const perStep = W * o.perMicro * o.accum;
  const order = new IntVec(rowOrderIn.length + perStep);
  for (const r of rowOrderIn) order.push(r);
  const steps = Math.ceil(order.length / perStep);
  const lastFrom = (steps - 1) * perStep;
  if (steps > 0 && o.splitToFill) fillLastStep(rows, order, lastFrom, perStep);
  const nMb = steps * W * o.accum;
  const mbOffset = new Int32Array(nMb + 1);
  const rowOrder = new Int32Array(order.length);
  const rankTokens = new Float64Array(W);
  const rankRoom = new Int32Array(W);
  const rankRows: IntVec[] = Array.from({ length: W }, () => new IntVec(o.perMicro));
  const scratch = new Float64Array(W * o.perMicro);
  const tokOf = (r: number) => Math.min(rowTokens(r), 2097151);
  let out = 0;
  for (let g = 0; g < steps; g++) {
    const s0 = g * perStep;
    const s1 = Math.min(order.length, s0 + perStep);
    const n = s1 - s0;
    // rows per micro-step: all full but in a short last step, where they spread evenly
    const perMicroStep = (a: number) =>
      Math.floor((n * (a + 1)) / o.accum) - Math.floor((n * a) / o.accum);
    let at = s0;
    // slot (rank, a) -> rows, collected per rank then written rank-major
    const perRankMb: Int32Array[][] = Array.from({ length: W }, () => []);
    for (let a = 0; a < o.accum; a++) {
      const m = perMicroStep(a);
      const ms = order.data.slice(at, at + m);
      at += m;
      sortByKeyDesc(ms, tokOf, scratch);
      rankTokens.fill(0);
      for (let r = 0; r < W; r++) {
        rankRoom[r] = Math.floor((m * (r + 1)) / W) - Math.floor((m * r) / W);
        rankRows[r].length = 0;
      }
      for (const row of ms) {
        let best = -1;
        for (let r = 0; r < W; r++)
          if (rankRoom[r] > 0 && (best < 0 || rankTokens[r] < rankTokens[best])) best = r;
        rankRoom[best]--;
        rankTokens[best] += tokOf(row);
        rankRows[best].push(row);
      }
      for (let r = 0; r < W; r++) perRankMb[r].push(rankRows[r].take());
    }
    for (let r = 0; r < W; r++) {
      for (let a = 0; a < o.accum; a++) {
        const mbIndex = (g * W + r) * o.accum + a;
        mbOffset[mbIndex] = out;
        for (const row of perRankMb[r][a]) rowOrder[out++] = row;
      }
    }
  }
  mbOffset[nMb] = out;
  return { steps, rowOrder: rowOrder.subarray(0, out), mbOffset };
}
