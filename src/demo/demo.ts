/**
 * `tessera demo`: the whole product on a laptop CPU in minutes. Set up the engine, generate a
 * synthetic visual-question dataset, check it, build a tiny InternVL2-layout model with the
 * real Qwen2 vocabulary, evaluate it, train it (packing, length-grouped sampler), evaluate
 * again on the held-out split, export, and report.
 */
import { existsSync } from "node:fs";
import { readFile, rm } from "node:fs/promises";
import { join, resolve } from "node:path";
import { checkMeta } from "../data/check.ts";
import { type EngineEvent, runEngine } from "../engine/protocol.ts";
import { ensureEngine } from "../engine/setup.ts";
import { type EvalResult, evaluate } from "../eval/eval.ts";
import { hashJson } from "../plan/fingerprint.ts";
import {
  readConfigFile,
  resolveConfig,
  type TrainConfig,
  type TrainConfigInput,
} from "../train/config.ts";
import { type TrainResult, train } from "../train/driver.ts";
import { writeFileAtomic } from "../util/atomic.ts";
import { UserError } from "../util/errors.ts";
import { type DemoData, writeDemoData } from "./generate.ts";
import {
  DEMO_EVAL_COUNTS,
  DEMO_FAST,
  DEMO_MODEL,
  DEMO_REPEAT,
  DEMO_TRAIN,
  DEMO_TRAIN_COUNTS,
} from "./settings.ts";

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
  /** Serve the live dashboard while training (default: with the bar). */
  dashboard?: boolean;
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
  /** Held-out loss at each evaluation during training (step 0 is before the first step). */
  heldOut: { step: number; loss: number }[];
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
  if (
    existsSync(join(dir, "config.json")) &&
    existsSync(stampPath) &&
    (await readFile(stampPath, "utf8")).trim() === stamp
  )
    return;
  await runEngine(job, { python });
  await writeFileAtomic(stampPath, `${stamp}\n`);
}

/** The demo's training config (every setting from settings.ts, paths under `out`). */
export function demoConfig(
  out: string,
  model: string,
  meta: string,
  seed: number,
  steps: number | undefined,
  file?: string,
  evalMeta?: string,
): TrainConfig {
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
    // The held-out split's loss, measured as it trains.
    eval_meta: fromFile.eval_meta ?? evalMeta,
  };
  return resolveConfig(undefined, flags, out);
}

/**
 * Train through the same driver as `tessera train` (cache, plan, engine, metrics.jsonl, export),
 * with the live dashboard while it runs.
 */
async function trainDemo(
  c: TrainConfig,
  out: string,
  python: string,
  log: (l: string) => void,
  bar: boolean,
  dashboard: boolean,
): Promise<TrainSummary> {
  if (c.work_dir === join(out, "run")) {
    // The demo's own run folder: every demo trains from the start.
    for (const sub of ["checkpoints", "export", "metrics.jsonl"])
      await rm(join(c.work_dir, sub), { recursive: true, force: true });
  }
  let tokens = 0;
  let stepSeconds = 0;
  let fillSum = 0;
  let fillN = 0;
  const t0 = Date.now();
  const heldOut: { step: number; loss: number }[] = [];
  const onEvent = (e: EngineEvent) => {
    if (e.event === "eval" && typeof e.eval_loss === "number")
      heldOut.push({ step: Number(e.step), loss: e.eval_loss });
    if (e.event !== "metric") return;
    tokens += Number(e.tokens ?? 0);
    stepSeconds += Number(e.step_time ?? 0);
    if (typeof e.pack_fill === "number") {
      fillSum += e.pack_fill;
      fillN++;
    }
  };
  // Without a bar the driver prints a line every print_interval seconds, and each evaluation.
  const quiet = (l: string) => log(`      ${l}`);
  const res: TrainResult = await train(c, {
    python,
    progress: bar,
    log: quiet,
    onEvent,
    prepareWorkers: 0,
    handleSignals: true,
    // the live dashboard on a free local port while it trains
    dashboardPort: dashboard ? 0 : undefined,
  });
  if (res.stopped)
    throw new UserError(
      `training stopped at step ${res.stepsDone}; the checkpoint is ${res.checkpoint}`,
    );
  if (!res.export?.dir) throw new Error("the training run exported no model");
  const losses = res.losses;
  return {
    steps: res.stepsDone,
    seconds: (Date.now() - t0) / 1000,
    tokens,
    tokensPerS: stepSeconds > 0 ? tokens / stepSeconds : 0,
    packFill: fillN ? fillSum / fillN : 0,
    firstLoss: losses.length ? losses[0] : null,
    lastLoss: losses.length
      ? mean(losses.slice(-Math.max(1, Math.floor(losses.length / 10))))
      : null,
    heldOut,
    trainableParameters: res.trainableParameters,
    checkpoint: res.checkpoint,
    export: res.export.dir,
  };
}

function accuracyLine(r: EvalResult): string {
  const parts = Object.entries(r.byType).map(([t, a]) => `${t} ${(a.accuracy * 100).toFixed(1)}%`);
  return `${parts.join(" · ")} (${r.overall.total} questions, ${r.seconds.toFixed(0)}s)`;
}

function mean(xs: number[]): number {
  return xs.reduce((a, b) => a + b, 0) / xs.length;
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
    throw new UserError(
      "--meta and --eval go together: training data and the held-out questions to score it on",
    );
  const steps = o.steps ?? (fast ? DEMO_FAST.steps : undefined);
  let data: DemoData;
  if (o.meta && o.evalMeta) {
    log(`[1/6] using your data: ${o.meta} (train), ${o.evalMeta} (held out)`);
    data = {
      dir: out,
      trainMeta: resolve(o.meta),
      evalMeta: resolve(o.evalMeta),
      counts: null,
      tiles: {},
      images: 0,
      rendered: false,
    };
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
    throw new UserError(
      `the data has ${check.errors} errors (run \`tessera data check ${data.trainMeta}\` for the list): ${checks
        .flatMap((c) => c.issues)
        .map((i) => i.message)
        .slice(0, 3)
        .join("; ")}`,
    );
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
  log(`      ${accuracyLine(before)}`);
  lap("eval_before");

  const c = demoConfig(out, model, data.trainMeta, o.seed, steps, o.config, data.evalMeta);
  log(`[5/6] training ${c.steps} steps (packing ${c.packing}, sampler ${c.sampler})`);
  const trained = await trainDemo(c, out, python, log, bar, o.dashboard ?? bar);
  lap("train");

  log("[6/6] evaluating after training (held-out split)");
  const after = await evaluate(trained.export, data.evalMeta, { python });
  log(`      ${accuracyLine(after)}`);
  lap("eval_after");

  return {
    out,
    data,
    check,
    model,
    before,
    after,
    train: trained,
    timings,
    seconds: (Date.now() - start) / 1000,
  };
}
