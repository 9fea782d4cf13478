/** Growable typed arrays and a seeded random generator: the planner keeps no object per sample. */

type IntArray = Int32Array | Float64Array | BigInt64Array;

/** An Int32Array that doubles when full. */
export class IntVec {
  data: Int32Array;
  length = 0;
  constructor(capacity = 1024) {
    this.data = new Int32Array(Math.max(16, capacity));
  }
  push(v: number): void {
    if (this.length === this.data.length) this.grow(this.length + 1);
    this.data[this.length++] = v;
  }
  grow(min: number): void {
    let cap = this.data.length;
    while (cap < min) cap *= 2;
    const next = new Int32Array(cap);
    next.set(this.data.subarray(0, this.length));
    this.data = next;
  }
  /** A view of the pushed values (shares memory until the next push that grows). */
  view(): Int32Array {
    return this.data.subarray(0, this.length);
  }
  /** A trimmed copy. */
  take(): Int32Array {
    return this.data.slice(0, this.length);
  }
}

export function sum(a: IntArray | number[]): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += Number(a[i]);
  return s;
}

/**
 * A small, fast 32-bit generator (mulberry32) seeded from several integers. Pure integer
 * arithmetic: every node gets the same stream from the same seed.
 */
export class Rng {
  private s: number;
  constructor(...seed: number[]) {
    let h = 0x9e3779b9 | 0;
    for (const x of seed) {
      // fold each part through a 32-bit mix (murmur3 finaliser) so (1,0) and (0,1) differ
      h = Math.imul(h ^ (x | 0), 0x85ebca6b);
      h ^= h >>> 13;
      h = Math.imul(h, 0xc2b2ae35);
      h ^= h >>> 16;
      h = (h + Math.floor(x / 4294967296)) | 0;
    }
    this.s = h;
  }
  /** Uniform in [0, 2^32). */
  nextU32(): number {
    this.s = (this.s + 0x6d2b79f5) | 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  /** Uniform in [0, 1). */
  next(): number {
    return this.nextU32() / 4294967296;
  }
  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  /** Fisher–Yates, in place. */
  shuffle<T extends { length: number; [i: number]: number }>(a: T, from = 0, to = a.length): T {
    for (let i = to - 1; i > from; i--) {
      const j = from + this.int(i - from + 1);
      const t = a[i];
      a[i] = a[j];
      a[j] = t;
    }
    return a;
  }
}

/**
 * Sort `idx` (in place) by `key[idx]` descending, ties by idx ascending. Keys are
 * non-negative integers below 2^21 (token counts), so a packed float64 key sorts without a
 * comparator callback.
 */
export function sortByKeyDesc(
  idx: Int32Array,
  key: Int32Array | ((i: number) => number),
  scratch?: Float64Array,
): void {
  const n = idx.length;
  const k = scratch && scratch.length >= n ? scratch.subarray(0, n) : new Float64Array(n);
  const get = typeof key === "function" ? key : (i: number) => key[i];
  for (let i = 0; i < n; i++) {
    const v = idx[i];
    // larger key first, then smaller index: (MAXKEY - key) * 2^31 + index, ascending
    k[i] = (2097151 - get(v)) * 2147483648 + v;
  }
  k.sort();
  for (let i = 0; i < n; i++) idx[i] = k[i] % 2147483648;
}
