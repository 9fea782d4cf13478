/** One sample rendered for people: special tokens visible, image tokens collapsed, learned spans marked. */
import { pairConversations } from "../data/pairs.ts";
import type { DataRecord } from "../data/record.ts";
import { describeGrid } from "../vision/tiling.ts";
import type { ModelInfo } from "./model-info.ts";
import { recordToSample, type SampleContext } from "./sample.ts";
import { IMG_CONTEXT, type TextTokenizer } from "./tokenizer.ts";
import { IGNORE_INDEX, type Sample } from "./types.ts";

export interface PreviewStyle {
  /** ANSI colours (a TTY); otherwise learned spans are wrapped in «…». */
  color: boolean;
}

const GREEN = "\x1b[32m";
const CYAN = "\x1b[36m";
const DIM = "\x1b[2m";
const RESET = "\x1b[0m";

export interface PreviewContext {
  ctx: SampleContext;
  model: ModelInfo;
  tokenizer: TextTokenizer;
}

/** The text of a sample with image blocks collapsed, as segments marked learned or not. */
export async function previewSegments(sample: Sample, tk: TextTokenizer, model: ModelInfo) {
  const segs: { text: string; learned: boolean; image?: boolean }[] = [];
  const ids = sample.inputIds;
  const labels = sample.labels;
  let i = 0;
  let img = 0;
  while (i < ids.length) {
    if (img < sample.contextStarts.length && i === sample.contextStarts[img] - 1) {
      const plan = sample.images[img];
      const n = plan.tiles * model.tokensPerTile;
      const what =
        plan.frame !== undefined
          ? `frame ${plan.frame + 1}`
          : `${plan.tiles} tile${plan.tiles === 1 ? "" : "s"}: ${describeGrid(plan)}`;
      segs.push({
        text: `${tk.idToToken(ids[i])}${IMG_CONTEXT}×${n} (${what})${tk.idToToken(ids[i + n + 1])}`,
        learned: false,
        image: true,
      });
      i += n + 2;
      img++;
      continue;
    }
    const learned = labels[i] !== IGNORE_INDEX;
    let j = i;
    const stop = img < sample.contextStarts.length ? sample.contextStarts[img] - 1 : ids.length;
    while (j < stop && (labels[j] !== IGNORE_INDEX) === learned) j++;
    segs.push({ text: await tk.decode(ids.subarray(i, j), false), learned });
    i = j;
  }
  return segs;
}

/** The two sides of a preference record, each a record of its own (chosen first). */
function pairSides(record: DataRecord): [DataRecord, DataRecord] {
  const [c, r] = pairConversations(record);
  return [
    { ...c, pair: undefined },
    { ...r, pair: undefined },
  ];
}

/**
 * The preview as data (`data preview --json`, the explorer): the sample and its segments; for a
 * preference record the chosen side's, with the rejected side's under `rejected`.
 */
export async function previewData(record: DataRecord, pc: PreviewContext) {
  if (record.pair) {
    const [c, r] = pairSides(record);
    const chosen = await previewSide(c, pc);
    const rejected = await previewSide(r, pc);
    if ("dropped" in chosen) return chosen;
    if ("dropped" in rejected) return rejected;
    const { sample: _, inputIds: __, labels: ___, ...side } = rejected;
    return { ...chosen, rejected: side };
  }
  return previewSide(record, pc);
}

async function previewSide(record: DataRecord, pc: PreviewContext) {
  const sample = await recordToSample(record, pc.ctx);
  if (!sample)
    return {
      id: record.id ?? null,
      dropped: true as const,
      reason: `the record does not fit max_length ${pc.ctx.maxLength} (policy: ${pc.ctx.truncation})`,
    };
  const contextTokens = sample.images.reduce((a, im) => a + im.tiles * pc.model.tokensPerTile, 0);
  const segs = await previewSegments(sample, pc.tokenizer, pc.model);
  return {
    id: record.id ?? null,
    template: pc.ctx.template.name,
    tokensPerTile: pc.model.tokensPerTile,
    length: sample.length,
    imageContextTokens: contextTokens,
    learned: sample.learned,
    images: sample.images,
    contextStarts: Array.from(sample.contextStarts),
    truncated: sample.truncated ?? null,
    text: segs.map((s) => s.text).join(""),
    segments: segs,
    inputIds: Array.from(sample.inputIds),
    labels: Array.from(sample.labels),
    sample,
  };
}

export async function renderPreview(
  record: DataRecord,
  pc: PreviewContext,
  style: PreviewStyle | "json",
): Promise<string> {
  if (record.pair) {
    // Both answers, each with its learned span: the loss compares exactly these tokens.
    const [c, r] = pairSides(record);
    const a = await renderPreview(c, pc, style);
    const b = await renderPreview(r, pc, style);
    if (style === "json")
      return JSON.stringify(
        { id: record.id ?? null, pair: true, chosen: JSON.parse(a), rejected: JSON.parse(b) },
        null,
        2,
      );
    return `── chosen ──\n${a}\n\n── rejected ──\n${b}`;
  }
  const data = await previewData(record, pc);
  if ("dropped" in data) return style === "json" ? JSON.stringify(data) : `dropped: ${data.reason}`;
  const { sample, ...shown } = data;
  const contextTokens = data.imageContextTokens;
  const segs = data.segments;
  if (style === "json") return JSON.stringify(shown, null, 2);
  const body = segs
    .map((s) => {
      if (style.color)
        return s.image
          ? `${CYAN}${s.text}${RESET}`
          : s.learned
            ? `${GREEN}${s.text}${RESET}`
            : s.text;
      return s.learned ? `«${s.text}»` : s.text;
    })
    .join("");
  const tiles = sample.images.reduce((a, im) => a + im.tiles, 0);
  const lines = [
    body,
    "",
    `${style.color ? DIM : ""}template ${pc.ctx.template.name}, ${pc.model.tokensPerTile} tokens per tile${style.color ? RESET : ""}`,
    `total tokens ${sample.length}, image context tokens ${contextTokens} (${sample.images.length} image${sample.images.length === 1 ? "" : "s"}, ${tiles} tiles), learned tokens ${sample.learned}`,
  ];
  if (sample.truncated)
    lines.push(
      `truncated from ${sample.truncated.originalLength} tokens: ${sample.truncated.droppedTurns} turns dropped${sample.truncated.cut ? ", last round cut" : ""}`,
    );
  if (!style.color) lines.push("(learned spans are shown «like this»)");
  return lines.join("\n");
}
