/**
 * `tessera demo --method mpo`: preference optimisation after the SFT demo. Generated pairs on the
 * demo's colour pictures (chosen = the right colour, rejected = a wrong one; a third of them a
 * style preference: the one word the question asks for over a sentence), MPO from the SFT demo's
 * export, and the held-out pairs' reward accuracy and exact-match accuracy before and after.
 */
import { existsSync } from "node:fs";
import { readFile, rm } from "node:fs/promises";
import { join, resolve } from "node:path";
import { checkMeta } from "../data/check.ts";
import { runEngine } from "../engine/protocol.ts";
import { ensureEngine } from "../engine/setup.ts";
import { type EvalResult, evaluate } from "../eval/eval.ts";
import { Rng } from "../plan/arrays.ts";
import { openCacheTable, prepareCache } from "../plan/cache.ts";
import { buildPairPlan } from "../plan/pairs.ts";
import { writePlan } from "../plan/plan.ts";
import { resolveConfig, type TrainConfigInput } from "../train/config.ts";
import { train } from "../train/driver.ts";
import { writeFileAtomic } from "../util/atomic.ts";
import { UserError } from "../util/errors.ts";
import { type DemoOptions, type DemoReport, runDemo } from "./demo.ts";
import { COLOUR_NAMES, type DemoRecord } from "./scenes.ts";
import { DEMO_MODEL, DEMO_TRAIN } from "./settings.ts";

/** MPO settings of the demo (the official recipe's loss; a short run on the tiny model). */
export const MPO_DEMO_TRAIN = {
  method: "mpo",
  // The SFT demo's vision tower already tells the colours apart: MPO moves the LLM and the
  // projector only (no backward through the vision tower, a faster step).
  freeze_vit: true,
  loss_type: "sigmoid,bco_pair",
  loss_weights: [0.8, 0.2],
  beta: 0.1,
  rpo_alpha: 1,
  lr: 1e-3,
  warmup_ratio: 0.05,
  min_lr: 0,
  max_length: 256,
  pack_max_length: 512,
  global_batch_size: 4,
  // Measured on a 2-core CPU: held-out reward accuracy 50% → 100% after 20 steps already
  // (docs/preference.md); 30 leave a margin and still end well under 5 minutes.
  steps: 30,
} as const;
export const MPO_DEMO_FAST_STEPS = 10;

export interface PairRecord {
  id: string;
  kind: "colour" | "style";
  image: string;
  image_wh: [number, number][];
  question: string;
  chosen: string;
  rejected: string;
}

/**
 * Pairs from the demo's colour questions: every third one a style preference (the one word
 * asked for, over a sentence that says the same), the others a colour preference (the right
 * colour over a wrong one).
 */
export function colourPairs(records: DemoRecord[], seed: number, salt: number): PairRecord[] {
  const rng = new Rng(seed, salt, 0x6d706f);
  return records.map((r, i) => {
    const question = r.conversations[0].value;
    const right = r.conversations[1].value;
    const shape = /the (\w+)\?/.exec(question)?.[1] ?? "shape";
    const base = {
      id: `${r.id}-pair`,
      image: r.image as string,
      image_wh: r.image_wh as [number, number][],
      question,
      chosen: right,
    };
    if (i % 3 === 2)
      return { ...base, kind: "style", rejected: `The ${shape} in the picture is ${right}.` };
    const wrong = COLOUR_NAMES.filter((c) => c !== right);
    return { ...base, kind: "colour", rejected: wrong[rng.int(wrong.length)] };
  });
}

export interface PairAccuracy {
  /** Share of pairs whose chosen reward β(log π − log π_ref) is the higher; ties count half. */
  accuracy: number;
  byKind: Record<string, number>;
  margin: number;
  pairs: number;
}

export interface MpoDemoReport {
  out: string;
  sft: string;
  sftReport: DemoReport | null;
  pairs: { train: number; heldOut: number };
  rewardBefore: PairAccuracy;
  rewardAfter: PairAccuracy;
  before: EvalResult;
  after: EvalResult;
  train: {
    steps: number;
    seconds: number;
    firstLoss: number | null;
    lastLoss: number | null;
    export: string;
  };
  seconds: number;
}

const jsonl = (rs: unknown[]) =>
  rs.map((r) => JSON.stringify(r)).join("\n") + (rs.length ? "\n" : "");

async function readJsonl<T>(path: string): Promise<T[]> {
  return (await readFile(path, "utf8"))
    .split("\n")
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as T);
}

/** Log-probabilities of every held-out sequence under one model (the engine's sequence-logps job). */
async function heldOutLogps(
  model: string,
  cacheDir: string,
  planDir: string,
  python: string,
): Promise<number[]> {
  const r = await runEngine(
    { kind: "sequence-logps", model, cache_dir: cacheDir, plan_dir: planDir },
    { python },
  );
  return r.logps as number[];
}

