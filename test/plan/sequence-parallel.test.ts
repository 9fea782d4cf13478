import { describe, expect, it } from "vitest";
import { formatPlan, planJson } from "../../src/cli/data-plan.ts";
import { buildPlan, type PlanOptions, type SampleTable } from "../../src/plan/plan.ts";
import { accumulationSteps, resolveConfig } from "../../src/train/config.ts";

const TPT = 4; // tokens per tile

/** Samples with explicit labels and image runs, so shards can be checked token by token. */
function table(n: number, seed = 5) {
  let x = seed;
  const r = () => {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    return x / 4294967296;
  };
  const labels: boolean[][] = [];
  const imgs: { at: number; tiles: number }[][] = [];
  const lengths = new Int32Array(n);
  const learned = new Int32Array(n);
  const tiles = new Int32Array(n);
  const images = new Int32Array(n);
  const multimodal = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    const im: { at: number; tiles: number }[] = [];
    let len = 2 + Math.floor(r() * 6);
    for (let k = 0; k < (r() < 0.5 ? 1 + Math.floor(r() * 2) : 0); k++) {
      const t = 1 + Math.floor(r() * 5);
      im.push({ at: len, tiles: t });
      len += t * TPT + 1 + Math.floor(r() * 3);
    }
    const answer = 1 + Math.floor(r() * 8);
    len += answer;
    const lab = Array.from({ length: len }, (_, t) => t >= len - answer || (t > 0 && r() < 0.05));
    lab[0] = false;
    for (const m of im) for (let t = m.at; t < m.at + m.tiles * TPT; t++) lab[t] = false;
    labels.push(lab);
    imgs.push(im);
    lengths[i] = len;
    learned[i] = lab.filter(Boolean).length;
    tiles[i] = im.reduce((a, m) => a + m.tiles, 0);
    images[i] = im.length;
    multimodal[i] = im.length ? 1 : 0;
  }
  const t: SampleTable = {
    fingerprint: `sp-${n}-${seed}`,
    datasets: [{ name: "all", first: 0, count: n, repeatTime: 1 }],
    lengths,
    learned,
    tiles,
    images,
    multimodal,
    learnedIn: (s, a, b) => labels[s].slice(a + 1, b).filter(Boolean).length,
    tilesIn: (s, a, b) =>
      imgs[s].filter((m) => m.at < b && m.at + m.tiles * TPT > a).reduce((z, m) => z + m.tiles, 0),
    tileSpanIn: (s, a, b) => {
      let z = 0;
      for (const m of imgs[s])
        for (let k = 0; k < m.tiles; k++) if (m.at + k * TPT < b && m.at + (k + 1) * TPT > a) z++;
      return z;
    },
  };
  return { t, labels, imgs };
}

const base: PlanOptions = {
  worldSize: 8,
  microBatchSize: 1,
  globalBatchSize: 4,
  sampler: "random",
  packing: "concat",
  packMaxLength: 61,
  seed: 1,
  epochs: 1,
};

