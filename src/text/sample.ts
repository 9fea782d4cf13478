/**
 * Record → training sample: token ids, loss labels, image tile plans and where each image's
 * context tokens sit. This is the only place lengths come from.
 *
 * The text is assembled from pieces (role tokens, text, image blocks), so every label comes
 * from the span of the piece it belongs to, never from re-tokenized substrings. Text between
 * two special tokens is encoded as one unit, exactly as tokenizing the whole conversation
 * would split it.
 */
import { join } from "node:path";
import { type DataRecord, normalizePlaceholders, type Turn } from "../data/record.ts";
import { UserError } from "../util/errors.ts";
import { perImageMaxNum, planTiles, SINGLE_TILE, type TileGrid } from "../vision/tiling.ts";
import type { ModelInfo } from "./model-info.ts";
import { pyStrip } from "./pystrip.ts";
import { type ChatTemplate, getTemplate } from "./templates.ts";
import {
  type AddedTokenFlags,
  IMG_CONTEXT,
  IMG_END,
  IMG_START,
  type TextTokenizer,
} from "./tokenizer.ts";
import {
  FLAG_MULTIMODAL,
  FLAG_TRUNCATED,
  IGNORE_INDEX,
  type ImagePlan,
  type Sample,
  type SampleColumns,
} from "./types.ts";

export type TruncationPolicy = "turns" | "cut" | "drop";

export interface SampleContextOptions {
  tokenizer: TextTokenizer;
  model: ModelInfo;
  /** Template name; the model's `template` by default. */
  template?: string | ChatTemplate;
  /** Longest sample in tokens; no limit when absent. */
  maxLength?: number;
  /**
   * What to do with a longer sample: "turns" (default) drops whole rounds from the end and
   * drops the sample when its first round alone is too long; "cut" also cuts the first round at
   * max_length, moving the cut before any image it would split; "drop" drops the sample.
   */
  truncation?: TruncationPolicy;
  /** Absolute path of an image (or video) as written in the record; default: join with mediaRoot. */
  resolvePath?: (path: string) => string;
  mediaRoot?: string;
  /** Frames of a video record, decided by the planner (a number, or per record). */
  videoFrames?: number | ((record: DataRecord) => number);
}

/** A template part: a special token (with its one-id array, shared by every record) or text. */
type Piece = { tok: number; ids: readonly number[] } | { text: string };

interface Prepared {
  tokenizer: TextTokenizer;
  model: ModelInfo;
  template: ChatTemplate;
  maxLength: number;
  truncation: TruncationPolicy;
  resolvePath: (p: string) => string;
  videoFrames?: number | ((record: DataRecord) => number);
  bos: number | null;
  /** [bos], shared by every record; null without BOS. */
  bosIds: readonly number[] | null;
  system: Piece[];
  user: Piece[];
  assistant: Piece[];
  end: number[];
  after: string;
  never: Set<number>;
  imgStart: number | null;
  imgEnd: number | null;
  imgContext: number | null;
  /** Tokens that strip whitespace beside them (lstrip/rstrip), null when none do. */
  stripping: Stripping | null;
  /** One `▁` before the whole text (`legacy: false`), unless it starts with one of specialIds. */
  prefixFirst: boolean;
  specialIds: ReadonlySet<number>;
}

export interface SampleContext extends Prepared {
  readonly __prepared: true;
}

const ROLE_TOKEN = /(<\|[A-Za-z0-9_]+\|>)/;

/** Split a template string into its special tokens and the text between them. */
function pieces(s: string, tk: TextTokenizer, template: string): Piece[] {
  const out: Piece[] = [];
  for (const part of s.split(ROLE_TOKEN)) {
    if (!part) continue;
    if (ROLE_TOKEN.test(part)) {
      const id = tk.tokenId(part);
      if (id === undefined)
        throw new UserError(
          `${tk.dir}: template ${template} needs the token ${part}, which the tokenizer does not have`,
        );
      if (tk.flags.get(id)?.singleWord)
        throw new UserError(
          `${tk.dir}: tokenizer_config.json marks ${part} single_word, which template ${template} cannot honour (a role token glued to the text around it)`,
        );
      out.push({ tok: id, ids: [id] });
    } else out.push({ text: part });
  }
  return out;
}

