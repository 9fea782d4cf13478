/**
 * `tessera data plan CONFIG`, or `tessera data plan META --model DIR --pack-max-length N
 * --world-size W`: bring the cache up to date, plan every epoch, and report steps, fill,
 * waste, images per pack and rank balance (`--json` for data).
 */
import { dirname, join, resolve } from "node:path";
import type { Command } from "commander";
import { MEDIA_ROOT_HELP } from "../data/meta.ts";
import { openCacheTable, prepareCache } from "../plan/cache.ts";
import { planOptionsFromConfig, prepareOptionsFromConfig } from "../plan/from-config.ts";
import { PACKING_KINDS, type PackingKind } from "../plan/packing.ts";
import { planForMethod, type TrainMethod } from "../plan/pairs.ts";
import { type Plan, type PlanOptions, writePlan } from "../plan/plan.ts";
import type { SamplerKind } from "../plan/samplers.ts";
import { resolveConfig } from "../train/config.ts";
import { UserError } from "../util/errors.ts";
import { prepareProgress, workersOption } from "./data-prepare.ts";

const SAMPLERS: SamplerKind[] = ["random", "length", "modality_length"];

function int(v: unknown, flag: string, min = 1): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min)
    throw new UserError(`${flag} must be a whole number ≥ ${min}, got ${v}`);
  return n;
}

const pct = (x: number) => `${(100 * x).toFixed(2)}%`;
const n = (x: number) => Math.round(x).toLocaleString("en-US");

export function formatPlan(p: Plan): string {
  const s = p.stats;
  const o = p.options;
  const out = [
    `plan ${p.fingerprint.slice(0, 16)} (cache ${p.cacheFingerprint.slice(0, 12)}, seed ${o.seed})`,
    `  samples ${n(s.samples)} (after repeat_time, ${p.epochs} epoch(s)) · tokens ${n(s.tokens)}`,
    o.packing === "none"
      ? `  no packing: ${n(s.packs)} rows, ${o.microBatchSize} per micro-batch · padding waste ${pct(s.padding_waste)}`
      : `  packing ${o.packing}: ${n(s.packs)} packs of ≤ ${o.packMaxLength} tokens · fill ${pct(s.fill_ratio)} · padding waste ${pct(s.padding_waste)}${s.split_samples ? ` · ${n(s.split_samples)} samples split` : ""}`,
    `  per pack: ${s.samples_per_pack.toFixed(2)} samples, ${s.images_per_pack.toFixed(2)} images, ${s.tiles_per_pack.toFixed(2)} tiles (max ${s.max_tiles_per_pack}${o.maxTilesPerPack ? ` of ${o.maxTilesPerPack}` : ""})`,
    `  sampler ${o.sampler} · world ${o.worldSize} × micro-batch ${o.microBatchSize} × accumulation ${o.gradAccum}`,
    `  steps ${n(s.steps)} (per epoch: ${s.steps_per_epoch.join(", ")}) · tokens per step ${n(s.tokens_per_step)}`,
    `  rank balance (most tokens on a rank / mean): mean ${s.rank_balance_mean.toFixed(3)}, worst ${s.rank_balance_worst.toFixed(3)}${s.empty_micro_batches ? ` · ${s.empty_micro_batches} empty micro-batches` : ""}`,
  ];
  if (p.shards) {
    const sh = p.shards;
    out.push(
      `  sequence parallel: sp ${o.spSize} × ring ${o.ringSize} = ${sh.ranks} ranks per row · data parallel ${o.dataParallel}`,
      `  per rank and row: tokens mean ${n(s.shard_tokens_mean ?? 0)}, max ${n(s.shard_tokens_max ?? 0)} · tiles run mean ${(s.shard_tiles_mean ?? 0).toFixed(2)}, max ${s.shard_tiles_max} · padding ${n(s.shard_padding ?? 0)} tokens at rows' ends`,
    );
    for (const [r, row] of firstRows(p, 3))
      out.push(`  row ${r}: ${n(p.rowTokens[r])} tokens → ranks ${row}`);
  }
  return out.join("\n");
}

/** The first rows' shards: "tokens/learned/tiles" per rank of the row's group. */
function firstRows(p: Plan, count: number): [number, string][] {
  const sh = p.shards!;
  const out: [number, string][] = [];
  for (let r = 0; r < Math.min(count, p.rowTokens.length); r++) {
    const parts: string[] = [];
    for (let k = 0; k < sh.ranks; k++) {
      const i = r * sh.ranks + k;
      parts.push(`${sh.tokens[i]}t/${sh.learned[i]}l/${sh.tiles[i]}img`);
    }
    out.push([r, `${parts.join(" | ")} (tokens/learned/tiles, padded to ${sh.padded[r]})`]);
  }
  return out;
}

export function planJson(p: Plan): Record<string, unknown> {
  return {
    fingerprint: p.fingerprint,
    cache_fingerprint: p.cacheFingerprint,
    options: p.options,
    ...p.stats,
    ...(p.shards
      ? {
          first_rows_per_rank: Array.from({ length: Math.min(3, p.rowTokens.length) }, (_, r) => ({
            row: r,
            padded: p.shards!.padded[r],
            tokens: Array.from(
              p.shards!.tokens.subarray(r * p.shards!.ranks, (r + 1) * p.shards!.ranks),
            ),
            learned: Array.from(
              p.shards!.learned.subarray(r * p.shards!.ranks, (r + 1) * p.shards!.ranks),
            ),
            tiles: Array.from(
              p.shards!.tiles.subarray(r * p.shards!.ranks, (r + 1) * p.shards!.ranks),
            ),
          })),
        }
      : {}),
  };
}

