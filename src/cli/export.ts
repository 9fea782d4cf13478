/**
 * `tessera export CHECKPOINT --format original|native|adapter [--dtype auto|bf16|fp16|fp32]`:
 * write any checkpoint of a run (WORK_DIR/checkpoints/step-N, or a work dir: its latest one)
 * or a model folder in the chosen format. The run's config.yaml says how the model was trained
 * (freezes, LoRA); the engine's export job builds it, loads the checkpoint and exports.
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import type { Command } from "commander";
import { runEngine } from "../engine/protocol.ts";
import { ensureEngine } from "../engine/setup.ts";
import { readConfigFile } from "../train/config.ts";
import { UserError } from "../util/errors.ts";

export const EXPORT_FORMATS = ["original", "native", "adapter"] as const;
export const EXPORT_DTYPES = ["auto", "bf16", "fp16", "fp32"] as const;

export interface ExportSource {
  /** The model folder the run started from, or the folder to convert. */
  model: string;
  /** The checkpoint folder, when exporting a run's checkpoint. */
  checkpoint?: string;
  /** The run's resolved config (freezes, LoRA), with a checkpoint. */
  config?: Record<string, unknown>;
  /** Where the output goes by default. */
  defaultOut?: string;
}

const STEP = /^step-(\d{8})$/;

function latestCheckpoint(workDir: string): string | undefined {
  const root = join(workDir, "checkpoints");
  if (!existsSync(root)) return undefined;
  const done = readdirSync(root)
    .filter((n) => STEP.test(n) && existsSync(join(root, n, "meta.json")))
    .sort();
  return done.length ? join(root, done[done.length - 1]) : undefined;
}

/** What PATH is: a checkpoint, a work dir (its latest checkpoint) or a model folder. */
export function resolveExportSource(path: string, format: string): ExportSource {
  const p = resolve(path);
  if (!existsSync(p)) throw new UserError(`${p}: not found`);
  let checkpoint: string | undefined;
  if (existsSync(join(p, "meta.json"))) checkpoint = p;
  else if (existsSync(join(p, "checkpoints"))) {
    checkpoint = latestCheckpoint(p);
    if (!checkpoint) throw new UserError(`${p}/checkpoints: no complete checkpoint`);
  }
  if (checkpoint) {
    const workDir = dirname(dirname(checkpoint));
    const cfgPath = join(workDir, "config.yaml");
    if (!existsSync(cfgPath))
      throw new UserError(
        `${checkpoint}: the run's ${cfgPath} is missing (it says how the model was trained)`,
      );
    const config = readConfigFile(cfgPath) as Record<string, unknown>;
    if (typeof config.model !== "string")
      throw new UserError(`${cfgPath}: no "model" setting (the model the run started from)`);
    const m = STEP.exec(basename(checkpoint));
    const step = m ? String(Number(m[1])) : basename(checkpoint);
    return {
      model: config.model,
      checkpoint,
      config,
      defaultOut: join(workDir, `export-step-${step}-${format}`),
    };
  }
  const cfg = join(p, "config.json");
  if (!existsSync(cfg))
    throw new UserError(
      `${p}: neither a checkpoint (meta.json), a work dir (checkpoints/) nor a model folder (config.json)`,
    );
  let modelType: unknown;
  try {
    modelType = JSON.parse(readFileSync(cfg, "utf8")).model_type;
  } catch (e) {
    throw new UserError(`${cfg}: ${(e as Error).message}`);
  }
  if (modelType !== "internvl_chat")
    throw new UserError(
      `${cfg}: model_type ${JSON.stringify(modelType)} is not an original InternVL2 folder ("internvl_chat")`,
    );
  return { model: p };
}

export interface ExportOptions {
  python: string;
  format: (typeof EXPORT_FORMATS)[number];
  dtype?: (typeof EXPORT_DTYPES)[number];
  out?: string;
  force?: boolean;
}

export interface ExportResult {
  dir: string;
  format: string;
  dtype: string;
  adapter?: string;
  steps_done?: number;
}

export async function exportModel(path: string, o: ExportOptions): Promise<ExportResult> {
  const src = resolveExportSource(path, o.format);
  if (o.format === "adapter" && !src.checkpoint)
    throw new UserError(
      `${src.model} is a model folder, not a LoRA run's checkpoint: there is no adapter to export`,
    );
  const out = o.out ? resolve(o.out) : src.defaultOut;
  if (!out) throw new UserError("--out DIR is needed when exporting a model folder");
  if (existsSync(out) && readdirSync(out).length && !o.force)
    throw new UserError(`${out} exists and is not empty (--force replaces it)`);
  const res = await runEngine(
    {
      kind: "export",
      model: src.model,
      ...(src.checkpoint ? { checkpoint: src.checkpoint, config: src.config } : {}),
      out,
      format: o.format,
      dtype: o.dtype ?? "auto",
      force: Boolean(o.force),
    },
    { python: o.python },
  );
  return res as unknown as ExportResult;
}

function oneOf<T extends string>(v: unknown, allowed: readonly T[], flag: string): T {
  if (!allowed.includes(v as T))
    throw new UserError(`${flag} ${v}: expected one of ${allowed.join(", ")}`);
  return v as T;
}

export function registerExport(program: Command): void {
  program
    .command("export")
    .description(
      "write a checkpoint (or a model folder) as an original InternVL2 folder, a native transformers folder, or a PEFT adapter",
    )
    .argument(
      "<checkpoint>",
      "WORK_DIR/checkpoints/step-N, a work dir (its latest checkpoint), or a model folder",
    )
    .option("--format <f>", "original | native | adapter", "original")
    .option("--dtype <d>", "auto (the source model's) | bf16 | fp16 | fp32", "auto")
    .option("--out <dir>", "output folder (default: WORK_DIR/export-step-N-FORMAT)")
    .option("--force", "replace the output folder if it exists")
    .option("--venv <dir>", "the engine's virtual environment")
    .action(async (path: string, o) => {
      const format = oneOf(o.format, EXPORT_FORMATS, "--format");
      const dtype = oneOf(o.dtype, EXPORT_DTYPES, "--dtype");
      const python = await ensureEngine({ venv: o.venv, quiet: true });
      const r = await exportModel(path, { python, format, dtype, out: o.out, force: o.force });
      process.stdout.write(
        `${r.format} (${r.dtype}) written to ${r.adapter ?? r.dir}` +
          (r.steps_done !== undefined ? ` from the checkpoint after step ${r.steps_done}` : "") +
          "\n",
      );
    });
}