describe("sequence parallelism in the plan", () => {
  it("cuts every row into equal shards and records each shard's tokens, learned tokens and tiles", () => {
    const { t, labels, imgs } = table(300);
    const p = buildPlan(t, { ...base, spSize: 2, ringSize: 2 });
    expect(p.options.dataParallel).toBe(2);
    expect(p.options.gradAccum).toBe(2); // 4 rows per step over 2 data-parallel ranks
    const sh = p.shards!;
    expect(sh.ranks).toBe(4);
    let crossing = 0;
    for (let r = 0; r < p.rowTokens.length; r++) {
      expect(sh.padded[r] % 4).toBe(0);
      expect(sh.padded[r] - p.rowTokens[r]).toBeLessThan(4); // padding only at the end
      const S = sh.padded[r] / 4;
      // brute force: walk the row token by token
      const tok = [0, 0, 0, 0];
      const lea = [0, 0, 0, 0];
      const tileSets = [new Set<string>(), new Set<string>(), new Set<string>(), new Set<string>()];
      let q = 0;
      for (let k = p.rowOffset[r]; k < p.rowOffset[r + 1]; k++) {
        const s = p.pieceSample[k];
        const st = p.pieceStart[k];
        const len = p.pieceLength[k];
        if (Math.floor(q / S) !== Math.floor((q + len - 1) / S)) crossing++;
        for (let j = 0; j < len; j++, q++) {
          const shard = Math.floor(q / S);
          tok[shard]++;
          // the target of position q is the next token of the same piece
          if (j + 1 < len && labels[s][st + j + 1]) lea[shard]++;
          for (const [m, im] of imgs[s].entries()) {
            const off = st + j - im.at;
            if (off >= 0 && off < im.tiles * TPT)
              tileSets[shard].add(`${k}:${m}:${Math.floor(off / TPT)}`);
          }
        }
      }
      for (let k = 0; k < 4; k++) {
        expect(sh.tokens[r * 4 + k]).toBe(tok[k]);
        expect(sh.learned[r * 4 + k]).toBe(lea[k]);
        expect(sh.tiles[r * 4 + k]).toBe(tileSets[k].size);
      }
      // the shards learn exactly what the row learns
      let rowLearned = 0;
      for (let k = p.rowOffset[r]; k < p.rowOffset[r + 1]; k++) rowLearned += p.pieceLearned[k];
      expect(lea.reduce((a, b) => a + b, 0)).toBe(rowLearned);
    }
    expect(crossing).toBeGreaterThan(10); // samples do cross shard boundaries
    expect(p.stats.shard_tokens_max).toBeLessThanOrEqual(Math.ceil(61 / 4));
  });

  it("data plan shows what each rank of a row holds", () => {
    const { t } = table(120);
    const p = buildPlan(t, { ...base, spSize: 2, ringSize: 2 });
    const text = formatPlan(p);
    expect(text).toMatch(/sequence parallel: sp 2 × ring 2 = 4 ranks per row · data parallel 2/);
    expect(text).toMatch(/per rank and row: tokens mean [\d.,]+, max \d+ · tiles run mean/);
    const m = text.match(
      /row 0: ([\d,]+) tokens → ranks (.*) \(tokens\/learned\/tiles, padded to (\d+)\)/,
    );
    expect(m).not.toBeNull();
    const shards = m![2].split(" | ").map((x) => Number(x.split("t/")[0]));
    expect(shards).toEqual(Array.from(p.shards!.tokens.subarray(0, 4)));
    expect(shards.reduce((a, b) => a + b, 0)).toBe(Number(m![1].replaceAll(",", "")));
    const j = planJson(p) as { first_rows_per_rank: { tokens: number[]; padded: number }[] };
    expect(j.first_rows_per_rank[0].tokens).toEqual(shards);
    expect(j.first_rows_per_rank[0].padded).toBe(Number(m![3]));
    expect(formatPlan(buildPlan(t, { ...base, worldSize: 2 }))).not.toMatch(/sequence parallel/);
  });

  it("keeps plans without sequence parallelism unchanged and refuses what cannot be cut", () => {
    const { t } = table(200);
    const plain = buildPlan(t, { ...base, worldSize: 2, globalBatchSize: 4 });
    const one = buildPlan(t, { ...base, worldSize: 2, globalBatchSize: 4, spSize: 1, ringSize: 1 });
    expect(plain.shards).toBeUndefined();
    expect(one.fingerprint).toBe(plain.fingerprint);
    // sp 2 × ring 2 on 8 ranks deals rows as 2 data-parallel ranks do
    const sp = buildPlan(t, { ...base, spSize: 2, ringSize: 2 });
    expect(Array.from(sp.pieceSample)).toEqual(Array.from(plain.pieceSample));
    expect(Array.from(sp.mbOffset)).toEqual(Array.from(plain.mbOffset));
    expect(sp.fingerprint).not.toBe(plain.fingerprint);
    expect(() => buildPlan(t, { ...base, worldSize: 6, spSize: 4 })).toThrow(
      /sp size × ring size = 4 × 1 = 4 must divide the world size 6/,
    );
    expect(() => buildPlan(t, { ...base, microBatchSize: 2, spSize: 2 })).toThrow(
      /micro batch size 2: with sequence parallelism/,
    );
  });

  it("config: sp_size and ring_size set the data-parallel world; bad combinations are refused", () => {
    const c = resolveConfig(undefined, {
      model: "m",
      meta: "x",
      nproc_per_node: 8,
      sp_size: 2,
      ring_size: 2,
      global_batch_size: 4,
    });
    expect(accumulationSteps(c)).toBe(2);
    expect(() =>
      resolveConfig(undefined, { model: "m", meta: "x", nproc_per_node: 4, sp_size: 3 }),
    ).toThrow(/sp_size × ring_size = 3 × 1 = 3 must divide the processes/);
    expect(() =>
      resolveConfig(undefined, {
        model: "m",
        meta: "x",
        nproc_per_node: 4,
        sp_size: 2,
        micro_batch_size: 2,
      }),
    ).toThrow(/micro_batch_size 2: with sequence parallelism/);
  });
});
