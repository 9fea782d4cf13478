/**
 * Packing: turn an ordered list of samples into rows (packed sequences) of pieces.
 * docs/packing.md describes each strategy and its measured fill.
 *
 * A row is a list of pieces; a piece is tokens [start, start + length) of one sample. Every
 * strategy but `concat` emits whole samples (start 0, length = the sample's length).
 */
import { UserError } from "../util/errors.ts";
import { IntVec, sortByKeyDesc } from "./arrays.ts";

export type PackingKind = "soft" | "first_fit" | "next_fit" | "concat" | "none";
export const PACKING_KINDS: PackingKind[] = ["soft", "first_fit", "next_fit", "concat", "none"];

export interface PackOptions {
  packMaxLength: number;
  /** Tiles per row at most (none: only the token budget bounds them). */
  maxTilesPerPack?: number;
  /** soft: samples per shuffle window (default 4096). */
  window?: number;
  /** soft: windows a row may stay open after the one that opened it (default 2). */
  maxAge?: number;
}

export interface PackSource {
  lengths: Int32Array;
  tiles: Int32Array;
  /** concat only: tiles of the images with context tokens inside [start, end) of a sample. */
  tilesIn?: (sample: number, start: number, end: number) => number;
}

/** Rows as flat arrays: row r holds pieces rowOffset[r] .. rowOffset[r+1]. */
export class Rows {
  readonly rowOffset = new IntVec(1024);
  readonly sample: IntVec;
  readonly start: IntVec;
  readonly length: IntVec;
  readonly tiles: IntVec;
  constructor(capacity = 1024) {
    this.sample = new IntVec(capacity);
    this.start = new IntVec(capacity);
    this.length = new IntVec(capacity);
    this.tiles = new IntVec(capacity);
    this.rowOffset.push(0);
  }
  get rows(): number {
    return this.rowOffset.length - 1;
  }
  get pieces(): number {
    return this.sample.length;
  }
  add(sample: number, start: number, length: number, tiles: number): void {
    this.sample.push(sample);
    this.start.push(start);
    this.length.push(length);
    this.tiles.push(tiles);
  }
  endRow(): void {
    if (this.sample.length > this.rowOffset.data[this.rowOffset.length - 1])
      this.rowOffset.push(this.sample.length);
  }
  rowTokens(r: number): number {
    let t = 0;
    for (let p = this.rowOffset.data[r]; p < this.rowOffset.data[r + 1]; p++)
      t += this.length.data[p];
    return t;
  }
}

function checkFits(len: number, tiles: number, sample: number, o: PackOptions): void {
  if (len > o.packMaxLength) {
    throw new UserError(
      `sample ${sample} has ${len} tokens, above pack_max_length ${o.packMaxLength}: raise pack_max_length to at least max_length`,
    );
  }
  if (o.maxTilesPerPack !== undefined && tiles > o.maxTilesPerPack) {
    throw new UserError(
      `sample ${sample} has ${tiles} tiles, above max_tiles_per_pack ${o.maxTilesPerPack}`,
    );
  }
}

export function pack(
  kind: PackingKind,
  order: Int32Array,
  src: PackSource,
  o: PackOptions,
  out = new Rows(order.length),
): Rows {
  switch (kind) {
    case "soft":
      return packSoft(order, src, o, out);
    case "first_fit":
      return packFirstFit(order, src, o, out);
    case "next_fit":
      return packNextFit(order, src, o, out);
    case "concat":
      return packConcat(order, src, o, out);
    case "none":
      for (const s of order) {
        out.add(s, 0, src.lengths[s], src.tiles[s]);
        out.endRow();
      }
      return out;
  }
}

/** Arrival order, one open row: close it when the next sample does not fit. */
function packNextFit(order: Int32Array, src: PackSource, o: PackOptions, out: Rows): Rows {
  const cap = o.packMaxLength;
  const tcap = o.maxTilesPerPack ?? Number.MAX_SAFE_INTEGER;
  let used = 0;
  let usedTiles = 0;
  for (const s of order) {
    const len = src.lengths[s];
    const t = src.tiles[s];
    checkFits(len, t, s, o);
    if (used + len > cap || usedTiles + t > tcap) {
      out.endRow();
      used = 0;
      usedTiles = 0;
    }
    out.add(s, 0, len, t);
    used += len;
    usedTiles += t;
  }
  out.endRow();
  return out;
}

