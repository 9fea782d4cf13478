/**
 * The bridge from a training config to the cache and the plan: what `tessera data prepare`,
 * `tessera data plan` and the train driver call.
 */
import { join } from "node:path";
import { accumulationSteps, type TrainConfig } from "../train/config.ts";
import { openCacheTable, type PrepareOptions, type PrepareResult, prepareCache } from "./cache.ts";
import { planForMethod } from "./pairs.ts";
import type { Plan, PlanOptions } from "./plan.ts";

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