/** Everything recordToSample needs, prepared once per run. */
export function makeSampleContext(opts: SampleContextOptions): SampleContext {
  const tk = opts.tokenizer;
  const template =
    typeof opts.template === "object"
      ? opts.template
      : getTemplate(opts.template ?? opts.model.template);
  let end: number[];
  if (template.turnEnd === "<eos>") {
    if (tk.eosId === null)
      throw new UserError(
        `${tk.dir}: template ${template.name} needs an EOS token; the tokenizer has none`,
      );
    end = [tk.eosId];
  } else end = pieces(template.turnEnd, tk, template.name).map((p) => ("tok" in p ? p.tok : -1));
  if (end.some((e) => e < 0))
    throw new UserError(`template ${template.name}: its turn end must be special tokens`);
  const mediaRoot = opts.mediaRoot ?? "";
  return {
    __prepared: true,
    tokenizer: tk,
    model: opts.model,
    template,
    maxLength: opts.maxLength ?? Number.POSITIVE_INFINITY,
    truncation: opts.truncation ?? "turns",
    resolvePath: opts.resolvePath ?? ((p) => join(mediaRoot, p)),
    videoFrames: opts.videoFrames,
    bos: tk.addBos ? tk.bosId : null,
    bosIds: tk.addBos && tk.bosId !== null ? [tk.bosId] : null,
    system: pieces(template.systemPrefix, tk, template.name),
    user: pieces(template.userPrefix, tk, template.name),
    assistant: pieces(template.assistantPrefix, tk, template.name),
    end,
    after: template.afterTurnEnd,
    never: new Set(
      template.neverLearned.map((t) => tk.tokenId(t)).filter((x): x is number => x !== undefined),
    ),
    imgStart: tk.tokenId(IMG_START) ?? null,
    imgEnd: tk.tokenId(IMG_END) ?? null,
    imgContext: tk.tokenId(IMG_CONTEXT) ?? null,
    stripping: [...tk.flags.values()].some((f) => f.lstrip || f.rstrip)
      ? { flags: tk.flags, isSpace: tk.isStripSpace }
      : null,
    prefixFirst: tk.prefixFirst,
    specialIds: new Set(
      [...tk.allSpecial].map((t) => tk.tokenId(t)).filter((x): x is number => x !== undefined),
    ),
  };
}

// ---------------------------------------------------------------------------------------------

/** One run of the assembled sequence. */
type Item =
  | { k: "ids"; ids: readonly number[]; learn: boolean; round: number }
  /** Text encoded as one unit; tokens after `prefix` (a text that starts it) are `learn`. */
  | {
      k: "text";
      prefix: string;
      text: string;
      learn: boolean;
      round: number;
      /** Only template text and the system message: recurs in every record. */
      fixed: boolean;
      prefixFixed: boolean;
    }
  | { k: "image"; index: number; round: number };

interface Plan {
  items: Item[];
  images: ImagePlan[];
  /** Number of rounds (user turn + answer). */
  rounds: number;
}

const IMAGE = "<image>";

function countImage(s: string): number {
  let n = 0;
  for (let i = s.indexOf(IMAGE); i !== -1; i = s.indexOf(IMAGE, i + IMAGE.length)) n++;
  return n;
}

function recordName(r: DataRecord): string {
  return r.id !== undefined ? `record ${JSON.stringify(r.id)}` : "record";
}

/** Collects items; adjacent texts merge into one unit (they are one segment for the tokenizer). */
type TextItem = Extract<Item, { k: "text" }>;

/** Whitespace a token strips beside it, as the tokenizer would strip it in the whole text. */
interface Stripping {
  flags: ReadonlyMap<number, AddedTokenFlags>;
  isSpace: (code: number) => boolean;
}

function lstripWith(s: string, isSpace: (c: number) => boolean): string {
  let i = 0;
  while (i < s.length && isSpace(s.charCodeAt(i))) i++;
  return i ? s.slice(i) : s;
}

function rstripWith(s: string, isSpace: (c: number) => boolean): string {
  let j = s.length;
  while (j > 0 && isSpace(s.charCodeAt(j - 1))) j--;
  return j < s.length ? s.slice(0, j) : s;
}

class ItemBuilder {
  items: Item[] = [];
  private pending: TextItem | null = null;
  private imageIndex = 0;
  /** The last token strips whitespace on its right (`rstrip`): from the text that follows it. */
  private stripNext = false;

  constructor(private readonly strip: Stripping | null = null) {}

