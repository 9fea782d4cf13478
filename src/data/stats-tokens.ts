/**
 * Token lengths for `tessera data stats --model`: the text layer's recordsToColumns gives
 * each record's length (the only place lengths come from). Loaded on demand, so stats
 * without --model never loads a tokenizer.
 */
import type { SampleContext } from "../text/sample.ts";
import { resolveMediaPath } from "./media.ts";
import { type DatasetSpec, maxDynamicPatchOf, videoFramesOf } from "./meta.ts";
import type { DataRecord } from "./record.ts";
import type { LengthsFn } from "./stats.ts";

export interface TokenLengthOptions {
  /** Overrides the model's max_dynamic_patch (a dataset's own max_dynamic_patch in the meta file wins). */
  maxDynamicPatch?: number;
  /** Frames per video record, as prepare plans them (a dataset's own video_frames wins). */
  videoFrames?: number;
  /** Longest sample; longer records count as dropped (null length). */
  maxLength?: number;
}

export async function tokenLengths(
  modelDir: string,
  opts: TokenLengthOptions = {},
): Promise<LengthsFn> {
  const { loadModelInfo } = await import("../text/model-info.ts");
  const { loadTokenizer } = await import("../text/tokenizer.ts");
  const { makeSampleContext, recordsToColumns } = await import("../text/sample.ts");
  const tokenizer = await loadTokenizer(modelDir);
  const contexts = new Map<string, SampleContext>();
  const contextFor = (spec: DatasetSpec): SampleContext => {
    const key = `${spec.metaPath}\0${spec.name}`;
    let ctx = contexts.get(key);
    if (!ctx) {
      const maxDynamicPatch = maxDynamicPatchOf(spec, opts.maxDynamicPatch);
      ctx = makeSampleContext({
        tokenizer,
        model: loadModelInfo(modelDir, maxDynamicPatch !== undefined ? { maxDynamicPatch } : {}),
        resolvePath: (p) => resolveMediaPath(spec, p, { checkSymlinks: false }),
        videoFrames: videoFramesOf(spec, opts.videoFrames),
        maxLength: opts.maxLength,
        truncation: opts.maxLength !== undefined ? "drop" : undefined,
      });
      contexts.set(key, ctx);
    }
    return ctx;
  };
  const { pairConversations } = await import("./pairs.ts");
  return async (records, spec) => {
    // A preference record is planned as one unit of both sides: its length is their sum.
    const sides: DataRecord[] = [];
    const owner: number[] = [];
    records.forEach((r, i) => {
      if (r.pair) for (const s of pairConversations(r)) sides.push({ ...s, pair: undefined });
      else sides.push(r);
      owner.push(i);
      if (r.pair) owner.push(i);
    });
    // The column path: lengths without building a sample object per record.
    const c = await recordsToColumns(sides, contextFor(spec));
    const lengths: (number | null)[] = new Array(records.length).fill(null);
    const parts = new Array(records.length).fill(0);
    for (let k = 0; k < c.count; k++) {
      const i = owner[c.source[k]];
      lengths[i] = (lengths[i] ?? 0) + c.length[k];
      parts[i]++;
    }
    // a pair with a side dropped is dropped whole
    records.forEach((r, i) => {
      if (r.pair && parts[i] !== 2) lengths[i] = null;
    });
    return lengths;
  };
}