/** Reward accuracy of the held-out pairs (pair k = samples 2k, 2k+1) of a policy against its reference. */
export function rewardAccuracy(
  policy: number[],
  reference: number[],
  kinds: string[],
  beta: number,
): PairAccuracy {
  const byKind: Record<string, [number, number]> = {};
  let score = 0;
  let margin = 0;
  const n = kinds.length;
  for (let k = 0; k < n; k++) {
    const c = beta * (policy[2 * k] - reference[2 * k]);
    const r = beta * (policy[2 * k + 1] - reference[2 * k + 1]);
    const s = c > r ? 1 : c === r ? 0.5 : 0;
    score += s;
    margin += c - r;
    if (!byKind[kinds[k]]) byKind[kinds[k]] = [0, 0];
    const b = byKind[kinds[k]];
    b[0] += s;
    b[1]++;
  }
  return {
    accuracy: n ? score / n : 0,
    byKind: Object.fromEntries(Object.entries(byKind).map(([k, [s, m]]) => [k, s / m])),
    margin: n ? margin / n : 0,
    pairs: n,
  };
}

export async function runMpoDemo(o: DemoOptions): Promise<MpoDemoReport> {
  const log = o.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const out = resolve(o.out);
  const start = Date.now();
  const python = await ensureEngine({ venv: o.venv, log });
  // The SFT demo's export is the starting point (and the reference); run that demo first if needed.
  let sft = join(out, "run", "export");
  let sftReport: DemoReport | null = null;
  const dataDir = join(out, "data");
  if (
    !existsSync(join(sft, "config.json")) ||
    !existsSync(join(dataDir, "train", "colour.jsonl"))
  ) {
    log("[0/5] no SFT demo export here yet: running the SFT demo first");
    sftReport = await runDemo({ ...o, dashboard: false });
    sft = sftReport.train.export;
  }
  log(`[1/5] preference pairs from the demo's colour pictures (SFT model ${sft})`);
  const trainPairs = colourPairs(
    await readJsonl<DemoRecord>(join(dataDir, "train", "colour.jsonl")),
    o.seed,
    1,
  );
  const heldOut = colourPairs(
    await readJsonl<DemoRecord>(join(dataDir, "eval", "colour.jsonl")),
    o.seed,
    2,
  );
  await writeFileAtomic(join(dataDir, "pairs", "train.jsonl"), jsonl(trainPairs));
  await writeFileAtomic(join(dataDir, "pairs", "eval.jsonl"), jsonl(heldOut));
  const trainMeta = join(dataDir, "pairs-train.json");
  const evalPairsMeta = join(dataDir, "pairs-eval.json");
  const evalQuestions = join(dataDir, "colour-eval.json");
  const entry = (annotation: string) => ({ media_root: "images/", annotation });
  await writeFileAtomic(
    trainMeta,
    `${JSON.stringify({ demo_pairs: entry("pairs/train.jsonl") }, null, 2)}\n`,
  );
  await writeFileAtomic(
    evalPairsMeta,
    `${JSON.stringify({ demo_pairs_eval: entry("pairs/eval.jsonl") }, null, 2)}\n`,
  );
  await writeFileAtomic(
    evalQuestions,
    `${JSON.stringify({ colour: entry("eval/colour.jsonl") }, null, 2)}\n`,
  );
  const check = await checkMeta(trainMeta);
  if (check.errorCount) throw new UserError(`the generated pairs have ${check.errorCount} errors`);
  log(
    `      ${trainPairs.length} training pairs, ${heldOut.length} held out (a third of each a style preference)`,
  );

  // Held-out pairs: one cache and a one-rank plan that visits each pair once.
  const heldDir = join(out, "mpo-heldout");
  await prepareCache({
    meta: evalPairsMeta,
    model: sft,
    maxLength: MPO_DEMO_TRAIN.max_length,
    maxDynamicPatch: DEMO_MODEL.max_dynamic_patch,
    cacheDir: join(heldDir, "cache"),
    workers: 0,
  });
  const table = openCacheTable(join(heldDir, "cache"));
  const plan = buildPairPlan(table, {
    worldSize: 1,
    microBatchSize: 1,
    gradAccum: 1,
    epochs: 1,
    sampler: "random",
    packing: "soft",
    packMaxLength: 2 * MPO_DEMO_TRAIN.max_length,
    seed: o.seed,
  });
  await writePlan(plan, join(heldDir, "plan"));
  const kinds = heldOut.map((p) => p.kind);

  log("[2/5] held-out before MPO (the policy is the reference)");
  const ref = await heldOutLogps(sft, join(heldDir, "cache"), join(heldDir, "plan"), python);
  const rewardBefore = rewardAccuracy(ref, ref, kinds, MPO_DEMO_TRAIN.beta);
  const before = await evaluate(sft, evalQuestions, { python });
  log(
    `      reward accuracy ${pct(rewardBefore.accuracy)} · colour answers ${pct(before.overall.accuracy)}`,
  );

  const steps = o.steps ?? (o.fast ? MPO_DEMO_FAST_STEPS : MPO_DEMO_TRAIN.steps);
  const c = resolveConfig(
    undefined,
    {
      ...(DEMO_TRAIN as unknown as Partial<TrainConfigInput>),
      ...(MPO_DEMO_TRAIN as unknown as Partial<TrainConfigInput>),
      model: sft,
      meta: trainMeta,
      seed: o.seed,
      steps,
      epochs: 50,
      work_dir: join(out, "mpo-run"),
      max_dynamic_patch: DEMO_MODEL.max_dynamic_patch,
    },
    out,
  );
  // The demo's own run folder: every MPO demo trains from the SFT export, not from a past run.
  for (const sub of ["checkpoints", "export", "metrics.jsonl"])
    await rm(join(c.work_dir, sub), { recursive: true, force: true });
  log(`[3/5] MPO: ${steps} steps (sigmoid 0.8 + bco_pair 0.2, rpo_alpha 1, beta ${c.beta})`);
  const t0 = Date.now();
  const every = Math.max(1, Math.round(steps / 6));
  const res = await train(c, {
    python,
    progress: false,
    log: (l) => {
      const m = /^step (\d+)\/(\d+)/.exec(l);
      if (!m || Number(m[1]) % every === 0 || m[1] === m[2]) log(`      ${l}`);
    },
    prepareWorkers: 0,
    handleSignals: true,
  });
  if (res.stopped || !res.export?.dir)
    throw new UserError(
      `MPO stopped at step ${res.stepsDone}; the checkpoint is ${res.checkpoint}`,
    );
  const trainSeconds = (Date.now() - t0) / 1000;

  log("[4/5] held-out after MPO");
  const pol = await heldOutLogps(
    res.export.dir,
    join(heldDir, "cache"),
    join(heldDir, "plan"),
    python,
  );
  const rewardAfter = rewardAccuracy(pol, ref, kinds, MPO_DEMO_TRAIN.beta);
  const after = await evaluate(res.export.dir, evalQuestions, { python });
  log(
    `      reward accuracy ${pct(rewardAfter.accuracy)} · colour answers ${pct(after.overall.accuracy)}`,
  );
  log("[5/5] done");
  return {
    out,
    sft,
    sftReport,
    pairs: { train: trainPairs.length, heldOut: heldOut.length },
    rewardBefore,
    rewardAfter,
    before,
    after,
    train: {
      steps: res.stepsDone,
      seconds: trainSeconds,
      firstLoss: res.losses[0] ?? null,
      lastLoss: res.losses.length ? res.losses[res.losses.length - 1] : null,
      export: res.export.dir,
    },
    seconds: (Date.now() - start) / 1000,
  };
}

