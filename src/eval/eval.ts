/**
 * `tessera eval`: ask a model the questions of a meta file (or one JSONL) and score its
 * answers by exact match, overall and per question type. The question is every turn up to
 * the last human turn; the answer is the last assistant turn; the type is the record's
 * `type` field (else its dataset's name). Prompts are built exactly as in training, and the
 * engine's generate job answers them in batches.
 */
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { readRecords } from "../data/jsonl.ts";
import {
  MediaPathError,
  mediaErrorText,
  resolveMediaPath,
  withHeaderSizes,
} from "../data/media.ts";
import { isLoneJsonl, loadMeta, videoFramesOf } from "../data/meta.ts";
import type { DataRecord } from "../data/record.ts";
import { type EngineEvent, runEngine } from "../engine/protocol.ts";
import { loadModelInfo } from "../text/model-info.ts";
import { buildGenerationPrompt, makeSampleContext } from "../text/sample.ts";
import { loadTokenizer } from "../text/tokenizer.ts";
import type { ImagePlan } from "../text/types.ts";
import { UserError } from "../util/errors.ts";
import { HeaderReader, ImageHeaderError } from "../vision/headers.ts";
import { perImageMaxNum } from "../vision/tiling.ts";
import { type Scored, type ScoreReport, scoreAnswers } from "./score.ts";

export interface EvalOptions {
  python: string;
  /** Media root of a lone JSONL (default: its folder). */
  mediaRoot?: string;
  /** At most this many questions per dataset (all by default). */
  limit?: number;
  batchSize?: number;
  maxNewTokens?: number;
  maxDynamicPatch?: number;
  /** Frames per video (a dataset's own `video_frames` wins), as in training. */
  videoFrames?: number;
  /** A PEFT adapter folder applied to the model (a LoRA run's export/adapter). */
  adapter?: string;
  onEvent?: (e: EngineEvent) => void;
}

/** One prompt of the engine's generate job (engine/tessera_engine/jobs/generate.py). */
export interface GeneratePrompt {
  input_ids: number[];
  images: {
    path: string;
    wh: [number, number];
    cols: number;
    rows: number;
    thumbnail: boolean;
    max_num?: number;
    /** A video frame: its index among the `frames` planned for that video. */
    frame?: number;
    frames?: number;
  }[];
}

/**
 * A prompt's images as the generate job takes them: each image with its grid and the budget
 * the engine checks it against, each video frame with its place among its video's frames.
 */
export function promptImages(
  images: readonly ImagePlan[],
  maxDynamicPatch: number,
): GeneratePrompt["images"] {
  const maxNum = perImageMaxNum(maxDynamicPatch, images.length);
  return images.map((im) => ({
    path: im.path,
    wh: im.wh,
    cols: im.cols,
    rows: im.rows,
    thumbnail: im.thumbnail,
    ...(im.frame === undefined
      ? { max_num: maxNum }
      : { frame: im.frame, frames: images.filter((x) => x.path === im.path).length }),
  }));
}

export interface Question {
  id: string;
  type: string;
  dataset: string;
  record: DataRecord;
  answer: string;
  /** file:line of the record. */
  where: string;
}

export interface EvalResult extends ScoreReport {
  model: string;
  source: string;
  items: (Scored & { id: string })[];
  seconds: number;
  /** Generated tokens per second (the engine's count). */
  tokensPerS: number | null;
}

/** The questions of a meta file or a JSONL: records whose last turn is the assistant's. */
export async function loadQuestions(
  source: string,
  opts: Pick<EvalOptions, "mediaRoot" | "limit" | "videoFrames"> = {},
): Promise<{
  questions: Question[];
  skipped: number;
  mediaRoots: Map<string, string>;
  videoFrames: Map<string, number>;
}> {
  // A meta file of either style, or a lone JSONL (its questions' type defaults to "questions").
  const specs = (await loadMeta(resolve(source), { mediaRoot: opts.mediaRoot })).map((s) => ({
    name: isLoneJsonl(s) ? "questions" : s.name,
    annotation: s.annotation,
    mediaRoot: s.mediaRoot,
    videoFrames: videoFramesOf(s, opts.videoFrames),
  }));
  const questions: Question[] = [];
  const mediaRoots = new Map<string, string>();
  const videoFrames = new Map<string, number>();
  let skipped = 0;
  for (const spec of specs) {
    mediaRoots.set(spec.name, spec.mediaRoot);
    videoFrames.set(spec.name, spec.videoFrames);
    let n = 0;
    for await (const item of readRecords(spec)) {
      if (opts.limit !== undefined && n >= opts.limit) break;
      const errors = item.issues.filter((i) => i.severity === "error");
      if (!item.record || errors.length)
        throw new UserError(
          `${spec.annotation}:${item.line}: ${errors[0]?.message ?? "not a usable record"}`,
        );
      const r = item.record;
      let last = r.conversations.length - 1;
      while (last >= 0 && r.conversations[last].from !== "gpt") last--;
      if (last < 1) {
        skipped++;
        continue;
      }
      const type = typeof r.extra.type === "string" ? r.extra.type : spec.name;
      questions.push({
        id: String(r.id ?? `${spec.name}:${item.line}`),
        type,
        dataset: spec.name,
        record: { ...r, conversations: r.conversations.slice(0, last) },
        answer: r.conversations[last].value,
        where: `${spec.annotation}:${item.line}`,
      });
      n++;
    }
  }
  await checkImages(questions, mediaRoots);
  return { questions, skipped, mediaRoots, videoFrames };
}

