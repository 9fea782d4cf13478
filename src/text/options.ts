/**
 * The model options every `tessera data` command that needs the model shares:
 * `--model DIR` (tokenizer, template and tiling from its config.json) and
 * `--max-dynamic-patch N` (the tiling budget), plus `--template NAME`.
 */
import type { Command } from "commander";
import { UserError } from "../util/errors.ts";
import { loadModelInfo, type ModelInfo } from "./model-info.ts";
import { makeSampleContext, type SampleContext, type SampleContextOptions } from "./sample.ts";
import { loadTokenizer, type TextTokenizer } from "./tokenizer.ts";

export interface ModelCliOptions {
  model?: string;
  maxDynamicPatch?: string | number;
  template?: string;
}

/** Add --model, --max-dynamic-patch and --template to a command. */
export function addModelOptions(cmd: Command, opts: { required?: boolean } = {}): Command {
  const model =
    "InternVL2 model folder: its tokenizer, chat template and tiling settings (config.json)";
  if (opts.required === false) cmd.option("--model <dir>", model);
  else cmd.requiredOption("--model <dir>", model);
  return cmd
    .option(
      "--max-dynamic-patch <n>",
      "tiles per image at most (default: the model's max_dynamic_patch)",
    )
    .option("--template <name>", "chat template (default: the model's config.json template)");
}

export function parsePositiveInt(v: unknown, flag: string): number | undefined {
  if (v === undefined || v === null || v === "") return undefined;
  const n = typeof v === "number" ? v : Number(v);
  if (!Number.isInteger(n) || n < 1)
    throw new UserError(`${flag} must be a positive whole number, got ${v}`);
  return n;
}

export interface ModelContext {
  model: ModelInfo;
  tokenizer: TextTokenizer;
  /** Ready for recordToSample; mediaRoot etc. can be changed with withSampleOptions. */
  ctx: SampleContext;
}

/** Load the model info and tokenizer the options name, and a sample context over them. */
export async function modelContextFromOptions(
  opts: ModelCliOptions,
  sample: Omit<SampleContextOptions, "tokenizer" | "model" | "template"> = {},
): Promise<ModelContext> {
  if (!opts.model)
    throw new UserError(
      "--model DIR is required (the model folder whose tokenizer and tiling apply)",
    );
  const model = loadModelInfo(opts.model, {
    maxDynamicPatch: parsePositiveInt(opts.maxDynamicPatch, "--max-dynamic-patch"),
    template: opts.template,
  });
  const tokenizer = await loadTokenizer(model.dir);
  return { model, tokenizer, ctx: makeSampleContext({ tokenizer, model, ...sample }) };
}
