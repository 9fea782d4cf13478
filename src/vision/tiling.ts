/**
 * Dynamic tiling from [w, h] alone, exactly as InternVL2's training code decides it
 * (docs: ../shared/spec/internvl2.md, "Dynamic tiling").
 */

export interface TileOptions {
  /** min_dynamic_patch (1 for InternVL2). */
  minNum: number;
  /** This image's tile budget (max_dynamic_patch, or its share in a multi-image record). */
  maxNum: number;
  /** Tile side in pixels (force_image_size: 448 for InternVL2). */
  tileSize: number;
  /** Append a whole-image thumbnail tile when the grid has more than one tile. */
  useThumbnail: boolean;
}

export interface TileGrid {
  cols: number;
  rows: number;
  thumbnail: boolean;
  /** cols·rows, +1 with the thumbnail. */
  tiles: number;
}

const gridCache = new Map<string, readonly (readonly [number, number])[]>();

/**
 * Candidate grids (cols, rows) in the order the official code walks them: the Python set
 * `{(i, j) for n in min..max for i in 1..n for j in 1..n if min <= i*j <= max}` in its
 * iteration order, then a stable sort by area. Within one area that order only matters for an
 * exact tie (possible when min_num > 1), so it is reproduced rather than guessed.
 */
export function candidateGrids(
  minNum: number,
  maxNum: number,
): readonly (readonly [number, number])[] {
  const key = `${minNum},${maxNum}`;
  let grids = gridCache.get(key);
  if (!grids) {
    const set = new PySet();
    for (let n = minNum; n <= maxNum; n++)
      for (let i = 1; i <= n; i++)
        for (let j = 1; j <= n; j++) if (i * j <= maxNum && i * j >= minNum) set.add(i, j);
    const ordered = set.items();
    // Array.prototype.sort is stable, like Python's sorted.
    grids = ordered.sort((a, b) => a[0] * a[1] - b[0] * b[1]);
    gridCache.set(key, grids);
  }
  return grids;
}

/** The grid whose aspect ratio is closest to w/h, with the official tie-break. */
export function closestGrid(
  w: number,
  h: number,
  minNum: number,
  maxNum: number,
  tileSize: number,
): [number, number] {
  const aspect = w / h;
  const area = w * h;
  let bestDiff = Number.POSITIVE_INFINITY;
  let best: readonly [number, number] = [1, 1];
  for (const g of candidateGrids(minNum, maxNum)) {
    const diff = Math.abs(aspect - g[0] / g[1]);
    if (diff < bestDiff) {
      bestDiff = diff;
      best = g;
    } else if (diff === bestDiff && area > 0.5 * tileSize * tileSize * g[0] * g[1]) {
      best = g;
    }
  }
  return [best[0], best[1]];
}

/** How an image of w×h pixels is cut into tiles. */
export function planTiles(w: number, h: number, opts: TileOptions): TileGrid {
  if (!(w > 0 && h > 0) || !Number.isFinite(w) || !Number.isFinite(h))
    throw new RangeError(`image size must be positive, got ${w}×${h}`);
  if (!(opts.minNum >= 1 && opts.maxNum >= opts.minNum))
    throw new RangeError(
      `tile budget must satisfy 1 <= min (${opts.minNum}) <= max (${opts.maxNum})`,
    );
  const [cols, rows] = closestGrid(w, h, opts.minNum, opts.maxNum, opts.tileSize);
  const thumbnail = opts.useThumbnail && cols * rows !== 1;
  return { cols, rows, thumbnail, tiles: cols * rows + (thumbnail ? 1 : 0) };
}

/** The one-tile plan: images when dynamic tiling is off, and every video frame. */
export const SINGLE_TILE: Readonly<TileGrid> = Object.freeze({
  cols: 1,
  rows: 1,
  thumbnail: false,
  tiles: 1,
});

/** Per-image tile budget in a record with `numImages` images (the official rule). */
export function perImageMaxNum(maxDynamicPatch: number, numImages: number): number {
  return Math.max(1, Math.floor(maxDynamicPatch / Math.max(1, numImages)));
}

/** A human-readable grid: "3×2 + thumbnail", "1×1". */
export function describeGrid(g: TileGrid): string {
  return `${g.cols}×${g.rows}${g.thumbnail ? " + thumbnail" : ""}`;
}

// --- CPython set iteration order for tuples of two small non-negative ints (3.8+) ---

const M64 = (1n << 64n) - 1n;
const XXPRIME_1 = 11400714785074694791n;
const XXPRIME_2 = 14029467366897019727n;
const XXPRIME_5 = 2870177450012600261n;

/** hash((a, b)) as CPython's tuplehash computes it (xxHash-based), as an unsigned 64-bit value. */
export function pyTupleHash(a: number, b: number): bigint {
  let acc = XXPRIME_5;
  for (const lane of [BigInt(a), BigInt(b)]) {
    acc = (acc + lane * XXPRIME_2) & M64;
    acc = ((acc << 31n) | (acc >> 33n)) & M64;
    acc = (acc * XXPRIME_1) & M64;
  }
  acc = (acc + (2n ^ (XXPRIME_5 ^ 3527539n))) & M64;
  if (acc === M64) return 1546275796n;
  return acc;
}

const LINEAR_PROBES = 9;

/** Open addressing exactly as CPython's setobject.c (insertion, linear probes, perturbation, resize). */
class PySet {
  private table: ({ a: number; b: number; hash: bigint } | null)[] = new Array(8).fill(null);
  private used = 0;
  private fill = 0;

  add(a: number, b: number): void {
    const hash = pyTupleHash(a, b);
    const slot = this.probe(this.table, hash, (e) => e.a === a && e.b === b);
    if (slot.found) return;
    this.table[slot.index] = { a, b, hash };
    this.used++;
    this.fill++;
    const mask = this.table.length - 1;
    if (this.fill * 5 < mask * 3) return;
    this.resize(this.used > 50000 ? this.used * 2 : this.used * 4);
  }

  items(): [number, number][] {
    return this.table.filter((e) => e !== null).map((e) => [e.a, e.b]);
  }

  private probe(
    table: ({ a: number; b: number; hash: bigint } | null)[],
    hash: bigint,
    same?: (e: { a: number; b: number }) => boolean,
  ): { index: number; found: boolean } {
    const mask = BigInt(table.length - 1);
    let i = hash & mask;
    let perturb = hash;
    for (;;) {
      const probes = Number(i) + LINEAR_PROBES <= table.length - 1 ? LINEAR_PROBES : 0;
      for (let k = 0; k <= probes; k++) {
        const e = table[Number(i) + k];
        if (e === null) return { index: Number(i) + k, found: false };
        if (same && e.hash === hash && same(e)) return { index: Number(i) + k, found: true };
      }
      perturb >>= 5n;
      i = (i * 5n + 1n + perturb) & mask;
    }
  }

  private resize(minUsed: number): void {
    let size = 8;
    while (size <= minUsed) size <<= 1;
    const old = this.table;
    this.table = new Array(size).fill(null);
    for (const e of old) if (e) this.table[this.probe(this.table, e.hash).index] = e;
    this.fill = this.used;
  }
}