const pct = (x: number) => `${(x * 100).toFixed(1)}%`;

export function formatMpoReport(r: MpoDemoReport): string {
  const kinds = Object.keys(r.rewardAfter.byKind);
  return [
    "",
    `tessera demo --method mpo: done in ${r.seconds.toFixed(0)}s (MPO training ${r.train.seconds.toFixed(0)}s)`,
    "",
    `held-out pairs (${r.pairs.heldOut})      before    after`,
    `  reward accuracy         ${pct(r.rewardBefore.accuracy).padStart(7)}  ${pct(r.rewardAfter.accuracy).padStart(7)}`,
    ...kinds.map(
      (k) =>
        `    ${`${k} pairs`.padEnd(20)}  ${pct(r.rewardBefore.byKind[k]).padStart(7)}  ${pct(r.rewardAfter.byKind[k]).padStart(7)}`,
    ),
    `  reward margin           ${r.rewardBefore.margin.toFixed(3).padStart(7)}  ${r.rewardAfter.margin.toFixed(3).padStart(7)}`,
    `  colour answers (exact)  ${pct(r.before.overall.accuracy).padStart(7)}  ${pct(r.after.overall.accuracy).padStart(7)}`,
    "",
    `training    ${r.train.steps} steps on ${r.pairs.train} pairs · loss ${r.train.firstLoss?.toFixed(3)} → ${r.train.lastLoss?.toFixed(3)}`,
    `model       ${r.sft} (SFT, reference) → ${r.train.export} (MPO)`,
  ].join("\n");
}