  flush(): void {
    const p = this.pending;
    if (p && (p.prefix || p.text)) this.items.push(p);
    this.pending = null;
  }

  /** Around a token: its `lstrip` strips the text before it, its `rstrip` the text after it. */
  private beside(first: number, last: number): void {
    this.stripNext = false;
    const st = this.strip;
    if (!st) {
      this.flush();
      return;
    }
    const p = this.pending;
    if (p && st.flags.get(first)?.lstrip) {
      p.text = rstripWith(p.text, st.isSpace);
      if (!p.text && p.learn) {
        // The learned text was all whitespace: what is left is the unlearned prefix.
        p.text = rstripWith(p.prefix, st.isSpace);
        p.prefix = "";
        p.learn = false;
        p.fixed = p.prefixFixed;
      }
    }
    this.flush();
    this.stripNext = st.flags.get(last)?.rstrip === true;
  }

  private lead(s: string): string {
    if (!this.stripNext || !s) return s;
    const t = lstripWith(s, (this.strip as Stripping).isSpace);
    if (t) this.stripNext = false;
    return t;
  }

  tok(ids: readonly number[], learn: boolean, round: number): void {
    this.beside(ids[0], ids[ids.length - 1]);
    this.items.push({ k: "ids", ids, learn, round });
  }

  /** An image block: `<img>`, its context tokens, `</img>`. */
  image(round: number, start: number, end: number): void {
    this.beside(start, end);
    this.items.push({ k: "image", index: this.imageIndex++, round });
  }

  /** Text not learned (template text, user text); `fixed` when it recurs in every record. */
  text(raw: string, round: number, fixed = false): void {
    const s = this.lead(raw);
    if (!s) return;
    const p = this.pending;
    if (p && !p.learn && p.round === round) {
      p.text += s;
      p.fixed &&= fixed;
    } else {
      this.flush();
      this.pending = {
        k: "text",
        prefix: "",
        text: s,
        learn: false,
        round,
        fixed,
        prefixFixed: false,
      };
    }
  }

  /** Learned text: continues the pending unlearned unit, whose text becomes its prefix. */
  learned(raw: string, round: number): void {
    const s = this.lead(raw);
    if (!s) return;
    const p = this.pending;
    if (p && !p.learn)
      this.pending = {
        k: "text",
        prefix: p.text,
        text: s,
        learn: true,
        round,
        fixed: false,
        prefixFixed: p.fixed,
      };
    else {
      this.flush();
      this.pending = {
        k: "text",
        prefix: "",
        text: s,
        learn: true,
        round,
        fixed: false,
        prefixFixed: false,
      };
    }
  }

  template(ps: Piece[], round: number): void {
    for (const p of ps)
      if ("tok" in p) this.tok(p.ids, false, round);
      else this.text(p.text, round, true);
  }

  /** User text with its `<image>` placeholders as image items. */
  userText(s: string, round: number, imgStart: number, imgEnd: number): void {
    let from = 0;
    for (let at = s.indexOf(IMAGE); at !== -1; at = s.indexOf(IMAGE, from)) {
      this.text(s.slice(from, at), round);
      this.image(round, imgStart, imgEnd);
      from = at + IMAGE.length;
    }
    this.text(s.slice(from), round);
  }
}

