/**
 * `tessera chat MODEL [--image PATH | --video PATH] ["question"]`: answers from a (trained)
 * model. With a question, one answer; without, a multi-turn session (a terminal prompt, or
 * one turn per line of stdin) in which the engine keeps the model loaded. The prompt is built
 * here exactly as in training (template, tiles, image tokens, the earlier turns); the engine's
 * generate job makes the pixels and generates; the answer is decoded here.
 */
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import type { Command } from "commander";
import type { DataRecord } from "../data/record.ts";
import { type EngineEvent, type EngineRun, runEngine, startEngine } from "../engine/protocol.ts";
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
  /** A PEFT adapter folder applied to the model (a LoRA run's export/adapter). */
  adapter?: string;
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

interface Prepared {
  dir: string;
  info: ReturnType<typeof loadModelInfo>;
  tokenizer: Awaited<ReturnType<typeof loadTokenizer>>;
  images: string[];
  imageWh: [number, number][];
  video?: string;
  ctx: ReturnType<typeof makeSampleContext>;
}

/** Model info, tokenizer and media, checked before any model loads. */
async function prepare(model: string, o: ChatOptions): Promise<Prepared> {
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
  if (o.adapter !== undefined && !existsSync(join(resolve(o.adapter), "adapter_config.json")))
    throw new UserError(
      `--adapter ${resolve(o.adapter)}: no adapter_config.json (a PEFT adapter folder)`,
    );
  const ctx = makeSampleContext({
    tokenizer,
    model: info,
    resolvePath: (p) => p,
    videoFrames: o.videoFrames ?? DEFAULT_VIDEO_FRAMES,
  });
  return { dir, info, tokenizer, images, imageWh, video, ctx };
}

type Turn = DataRecord["conversations"][number];

/** The generate job's prompt for a conversation whose last turn is the user's. */
async function promptFor(p: Prepared, turns: Turn[], system?: string) {
  const record: DataRecord = {
    conversations: [
      ...(system ? [{ from: "system", value: system }] : []),
      ...turns,
    ] as DataRecord["conversations"],
    images: p.images,
    imageWh: p.imageWh,
    ...(p.video ? { video: p.video } : {}),
    extra: {},
  };
  const prompt = await buildGenerationPrompt(record, p.ctx);
  return {
    prompt,
    request: {
      input_ids: Array.from(prompt.inputIds),
      images: promptImages(prompt.images, p.info.maxDynamicPatch),
    },
  };
}

function generationFields(o: ChatOptions) {
  return {
    batch_size: 1,
    max_new_tokens: o.maxNewTokens ?? 128,
    do_sample: Boolean(o.sample),
    temperature: o.temperature ?? 1,
    top_p: o.topP ?? 1,
    top_k: o.topK ?? 0,
    seed: o.seed ?? 0,
    ...(o.adapter ? { adapter: resolve(o.adapter) } : {}),
  };
}

/** Ask a model one question, with images or without. */
export async function chat(model: string, question: string, o: ChatOptions): Promise<ChatAnswer> {
  const p = await prepare(model, o);
  const { prompt, request } = await promptFor(p, [{ from: "human", value: question }], o.system);
  const res = await runEngine(
    { kind: "generate", model: p.dir, prompts: [request], ...generationFields(o) },
    { python: o.python, onEvent: o.onEvent },
  );
  const ids = (res.outputs as number[][])[0] ?? [];
  return {
    answer: await p.tokenizer.decode(ids, true),
    promptTokens: prompt.inputIds.length,
    tiles: prompt.images.map((im) => im.tiles),
    newTokens: ids.length,
  };
}

/**
 * A multi-turn conversation with one engine process that keeps the model loaded: each turn's
 * prompt holds the earlier turns (the images belong to the first), as a multi-turn record.
 */
export class ChatSession {
  private turns: Turn[] = [];
  private next = 0;
  private pending = new Map<
    number,
    { resolve: (ids: number[]) => void; reject: (e: Error) => void }
  >();
  private failed: Error | undefined;

