/**
 * Samples of a batch of records, flattened into typed arrays in the cache's stored form (each
 * image's `<IMG_CONTEXT>` run left out) so a worker can hand them to the writer by transfer
 * (no per-sample objects cross threads).
 */
import { parseRecordLine } from "../data/jsonl.ts";
import type { DataRecord } from "../data/record.ts";
import { FLAG_MULTIMODAL, FLAG_TRUNCATED, type Sample, type SampleColumns } from "../text/types.ts";
import { IntVec } from "./arrays.ts";
import { expandPairs, keepWholePairs } from "./pair-batch.ts";

/**
 * A batch's samples as the writer takes them: SampleColumns (the stored form), with each
 * sample's annotation line instead of its index in the batch, and the records that failed.
 */
export interface SampleBatch extends Omit<SampleColumns, "source" | "boundaryTokens"> {
  seq: number;
  /** Per sample: its 1-based line in the annotation file. */
  line: Int32Array;
  /** Records that could not become samples: line and message. */
  errors: { line: number; message: string }[];
}

export { FLAG_MULTIMODAL, FLAG_TRUNCATED } from "../text/types.ts";

/**
 * What turns one record into a sample (null: dropped on purpose). `columns`, when present,
 * does many records at once with the same results, written straight into a batch's columns;
 * it may throw when any record fails, and those records are then made one by one so each
 * failure is reported on its own line.
 */
export type SampleMaker = ((
  record: DataRecord,
  line: number,
) => Sample | null | Promise<Sample | null>) & {
  columns?: (records: DataRecord[]) => Promise<SampleColumns>;
  /** Strings record text must not hold (the model's special tokens); default RESERVED_STRINGS. */
  reserved?: readonly string[];
};

export interface MakerOptions {
  model: string;
  maxLength: number;
  maxDynamicPatch?: number;
  /** Frames per video record of this dataset. */
  videoFrames?: number;
  template?: string;
  truncate?: "truncate" | "drop";
  dataset: {
    name: string;
    mediaRoot: string;
    annotation: string;
    metaPath: string;
    repeatTime: number;
    extra: Record<string, unknown>;
  };
}

/** A module that builds a SampleMaker: `export async function createSampleMaker(o: MakerOptions)`. */
export interface MakerModule {
  createSampleMaker(o: MakerOptions): Promise<SampleMaker> | SampleMaker;
}

/** Append a typed array to an IntVec in one copy. */
function append(v: IntVec, a: Int32Array): void {
  const end = v.length + a.length;
  if (end > v.data.length) v.grow(end);
  v.data.set(a, v.length);
  v.length = end;
}

/** Samples of the items; `tokensPerTile` is the planner's, which each image's run must match. */
export async function makeBatch(
  seq: number,
  items: { line: number; record: DataRecord }[],
  maker: SampleMaker,
  tokensPerTile: number,
): Promise<SampleBatch> {
  if (maker.columns && items.length > 0) {
    let cols: SampleColumns | undefined;
    try {
      cols = await maker.columns(items.map((it) => it.record));
    } catch {
      // Some record failed: make them one by one so each error names its own line.
    }
    if (cols) return fromColumns(seq, items, cols);
  }
  const samples: (Sample | null | Error)[] = new Array(items.length);
  for (let i = 0; i < items.length; i++) {
    try {
      samples[i] = await maker(items[i].record, items[i].line);
    } catch (e) {
      samples[i] = e instanceof Error ? e : new Error(String(e));
    }
  }
  return collect(seq, items, samples, tokensPerTile);
}

function fromColumns(
  seq: number,
  items: { line: number; record: DataRecord }[],
  c: SampleColumns,
): SampleBatch {
  const { source, boundaryTokens: _, ...columns } = c;
  const line = new Int32Array(c.count);
  for (let i = 0; i < c.count; i++) line[i] = items[source[i]].line;
  return { ...columns, seq, line, errors: [] };
}

/**
 * Why a sample cannot be stored: its arrays disagree, or an image's context run is not
 * tiles × tokens_per_tile copies of one id wrapped by other tokens (what readers expand).
 */
function storeProblem(s: Sample, tpt: number, contextId: number): string | null {
  if (
    s.inputIds.length !== s.length ||
    s.labels.length !== s.length ||
    s.contextStarts.length !== s.images.length
  )
    return `inconsistent sample: ${s.inputIds.length} ids, ${s.labels.length} labels, length ${s.length}`;
  let prev = 0;
  for (let k = 0; k < s.images.length; k++) {
    const at = s.contextStarts[k];
    const n = s.images[k].tiles * tpt;
    const id = s.inputIds[at];
    if (at < prev + 1 || at + n >= s.length)
      return `image ${k + 1}: its context tokens at ${at} do not fit the sample`;
    if (contextId >= 0 && id !== contextId)
      return `image ${k + 1}: context token ${id}, other images use ${contextId}`;
    for (let j = at; j < at + n; j++)
      if (s.inputIds[j] !== id || s.labels[j] !== -100)
        return `image ${k + 1}: ${n} context tokens (${s.images[k].tiles} tiles × ${tpt}) expected from ${at}, token ${j} differs`;
    if (s.inputIds[at - 1] === id || s.inputIds[at + n] === id)
      return `image ${k + 1}: its context run is longer than ${s.images[k].tiles} tiles × ${tpt}`;
    prev = at + n;
  }
  return null;
}

