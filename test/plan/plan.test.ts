import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { mixtureList } from "../../src/plan/mixture.ts";
import { buildPlan, type Plan, type PlanOptions, writePlan } from "../../src/plan/plan.ts";
import { syntheticTable } from "./synthetic.ts";

const table = syntheticTable(4000, 13, [
  { name: "a", count: 1500, repeatTime: 2 },
  { name: "b", count: 2000, repeatTime: 0.25 },
  { name: "c", count: 500, repeatTime: 1 },
]);
const base: PlanOptions = {
  worldSize: 4,
  microBatchSize: 1,
  gradAccum: 2,
  sampler: "random",
  packing: "soft",
  packMaxLength: 8192,
  seed: 3,
  epochs: 2,
};

/** Micro-batch contents as plain data: [[rows: [[sample, start, length], …]], …]. */
function microBatches(p: Plan, from = 0, to = p.mbTokens.length): number[][][][] {
  const out: number[][][][] = [];
  for (let m = from; m < to; m++) {
    const rows: number[][][] = [];
    for (let k = p.mbOffset[m]; k < p.mbOffset[m + 1]; k++) {
      const pieces: number[][] = [];
      for (let q = p.rowOffset[k]; q < p.rowOffset[k + 1]; q++)
        pieces.push([p.pieceSample[q], p.pieceStart[q], p.pieceLength[q]]);
      rows.push(pieces);
    }
    out.push(rows);
  }
  return out;
}

