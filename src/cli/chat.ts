/**
 * `tessera chat MODEL [--image PATH | --video PATH] "question"`: one answer from a (trained)
 * model, for a quick look at what it learned. The prompt is built here exactly as in training
 * (template, tiles, image tokens); the engine's generate job makes the pixels and generates;
 * the answer is decoded here.
 */
import { existsSync } from "node:fs";
import { resolve } from "node:path";
import type { Command } from "commander";
import type { DataRecord } from "../data/record.ts";
import { type EngineEvent, runEngine } from "../engine/protocol.ts";
import { ensureEngine } from "../engine/setup.ts";
import { promptImages } from "../eval/eval.ts";
import { loadModelInfo } from "../text/model-info.ts";
import { buildGenerationPrompt, makeSampleContext } from "../text/sample.ts";
import { loadTokenizer } from "../text/tokenizer.ts";
import { DEFAULT_VIDEO_FRAMES } from "../text/types.ts";
import { UserError } from "../util/errors.ts";
import { readImageHeader } from "../vision/headers.ts";

export interface ChatOptions {
  python: string;
  images?: string[];
  /** A video instead of images: `videoFrames` frames (default 8), one tile each. */
  video?: string;
  videoFrames?: number;
  system?: string;
  maxNewTokens?: number;
  sample?: boolean;
  temperature?: number;
  topP?: number;
  topK?: number;
  seed?: number;
  maxDynamicPatch?: number;
  onEvent?: (e: EngineEvent) => void;
}

export interface ChatAnswer {
  answer: string;
  /** Tokens of the prompt (template and image tokens included). */
  promptTokens: number;
  /** Tiles of each image, in order. */
  tiles: number[];
  newTokens: number;
}

/** Ask a model one question, with images or without. */
export async function chat(model: string, question: string, o: ChatOptions): Promise<ChatAnswer> {
  const dir = resolve(model);
  const info = loadModelInfo(dir, o.maxDynamicPatch ? { maxDynamicPatch: o.maxDynamicPatch } : {});
  const tokenizer = await loadTokenizer(dir, { python: o.python });
  const images = (o.images ?? []).map((p) => resolve(p));
  const imageWh: [number, number][] = [];
  for (const p of images) {
    const h = await readImageHeader(p).catch((e: Error) => {
      throw new UserError(`--image ${p}: ${e.message}`);
    });
    imageWh.push([h.width, h.height]);
  }
  let video: string | undefined;
  if (o.video !== undefined) {
    if (images.length) throw new UserError("--video and --image cannot be used together");
    video = resolve(o.video);
    if (!existsSync(video)) throw new UserError(`--video ${video}: not found`);
  }
  const record: DataRecord = {
    conversations: [
      ...(o.system ? [{ from: "system", value: o.system }] : []),
      { from: "human", value: question },
    ] as DataRecord["conversations"],
    images,
    imageWh,
    ...(video ? { video } : {}),
    extra: {},
  };
  const ctx = makeSampleContext({
    tokenizer,
    model: info,
    resolvePath: (p) => p,
    videoFrames: o.videoFrames ?? DEFAULT_VIDEO_FRAMES,
  });
  const prompt = await buildGenerationPrompt(record, ctx);
  const res = await runEngine(
    {
      kind: "generate",
      model: dir,
      prompts: [
        {
          input_ids: Array.from(prompt.inputIds),
          images: promptImages(prompt.images, info.maxDynamicPatch),
        },
      ],
      batch_size: 1,
      max_new_tokens: o.maxNewTokens ?? 128,
      do_sample: Boolean(o.sample),
      temperature: o.temperature ?? 1,
      top_p: o.topP ?? 1,
      top_k: o.topK ?? 0,
      seed: o.seed ?? 0,
    },
    { python: o.python, onEvent: o.onEvent },
  );
  const ids = (res.outputs as number[][])[0] ?? [];
  return {
    answer: await tokenizer.decode(ids, true),
    promptTokens: prompt.inputIds.length,
    tiles: prompt.images.map((im) => im.tiles),
    newTokens: ids.length,
  };
}

function num(v: unknown, flag: string, int = false): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || (int && !Number.isInteger(n)))
    throw new UserError(`${flag}: expected a number, got ${v}`);
  return n;
}

export function registerChat(program: Command): void {
  program
    .command("chat")
    .description("ask a (trained) model one question about images, and print its answer")
    .argument("<model>", "model folder (original InternVL2 format, e.g. a run's export/)")
    .argument("<question>", "the question")
    .option(
      "--image <path>",
      "an image (repeat for several)",
      (v: string, acc: string[]) => [...acc, v],
      [] as string[],
    )
    .option("--video <path>", "a video instead of images: its frames, one tile each")
    .option("--video-frames <n>", "frames taken from the video", String(DEFAULT_VIDEO_FRAMES))
    .option("--system <text>", "system message (default: the template's)")
    .option("--max-new-tokens <n>", "longest answer in tokens", "128")
    .option("--sample", "sample instead of greedy decoding")
    .option("--temperature <t>", "sampling temperature", "1")
    .option("--top-p <p>", "nucleus sampling threshold", "1")
    .option("--top-k <k>", "sample among the k likeliest tokens (0: all)", "0")
    .option("--seed <n>", "seed of sampling", "0")
    .option("--max-dynamic-patch <n>", "tiles per image at most (default: the model's config)")
    .option("--venv <dir>", "the engine's virtual environment")
    .action(async (model: string, question: string, o) => {
      const python = await ensureEngine({ venv: o.venv, quiet: true });
      const r = await chat(model, question, {
        python,
        images: o.image,
        video: o.video,
        videoFrames: num(o.videoFrames, "--video-frames", true),
        system: o.system,
        maxNewTokens: num(o.maxNewTokens, "--max-new-tokens", true),
        sample: Boolean(o.sample),
        temperature: num(o.temperature, "--temperature"),
        topP: num(o.topP, "--top-p"),
        topK: num(o.topK, "--top-k", true),
        seed: num(o.seed, "--seed", true),
        maxDynamicPatch: num(o.maxDynamicPatch, "--max-dynamic-patch", true),
      });
      process.stdout.write(`${r.answer}\n`);
    });
}