/** Turn the record into the ordered items of its sequence (no tokenization yet). */
function planRecord(record: DataRecord, ctx: Prepared, generation: boolean): Plan {
  const tpl = ctx.template;
  // The official placeholder rule (data/record.ts): `<image>\n` per image, or `<video>\n`,
  // before the first human turn when the record has none.
  let turns: Turn[] = normalizePlaceholders(record).conversations;
  let system = tpl.systemMessage;
  let start = 0;
  if (turns[0]?.from === "system") {
    system = turns[0].value;
    start = 1;
  }
  // The official code skips a first turn that is not the human's.
  while (start < turns.length && turns[start].from !== "human") start++;
  turns = turns.slice(start);
  // A conversation ending on a human turn has nothing to learn from it (except when prompting).
  if (!generation && turns.length % 2 === 1) turns = turns.slice(0, -1);
  if (generation && (turns.length === 0 || turns[turns.length - 1].from !== "human"))
    throw new UserError(`${recordName(record)}: a generation prompt must end with a human turn`);
  const values = turns.map((t) => t.value);

  // Images and their tile plans.
  const model = ctx.model;
  const images: ImagePlan[] = [];
  if (record.images.length > 0) {
    const n = record.images.length;
    const maxNum = perImageMaxNum(model.maxDynamicPatch, n);
    for (let i = 0; i < n; i++) {
      const wh = record.imageWh?.[i];
      if (!wh)
        throw new UserError(
          `${recordName(record)}: image ${i + 1} has no image_wh; run \`tessera data fill-wh\` to read sizes from the image headers`,
        );
      const grid: TileGrid = model.dynamicImageSize
        ? planTiles(wh[0], wh[1], {
            minNum: model.minDynamicPatch,
            maxNum,
            tileSize: model.tileSize,
            useThumbnail: model.useThumbnail,
          })
        : SINGLE_TILE;
      images.push({ path: ctx.resolvePath(record.images[i]), wh: [wh[0], wh[1]], ...grid });
    }
  } else if (record.video !== undefined) {
    const frames =
      typeof ctx.videoFrames === "function" ? ctx.videoFrames(record) : ctx.videoFrames;
    if (!frames || frames < 1)
      throw new UserError(`${recordName(record)}: a video record needs the planner's frame count`);
    const path = ctx.resolvePath(record.video);
    for (let f = 0; f < frames; f++) images.push({ path, wh: [0, 0], ...SINGLE_TILE, frame: f });
    // `<video>\n` becomes the frames, joined by "\n" with no newline after the last (as the official code).
    const tags = Array.from({ length: frames }, (_, i) => `Frame${i + 1}: ${IMAGE}`).join("\n");
    for (let i = 0; i < values.length; i += 2)
      if (values[i].includes("<video>"))
        values[i] = values[i].replaceAll("<video>\n", tags).replaceAll("<video>", tags);
  }
  const placeholders = values.reduce((s, v, i) => s + (i % 2 === 0 ? countImage(v) : 0), 0);
  if (placeholders !== images.length)
    throw new UserError(
      `${recordName(record)}: ${placeholders} <image> placeholders for ${images.length} images`,
    );
  if (images.length && (ctx.imgStart === null || ctx.imgEnd === null || ctx.imgContext === null))
    throw new UserError(
      `${ctx.tokenizer.dir}: the tokenizer lacks ${IMG_START}, ${IMG_END} or ${IMG_CONTEXT}`,
    );

  const b = new ItemBuilder(ctx.stripping);

  if (ctx.bosIds !== null) b.tok(ctx.bosIds, false, 0);
  // `legacy: false` (LlamaTokenizer): one `▁` before the whole text, unless it starts with a
  // token of the special-tokens map.
  if (ctx.prefixFirst) {
    const first = (system !== null && tpl.systemMessage !== null ? ctx.system : ctx.user)[0];
    if (!first || !("tok" in first) || !ctx.specialIds.has(first.tok)) b.text("\u2581", 0, true);
  }
  if (system !== null && tpl.systemMessage !== null) {
    b.template(ctx.system, 0);
    b.text(tpl.stripTurns ? pyStrip(system) : system, 0, true);
    b.tok(ctx.end, false, 0);
    b.text(ctx.after, 0, true);
  }
  const rounds = Math.ceil(values.length / 2);
  for (let r = 0; r < rounds; r++) {
    const q = tpl.stripTurns ? pyStrip(values[2 * r]) : values[2 * r];
    b.template(ctx.user, r);
    b.userText(q, r, ctx.imgStart ?? -1, ctx.imgEnd ?? -1);
    if (tpl.endUserTurns && (q || !tpl.emptyTurnsRoleOnly)) {
      b.tok(ctx.end, false, r);
      b.text(ctx.after, r, true);
    }
    b.template(ctx.assistant, r);
    if (2 * r + 1 >= values.length) break; // generation: the prompt ends with the assistant prefix
    const a = tpl.stripTurns ? pyStrip(values[2 * r + 1]) : values[2 * r + 1];
    if (!a && tpl.emptyTurnsRoleOnly) continue; // conversation.py writes only the role for an empty message
    b.learned(a, r);
    b.tok(ctx.end, true, r);
    b.text(ctx.after, r, true);
  }
  b.flush();
  return { items: b.items, images, rounds };
}

// ---------------------------------------------------------------------------------------------

/** The encoded text items of a batch of plans: one buffer, per-item ranges. */
interface Encoded {
  ids: Int32Array;
  /** Per text item (plans in order, items in order): where its ids start and how many. */
  start: Int32Array;
  len: Int32Array;
  /** How many leading ids are not learned (the prefix; all of them when not learned). */
  prefixLen: Int32Array;
  straddled: Uint8Array;
  /** Index of each plan's first text item. */
  first: Int32Array;
}

