import { describe, expect, it } from "vitest";
import { Rng } from "../../src/plan/arrays.ts";
import { buildPlan } from "../../src/plan/plan.ts";
import { groupByLength, groupByModalityLength } from "../../src/plan/samplers.ts";
import { syntheticTable } from "./synthetic.ts";

describe("samplers", () => {
  it("group_by_length sorts each mega-batch longest first and puts the longest sample first", () => {
    const t = syntheticTable(1000, 3);
    const order = new Rng(1).shuffle(Int32Array.from({ length: 1000 }, (_, i) => i));
    const out = groupByLength(order, t.lengths, 32);
    expect(Array.from(out).sort((a, b) => a - b)).toEqual(
      Array.from({ length: 1000 }, (_, i) => i),
    );
    let max = 0;
    for (const i of out) max = Math.max(max, t.lengths[i]);
    expect(t.lengths[out[0]]).toBe(max);
    for (let s = 0; s < 1000; s += 32) {
      const mb = Array.from(out.subarray(s, s + 32)).map((i) => t.lengths[i]);
      expect(mb).toEqual([...mb].sort((a, b) => b - a));
    }
  });

  it("group_by_modality_length never mixes text and multimodal samples in a mega-batch", () => {
    const t = syntheticTable(997, 5);
    const signed = Int32Array.from(t.lengths, (l, i) => (t.multimodal[i] ? l : -l));
    const order = new Rng(2).shuffle(Int32Array.from({ length: 997 }, (_, i) => i));
    const g = groupByModalityLength(order, signed, 16, new Rng(9));
    expect(Array.from(g.order).sort((a, b) => a - b)).toEqual(
      Array.from({ length: 997 }, (_, i) => i),
    );
    let kinds = 0;
    for (let k = 0; k + 1 < g.groupOffsets.length; k++) {
      const mm = new Set(
        Array.from(g.order.subarray(g.groupOffsets[k], g.groupOffsets[k + 1])).map(
          (i) => t.multimodal[i],
        ),
      );
      expect(mm.size).toBe(1);
      kinds |= 1 << [...mm][0];
    }
    expect(kinds).toBe(3); // both kinds present, shuffled together
  });

  for (const packing of ["none", "soft"] as const) {
    it(`plan with modality_length and packing ${packing}: every micro-step across ranks is one modality`, () => {
      const t = syntheticTable(3000, 11);
      const W = 4;
      const p = buildPlan(t, {
        worldSize: W,
        microBatchSize: 2,
        gradAccum: 2,
        sampler: "modality_length",
        packing,
        packMaxLength: 8192,
        seed: 5,
      });
      let mixedSteps = 0;
      let mmSteps = 0;
      let textSteps = 0;
      for (let g = 0; g < p.totalSteps; g++) {
        for (let a = 0; a < 2; a++) {
          const kinds = new Set<number>();
          for (let r = 0; r < W; r++) {
            const m = (g * W + r) * 2 + a;
            for (let k = p.mbOffset[m]; k < p.mbOffset[m + 1]; k++)
              for (let q = p.rowOffset[k]; q < p.rowOffset[k + 1]; q++)
                kinds.add(t.multimodal[p.pieceSample[q]]);
          }
          if (kinds.size > 1) mixedSteps++;
          else if (kinds.has(1)) mmSteps++;
          else textSteps++;
        }
      }
      // only the two remainder groups at the very end may meet in one micro-step
      expect(mixedSteps).toBeLessThanOrEqual(2);
      expect(mmSteps).toBeGreaterThan(10);
      expect(textSteps).toBeGreaterThan(2);
    });
  }

  it("random with soft packing: the packs of an epoch do not arrive in length order", () => {
    const t = syntheticTable(3000, 13);
    const p = buildPlan(t, {
      worldSize: 1,
      microBatchSize: 1,
      gradAccum: 1,
      sampler: "random",
      packing: "soft",
      packMaxLength: 8192,
      seed: 3,
    });
    // the longest sample of each pack, in training order
    const longest: number[] = [];
    for (let k = 0; k + 1 < p.rowOffset.length; k++) {
      let m = 0;
      for (let q = p.rowOffset[k]; q < p.rowOffset[k + 1]; q++)
        m = Math.max(m, t.lengths[p.pieceSample[q]]);
      longest.push(m);
    }
    let ascents = 0;
    for (let i = 1; i < longest.length; i++) if (longest[i] > longest[i - 1]) ascents++;
    const share = ascents / (longest.length - 1);
    expect(longest.length).toBeGreaterThan(100);
    expect(share).toBeGreaterThan(0.3);
    expect(share).toBeLessThan(0.7);
  });
});
