import { describe, expect, it } from "vitest";
import { Rng } from "../../src/plan/arrays.ts";
import { PACKING_KINDS, pack, type Rows } from "../../src/plan/packing.ts";
import { syntheticTable } from "./synthetic.ts";

const N = 5000;
const t = syntheticTable(N, 21);
const order = new Rng(4).shuffle(Int32Array.from({ length: N }, (_, i) => i));
const src = { lengths: t.lengths, tiles: t.tiles, tilesIn: t.tilesIn };

function fill(rows: Rows, cap: number): number {
  let tok = 0;
  for (let p = 0; p < rows.pieces; p++) tok += rows.length.data[p];
  return tok / (rows.rows * cap);
}

describe("packing", () => {
  for (const kind of PACKING_KINDS) {
    for (const maxTiles of [undefined, 24]) {
      it(`${kind}${maxTiles ? ` with max_tiles_per_pack ${maxTiles}` : ""}: every pack within limits, every sample's tokens exactly once`, () => {
        const cap = 8192;
        const rows = pack(kind, order, src, {
          packMaxLength: cap,
          maxTilesPerPack: maxTiles,
          window: 512,
        });
        const covered = new Int32Array(N);
        const bad: string[] = [];
        for (let r = 0; r < rows.rows; r++) {
          let tok = 0;
          let til = 0;
          const lo = rows.rowOffset.data[r];
          const hi = rows.rowOffset.data[r + 1];
          if (hi <= lo) bad.push(`row ${r} empty`);
          for (let p = lo; p < hi; p++) {
            const s = rows.sample.data[p];
            if (rows.start.data[p] !== covered[s]) bad.push(`sample ${s} piece out of order`); // pieces of a split sample come in order
            covered[s] += rows.length.data[p];
            tok += rows.length.data[p];
            til += rows.tiles.data[p];
          }
          if (tok > (kind === "none" ? 4096 : cap)) bad.push(`row ${r}: ${tok} tokens`);
          if (maxTiles && kind !== "none" && til > maxTiles) bad.push(`row ${r}: ${til} tiles`);
        }
        for (let s = 0; s < N; s++)
          if (covered[s] !== t.lengths[s])
            bad.push(`sample ${s}: ${covered[s]} of ${t.lengths[s]} tokens`);
        expect(bad.slice(0, 5)).toEqual([]);
        if (kind !== "concat") expect(rows.pieces).toBe(N);
      });
    }
  }

  it("soft packing fills better than greedy next-fit in arrival order, and close to full", () => {
    const cap = 16384;
    const soft = fill(pack("soft", order, src, { packMaxLength: cap }), cap);
    const next = fill(pack("next_fit", order, src, { packMaxLength: cap }), cap);
    const concat = fill(pack("concat", order, src, { packMaxLength: cap }), cap);
    expect(soft).toBeGreaterThan(next);
    expect(soft).toBeGreaterThan(0.97);
    expect(concat).toBeGreaterThan(0.99);
  });

  it("soft packing keeps packs local: a pack's samples come from nearby positions of the shuffled order", () => {
    const rows = pack("soft", order, src, { packMaxLength: 8192, window: 256, maxAge: 2 });
    const posOf = new Int32Array(N);
    order.forEach((s, p) => {
      posOf[s] = p;
    });
    for (let r = 0; r < rows.rows; r++) {
      const ps = Array.from(
        rows.sample.data.subarray(rows.rowOffset.data[r], rows.rowOffset.data[r + 1]),
      ).map((s) => posOf[s]);
      expect(Math.max(...ps) - Math.min(...ps)).toBeLessThan(256 * 4);
    }
  });

  it("refuses a sample longer than pack_max_length", () => {
    expect(() => pack("soft", order, src, { packMaxLength: 100 })).toThrow(/pack_max_length 100/);
  });
});
