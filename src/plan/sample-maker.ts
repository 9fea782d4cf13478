/**
 * The default record → sample function of `prepare`: the model's real tokenizer, template and
 * tiling (src/text), one context per dataset (its media_root and its own max_dynamic_patch).
 */
import { MediaResolver } from "../data/media.ts";
import { maxDynamicPatchOf } from "../data/meta.ts";
import { loadModelInfo } from "../text/model-info.ts";
import { reservedStrings } from "../text/reserved.ts";
import { makeSampleContext, recordsToColumns, recordToSample } from "../text/sample.ts";
import { loadTokenizer } from "../text/tokenizer.ts";
import { DEFAULT_VIDEO_FRAMES } from "../text/types.ts";
import type { MakerOptions, SampleMaker } from "./sample-batch.ts";

export async function createSampleMaker(o: MakerOptions): Promise<SampleMaker> {
  const tokenizer = await loadTokenizer(o.model);
  const maxDynamicPatch = maxDynamicPatchOf(o.dataset, o.maxDynamicPatch);
  const media = new MediaResolver({ mediaRoot: o.dataset.mediaRoot });
  const ctx = makeSampleContext({
    tokenizer,
    model: loadModelInfo(o.model, maxDynamicPatch !== undefined ? { maxDynamicPatch } : {}),
    template: o.template,
    maxLength: o.maxLength,
    truncation: o.truncate === "drop" ? "drop" : "turns",
    videoFrames: o.videoFrames ?? DEFAULT_VIDEO_FRAMES,
    resolvePath: (p) => media.resolve(p),
  });
  // One record, or a whole batch tokenized in one go and written straight into its columns.
  const maker: SampleMaker = (record) => recordToSample(record, ctx);
  maker.columns = (records) => recordsToColumns(records, ctx);
  // Records whose text holds one of the model's special tokens are left out, as `data check
  // --model` reports them.
  maker.reserved = reservedStrings(o.model);
  return maker;
}