/** The batch's typed arrays from its samples, copied into the stored form. */
function collect(
  seq: number,
  items: { line: number; record: DataRecord }[],
  samples: (Sample | null | Error)[],
  tpt: number,
): SampleBatch {
  let tokens = 0;
  let images = 0;
  for (const s of samples)
    if (s && !(s instanceof Error)) {
      tokens += s.inputIds.length;
      images += s.images.length;
    }
  const line = new IntVec(items.length);
  const length = new IntVec(items.length);
  const learned = new IntVec(items.length);
  const flags: number[] = [];
  const imgCount = new IntVec(items.length);
  const stored = new IntVec(items.length);
  const ids = new IntVec(tokens);
  const labels = new IntVec(tokens);
  const w = new IntVec(images);
  const h = new IntVec(images);
  const cols = new IntVec(images);
  const rows = new IntVec(images);
  const tiles = new IntVec(images);
  const thumb: number[] = [];
  const frame = new IntVec(images);
  const ctx = new IntVec(images);
  const paths: string[] = [];
  const errors: { line: number; message: string }[] = [];
  let contextId = -1;
  let dropped = 0;
  let truncated = 0;
  for (let i = 0; i < items.length; i++) {
    const it = items[i];
    const s = samples[i];
    if (s instanceof Error) {
      errors.push({ line: it.line, message: s.message });
      continue;
    }
    if (!s) {
      dropped++;
      continue;
    }
    const problem = storeProblem(s, tpt, contextId);
    if (problem) {
      errors.push({ line: it.line, message: problem });
      continue;
    }
    if (s.images.length) contextId = s.inputIds[s.contextStarts[0]];
    line.push(it.line);
    length.push(s.length);
    learned.push(s.learned);
    flags.push((s.multimodal ? FLAG_MULTIMODAL : 0) | (s.truncated ? FLAG_TRUNCATED : 0));
    if (s.truncated) truncated++;
    imgCount.push(s.images.length);
    // The tokens between the context runs.
    let from = 0;
    const before = ids.length;
    for (let k = 0; k < s.images.length; k++) {
      const at = s.contextStarts[k];
      append(ids, s.inputIds.subarray(from, at));
      append(labels, s.labels.subarray(from, at));
      from = at + s.images[k].tiles * tpt;
    }
    append(ids, s.inputIds.subarray(from));
    append(labels, s.labels.subarray(from));
    stored.push(ids.length - before);
    for (let k = 0; k < s.images.length; k++) {
      const im = s.images[k];
      w.push(im.wh[0]);
      h.push(im.wh[1]);
      cols.push(im.cols);
      rows.push(im.rows);
      tiles.push(im.tiles);
      thumb.push(im.thumbnail ? 1 : 0);
      frame.push(im.frame ?? -1);
      ctx.push(s.contextStarts[k]);
      paths.push(im.path);
    }
  }
  return {
    seq,
    count: length.length,
    line: line.take(),
    length: length.take(),
    learned: learned.take(),
    flags: Uint8Array.from(flags),
    imgCount: imgCount.take(),
    stored: stored.take(),
    inputIds: ids.take(),
    labels: labels.take(),
    imgW: w.take(),
    imgH: h.take(),
    imgCols: cols.take(),
    imgRows: rows.take(),
    imgTiles: tiles.take(),
    imgThumb: Uint8Array.from(thumb),
    imgFrame: frame.take(),
    imgContext: ctx.take(),
    imgPaths: paths,
    imgContextId: contextId,
    dropped,
    truncated,
    errors,
  };
}

export function transferList(b: SampleBatch): ArrayBuffer[] {
  return [
    b.line,
    b.length,
    b.learned,
    b.flags,
    b.imgCount,
    b.stored,
    b.inputIds,
    b.labels,
    b.imgW,
    b.imgH,
    b.imgCols,
    b.imgRows,
    b.imgTiles,
    b.imgThumb,
    b.imgFrame,
    b.imgContext,
  ].map((a) => a.buffer as ArrayBuffer);
}

/** Consecutive lines of an annotation file, as the reader sends them to a worker. */
export interface Lines {
  /** Line number of texts[0] (1-based). */
  first: number;
  texts: string[];
  /** The last text is the file's last line and has no line end. */
  lastUnterminated: boolean;
}

/** What a batch of lines became. */
export interface LinesBatch {
  batch: SampleBatch;
  /** Lines that were usable records. */
  records: number;
  /** Lines with errors (reported by `data check`), left out. */
  skipped: number;
  /** Usable records that are preference pairs (each gave two samples, or none). */
  pairs: number;
}

/**
 * Lines → records (parsed and validated, as readRecords does) → samples. Workers do this
 * so the reading thread only splits lines and writes columns.
 */
export async function makeLinesBatch(
  seq: number,
  lines: Lines,
  file: string,
  maker: SampleMaker,
  tokensPerTile: number,
): Promise<LinesBatch> {
  const items: { line: number; record: DataRecord }[] = [];
  let skipped = 0;
  const n = lines.texts.length;
  for (let i = 0; i < n; i++) {
    const it = parseRecordLine(
      {
        line: lines.first + i,
        text: lines.texts[i],
        unterminated: lines.lastUnterminated && i === n - 1,
      },
      file,
      false,
      undefined,
      maker.reserved,
    );
    if (it.record) items.push({ line: it.line, record: it.record });
    else if (it.issues.some((x) => x.severity !== "warning")) skipped++;
  }
  const ex = expandPairs(items);
  let batch = await makeBatch(seq, ex.items, maker, tokensPerTile);
  if (ex.pairs > 0)
    batch = keepWholePairs(
      batch,
      new Set(items.filter((it) => it.record.pair).map((it) => it.line)),
    );
  return { batch, records: items.length, skipped, pairs: ex.pairs };
}