async function encodePlans(plans: Plan[], tk: TextTokenizer): Promise<Encoded> {
  const texts: string[] = [];
  const keep: boolean[] = [];
  const first = new Int32Array(plans.length);
  let items = 0;
  for (let p = 0; p < plans.length; p++) {
    first[p] = items;
    for (const it of plans[p].items)
      if (it.k === "text") {
        items++;
        texts.push(it.prefix + it.text);
        keep.push(it.fixed);
        if (it.prefix) {
          texts.push(it.prefix);
          keep.push(it.prefixFixed);
        }
      }
  }
  const { ids, offsets } = await tk.encodeFlat(texts, keep);
  const start = new Int32Array(items);
  const len = new Int32Array(items);
  const prefixLen = new Int32Array(items);
  const straddled = new Uint8Array(items);
  let j = 0;
  let t = 0;
  const fixes: Promise<void>[] = [];
  for (const p of plans)
    for (const it of p.items) {
      if (it.k !== "text") continue;
      const from = offsets[j];
      const n = offsets[j + 1] - from;
      j++;
      start[t] = from;
      len[t] = n;
      if (!it.prefix) {
        prefixLen[t++] = it.learn ? 0 : n;
        continue;
      }
      const preFrom = offsets[j];
      const preLen = offsets[j + 1] - preFrom;
      j++;
      prefixLen[t] = preLen;
      let same = 0;
      const m = Math.min(n, preLen);
      while (same < m && ids[from + same] === ids[preFrom + same]) same++;
      if (same !== preLen) {
        // A token spans the end of the prefix: learn exactly the tokens that start in the answer.
        straddled[t] = 1;
        const cut = [...it.prefix].length;
        const at = t;
        fixes.push(
          tk.encodeWithStarts(it.prefix + it.text).then(({ starts }) => {
            let k = 0;
            while (k < starts.length && starts[k] < cut) k++;
            prefixLen[at] = k;
          }),
        );
      }
      t++;
    }
  await Promise.all(fixes);
  return { ids, start, len, prefixLen, straddled, first };
}

interface Layout {
  /** Token count of each item. */
  lens: number[];
  /** Items kept (a prefix of plan.items). */
  keepItems: number;
  /** Final length (before a cut moved before an image). */
  len: number;
  /** Untruncated length. */
  total: number;
  droppedTurns: number;
  cut: boolean;
}

/** Where the sample ends under max_length and the truncation policy; null: dropped. */
function layout(plan: Plan, enc: Encoded, p: number, ctx: Prepared): Layout | null {
  const tpt = ctx.model.tokensPerTile;
  const items = plan.items;
  const lens: number[] = new Array(items.length);
  let t = enc.first[p];
  let total = 0;
  for (let i = 0; i < items.length; i++) {
    const it = items[i];
    const n =
      it.k === "ids"
        ? it.ids.length
        : it.k === "text"
          ? enc.len[t++]
          : plan.images[it.index].tiles * tpt + 2;
    lens[i] = n;
    total += n;
  }
  if (total <= ctx.maxLength)
    return { lens, keepItems: items.length, len: total, total, droppedTurns: 0, cut: false };
  if (ctx.truncation === "drop") return null;
  // Keep the most whole rounds that fit.
  const roundEnd: number[] = [];
  for (let i = 0; i < items.length; i++) roundEnd[items[i].round] = i + 1;
  let kept = 0;
  let acc = 0;
  let i = 0;
  for (let r = 0; r < plan.rounds; r++) {
    const endIdx = roundEnd[r] ?? i;
    let len = acc;
    for (let k = i; k < endIdx; k++) len += lens[k];
    if (len > ctx.maxLength) break;
    acc = len;
    i = endIdx;
    kept = r + 1;
  }
  if (kept > 0)
    return {
      lens,
      keepItems: roundEnd[kept - 1],
      len: acc,
      total,
      droppedTurns: 2 * (plan.rounds - kept),
      cut: false,
    };
  if (ctx.truncation !== "cut") return null;
  // Cut the first round at max_length, never inside an image block: move the cut before it.
  const keepItems = roundEnd[0] ?? items.length;
  let cutAt = ctx.maxLength;
  let pos = 0;
  for (let k = 0; k < keepItems && pos < cutAt; k++) {
    if (items[k].k === "image" && pos + lens[k] > cutAt) {
      cutAt = pos;
      break;
    }
    pos += lens[k];
  }
  return { lens, keepItems, len: cutAt, total, droppedTurns: 2 * (plan.rounds - 1), cut: true };
}

