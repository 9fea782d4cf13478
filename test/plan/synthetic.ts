/** Synthetic sample tables for planner tests: no cache, just lengths. */
import type { SampleTable } from "../../src/plan/plan.ts";

export function syntheticTable(
  n: number,
  seed = 7,
  datasets?: { name: string; count: number; repeatTime: number }[],
): SampleTable {
  let x = seed >>> 0 || 1;
  const r = () => {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    return x / 4294967296;
  };
  const lengths = new Int32Array(n);
  const learned = new Int32Array(n);
  const tiles = new Int32Array(n);
  const images = new Int32Array(n);
  const multimodal = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    const mm = r() < 0.6;
    multimodal[i] = mm ? 1 : 0;
    images[i] = mm ? 1 + (r() < 0.1 ? 2 : 0) : 0;
    tiles[i] = mm ? images[i] * (1 + Math.floor(r() * 7)) : 0;
    lengths[i] = Math.min(4096, tiles[i] * 256 + 20 + Math.floor(Math.exp(r() * 7.5)));
    learned[i] = Math.max(1, Math.floor(lengths[i] * 0.2 * r()));
  }
  const ds = datasets ?? [{ name: "all", count: n, repeatTime: 1 }];
  let first = 0;
  return {
    fingerprint: `synthetic-${n}-${seed}`,
    datasets: ds.map((d) => {
      const out = { ...d, first };
      first += d.count;
      return out;
    }),
    lengths,
    learned,
    tiles,
    images,
    multimodal,
    // learned tokens are the sample's last `learned` tokens; images sit at its start
    learnedIn: (s, a, b) =>
      Math.max(0, Math.min(b, lengths[s]) - Math.max(a, lengths[s] - learned[s])),
    tilesIn: (s, a) => (a < tiles[s] * 256 ? tiles[s] : 0),
  };
}