/**
 * Every image's header read before the model loads: a missing or unreadable image is named
 * (file:line, question, path) at once, and sizes the records do not give (no image_wh,
 * width/height) come from the headers, so questions need no `data fill-wh` first.
 */
async function checkImages(questions: Question[], mediaRoots: Map<string, string>): Promise<void> {
  const reader = new HeaderReader(64);
  await Promise.all(
    questions.map(async (q) => {
      const spec = { mediaRoot: mediaRoots.get(q.dataset)! };
      try {
        const sized = await withHeaderSizes(q.record, spec, reader);
        if (sized === q.record)
          await Promise.all(q.record.images.map((rel) => reader.get(resolveMediaPath(spec, rel))));
        q.record = sized;
        const video = q.record.video;
        if (video !== undefined && !existsSync(resolveMediaPath(spec, video)))
          throw new UserError(
            `${q.where}: question ${q.id} (${q.dataset}): video ${video}: ${resolveMediaPath(spec, video)} does not exist`,
          );
      } catch (e) {
        if (e instanceof ImageHeaderError || e instanceof MediaPathError)
          throw new UserError(`${q.where}: question ${q.id} (${q.dataset}): ${mediaErrorText(e)}`);
        throw e;
      }
    }),
  );
}

/** Evaluate a model on the questions of `source`. */
export async function evaluate(
  model: string,
  source: string,
  opts: EvalOptions,
): Promise<EvalResult> {
  const modelDir = resolve(model);
  if (opts.adapter !== undefined && !existsSync(join(resolve(opts.adapter), "adapter_config.json")))
    throw new UserError(
      `--adapter ${resolve(opts.adapter)}: no adapter_config.json (a PEFT adapter folder)`,
    );
  const info = loadModelInfo(
    modelDir,
    opts.maxDynamicPatch ? { maxDynamicPatch: opts.maxDynamicPatch } : {},
  );
  const tokenizer = await loadTokenizer(modelDir, { python: opts.python });
  const { questions, mediaRoots, videoFrames } = await loadQuestions(source, opts);
  if (!questions.length)
    throw new UserError(
      `${source}: no questions (records ending with an assistant answer) to evaluate`,
    );
  const contexts = new Map(
    [...mediaRoots].map(([name, root]) => [
      name,
      makeSampleContext({
        tokenizer,
        model: info,
        mediaRoot: root,
        videoFrames: videoFrames.get(name),
      }),
    ]),
  );
  const prompts: GeneratePrompt[] = [];
  for (const q of questions) {
    const p = await buildGenerationPrompt(q.record, contexts.get(q.dataset)!);
    prompts.push({
      input_ids: Array.from(p.inputIds),
      images: promptImages(p.images, info.maxDynamicPatch),
    });
  }
  // Batches of similar lengths waste the least on padding; the answers go back in input order.
  const order = prompts
    .map((_, i) => i)
    .sort((a, b) => prompts[a].input_ids.length - prompts[b].input_ids.length || a - b);
  const t0 = Date.now();
  const res = await runEngine(
    {
      kind: "generate",
      model: modelDir,
      prompts: order.map((i) => prompts[i]),
      batch_size: opts.batchSize ?? 16,
      max_new_tokens: opts.maxNewTokens ?? 8,
      ...(opts.adapter ? { adapter: resolve(opts.adapter) } : {}),
    },
    { python: opts.python, onEvent: opts.onEvent },
  );
  const outputs = res.outputs as number[][];
  if (!Array.isArray(outputs) || outputs.length !== prompts.length)
    throw new Error(
      `the engine answered ${Array.isArray(outputs) ? outputs.length : "no"} prompts, expected ${prompts.length}`,
    );
  const predictions: string[] = new Array(prompts.length);
  for (const [k, i] of order.entries()) predictions[i] = await tokenizer.decode(outputs[k], true);
  const { report, scored } = scoreAnswers(
    questions.map((q, i) => ({ type: q.type, answer: q.answer, prediction: predictions[i] })),
  );
  return {
    model: modelDir,
    source: resolve(source),
    ...report,
    items: scored.map((s, i) => ({ ...s, id: questions[i].id })),
    seconds: (Date.now() - t0) / 1000,
    tokensPerS: typeof res.tokens_per_s === "number" ? res.tokens_per_s : null,
  };
}

/** The per-type table `tessera eval` prints. */
export function formatEval(r: ScoreReport): string {
  const rows = Object.entries(r.byType).map(([t, a]) => [
    t,
    `${a.correct}/${a.total}`,
    `${(a.accuracy * 100).toFixed(1)}%`,
  ]);
  rows.push([
    "overall",
    `${r.overall.correct}/${r.overall.total}`,
    `${(r.overall.accuracy * 100).toFixed(1)}%`,
  ]);
  const w = [
    Math.max(4, ...rows.map((x) => x[0].length)),
    Math.max(7, ...rows.map((x) => x[1].length)),
  ];
  const lines = [`${"type".padEnd(w[0])}  ${"correct".padStart(w[1])}  accuracy`];
  for (const [t, c, a] of rows)
    lines.push(`${t.padEnd(w[0])}  ${c.padStart(w[1])}  ${a.padStart(8)}`);
  return lines.join("\n");
}
