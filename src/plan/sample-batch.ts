/**
 * Samples of a batch of records, flattened into typed arrays so a worker can hand them to the
 * writer by transfer (no per-sample objects cross threads).
 */
import type { DataRecord } from "../data/record.ts";
import type { Sample } from "../text/types.ts";
import { IntVec } from "./arrays.ts";

export interface SampleBatch {
  seq: number;
  /** Records that became samples. */
  count: number;
  line: Int32Array;
  length: Int32Array;
  learned: Int32Array;
  flags: Uint8Array;
  imgCount: Int32Array;
  inputIds: Int32Array;
  labels: Int32Array;
  imgW: Int32Array;
  imgH: Int32Array;
  imgCols: Int32Array;
  imgRows: Int32Array;
  imgTiles: Int32Array;
  imgThumb: Uint8Array;
  imgFrame: Int32Array;
  imgContext: Int32Array;
  imgPaths: string[];
  /** Records dropped by the sample maker (e.g. over max_length with truncate: drop). */
  dropped: number;
  truncated: number;
  /** Records that could not become samples: line and message. */
  errors: { line: number; message: string }[];
}

export const FLAG_MULTIMODAL = 1;
export const FLAG_TRUNCATED = 2;

/** What turns one record into a sample (null: dropped on purpose). */
export type SampleMaker = (
  record: DataRecord,
  line: number,
) => Sample | null | Promise<Sample | null>;

export interface MakerOptions {
  model: string;
  maxLength: number;
  maxDynamicPatch?: number;
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

export async function makeBatch(
  seq: number,
  items: { line: number; record: DataRecord }[],
  maker: SampleMaker,
): Promise<SampleBatch> {
  const line = new IntVec(items.length);
  const length = new IntVec(items.length);
  const learned = new IntVec(items.length);
  const flags: number[] = [];
  const imgCount = new IntVec(items.length);
  const ids = new IntVec(4096);
  const labels = new IntVec(4096);
  const w = new IntVec();
  const h = new IntVec();
  const cols = new IntVec();
  const rows = new IntVec();
  const tiles = new IntVec();
  const thumb: number[] = [];
  const frame = new IntVec();
  const ctx = new IntVec();
  const paths: string[] = [];
  const errors: { line: number; message: string }[] = [];
  let dropped = 0;
  let truncated = 0;
  for (const it of items) {
    let s: Sample | null;
    try {
      s = await maker(it.record, it.line);
    } catch (e) {
      errors.push({ line: it.line, message: (e as Error).message });
      continue;
    }
    if (!s) {
      dropped++;
      continue;
    }
    if (
      s.inputIds.length !== s.length ||
      s.labels.length !== s.length ||
      s.contextStarts.length !== s.images.length
    ) {
      errors.push({
        line: it.line,
        message: `inconsistent sample: ${s.inputIds.length} ids, ${s.labels.length} labels, length ${s.length}`,
      });
      continue;
    }
    line.push(it.line);
    length.push(s.length);
    learned.push(s.learned);
    flags.push((s.multimodal ? FLAG_MULTIMODAL : 0) | (s.truncated ? FLAG_TRUNCATED : 0));
    if (s.truncated) truncated++;
    imgCount.push(s.images.length);
    for (let k = 0; k < s.length; k++) {
      ids.push(s.inputIds[k]);
      labels.push(s.labels[k]);
    }
    s.images.forEach((im, k) => {
      w.push(im.wh[0]);
      h.push(im.wh[1]);
      cols.push(im.cols);
      rows.push(im.rows);
      tiles.push(im.tiles);
      thumb.push(im.thumbnail ? 1 : 0);
      frame.push(im.frame ?? -1);
      ctx.push(s.contextStarts[k]);
      paths.push(im.path);
    });
  }
  return {
    seq,
    count: length.length,
    line: line.take(),
    length: length.take(),
    learned: learned.take(),
    flags: Uint8Array.from(flags),
    imgCount: imgCount.take(),
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
