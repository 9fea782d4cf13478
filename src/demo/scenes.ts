/**
 * The demo's synthetic data, decided entirely here from a seed: every image's size, shapes,
 * colours, positions and words, every question and its answer. The engine only draws the
 * scenes (engine/tessera_engine/jobs/render.py). Same seed, same bytes.
 */
import { Rng } from "../plan/arrays.ts";
import { perImageMaxNum, planTiles } from "../vision/tiling.ts";

export type Rgb = [number, number, number];
export type ShapeKind = "circle" | "square" | "triangle";
export type QuestionType = "colour" | "count" | "word" | "compare" | "text";
export const QUESTION_TYPES: QuestionType[] = ["colour", "count", "word", "compare", "text"];

/** Distinct, saturated colours whose names are single tokens in common vocabularies. */
export const COLOURS: Record<string, Rgb> = {
  red: [220, 40, 40],
  green: [40, 170, 60],
  blue: [40, 80, 220],
  yellow: [235, 210, 40],
  purple: [140, 60, 180],
  orange: [245, 140, 30],
};
export const COLOUR_NAMES = Object.keys(COLOURS);
export const SHAPES: ShapeKind[] = ["circle", "square", "triangle"];
export const WORDS = ["cat", "dog", "sun", "car", "box", "hat"];
/** Counting answers: 1 to MAX_COUNT shapes. */
export const MAX_COUNT = 4;

export interface SceneShape {
  shape: ShapeKind;
  fill: Rgb;
  /** [x0, y0, x1, y1], inclusive pixel box. */
  box: [number, number, number, number];
}

export interface SceneText {
  text: string;
  xy: [number, number];
  size: number;
  fill: Rgb;
}

/** One image to draw; `path` is relative to the media root. */
export interface Scene {
  path: string;
  size: [number, number];
  background: Rgb;
  shapes: SceneShape[];
  texts: SceneText[];
}

/** A JSONL record as written (the data format of docs/data-format.md) plus the demo's `type`. */
export interface DemoRecord {
  id: string;
  type: QuestionType;
  image?: string | string[];
  image_wh?: [number, number][];
  conversations: { from: "human" | "gpt"; value: string }[];
}

export interface GenerateOptions {
  seed: number;
  /** Tile side of the model the data is for (the demo model's is small). */
  tileSize: number;
  maxDynamicPatch: number;
  useThumbnail?: boolean;
  /** Records per question type. */
  counts: Record<QuestionType, number>;
  /** Prefix of image paths (e.g. "train/"), so splits never share files. */
  prefix: string;
}

export interface GeneratedSplit {
  records: Record<QuestionType, DemoRecord[]>;
  scenes: Scene[];
}

const ONE_WORD = "Answer with one word.";

/** Aspect ratios (w:h) that, with the size jitter, give every grid from 1×1 to 6×1 and 1×6. */
const ASPECTS: [number, number][] = [
  [1, 1],
  [1, 1],
  [2, 1],
  [1, 2],
  [3, 1],
  [1, 3],
  [3, 2],
  [2, 3],
  [4, 1],
  [1, 4],
  [5, 1],
  [6, 1],
  [1, 6],
  [2, 2],
];

function pick<T>(rng: Rng, xs: readonly T[]): T {
  return xs[rng.int(xs.length)];
}

function uniform(rng: Rng, lo: number, hi: number): number {
  return lo + (hi - lo) * rng.next();
}

function jitterColour(rng: Rng, c: Rgb, by: number): Rgb {
  return c.map((v) => Math.max(0, Math.min(255, v + rng.int(2 * by + 1) - by))) as Rgb;
}

/** An image size whose tile grid varies from 1 to maxDynamicPatch tiles. */
function imageSize(rng: Rng, tile: number, scale = 1): [number, number] {
  const [a, b] = pick(rng, ASPECTS);
  const s = tile * uniform(rng, 0.7, 1.3) * scale;
  const w = Math.max(Math.round(tile / 2), Math.round(a * s * uniform(rng, 0.92, 1.08)));
  const h = Math.max(Math.round(tile / 2), Math.round(b * s * uniform(rng, 0.92, 1.08)));
  return [w, h];
}

function background(rng: Rng): Rgb {
  const g = 235 + rng.int(16);
  return [g, g, g];
}

/** n non-overlapping boxes: cells of a grid shaped like the image, n of them chosen at random. */
function boxes(
  rng: Rng,
  w: number,
  h: number,
  n: number,
  fill = 0.7,
): [number, number, number, number][] {
  let cols = 1;
  let rows = 1;
  while (cols * rows < n) {
    if (w / cols >= h / rows) cols++;
    else rows++;
  }
  const cells = Array.from({ length: cols * rows }, (_, i) => i);
  for (let i = cells.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [cells[i], cells[j]] = [cells[j], cells[i]];
  }
  const cw = w / cols;
  const ch = h / rows;
  return cells.slice(0, n).map((c) => {
    const side = Math.max(4, Math.floor(Math.min(cw, ch) * uniform(rng, fill * 0.75, fill)));
    const cx = (c % cols) * cw + (cw - side) * rng.next();
    const cy = Math.floor(c / cols) * ch + (ch - side) * rng.next();
    const x0 = Math.floor(cx);
    const y0 = Math.floor(cy);
    return [x0, y0, x0 + side - 1, y0 + side - 1];
  });
}

function plural(shape: ShapeKind): string {
  return `${shape}s`;
}

