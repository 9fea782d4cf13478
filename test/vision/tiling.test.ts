import { beforeAll, describe, expect, it } from "vitest";
import {
  candidateGrids,
  describeGrid,
  perImageMaxNum,
  planTiles,
  pyTupleHash,
} from "../../src/vision/tiling.ts";
import { askPython } from "../text/reference.ts";
import { rng } from "../text/strings.ts";

const opts = (maxNum: number, minNum = 1) => ({
  minNum,
  maxNum,
  tileSize: 448,
  useThumbnail: true,
});

// (w, h) pairs: extreme aspect ratios, tiny and huge images, exact ties and common sizes.
function sizes(): [number, number][] {
  const out: [number, number][] = [
    [1695, 2025],
    [448, 448],
    [1000, 200],
    [640, 480],
    [1280, 720],
    [1, 1],
    [1, 10000],
    [10000, 1],
    [2, 1],
    [1, 2],
    [20000, 20000],
    [100000, 3],
    [3, 100000],
    [447, 448],
    [449, 448],
    [896, 448],
    [448, 896],
    [1344, 448],
    [500, 400],
    [1000, 800],
    [400, 500],
    [800, 1000],
    [1250, 1000],
    [4000, 3000],
    [3000, 4000],
    [1920, 1080],
    [1080, 1920],
    [3840, 2160],
    [224, 224],
    [14, 14],
    [300, 7000],
    [7000, 300],
    [1023, 767],
    [768, 1024],
  ];
  // Exact midpoints between neighbouring grid ratios (ties in |w/h - i/j|).
  for (const [a, b] of [
    [1, 2],
    [2, 3],
    [3, 4],
    [1, 3],
    [5, 6],
    [4, 5],
    [2, 5],
    [7, 8],
  ]) {
    out.push([a + b, 2 * b]); // midpoint of a/b and 1
    out.push([(a + b) * 224, 2 * b * 224]);
    out.push([(a + b) * 1000, 2 * b * 1000]);
  }
  const r = rng(7);
  while (out.length < 320) {
    const w = 1 + Math.floor(r() ** 3 * 8000);
    const h = 1 + Math.floor(r() ** 3 * 8000);
    out.push([w, h]);
  }
  return out;
}