  private constructor(
    private readonly p: Prepared,
    private readonly o: ChatOptions,
    private readonly run: EngineRun,
  ) {
    run.done.then(
      () => this.fail(new UserError("the engine stopped")),
      (e: Error) => this.fail(e),
    );
  }

  static async open(model: string, o: ChatOptions): Promise<ChatSession> {
    const p = await prepare(model, o);
    let session: ChatSession | undefined;
    const run = await startEngine(
      { kind: "generate", model: p.dir, serve: true, ...generationFields(o) },
      {
        python: o.python,
        stdin: true,
        onEvent: (e) => {
          o.onEvent?.(e);
          if (e.event === "answer") session?.settle(e);
        },
      },
    );
    session = new ChatSession(p, o, run);
    return session;
  }

  private settle(e: EngineEvent): void {
    const waiter = this.pending.get(Number(e.id));
    if (!waiter) return;
    this.pending.delete(Number(e.id));
    if (typeof e.error === "string") waiter.reject(new UserError(e.error));
    else waiter.resolve(((e.outputs as number[][]) ?? [])[0] ?? []);
  }

  private fail(e: Error): void {
    this.failed ??= e;
    for (const w of this.pending.values()) w.reject(e);
    this.pending.clear();
  }

  /** The conversation so far (user and assistant turns). */
  get history(): readonly Turn[] {
    return this.turns;
  }

  /** Forget the earlier turns (the images stay). */
  reset(): void {
    this.turns = [];
  }

  async ask(question: string): Promise<ChatAnswer> {
    if (this.failed) throw this.failed;
    const turns: Turn[] = [...this.turns, { from: "human", value: question } as Turn];
    const { prompt, request } = await promptFor(this.p, turns, this.o.system);
    const id = this.next++;
    const ids = await new Promise<number[]>((resolveIds, reject) => {
      this.pending.set(id, { resolve: resolveIds, reject });
      this.run.child.stdin?.write(`${JSON.stringify({ id, prompts: [request] })}\n`);
    });
    const answer = await this.p.tokenizer.decode(ids, true);
    this.turns = [...turns, { from: "gpt", value: answer } as Turn];
    return {
      answer,
      promptTokens: prompt.inputIds.length,
      tiles: prompt.images.map((im) => im.tiles),
      newTokens: ids.length,
    };
  }

  /** Close stdin: the engine finishes and exits. */
  async close(): Promise<void> {
    this.run.child.stdin?.end();
    await this.run.done.catch(() => undefined);
  }
}

/** Turns from a terminal (a prompt) or from stdin lines; `/reset` forgets, `/exit` ends. */
async function interactive(session: ChatSession): Promise<void> {
  const tty = Boolean(process.stdin.isTTY);
  const rl = createInterface({ input: process.stdin, output: tty ? process.stdout : undefined });
  if (tty) {
    process.stdout.write(
      "(a new line asks; /reset forgets the conversation; /exit or Ctrl-D ends)\n",
    );
    rl.setPrompt("> ");
    rl.prompt();
  }
  try {
    for await (const raw of rl) {
      const line = raw.trim();
      if (line === "/exit") break;
      if (line === "/reset") session.reset();
      else if (line) {
        const r = await session.ask(line);
        process.stdout.write(`${r.answer}\n`);
      }
      if (tty) rl.prompt();
    }
  } finally {
    rl.close();
    await session.close();
  }
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
    .description(
      "ask a (trained) model about images: one question, or a multi-turn session when none is given",
    )
    .argument("<model>", "model folder (original InternVL2 format, e.g. a run's export/)")
    .argument("[question]", "the question (none: a session, one turn per line)")
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
    .option("--adapter <dir>", "a PEFT adapter applied to the model (a LoRA run's export/adapter)")
    .option("--venv <dir>", "the engine's virtual environment")
    .action(async (model: string, question: string | undefined, o) => {
      const python = await ensureEngine({ venv: o.venv, quiet: true });
      const opts: ChatOptions = {
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
        adapter: o.adapter,
      };
      if (question === undefined) {
        await interactive(await ChatSession.open(model, opts));
        return;
      }
      const r = await chat(model, question, opts);
      process.stdout.write(`${r.answer}\n`);
    });
}