/** Generate one split (train or eval) of every question type. */
export function generateSplit(o: GenerateOptions): GeneratedSplit {
  const scenes: Scene[] = [];
  const records = {} as Record<QuestionType, DemoRecord[]>;
  const tile = o.tileSize;
  // One stream per type, so changing one type's count leaves the others' records unchanged.
  const stream = (t: QuestionType) =>
    new Rng(o.seed, QUESTION_TYPES.indexOf(t), o.prefix.length, hashString(o.prefix));

  const single = (
    type: QuestionType,
    i: number,
    scene: Omit<Scene, "path">,
    question: string,
    answer: string,
  ): DemoRecord => {
    const path = `${o.prefix}${type}/${String(i).padStart(5, "0")}.png`;
    scenes.push({ path, ...scene });
    return {
      id: `${o.prefix}${type}-${i}`,
      type,
      image: path,
      image_wh: [scene.size],
      conversations: [
        { from: "human", value: `<image>\n${question} ${ONE_WORD}` },
        { from: "gpt", value: answer },
      ],
    };
  };

  {
    const rng = stream("colour");
    records.colour = Array.from({ length: o.counts.colour }, (_, i) => {
      const [w, h] = imageSize(rng, tile);
      const shape = pick(rng, SHAPES);
      const colour = pick(rng, COLOUR_NAMES);
      const [box] = boxes(rng, w, h, 1, 0.85);
      const scene = {
        size: [w, h] as [number, number],
        background: background(rng),
        shapes: [{ shape, fill: jitterColour(rng, COLOURS[colour], 12), box }],
        texts: [],
      };
      return single("colour", i, scene, `What colour is the ${shape}?`, colour);
    });
  }
  {
    const rng = stream("count");
    records.count = Array.from({ length: o.counts.count }, (_, i) => {
      const [w, h] = imageSize(rng, tile, 1.2);
      const shape = pick(rng, SHAPES);
      const fill = COLOURS[pick(rng, COLOUR_NAMES)];
      const n = 1 + rng.int(MAX_COUNT);
      const shapes = boxes(rng, w, h, n).map((box) => ({ shape, fill, box }));
      return single(
        "count",
        i,
        { size: [w, h], background: background(rng), shapes, texts: [] },
        `How many ${plural(shape)} are there?`,
        String(n),
      );
    });
  }
  {
    const rng = stream("word");
    records.word = Array.from({ length: o.counts.word }, (_, i) => {
      // Words need room: at least two tiles wide.
      let [w, h] = imageSize(rng, tile, 1.2);
      w = Math.max(w, 2 * tile);
      h = Math.max(h, Math.round(tile * 0.6));
      const word = pick(rng, WORDS);
      // The default font is about 0.6 × size wide per letter.
      const size = Math.max(
        10,
        Math.min(Math.floor(h * 0.6), Math.floor((w * 0.8) / (0.6 * word.length))),
      );
      const tw = Math.ceil(0.6 * size * word.length);
      const xy: [number, number] = [rng.int(Math.max(1, w - tw)), rng.int(Math.max(1, h - size))];
      const texts = [{ text: word, xy, size, fill: [20, 20, 20] as Rgb }];
      return single(
        "word",
        i,
        { size: [w, h], background: background(rng), shapes: [], texts },
        "Which word is written in the image?",
        word,
      );
    });
  }
  {
    const rng = stream("compare");
    records.compare = Array.from({ length: o.counts.compare }, (_, i) => {
      const a = 1 + rng.int(MAX_COUNT);
      let b = 1 + rng.int(MAX_COUNT - 1);
      if (b >= a) b++;
      const paths: string[] = [];
      const whs: [number, number][] = [];
      for (const [k, n] of [a, b].entries()) {
        const [w, h] = imageSize(rng, tile, 1.2);
        const fill = COLOURS[pick(rng, COLOUR_NAMES)];
        const path = `${o.prefix}compare/${String(i).padStart(5, "0")}-${k + 1}.png`;
        scenes.push({
          path,
          size: [w, h],
          background: background(rng),
          shapes: boxes(rng, w, h, n).map((box) => ({ shape: "circle" as const, fill, box })),
          texts: [],
        });
        paths.push(path);
        whs.push([w, h]);
      }
      return {
        id: `${o.prefix}compare-${i}`,
        type: "compare",
        image: paths,
        image_wh: whs,
        conversations: [
          {
            from: "human",
            value: `Image-1: <image>\nImage-2: <image>\nWhich image has more circles? Answer first or second.`,
          },
          { from: "gpt", value: a > b ? "first" : "second" },
        ],
      };
    });
  }
  {
    const rng = stream("text");
    records.text = Array.from({ length: o.counts.text }, (_, i) => {
      const a = rng.int(10);
      const b = rng.int(10 - a);
      return {
        id: `${o.prefix}text-${i}`,
        type: "text",
        conversations: [
          { from: "human", value: `What is ${a} plus ${b}? Answer with one number.` },
          { from: "gpt", value: String(a + b) },
        ],
      };
    });
  }
  return { records, scenes };
}

/** The tiles each image of a record gets (the planner's rule), for the generator's statistics. */
export function recordTiles(
  r: DemoRecord,
  o: Pick<GenerateOptions, "tileSize" | "maxDynamicPatch" | "useThumbnail">,
): number[] {
  const whs = r.image_wh ?? [];
  const maxNum = perImageMaxNum(o.maxDynamicPatch, whs.length);
  return whs.map(
    ([w, h]) =>
      planTiles(w, h, {
        minNum: 1,
        maxNum,
        tileSize: o.tileSize,
        useThumbnail: o.useThumbnail ?? true,
      }).tiles,
  );
}

/** The answer a record expects: its last assistant turn. */
export function answerOf(r: { conversations: { from: string; value: string }[] }): string {
  for (let i = r.conversations.length - 1; i >= 0; i--)
    if (r.conversations[i].from === "gpt") return r.conversations[i].value;
  return "";
}

function hashString(s: string): number {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return h >>> 0;
}
