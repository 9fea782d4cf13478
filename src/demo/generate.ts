/**
 * Write the demo's datasets: one JSONL per question type and split, a training meta file that
 * uses repeat_time both ways (an integer > 1 and a fraction < 1), an evaluation meta file, and
 * the images (drawn by the engine's render job from the scenes decided in scenes.ts).
 */
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { type EngineEvent, runEngine } from "../engine/protocol.ts";
import { hashJson } from "../plan/fingerprint.ts";
import { writeFileAtomic } from "../util/atomic.ts";
import {
  type DemoRecord,
  type GeneratedSplit,
  generateSplit,
  QUESTION_TYPES,
  type QuestionType,
  recordTiles,
  type Scene,
} from "./scenes.ts";

export interface DemoDataOptions {
  seed: number;
  tileSize: number;
  maxDynamicPatch: number;
  train: Record<QuestionType, number>;
  eval: Record<QuestionType, number>;
  /** repeat_time of each training dataset (1 when absent). */
  repeatTime: Partial<Record<QuestionType, number>>;
}

export interface DemoData {
  dir: string;
  trainMeta: string;
  evalMeta: string;
  /** Records per split and type (null for data the user brought), and the tile counts seen. */
  counts: { train: Record<QuestionType, number>; eval: Record<QuestionType, number> } | null;
  tiles: Record<number, number>;
  images: number;
  /** False when an identical earlier generation was reused. */
  rendered: boolean;
}

export interface DemoDataFiles {
  /** Relative path → file text, meta files and JSONL. */
  files: Map<string, string>;
  scenes: Scene[];
  train: GeneratedSplit;
  eval: GeneratedSplit;
}

const jsonl = (rs: DemoRecord[]) =>
  rs.map((r) => JSON.stringify(r)).join("\n") + (rs.length ? "\n" : "");

/** Everything the demo data consists of, in memory (pure, deterministic). */
export function demoDataFiles(o: DemoDataOptions): DemoDataFiles {
  const common = { seed: o.seed, tileSize: o.tileSize, maxDynamicPatch: o.maxDynamicPatch };
  const train = generateSplit({ ...common, counts: o.train, prefix: "train/" });
  // The held-out split has its own seed stream and its own files: never the training images.
  const evalSplit = generateSplit({
    ...common,
    seed: o.seed + 1_000_003,
    counts: o.eval,
    prefix: "eval/",
  });
  const files = new Map<string, string>();
  const trainMeta: Record<string, unknown> = {};
  const evalMeta: Record<string, unknown> = {};
  for (const t of QUESTION_TYPES) {
    const text = t === "text";
    if (o.train[t] > 0) {
      files.set(`train/${t}.jsonl`, jsonl(train.records[t]));
      const entry: Record<string, unknown> = {
        media_root: text ? "" : "images/",
        annotation: `train/${t}.jsonl`,
      };
      const rt = o.repeatTime[t];
      if (rt !== undefined && rt !== 1) entry.repeat_time = rt;
      trainMeta[`demo_${t}`] = entry;
    }
    if (o.eval[t] > 0) {
      files.set(`eval/${t}.jsonl`, jsonl(evalSplit.records[t]));
      evalMeta[`demo_${t}_eval`] = {
        media_root: text ? "" : "images/",
        annotation: `eval/${t}.jsonl`,
      };
    }
  }
  files.set("train.json", `${JSON.stringify(trainMeta, null, 2)}\n`);
  files.set("eval.json", `${JSON.stringify(evalMeta, null, 2)}\n`);
  return { files, scenes: [...train.scenes, ...evalSplit.scenes], train, eval: evalSplit };
}

/**
 * Write the demo data under `dir`. Images are drawn by the engine (`python`); a folder that
 * already holds this exact generation (same options) is reused as it is.
 */
export async function writeDemoData(
  dir: string,
  o: DemoDataOptions,
  python: string,
  onEvent?: (e: EngineEvent) => void,
): Promise<DemoData> {
  const d = demoDataFiles(o);
  const stampPath = join(dir, ".generated");
  const stamp = hashJson({ version: 1, options: o });
  const reuse = existsSync(stampPath) && (await readFile(stampPath, "utf8")).trim() === stamp;
  if (!reuse) {
    for (const [rel, text] of d.files) await writeFileAtomic(join(dir, rel), text);
    const scenes = d.scenes.map((s) => ({ ...s, path: join(dir, "images", s.path) }));
    await runEngine({ kind: "render", scenes }, { python, onEvent });
    await writeFileAtomic(stampPath, `${stamp}\n`);
  }
  const tiles: Record<number, number> = {};
  for (const split of [d.train, d.eval])
    for (const t of QUESTION_TYPES)
      for (const r of split.records[t])
        for (const n of recordTiles(r, {
          tileSize: o.tileSize,
          maxDynamicPatch: o.maxDynamicPatch,
        }))
          tiles[n] = (tiles[n] ?? 0) + 1;
  return {
    dir,
    trainMeta: join(dir, "train.json"),
    evalMeta: join(dir, "eval.json"),
    counts: { train: { ...o.train }, eval: { ...o.eval } },
    tiles,
    images: d.scenes.length,
    rendered: !reuse,
  };
}