/** What writeTokens reports; one object reused for every record (no garbage per sample). */
interface Written {
  learned: number;
  straddles: number;
  /** Images written (the first `images` of plan.images: a cut never keeps a later one). */
  images: number;
  /** Values written to ids and labels (the sample's length, less the context runs left out). */
  stored: number;
}

/**
 * Write one sample's ids and labels from `ids[at]` on (labels likewise), and each image's
 * first context position in the sample at `starts[startsAt ..]`. With `omitContext` each
 * image's run of `<IMG_CONTEXT>` ids (and their −100 labels) is left out: the stored form of
 * the cache, where the runs follow from the image rows. The one place sample tokens are
 * written: the Sample path and the column path both come here.
 */
function writeTokens(
  plan: Plan,
  enc: Encoded,
  p: number,
  ctx: Prepared,
  lay: Layout,
  ids: Int32Array,
  labels: Int32Array,
  at: number,
  starts: Int32Array,
  startsAt: number,
  omitContext: boolean,
  out: Written,
): void {
  const tpt = ctx.model.tokensPerTile;
  const never = ctx.never.size ? ctx.never : null;
  const len = lay.len;
  let pos = 0; // position in the sample
  let w = at; // where the next value is written
  let learned = 0;
  let straddles = 0;
  let images = 0;
  let t = enc.first[p];
  const encIds = enc.ids;
  for (let i = 0; i < lay.keepItems && pos < len; i++) {
    const it = plan.items[i];
    if (it.k === "image") {
      const n = plan.images[it.index].tiles * tpt;
      starts[startsAt + images++] = pos + 1;
      ids[w] = ctx.imgStart as number;
      labels[w++] = IGNORE_INDEX;
      if (!omitContext) {
        ids.fill(ctx.imgContext as number, w, w + n);
        labels.fill(IGNORE_INDEX, w, w + n);
        w += n;
      }
      ids[w] = ctx.imgEnd as number;
      labels[w++] = IGNORE_INDEX;
      pos += n + 2;
      continue;
    }
    let src: ArrayLike<number>;
    let base: number;
    let count: number;
    let from: number;
    if (it.k === "ids") {
      src = it.ids;
      base = 0;
      count = src.length;
      from = it.learn ? 0 : count;
    } else {
      if (enc.straddled[t]) straddles++;
      src = encIds;
      base = enc.start[t];
      count = enc.len[t];
      from = it.learn ? enc.prefixLen[t] : count;
      t++;
    }
    const n = Math.min(count, len - pos);
    if (from >= n) {
      // Nothing learned in this run (most runs): bulk writes.
      if (src === encIds) ids.set(encIds.subarray(base, base + n), w);
      else for (let k = 0; k < n; k++) ids[w + k] = src[k];
      labels.fill(IGNORE_INDEX, w, w + n);
    } else
      for (let k = 0; k < n; k++) {
        const id = src[base + k];
        ids[w + k] = id;
        if (k >= from && !never?.has(id)) {
          labels[w + k] = id;
          learned++;
        } else labels[w + k] = IGNORE_INDEX;
      }
    w += n;
    pos += n;
  }
  out.learned = learned;
  out.straddles = straddles;
  out.images = images;
  out.stored = w - at;
}

/** Context tokens a sample's kept images hold (what the stored form leaves out). */
function contextTokens(plan: Plan, lay: Layout, ctx: Prepared): number {
  const tpt = ctx.model.tokensPerTile;
  let pos = 0;
  let n = 0;
  for (let i = 0; i < lay.keepItems && pos < lay.len; i++) {
    const it = plan.items[i];
    if (it.k === "image") n += plan.images[it.index].tiles * tpt;
    pos += lay.lens[i];
  }
  return n;
}

/** The sample fits but learns nothing because it was cut: dropped like one too long. */
const learnsNothing = (w: Written, lay: Layout, ctx: Prepared) =>
  w.learned === 0 && lay.total > ctx.maxLength;