export function registerDataPlan(data: Command): void {
  data
    .command("plan")
    .description("plan packs, samplers and shards; print steps, fill, waste and rank balance")
    .argument(
      "<config-or-meta>",
      "a training config, or with --model a meta file (either style) or a lone JSONL",
    )
    .option("--model <dir>", "model folder (with a meta file instead of a config)")
    .option("--media-root <dir>", MEDIA_ROOT_HELP)
    .option("--pack-max-length <n>", "tokens per pack")
    .option(
      "--max-length <n>",
      "longest sample (default: pack max length, or 4096 without packing)",
    )
    .option("--world-size <n>", "ranks (processes over all nodes)", "1")
    .option("--sp-size <n>", "sequence parallel (Ulysses) ranks per row (default 1)")
    .option("--ring-size <n>", "ring attention ranks per row, inside each sp group (default 1)")
    .option("--micro-batch-size <n>", "rows per micro-batch", "1")
    .option("--grad-accum <n>", "micro-batches per step", "1")
    .option("--epochs <n>", "epochs", "1")
    .option("--max-steps <n>", "stop after this many steps")
    .option("--sampler <kind>", `${SAMPLERS.join(" | ")}`, "random")
    .option("--packing <kind>", `${PACKING_KINDS.join(" | ")}`, "soft")
    .option("--max-tiles-per-pack <n>", "cap on image tiles per pack")
    .option("--window <n>", "soft packing: samples per shuffle window", "4096")
    .option("--seed <n>", "seed", "42")
    .option(
      "--cache-dir <dir>",
      "prepared cache (default: the config's, or .tessera-cache beside the meta file)",
    )
    .option("--workers <n>", "prepare worker threads")
    .option("--out <dir>", "also write the plan here")
    .option("--json", "print the figures as JSON")
    .action(async (arg: string, o) => {
      const quiet = o.json === true;
      const progress = prepareProgress(quiet);
      let cacheDir: string;
      let opts: PlanOptions;
      let method: TrainMethod | undefined;
      if (o.model) {
        const sampler = o.sampler as SamplerKind;
        const packing = o.packing as PackingKind;
        if (!SAMPLERS.includes(sampler))
          throw new UserError(`--sampler must be one of ${SAMPLERS.join(", ")}, got ${o.sampler}`);
        if (!PACKING_KINDS.includes(packing))
          throw new UserError(
            `--packing must be one of ${PACKING_KINDS.join(", ")}, got ${o.packing}`,
          );
        const pml = int(o.packMaxLength, "--pack-max-length");
        if (packing !== "none" && pml === undefined)
          throw new UserError("--pack-max-length is required with packing");
        const epochs = Number(o.epochs);
        if (!(epochs > 0)) throw new UserError(`--epochs must be above 0, got ${o.epochs}`);
        cacheDir = resolve(o.cacheDir ?? join(dirname(resolve(arg)), ".tessera-cache"));
        await prepareCache({
          meta: arg,
          mediaRoot: o.mediaRoot,
          model: o.model,
          maxLength: int(o.maxLength, "--max-length") ?? pml ?? 4096,
          cacheDir,
          workers: workersOption(o.workers),
          onProgress: progress,
        });
        opts = {
          worldSize: int(o.worldSize, "--world-size")!,
          microBatchSize: int(o.microBatchSize, "--micro-batch-size")!,
          gradAccum: int(o.gradAccum, "--grad-accum")!,
          epochs,
          maxSteps: int(o.maxSteps, "--max-steps"),
          sampler,
          packing,
          packMaxLength: pml,
          maxTilesPerPack: int(o.maxTilesPerPack, "--max-tiles-per-pack"),
          window: int(o.window, "--window"),
          seed: int(o.seed, "--seed", 0)!,
          spSize: int(o.spSize, "--sp-size"),
          ringSize: int(o.ringSize, "--ring-size"),
        };
      } else {
        const over: Record<string, unknown> = o.cacheDir ? { cache_dir: o.cacheDir } : {};
        // given on the command line, they override the config's
        if (o.spSize !== undefined) over.sp_size = int(o.spSize, "--sp-size");
        if (o.ringSize !== undefined) over.ring_size = int(o.ringSize, "--ring-size");
        const c = resolveConfig(arg, over);
        cacheDir = c.cache_dir!;
        await prepareCache(
          prepareOptionsFromConfig(c, { workers: workersOption(o.workers), onProgress: progress }),
        );
        opts = planOptionsFromConfig(c);
        method = c.method;
      }
      const t0 = Date.now();
      const table = openCacheTable(cacheDir);
      // A meta file alone plans pairs when its datasets hold them.
      method ??= table.manifest.datasets.some((d) => d.preference) ? "dpo" : "sft";
      const plan = planForMethod(table, opts, method);
      const secs = (Date.now() - t0) / 1000;
      if (o.out) await writePlan(plan, o.out);
      if (quiet) console.log(JSON.stringify({ ...planJson(plan), planning_s: secs }, null, 2));
      else
        console.log(
          `${formatPlan(plan)}\n  planned in ${secs.toFixed(2)} s${o.out ? ` · written to ${o.out}` : ""}`,
        );
    });
}