async function planBytes(p: Plan): Promise<Record<string, string>> {
  const dir = mkdtempSync(join(tmpdir(), "tessera-plan-out-"));
  try {
    await writePlan(p, join(dir, "plan"));
    const out: Record<string, string> = {};
    for (const f of readdirSync(join(dir, "plan")).sort())
      out[f] = readFileSync(join(dir, "plan", f)).toString("base64");
    return out;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe("plan", () => {
  it("is deterministic: two runs write the same bytes; another seed does not", async () => {
    const a = await planBytes(buildPlan(table, base));
    const b = await planBytes(buildPlan(table, base));
    expect(Object.keys(a)).toContain("plan.json");
    expect(a).toEqual(b);
    const c = buildPlan(table, { ...base, seed: 4 });
    expect(c.fingerprint).not.toBe(buildPlan(table, base).fingerprint);
  });

  for (const packing of ["soft", "concat", "none", "first_fit", "next_fit"] as const) {
    it(`${packing}: over a full epoch no sample is lost or duplicated beyond repeat_time`, () => {
      const p = buildPlan(table, {
        ...base,
        packing,
        epochs: 1,
        microBatchSize: packing === "none" ? 3 : 1,
      });
      const expected = new Map<number, number>();
      for (const s of mixtureList(table.datasets))
        expected.set(s, (expected.get(s) ?? 0) + table.lengths[s]);
      const got = new Map<number, number>();
      for (let q = 0; q < p.pieceSample.length; q++)
        got.set(p.pieceSample[q], (got.get(p.pieceSample[q]) ?? 0) + p.pieceLength[q]);
      expect(got.size).toBe(expected.size);
      let diff = 0;
      for (const [s, n] of expected) if (got.get(s) !== n) diff++;
      expect(diff).toBe(0);
      expect(p.stats.samples).toBe(1500 * 2 + 500 + 500);
    });
  }

  it("resumes exactly: the plan rebuilt for a resumed run has the same micro-batches from (epoch, step) on", () => {
    const full = buildPlan(table, base);
    const again = buildPlan(table, base);
    const e = 1;
    const s = 7;
    const g = full.epochFirstStep[e] + s;
    const per = base.worldSize * (base.gradAccum ?? 1);
    expect(microBatches(again, g * per)).toEqual(microBatches(full, g * per));
    // a run cut short by max_steps sees the same prefix as the full run
    const short = buildPlan(table, { ...base, maxSteps: g });
    expect(short.totalSteps).toBe(g);
    expect(microBatches(short)).toEqual(microBatches(full, 0, g * per));
  });

  it("gives every rank the same steps and balances tokens across ranks", () => {
    const p = buildPlan(table, { ...base, worldSize: 8, gradAccum: 2 });
    expect(p.mbOffset.length).toBe(p.totalSteps * 8 * 2 + 1);
    expect(p.stats.empty_micro_batches).toBe(0);
    expect(p.stats.rank_balance_mean).toBeLessThan(1.05);
    const unpacked = buildPlan(table, {
      ...base,
      packing: "none",
      microBatchSize: 4,
      worldSize: 8,
    });
    expect(unpacked.stats.rank_balance_mean).toBeLessThan(1.15);
  });

  it("every pack stays within pack_max_length and max_tiles_per_pack", () => {
    const p = buildPlan(table, { ...base, maxTilesPerPack: 24 });
    let over = 0;
    for (let k = 0; k < p.rowTokens.length; k++)
      if (p.rowTokens[k] > 8192 || p.rowTiles[k] > 24) over++;
    expect(over).toBe(0);
    expect(p.stats.max_tiles_per_pack).toBeLessThanOrEqual(24);
    expect(p.stats.fill_ratio).toBeGreaterThan(0.8);
  });

  it("per-step totals are the sums over all ranks and micro-batches", () => {
    const p = buildPlan(table, { ...base, packing: "concat" });
    const W = 4;
    const A = 2;
    for (const g of [0, 5, p.totalSteps - 1]) {
      let learned = 0;
      let tokens = 0;
      let sqrt = 0;
      let pieces = 0;
      for (let m = g * W * A; m < (g + 1) * W * A; m++)
        for (let k = p.mbOffset[m]; k < p.mbOffset[m + 1]; k++)
          for (let q = p.rowOffset[k]; q < p.rowOffset[k + 1]; q++) {
            learned += p.pieceLearned[q];
            tokens += p.pieceLength[q];
            sqrt += Math.sqrt(p.pieceLearned[q]);
            pieces++;
          }
      expect(p.stepLearned[g]).toBe(learned);
      expect(p.stepTokens[g]).toBe(tokens);
      expect(p.stepSamples[g]).toBe(pieces);
      expect(p.stepSqrtLearned[g]).toBeCloseTo(sqrt, 6);
    }
    // concat splits samples: a split piece's learned count is its own share
    expect(p.stats.split_samples).toBeGreaterThan(0);
  });
});

describe("plan invariants over many option combinations", () => {
  const small = syntheticTable(600, 29, [
    { name: "a", count: 200, repeatTime: 3 },
    { name: "b", count: 300, repeatTime: 0.5 },
    { name: "c", count: 100, repeatTime: 1 },
  ]);
  const packings = ["soft", "first_fit", "next_fit", "concat", "none"] as const;
  const samplers = ["random", "length", "modality_length"] as const;
  let k = 0;
  for (const packing of packings) {
    for (const sampler of samplers) {
      const W = 1 + (k % 5);
      const B = 1 + (k % 3);
      const A = 1 + ((k >> 1) % 3);
      k++;
      it(`${packing} × ${sampler}, world ${W}, micro-batch ${B}, accumulation ${A}`, () => {
        const p = buildPlan(small, {
          worldSize: W,
          microBatchSize: B,
          gradAccum: A,
          sampler,
          packing,
          packMaxLength: 8192,
          maxTilesPerPack: packing === "none" ? undefined : 40,
          seed: k,
          epochs: 1,
        });
        expect(p.mbOffset.length).toBe(p.totalSteps * W * A + 1);
        const want = new Map<number, number>();
        for (const s of mixtureList(small.datasets))
          want.set(s, (want.get(s) ?? 0) + small.lengths[s]);
        const got = new Map<number, number>();
        const problems: string[] = [];
        for (let m = 0; m < p.mbTokens.length; m++) {
          const rows = p.mbOffset[m + 1] - p.mbOffset[m];
          if (rows > B) problems.push(`micro-batch ${m} has ${rows} rows`);
          for (let r = p.mbOffset[m]; r < p.mbOffset[m + 1]; r++) {
            if (packing !== "none" && (p.rowTokens[r] > 8192 || p.rowTiles[r] > 40))
              problems.push(`row ${r} over limits`);
            for (let q = p.rowOffset[r]; q < p.rowOffset[r + 1]; q++)
              got.set(p.pieceSample[q], (got.get(p.pieceSample[q]) ?? 0) + p.pieceLength[q]);
          }
        }
        for (const [s, n] of want)
          if (got.get(s) !== n) problems.push(`sample ${s}: ${got.get(s)} of ${n} tokens`);
        if (got.size !== want.size)
          problems.push(`${got.size} samples planned, ${want.size} in the mixture`);
        expect(problems.slice(0, 5)).toEqual([]);
      });
    }
  }
});
