/** `tessera data prepare CONFIG`: write (or bring up to date) the prepared cache. */
import { dirname, join, resolve } from "node:path";
import type { Command } from "commander";
import { MEDIA_ROOT_HELP } from "../data/meta.ts";
import { type ByteProgress, byteProgress } from "../data/progress.ts";
import { type PrepareOptions, prepareCache } from "../plan/cache.ts";
import { prepareOptionsFromConfig } from "../plan/from-config.ts";
import { resolveConfig } from "../train/config.ts";
import { UserError } from "../util/errors.ts";

export function workersOption(v: unknown): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0)
    throw new UserError(`--workers must be a whole number, got ${v}`);
  return n;
}

/** Per-dataset progress on stderr: a bar over the annotation's bytes on a terminal, then a line. */
export function prepareProgress(quiet: boolean): NonNullable<PrepareOptions["onProgress"]> {
  let bar: ByteProgress | undefined;
  let current = "";
  return (e) => {
    if (quiet) return;
    if (e.done) {
      bar?.stop();
      bar = undefined;
      process.stderr.write(
        `${e.dataset}: ${e.reused ? "unchanged, kept" : `${e.samples} samples from ${e.records} records`}\n`,
      );
      return;
    }
    if (e.dataset !== current || !bar) {
      bar?.stop();
      current = e.dataset;
      bar = byteProgress(`prepare ${e.dataset}`);
    }
    if (e.bytes !== undefined && e.totalBytes !== undefined) bar.update(e.bytes, e.totalBytes);
  };
}

export function registerDataPrepare(data: Command): void {
  data
    .command("prepare")
    .description(
      "tokenize every dataset of a training config into the prepared cache (only what changed)",
    )
    .argument(
      "<config-or-meta>",
      "training config (YAML or JSON: model, meta, max_length, cache_dir, …), or with --model a meta file or a lone JSONL",
    )
    .option("--model <dir>", "model folder (with a meta file or a JSONL instead of a config)")
    .option("--media-root <dir>", MEDIA_ROOT_HELP)
    .option("--max-length <n>", "with --model: longest sample in tokens", "4096")
    .option(
      "--cache-dir <dir>",
      "where the cache goes (default: the config's cache_dir, or .tessera-cache beside the meta file)",
    )
    .option("--workers <n>", "worker threads (default: one per CPU, at most 8; 0: in this thread)")
    .option("--json", "print the manifest summary as JSON")
    .action(async (arg: string, o) => {
      const t0 = Date.now();
      const quiet = o.json === true;
      const extra: Partial<PrepareOptions> = {
        workers: workersOption(o.workers),
        onProgress: (e) => {
          if (!quiet && e.done)
            process.stderr.write(
              `${e.dataset}: ${e.reused ? "unchanged, kept" : `${e.samples} samples from ${e.records} records`}\n`,
            );
        },
      };
      let c: { cache_dir?: string };
      let opts: PrepareOptions;
      if (o.model) {
        const maxLength = Number(o.maxLength);
        if (!Number.isInteger(maxLength) || maxLength < 1)
          throw new UserError(`--max-length must be a positive whole number, got ${o.maxLength}`);
        c = { cache_dir: resolve(o.cacheDir ?? join(dirname(resolve(arg)), ".tessera-cache")) };
        opts = {
          meta: arg,
          mediaRoot: o.mediaRoot,
          model: o.model,
          maxLength,
          cacheDir: c.cache_dir!,
          ...extra,
        };
      } else {
        if (o.mediaRoot)
          throw new UserError(
            "--media-root goes with --model and a JSONL; in a config file, set media_root",
          );
        const rc = resolveConfig(arg, o.cacheDir ? { cache_dir: o.cacheDir } : {});
        c = rc;
        opts = prepareOptionsFromConfig(rc, extra);
      }
      const r = await prepareCache(opts);
      const m = r.manifest;
      if (quiet) {
        console.log(
          JSON.stringify(
            {
              cache_dir: c.cache_dir,
              fingerprint: m.fingerprint,
              samples: m.samples,
              tokens: m.tokens,
              images: m.images,
              rebuilt: r.rebuilt,
              reused: r.reused,
              datasets: m.datasets,
            },
            null,
            2,
          ),
        );
        return;
      }
      console.log(`cache ${c.cache_dir} (fingerprint ${m.fingerprint.slice(0, 12)})`);
      for (const d of m.datasets)
        console.log(
          `  ${d.name}: ${d.samples} samples, ${d.tokens} tokens, ${d.images} images${d.skipped ? `, ${d.skipped} unusable records skipped` : ""}${d.truncated ? `, ${d.truncated} truncated` : ""}${d.dropped ? `, ${d.dropped} dropped (over max_length)` : ""}`,
        );
      console.log(
        `${m.samples} samples · rebuilt ${r.rebuilt.length}, kept ${r.reused.length} · ${((Date.now() - t0) / 1000).toFixed(1)} s`,
      );
    });
}