/** Concatenate in arrival order and cut every pack_max_length tokens (samples may split). */
function packConcat(order: Int32Array, src: PackSource, o: PackOptions, out: Rows): Rows {
  const cap = o.packMaxLength;
  const tcap = o.maxTilesPerPack ?? Number.MAX_SAFE_INTEGER;
  const tilesIn = src.tilesIn;
  let used = 0;
  let usedTiles = 0;
  for (const s of order) {
    const len = src.lengths[s];
    let start = 0;
    while (start < len) {
      const take = Math.min(len - start, cap - used);
      const whole = start === 0 && take === len;
      const t = whole ? src.tiles[s] : tilesIn ? tilesIn(s, start, start + take) : src.tiles[s];
      if (usedTiles + t > tcap && used > 0) {
        out.endRow();
        used = 0;
        usedTiles = 0;
        continue;
      }
      if (t > tcap)
        throw new UserError(
          `sample ${s} has ${t} tiles in ${take} tokens, above max_tiles_per_pack ${tcap}`,
        );
      out.add(s, start, take, t);
      used += take;
      usedTiles += t;
      start += take;
      if (used === cap) {
        out.endRow();
        used = 0;
        usedTiles = 0;
      }
    }
  }
  out.endRow();
  return out;
}

/** Leftmost-first search over a max segment tree: classic first-fit in arrival order. */
function packFirstFit(order: Int32Array, src: PackSource, o: PackOptions, out: Rows): Rows {
  const cap = o.packMaxLength;
  const tcap = o.maxTilesPerPack ?? Number.MAX_SAFE_INTEGER;
  const n = order.length;
  let size = 1;
  while (size < Math.max(1, n)) size *= 2;
  // leaves: remaining tokens of bin b (fresh bins hold cap, so "leftmost fitting" opens them in order)
  const tree = new Int32Array(2 * size).fill(cap);
  const binTiles = new Int32Array(size);
  const first = new Int32Array(size).fill(-1);
  const last = new Int32Array(size).fill(-1);
  const next = new Int32Array(n).fill(-1);
  let bins = 0;
  const find = (node: number, need: number, needTiles: number): number => {
    if (tree[node] < need) return -1;
    if (node >= size) {
      const b = node - size;
      return binTiles[b] + needTiles <= tcap ? b : -1;
    }
    const l = find(2 * node, need, needTiles);
    return l >= 0 ? l : find(2 * node + 1, need, needTiles);
  };
  for (let p = 0; p < n; p++) {
    const s = order[p];
    const len = src.lengths[s];
    const t = src.tiles[s];
    checkFits(len, t, s, o);
    const b = find(1, len, t);
    let i = b + size;
    tree[i] -= len;
    for (i >>= 1; i >= 1; i >>= 1) tree[i] = Math.max(tree[2 * i], tree[2 * i + 1]);
    binTiles[b] += t;
    if (first[b] < 0) first[b] = p;
    else next[last[b]] = p;
    last[b] = p;
    if (b >= bins) bins = b + 1;
  }
  for (let b = 0; b < bins; b++) {
    for (let p = first[b]; p >= 0; p = next[p])
      out.add(order[p], 0, src.lengths[order[p]], src.tiles[order[p]]);
    out.endRow();
  }
  return out;
}

/**
 * Soft packing: best-fit-decreasing within a window of `window` consecutive samples of the
 * shuffled order. Rows still open after a window stay open for up to `maxAge` more windows
 * (so the window's small samples can fill the last rows), then close; rows are emitted in
 * closing order, so packs stay as random across the epoch as the shuffle.
 *
 * Open rows are bucketed by remaining tokens; a two-level bitmap over 0..pack_max_length
 * finds the smallest remaining space that fits in a few word operations.
 */
