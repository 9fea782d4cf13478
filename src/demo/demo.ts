/**
 * `tessera demo`: the whole product on a laptop CPU in minutes. Set up the engine, generate a
 * synthetic visual-question dataset, check it, build a tiny InternVL2-layout model with the
 * real Qwen2 vocabulary, evaluate it, train it (packing, length-grouped sampler), evaluate
 * again on the held-out split, export, and report.
 */
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import cliProgress from "cli-progress";
import { checkMeta } from "../data/check.ts";
import { type EngineEvent, runEngine } from "../engine/protocol.ts";
import { ensureEngine } from "../engine/setup.ts";
import { type EvalResult, evaluate } from "../eval/eval.ts";
import { hashJson } from "../plan/fingerprint.ts";
import { planDir, prepareAndPlan } from "../plan/from-config.ts";
import { writePlan } from "../plan/plan.ts";
import { readConfigFile, resolveConfig, type TrainConfig, type TrainConfigInput } from "../train/config.ts";
import { writeFileAtomic } from "../util/atomic.ts";
import { UserError } from "../util/errors.ts";
import { type DemoData, writeDemoData } from "./generate.ts";
import { DEMO_EVAL_COUNTS, DEMO_FAST, DEMO_MODEL, DEMO_REPEAT, DEMO_TRAIN, DEMO_TRAIN_COUNTS } from "./settings.ts";

export interface DemoOptions {
  out: string;
  seed: number;
  steps?: number;
  fast?: boolean;
  venv?: string;
  /** Progress lines (stderr by default). */
  log?: (line: string) => void;
  /** Show a live progress bar (default: when stderr is a terminal). */
  bar?: boolean;
  /** A real model folder instead of the tiny one (original InternVL2 format). */
  model?: string;
  /** A real training meta file instead of the synthetic data (needs `evalMeta`). */
  meta?: string;
  /** Held-out questions (meta file or JSONL) for the before/after evaluation. */
  evalMeta?: string;
  /** A training config file whose settings replace the demo's. */
  config?: string;
}

export interface TrainSummary {
  steps: number;
  seconds: number;
  tokens: number;
  tokensPerS: number;
  packFill: number;
  firstLoss: number | null;
  lastLoss: number | null;
  trainableParameters: number | null;
  checkpoint: string | null;
  export: string;
}

export interface DemoReport {
  out: string;
  data: DemoData;
  check: { errors: number; warnings: number; records: number };
  model: string;
  before: EvalResult;
  after: EvalResult;
  train: TrainSummary;
  /** Seconds per stage, and in all (engine setup excluded). */
  timings: Record<string, number>;
  seconds: number;
}

/** Build the tiny model unless the folder already holds one built from the same settings. */
async function buildModel(dir: string, seed: number, python: string): Promise<void> {
  const job = { kind: "build-tiny", out: dir, ...DEMO_MODEL, seed };
  const stamp = hashJson({ version: 1, job });
  const stampPath = join(dir, ".tessera-demo-model");
  if (existsSync(join(dir, "config.json")) && existsSync(stampPath) && (await readFile(stampPath, "utf8")).trim() === stamp) return;
  await runEngine(job, { python });
  await writeFileAtomic(stampPath, `${stamp}\n`);
}

/** The demo's training config (every setting from settings.ts, paths under `out`). */
export function demoConfig(out: string, model: string, meta: string, seed: number, steps: number | undefined, file?: string): TrainConfig {
  const fromFile = file ? readConfigFile(file) : {};
  const flags: Partial<TrainConfigInput> = {
    ...(DEMO_TRAIN as unknown as Partial<TrainConfigInput>),
    ...fromFile,
    model,
    meta,
    seed,
    steps: steps ?? fromFile.steps ?? DEMO_TRAIN.steps,
    // Enough epochs for the steps asked; `steps` cuts the plan there.
    epochs: fromFile.epochs ?? 50,
    work_dir: fromFile.work_dir ?? join(out, "run"),
    max_dynamic_patch: fromFile.max_dynamic_patch ?? DEMO_MODEL.max_dynamic_patch,
  };
  return resolveConfig(undefined, flags, out);
}