/** A Sample object over the given (fresh or reused) views of length lay.len; null: dropped. */
function fill(
  record: DataRecord,
  plan: Plan,
  enc: Encoded,
  p: number,
  ctx: Prepared,
  lay: Layout,
  inputIds: Int32Array,
  labels: Int32Array,
): Sample | null {
  const starts = new Int32Array(plan.images.length);
  const w: Written = { learned: 0, straddles: 0, images: 0, stored: 0 };
  writeTokens(plan, enc, p, ctx, lay, inputIds, labels, 0, starts, 0, false, w);
  if (learnsNothing(w, lay, ctx)) return null;
  const sample: Sample = {
    inputIds,
    labels,
    images: plan.images.slice(0, w.images),
    contextStarts: w.images === starts.length ? starts : starts.slice(0, w.images),
    length: lay.len,
    learned: w.learned,
    multimodal: isMultimodal(record),
  };
  if (lay.total !== lay.len)
    sample.truncated = {
      droppedTurns: lay.droppedTurns,
      originalLength: lay.total,
      ...(lay.cut ? { cut: true } : {}),
    };
  if (w.straddles) sample.boundaryTokens = w.straddles;
  return sample;
}

const isMultimodal = (r: DataRecord) => r.images.length > 0 || r.video !== undefined;

/**
 * The training sample of one record, or null when it does not fit max_length under the
 * truncation policy. Throws UserError for records that cannot be planned (placeholder count,
 * missing image_wh, missing video frame count).
 */
export async function recordToSample(
  record: DataRecord,
  ctx: SampleContext,
): Promise<Sample | null> {
  return (await recordsToSamples([record], ctx))[0];
}

/**
 * Records planned, tokenized and written together. Small enough that the per-record objects
 * of a chunk die young (a whole batch of them would outlive the young generation), large
 * enough that the tokenizer call and the buffer are shared by many records.
 */
const CHUNK = 256;

/** Plans, encoded text and layouts of records[from, to) (null layout: dropped). */
async function planChunk(
  records: readonly DataRecord[],
  from: number,
  to: number,
  ctx: SampleContext,
): Promise<{ plans: Plan[]; enc: Encoded; lays: (Layout | null)[]; tokens: number }> {
  const n = to - from;
  const plans: Plan[] = new Array(n);
  for (let i = 0; i < n; i++) plans[i] = planRecord(records[from + i], ctx, false);
  const enc = await encodePlans(plans, ctx.tokenizer);
  const lays: (Layout | null)[] = new Array(n);
  let tokens = 0;
  for (let i = 0; i < n; i++) {
    const l = layout(plans[i], enc, i, ctx);
    lays[i] = l;
    if (l) tokens += l.len;
  }
  return { plans, enc, lays, tokens };
}

/**
 * recordToSample for many records, tokenized in one go. The samples' arrays are views of one
 * buffer per 256 records.
 */
export async function recordsToSamples(
  records: readonly DataRecord[],
  ctx: SampleContext,
): Promise<(Sample | null)[]> {
  const out: (Sample | null)[] = new Array(records.length);
  for (let from = 0; from < records.length; from += CHUNK) {
    const to = Math.min(records.length, from + CHUNK);
    const { plans, enc, lays, tokens } = await planChunk(records, from, to, ctx);
    const ids = new Int32Array(tokens);
    const labels = new Int32Array(tokens);
    let off = 0;
    for (let i = 0; i < to - from; i++) {
      const l = lays[i];
      out[from + i] = l
        ? fill(
            records[from + i],
            plans[i],
            enc,
            i,
            ctx,
            l,
            ids.subarray(off, off + l.len),
            labels.subarray(off, off + l.len),
          )
        : null;
      if (l) off += l.len;
    }
  }
  return out;
}

/**
 * recordsToSamples straight into flat columns in the cache's stored form (each image's
 * `<IMG_CONTEXT>` run left out; docs/cache-format.md): no object per sample, no copy. All
 * records are one chunk, so callers pass batches of a few hundred.
 */
