/**
 * The bridge from a training config to the cache and the plan: what `tessera data prepare`,
 * `tessera data plan` and the train driver call.
 */
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { accumulationSteps, type TrainConfig } from "../train/config.ts";
import { writeFileAtomic } from "../util/atomic.ts";
import { openCacheTable, type PrepareOptions, type PrepareResult, prepareCache } from "./cache.ts";
import { planForMethod } from "./pairs.ts";
import { buildPlan, type Plan, type PlanOptions, writePlan } from "./plan.ts";

export function prepareOptionsFromConfig(
  c: TrainConfig,
  extra: Partial<PrepareOptions> = {},
): PrepareOptions {
  return {
    meta: c.meta,
    mediaRoot: c.media_root,
    model: c.model,
    maxLength: c.max_length,
    maxDynamicPatch: c.max_dynamic_patch,
    videoFrames: c.video_frames,
    template: c.template,
    truncate: c.truncate,
    cacheDir: c.cache_dir!,
    ...extra,
  };
}

export function planOptionsFromConfig(c: TrainConfig): PlanOptions {
  return {
    worldSize: c.nproc_per_node * c.nnodes,
    microBatchSize: c.micro_batch_size,
    gradAccum: accumulationSteps(c),
    epochs: c.epochs,
    maxSteps: c.steps,
    sampler: c.sampler,
    packing: c.packing,
    packMaxLength:
      c.packing === "none"
        ? undefined
        : (c.pack_max_length ?? (c.method === "sft" ? c.max_length : 2 * c.max_length)),
    maxTilesPerPack: c.max_tiles_per_pack,
    seed: c.seed,
    spSize: c.sp_size,
    ringSize: c.ring_size,
  };
}

/** Where the plan of a run lives. */
export function planDir(c: TrainConfig): string {
  return join(c.work_dir, "plan");
}

/** Bring the cache up to date, then plan: the two steps before training. */
export async function prepareAndPlan(
  c: TrainConfig,
  extra: Partial<PrepareOptions> = {},
): Promise<{ prepared: PrepareResult; plan: Plan }> {
  const prepared = await prepareCache(prepareOptionsFromConfig(c, extra));
  const plan = planForMethod(openCacheTable(c.cache_dir!), planOptionsFromConfig(c), c.method);
  return { prepared, plan };
}

/** Where the held-out data's cache and plan live. */
export function evalCacheDir(c: TrainConfig): string {
  return `${c.cache_dir!}-eval`;
}
export function evalPlanDir(c: TrainConfig): string {
  return join(c.work_dir, "eval-plan");
}

export interface EvalPlan {
  cacheDir: string;
  planDir: string;
  plan: Plan;
  /** Samples whose first answer is generated and compared at each evaluation. */
  questions: number[];
}

/**
 * The held-out data (`eval_meta`), prepared and planned like the training data: one pass, one
 * micro-batch per rank and step, length-grouped so packs waste little; plus the questions for
 * exact match, spread evenly over the samples that have an answer. Written beside the plan.
 */
export async function prepareAndPlanEval(
  c: TrainConfig,
  extra: Partial<PrepareOptions> = {},
): Promise<EvalPlan | undefined> {
  if (!c.eval_meta) return undefined;
  const cacheDir = evalCacheDir(c);
  await prepareCache(
    prepareOptionsFromConfig({ ...c, meta: c.eval_meta, cache_dir: cacheDir }, extra),
  );
  const table = openCacheTable(cacheDir);
  const plan = buildPlan(table, {
    ...planOptionsFromConfig(c),
    gradAccum: 1,
    epochs: 1,
    maxSteps: undefined,
    sampler: "length",
  });
  const answered: number[] = [];
  for (let i = 0; i < table.learned.length; i++) if (table.learned[i] > 0) answered.push(i);
  const k = Math.min(c.eval_generate, answered.length);
  const questions = Array.from(
    { length: k },
    (_, j) => answered[Math.floor((j * answered.length) / k)],
  );
  const planDir = evalPlanDir(c);
  await writePlan(plan, planDir);
  const gen = join(planDir, "generate.json");
  if (questions.length) await writeFileAtomic(gen, `${JSON.stringify({ samples: questions })}\n`);
  else await rm(gen, { force: true });
  return { cacheDir, planDir, plan, questions };
}