describe("dynamic tiling", () => {
  it("gives the spec's worked examples exactly", () => {
    const table: [number, number, number, string, number][] = [
      [1695, 2025, 12, "3×4 + thumbnail", 13],
      [1695, 2025, 6, "2×2 + thumbnail", 5],
      [448, 448, 12, "1×1", 1],
      [448, 448, 6, "1×1", 1],
      [1000, 200, 12, "5×1 + thumbnail", 6],
      [1000, 200, 6, "5×1 + thumbnail", 6],
      [640, 480, 12, "4×3 + thumbnail", 13],
      [640, 480, 6, "3×2 + thumbnail", 7],
      [1280, 720, 12, "4×2 + thumbnail", 9],
      [1280, 720, 6, "2×1 + thumbnail", 3],
    ];
    for (const [w, h, max, grid, tiles] of table) {
      const g = planTiles(w, h, opts(max));
      expect([w, h, max, describeGrid(g), g.tiles]).toEqual([w, h, max, grid, tiles]);
    }
    expect(planTiles(1695, 2025, opts(12)).tiles * 256).toBe(3328);
  });

  it("never adds a thumbnail to a single tile, and omits it when use_thumbnail is off", () => {
    expect(planTiles(448, 448, opts(12)).thumbnail).toBe(false);
    const g = planTiles(1280, 720, { ...opts(12), useThumbnail: false });
    expect(g).toEqual({ cols: 4, rows: 2, thumbnail: false, tiles: 8 });
  });

  it("splits the budget between images, at least one tile each", () => {
    expect(perImageMaxNum(12, 1)).toBe(12);
    expect(perImageMaxNum(12, 2)).toBe(6);
    expect(perImageMaxNum(12, 5)).toBe(2);
    expect(perImageMaxNum(12, 13)).toBe(1);
    expect(perImageMaxNum(6, 4)).toBe(1);
  });

  it("rejects empty images and impossible budgets", () => {
    expect(() => planTiles(0, 10, opts(6))).toThrow(/positive/);
    expect(() => planTiles(10, 10, opts(2, 3))).toThrow(/budget/);
  });

  it("has no same-area tie at the closest distance when min_num is 1 (so grid order cannot matter there)", () => {
    // |m - p/q| = |mn·q - p·md| / (md·q), with m = mn/md = (ad + cb) / 2bd; compared in integers.
    const closer = (mn: number, md: number, o: readonly number[], g: readonly number[]) =>
      Math.abs(mn * o[1] - o[0] * md) * g[1] < Math.abs(mn * g[1] - g[0] * md) * o[1];
    for (let max = 1; max <= 48; max++) {
      const grids = candidateGrids(1, max);
      for (const g of grids)
        for (const k of grids) {
          if (g[0] * g[1] !== k[0] * k[1] || g[0] >= k[0]) continue;
          const mn = g[0] * k[1] + k[0] * g[1];
          const md = 2 * g[1] * k[1];
          expect(grids.some((o) => closer(mn, md, o, g))).toBe(true);
        }
    }
  });

  it("reproduces CPython's tuple hash", () => {
    // hash((1, 2)) and hash((3, 4)) on 64-bit CPython 3.8+, as unsigned values.
    expect(pyTupleHash(1, 2)).toBe(14896688948223909699n);
    expect(pyTupleHash(3, 4)).toBe(1079245023883434373n);
  });

  describe("against Python", () => {
    const all = sizes();
    const budgets: [number, number][] = [];
    for (let min = 1; min <= 6; min++)
      for (let max = min; max <= 40; max += min === 1 ? 1 : 3) budgets.push([min, max]);
    const tieCases: { w: number; h: number; min: number; max: number }[] = [];
    // Exact ties between two grids of one area exist only when min_num > 1 removes the grids in between.
    for (const [min, max] of [
      [2, 2],
      [6, 6],
      [4, 6],
      [12, 12],
    ] as [number, number][])
      for (const g of candidateGrids(min, max))
        for (const k of candidateGrids(min, max))
          if (g[0] * g[1] === k[0] * k[1] && g[0] !== k[0]) {
            // w/h = midpoint of the two ratios, small and large area (both sides of the tie-break).
            const num = g[0] * k[1] + k[0] * g[1];
            const den = 2 * g[1] * k[1];
            tieCases.push({ w: num, h: den, min, max }, { w: num * 400, h: den * 400, min, max });
          }
    let answers: unknown[];
    beforeAll(async () => {
      const q = [];
      for (const max of [1, 2, 6, 12, 24, 40]) {
        q.push({
          op: "tiles",
          sizes: all,
          min_num: 1,
          max_num: max,
          image_size: 448,
          use_thumbnail: true,
        });
        q.push({ op: "hf_tiles", sizes: all, min_num: 1, max_num: max, image_size: 448 });
      }
      q.push({ op: "grids", budgets });
      for (const t of tieCases)
        q.push({
          op: "tiles",
          sizes: [[t.w, t.h]],
          min_num: t.min,
          max_num: t.max,
          image_size: 448,
          use_thumbnail: true,
        });
      answers = await askPython(q);
    });

    it(`matches the official rule on ${all.length} sizes × 6 budgets, and transformers' crop-to-patches grid`, () => {
      expect(all.length).toBeGreaterThanOrEqual(200);
      let i = 0;
      for (const max of [1, 2, 6, 12, 24, 40]) {
        const official = answers[i++] as {
          cols: number;
          rows: number;
          thumbnail: boolean;
          tiles: number;
        }[];
        const hf = answers[i++] as [number, number][];
        const ours = all.map(([w, h]) => planTiles(w, h, opts(max)));
        expect(ours).toEqual(official);
        // transformers orders grids of one area by columns; with min_num 1 no tie depends on it.
        expect(ours.map((g) => [g.cols, g.rows])).toEqual(hf);
      }
    });

    it("walks candidate grids in the official (Python set) order", () => {
      const grids = answers[12] as number[][][];
      expect(budgets.map(([a, b]) => candidateGrids(a, b).map((g) => [...g]))).toEqual(grids);
    });

    it(`decides ${tieCases.length} exact same-area ties as the official code does`, () => {
      expect(tieCases.length).toBeGreaterThan(10);
      tieCases.forEach((t, k) => {
        const [official] = answers[13 + k] as unknown[];
        expect(planTiles(t.w, t.h, opts(t.max, t.min))).toEqual(official);
      });
    });
  });
});