function packSoft(order: Int32Array, src: PackSource, o: PackOptions, out: Rows): Rows {
  const cap = o.packMaxLength;
  const tcap = o.maxTilesPerPack ?? Number.MAX_SAFE_INTEGER;
  const window = Math.max(1, o.window ?? 4096);
  const maxAge = o.maxAge ?? 2;
  const n = order.length;
  // Non-empty buckets as a two-level bitmap over remaining space 0..cap: "smallest remaining
  // ≥ n" is a masked word test plus a short scan of the summary words.
  const words = (cap >> 5) + 1;
  const bits = new Uint32Array(words);
  const summary = new Uint32Array((words >> 5) + 1);
  const head = new Int32Array(cap + 1).fill(-1);
  // per open-row state, indexed by row id (ids reused through a free list)
  let capRows = 1024;
  let rem = new Int32Array(capRows);
  let tiles = new Int32Array(capRows);
  let born = new Int32Array(capRows);
  let first = new Int32Array(capRows);
  let last = new Int32Array(capRows);
  let bnext = new Int32Array(capRows);
  let bprev = new Int32Array(capRows);
  const free = new IntVec();
  let rowsMade = 0;
  const next = new Int32Array(n);
  const open = new IntVec();
  const ctz = (m: number) => 31 - Math.clz32(m & -m);
  const link = (b: number) => {
    const r = rem[b];
    bprev[b] = -1;
    bnext[b] = head[r];
    if (head[r] >= 0) bprev[head[r]] = b;
    else {
      bits[r >> 5] |= 1 << (r & 31);
      summary[r >> 10] |= 1 << ((r >> 5) & 31);
    }
    head[r] = b;
  };
  const unlink = (b: number) => {
    const r = rem[b];
    if (bprev[b] >= 0) bnext[bprev[b]] = bnext[b];
    else head[r] = bnext[b];
    if (bnext[b] >= 0) bprev[bnext[b]] = bprev[b];
    if (head[r] < 0) {
      const w = r >> 5;
      bits[w] &= ~(1 << (r & 31));
      if (bits[w] === 0) summary[w >> 5] &= ~(1 << (w & 31));
    }
  };
  const firstAtLeast = (x: number): number => {
    if (x > cap) return -1;
    let w = x >> 5;
    const m = bits[w] & (-1 << (x & 31));
    if (m !== 0) return (w << 5) + ctz(m);
    w++;
    let sw = w >> 5;
    if (sw >= summary.length) return -1;
    let sm = (w & 31) === 0 ? summary[sw] : summary[sw] & (-1 << (w & 31));
    while (sm === 0) {
      if (++sw >= summary.length) return -1;
      sm = summary[sw];
    }
    w = (sw << 5) + ctz(sm);
    return (w << 5) + ctz(bits[w]);
  };
  const newRow = (w: number): number => {
    let b: number;
    if (free.length) b = free.data[--free.length];
    else {
      b = rowsMade++;
      if (b >= capRows) {
        capRows *= 2;
        const g = (a: Int32Array) => {
          const x = new Int32Array(capRows);
          x.set(a);
          return x;
        };
        rem = g(rem);
        tiles = g(tiles);
        born = g(born);
        first = g(first);
        last = g(last);
        bnext = g(bnext);
        bprev = g(bprev);
      }
    }
    rem[b] = cap;
    tiles[b] = 0;
    born[b] = w;
    first[b] = -1;
    last[b] = -1;
    open.push(b);
    return b;
  };
  // Lengths and tiles by position in the order, gathered once (sequential reads after this).
  const lenAt = new Int32Array(n);
  const tilesAt = new Int32Array(n);
  for (let p = 0; p < n; p++) {
    lenAt[p] = src.lengths[order[p]];
    tilesAt[p] = src.tiles[order[p]];
  }
  const emit = (b: number) => {
    for (let p = first[b]; p >= 0; p = next[p]) out.add(order[p], 0, lenAt[p], tilesAt[p]);
    out.endRow();
    free.push(b);
  };
  const pos = new Int32Array(window);
  const scratch = new Float64Array(window);
  const keyOf = (p: number) => lenAt[p];
  let w = 0;
  for (let w0 = 0; w0 < n; w0 += window, w++) {
    const m = Math.min(window, n - w0);
    const idx = pos.subarray(0, m);
    let minLen = cap;
    for (let k = 0; k < m; k++) idx[k] = w0 + k;
    sortByKeyDesc(idx, keyOf, scratch);
    for (let k = 0; k < m; k++) {
      const p = idx[k];
      const len = lenAt[p];
      const t = tilesAt[p];
      if (len > cap || t > tcap) checkFits(len, t, order[p], o);
      if (len < minLen) minLen = len;
      let b = -1;
      for (let r = firstAtLeast(len); r >= 0 && b < 0; r = firstAtLeast(r + 1)) {
        for (let c = head[r]; c >= 0; c = bnext[c]) {
          if (tiles[c] + t <= tcap) {
            b = c;
            break;
          }
        }
      }
      if (b >= 0) unlink(b);
      else b = newRow(w);
      rem[b] -= len;
      tiles[b] += t;
      next[p] = -1;
      if (first[b] < 0) first[b] = p;
      else next[last[b]] = p;
      last[b] = p;
      link(b);
    }
    // Close rows that are full (nothing of this window's size could still fit) or too old.
    let keep = 0;
    const isLast = w0 + m >= n;
    for (let k = 0; k < open.length; k++) {
      const b = open.data[k];
      if (isLast || rem[b] < minLen || tiles[b] >= tcap || w - born[b] >= maxAge) {
        unlink(b);
        emit(b);
      } else open.data[keep++] = b;
    }
    open.length = keep;
  }
  return out;
}
