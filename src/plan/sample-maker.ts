/**
 * The default record → sample function of `prepare`: the model's real tokenizer, template and
 * tiling (src/text), one context per dataset (its media_root and its own max_dynamic_patch).
 */
import { resolveMediaPath } from "../data/media.ts";
import { loadModelInfo } from "../text/model-info.ts";
import {
  makeSampleContext,
  makeSampleScratch,
  recordsToSamples,
  recordToSample,
  type SampleScratch,
} from "../text/sample.ts";
import { loadTokenizer } from "../text/tokenizer.ts";
import type { MakerOptions, SampleMaker } from "./sample-batch.ts";

export async function createSampleMaker(o: MakerOptions): Promise<SampleMaker> {
  const tokenizer = await loadTokenizer(o.model);
  const own = o.dataset.extra.max_dynamic_patch;
  const maxDynamicPatch = typeof own === "number" ? own : o.maxDynamicPatch;
  const ctx = makeSampleContext({
    tokenizer,
    model: loadModelInfo(o.model, maxDynamicPatch !== undefined ? { maxDynamicPatch } : {}),
    template: o.template,
    maxLength: o.maxLength,
    truncation: o.truncate === "drop" ? "drop" : "turns",
    resolvePath: (p) => resolveMediaPath({ mediaRoot: o.dataset.mediaRoot }, p),
  });
  // One record, or a whole batch tokenized in one go (what makeBatch uses).
  const maker: SampleMaker = (record) => recordToSample(record, ctx);
  // makeBatch copies the samples and then calls done(): their buffer goes back for the next
  // batch. Batches running at the same time each take their own.
  const free: SampleScratch[] = [];
  maker.batch = async (records) => {
    const scratch = free.pop() ?? makeSampleScratch();
    try {
      const samples = await recordsToSamples(records, ctx, { scratch });
      return { samples, done: () => free.push(scratch) };
    } catch (e) {
      free.push(scratch);
      throw e;
    }
  };
  return maker;
}