/** Prepare, plan and run the engine's training loop, with a progress bar. */
async function trainDemo(c: TrainConfig, python: string, log: (l: string) => void, bar: boolean): Promise<TrainSummary> {
  const { plan } = await prepareAndPlan(c, { workers: 0 });
  if (plan.stats.steps < (c.steps ?? 0))
    throw new UserError(`the demo plan has ${plan.stats.steps} steps, fewer than the ${c.steps} asked`);
  const dir = planDir(c);
  await writePlan(plan, dir);
  log(
    `plan: ${plan.stats.steps} steps · packs of ≤ ${c.pack_max_length} tokens, fill ${(plan.stats.fill_ratio * 100).toFixed(1)}% · ` +
      `${plan.stats.samples_per_pack.toFixed(1)} samples and ${plan.stats.tiles_per_pack.toFixed(1)} tiles per pack · sampler ${c.sampler}`,
  );
  const progress = bar
    ? new cliProgress.SingleBar(
        { format: "  train {bar} {value}/{total} steps · loss {loss} · {tps} tok/s · eta {eta_formatted}", hideCursor: true, clearOnComplete: false, stream: process.stderr },
        cliProgress.Presets.shades_classic,
      )
    : undefined;
  progress?.start(plan.stats.steps, 0, { loss: "-", tps: "-" });
  let tokens = 0;
  let stepSeconds = 0;
  let fillSum = 0;
  let fillN = 0;
  const losses: number[] = [];
  const every = Math.max(1, Math.round(plan.stats.steps / 10));
  const t0 = Date.now();
  const onEvent = (e: EngineEvent) => {
    if (e.event !== "metric") return;
    const loss = Number(e.loss);
    losses.push(loss);
    tokens += Number(e.tokens ?? 0);
    stepSeconds += Number(e.step_time ?? 0);
    if (typeof e.pack_fill === "number") {
      fillSum += e.pack_fill;
      fillN++;
    }
    const tps = stepSeconds > 0 ? Math.round(tokens / stepSeconds) : 0;
    progress?.update(Number(e.step), { loss: loss.toFixed(3), tps });
    if (!progress && (Number(e.step) % every === 0 || e.step === e.total))
      log(`  step ${e.step}/${e.total} · loss ${loss.toFixed(3)} · ${tps} tok/s`);
  };
  let res: Record<string, unknown>;
  try {
    res = await runEngine(
      {
        kind: "train",
        model: c.model,
        cache_dir: c.cache_dir,
        plan_dir: dir,
        work_dir: c.work_dir,
        config: c,
        max_dynamic_patch: c.max_dynamic_patch,
      },
      { python, onEvent },
    );
  } finally {
    progress?.stop();
  }
  const exp = res.export as { dir?: string } | null;
  if (!exp?.dir) throw new Error("the training run exported no model");
  return {
    steps: Number(res.steps_done),
    seconds: (Date.now() - t0) / 1000,
    tokens,
    tokensPerS: stepSeconds > 0 ? tokens / stepSeconds : 0,
    packFill: fillN ? fillSum / fillN : plan.stats.fill_ratio,
    firstLoss: losses.length ? losses[0] : null,
    lastLoss: losses.length ? losses[losses.length - 1] : null,
    trainableParameters: typeof res.trainable_parameters === "number" ? res.trainable_parameters : null,
    checkpoint: typeof res.checkpoint === "string" ? res.checkpoint : null,
    export: exp.dir,
  };
}

export async function runDemo(o: DemoOptions): Promise<DemoReport> {
  const log = o.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const bar = o.bar ?? process.stderr.isTTY === true;
  const out = resolve(o.out);
  const python = await ensureEngine({ venv: o.venv, log });
  const timings: Record<string, number> = {};
  const start = Date.now();
  let t = Date.now();
  const lap = (k: string) => {
    timings[k] = (Date.now() - t) / 1000;
    t = Date.now();
  };

  const fast = o.fast === true;
  if ((o.meta === undefined) !== (o.evalMeta === undefined))
    throw new UserError("--meta and --eval go together: training data and the held-out questions to score it on");
  const steps = o.steps ?? (fast ? DEMO_FAST.steps : undefined);
  let data: DemoData;
  if (o.meta && o.evalMeta) {
    log(`[1/6] using your data: ${o.meta} (train), ${o.evalMeta} (held out)`);
    data = { dir: out, trainMeta: resolve(o.meta), evalMeta: resolve(o.evalMeta), counts: null, tiles: {}, images: 0, rendered: false };
  } else {
    log(`[1/6] generating the synthetic dataset (seed ${o.seed}) in ${join(out, "data")}`);
    data = await writeDemoData(
      join(out, "data"),
      {
        seed: o.seed,
        tileSize: DEMO_MODEL.tile_size,
        maxDynamicPatch: DEMO_MODEL.max_dynamic_patch,
        train: fast ? DEMO_FAST.train : DEMO_TRAIN_COUNTS,
        eval: fast ? DEMO_FAST.eval : DEMO_EVAL_COUNTS,
        repeatTime: DEMO_REPEAT,
      },
      python,
    );
    const tileHist = Object.entries(data.tiles)
      .map(([k, v]) => `${k}:${v}`)
      .join(" ");
    log(`      ${data.images} images · tiles per image (tiles:images) ${tileHist}`);
  }
  lap("data");

  log("[2/6] checking the data");
  const checks = [await checkMeta(data.trainMeta)];
  if (!data.evalMeta.endsWith(".jsonl")) checks.push(await checkMeta(data.evalMeta));
  const check = {
    errors: checks.reduce((a, c) => a + c.errorCount, 0),
    warnings: checks.reduce((a, c) => a + c.warningCount, 0),
    records: checks.reduce((a, c) => a + c.datasets.reduce((b, d) => b + d.records, 0), 0),
  };
  if (check.errors)
    throw new UserError(`the data has ${check.errors} errors (run \`tessera data check ${data.trainMeta}\` for the list): ${checks.flatMap((c) => c.issues).map((i) => i.message).slice(0, 3).join("; ")}`);
  log(`      ${check.records} records, no errors, ${check.warnings} warnings`);
  lap("check");

  let model: string;
  if (o.model) {
    model = resolve(o.model);
    log(`[3/6] using the model in ${model}`);
  } else {
    log("[3/6] building a tiny InternVL2-layout model (Qwen2 vocabulary, Hermes-2 template)");
    model = join(out, "model");
    await buildModel(model, o.seed, python);
  }
  lap("model");

  log("[4/6] evaluating before training (held-out split)");
  const before = await evaluate(model, data.evalMeta, { python });
  lap("eval_before");

  const c = demoConfig(out, model, data.trainMeta, o.seed, steps, o.config);
  log(`[5/6] training ${c.steps} steps (packing ${c.packing}, sampler ${c.sampler})`);
  const train = await trainDemo(c, python, log, bar);
  lap("train");

  log("[6/6] evaluating after training (held-out split)");
  const after = await evaluate(train.export, data.evalMeta, { python });
  lap("eval_after");

  return { out, data, check, model, before, after, train, timings, seconds: (Date.now() - start) / 1000 };
}