export async function recordsToColumns(
  records: readonly DataRecord[],
  ctx: SampleContext,
): Promise<SampleColumns> {
  const n = records.length;
  const { plans, enc, lays, tokens } = await planChunk(records, 0, n, ctx);
  let imageBound = 0;
  let storedBound = tokens;
  for (let i = 0; i < n; i++) {
    const lay = lays[i];
    if (!lay) continue;
    imageBound += plans[i].images.length;
    storedBound -= contextTokens(plans[i], lay, ctx);
  }
  const source = new Int32Array(n);
  const length = new Int32Array(n);
  const learned = new Int32Array(n);
  const flags = new Uint8Array(n);
  const imgCount = new Int32Array(n);
  const stored = new Int32Array(n);
  const inputIds = new Int32Array(storedBound);
  const labels = new Int32Array(storedBound);
  const imgW = new Int32Array(imageBound);
  const imgH = new Int32Array(imageBound);
  const imgCols = new Int32Array(imageBound);
  const imgRows = new Int32Array(imageBound);
  const imgTiles = new Int32Array(imageBound);
  const imgThumb = new Uint8Array(imageBound);
  const imgFrame = new Int32Array(imageBound);
  const imgContext = new Int32Array(imageBound);
  const imgPaths: string[] = [];
  const w: Written = { learned: 0, straddles: 0, images: 0, stored: 0 };
  let count = 0;
  let off = 0;
  let img = 0;
  let dropped = 0;
  let truncated = 0;
  let boundaryTokens = 0;
  for (let i = 0; i < n; i++) {
    const lay = lays[i];
    if (!lay) {
      dropped++;
      continue;
    }
    const plan = plans[i];
    writeTokens(plan, enc, i, ctx, lay, inputIds, labels, off, imgContext, img, true, w);
    if (learnsNothing(w, lay, ctx)) {
      dropped++; // its tokens are overwritten by the next sample
      continue;
    }
    const cut = lay.total !== lay.len;
    source[count] = i;
    length[count] = lay.len;
    learned[count] = w.learned;
    flags[count] = (isMultimodal(records[i]) ? FLAG_MULTIMODAL : 0) | (cut ? FLAG_TRUNCATED : 0);
    imgCount[count] = w.images;
    stored[count] = w.stored;
    for (let k = 0; k < w.images; k++) {
      const im = plan.images[k];
      imgW[img] = im.wh[0];
      imgH[img] = im.wh[1];
      imgCols[img] = im.cols;
      imgRows[img] = im.rows;
      imgTiles[img] = im.tiles;
      imgThumb[img] = im.thumbnail ? 1 : 0;
      imgFrame[img] = im.frame ?? -1;
      imgPaths.push(im.path);
      img++;
    }
    if (cut) truncated++;
    boundaryTokens += w.straddles;
    off += w.stored;
    count++;
  }
  // Trimmed views only when something was dropped after layout (rare): no copies.
  const trim = <T extends Int32Array | Uint8Array>(a: T, k: number): T =>
    (a.length === k ? a : a.subarray(0, k)) as T;
  return {
    count,
    source: trim(source, count),
    length: trim(length, count),
    learned: trim(learned, count),
    flags: trim(flags, count),
    imgCount: trim(imgCount, count),
    stored: trim(stored, count),
    inputIds: trim(inputIds, off),
    labels: trim(labels, off),
    imgW: trim(imgW, img),
    imgH: trim(imgH, img),
    imgCols: trim(imgCols, img),
    imgRows: trim(imgRows, img),
    imgTiles: trim(imgTiles, img),
    imgThumb: trim(imgThumb, img),
    imgFrame: trim(imgFrame, img),
    imgContext: trim(imgContext, img),
    imgPaths,
    imgContextId: ctx.imgContext ?? -1,
    dropped,
    truncated,
    boundaryTokens,
  };
}

export interface GenerationPrompt {
  /** Ids up to and including the assistant prefix. */
  inputIds: Int32Array;
  images: ImagePlan[];
  contextStarts: Int32Array;
}

/**
 * The prompt for generation (eval, chat): a conversation that ends with a human turn, encoded
 * exactly as in training, up to and including the assistant's prefix.
 */
export async function buildGenerationPrompt(
  record: DataRecord,
  ctx: SampleContext,
): Promise<GenerationPrompt> {
  const plan = planRecord(record, ctx, true);
  const enc = await encodePlans([plan], ctx.tokenizer);
  const noLimit = { ...ctx, maxLength: Number.POSITIVE_INFINITY };
  const lay = layout(plan, enc, 0, noLimit) as Layout;
  const s = fill(
    record,
    plan,
    enc,
    0,
    noLimit,
    lay,
    new Int32Array(lay.len),
    new Int32Array(lay.len),
  ) as Sample;
  return { inputIds: s.inputIds, images: s.images, contextStarts: s.contextStarts };
}
