/**
 * `tessera data preview META --model DIR --dataset NAME --index N [--json]`: one sample the
 * way the model sees it.
 */
import type { Command } from "commander";
import { readRecords } from "../data/jsonl.ts";
import { MediaPathError, mediaErrorText, withHeaderSizes } from "../data/media.ts";
import {
  loadMeta,
  MEDIA_ROOT_HELP,
  META_ARG_HELP,
  maxDynamicPatchOf,
  videoFramesOf,
} from "../data/meta.ts";
import type { DataRecord } from "../data/record.ts";
import { addModelOptions, modelContextFromOptions, parsePositiveInt } from "../text/options.ts";
import { type PreviewStyle, renderPreview } from "../text/preview.ts";
import { DEFAULT_VIDEO_FRAMES } from "../text/types.ts";
import { UserError } from "../util/errors.ts";
import { ImageHeaderError } from "../vision/headers.ts";

export function registerDataPreview(data: Command): void {
  const cmd = data
    .command("preview")
    .description(
      "show one record as the model sees it: special tokens, image tiles, learned spans, counts",
    )
    .argument("<meta>", META_ARG_HELP)
    .option("--media-root <dir>", MEDIA_ROOT_HELP)
    .option("--dataset <name>", "the dataset (a key of the meta file; not needed when it has one)")
    .requiredOption("--index <n>", "the record, counting lines of the annotation file from 0")
    .option(
      "--video-frames <n>",
      `frames of a video record (default ${DEFAULT_VIDEO_FRAMES}; a dataset's own video_frames wins)`,
    )
    .option("--max-length <n>", "truncate as training would (whole rounds dropped)")
    .option("--json", "print the sample as JSON (ids and labels included)")
    .option("--no-color", "no ANSI colours");
  addModelOptions(cmd).action(async (meta: string, o) => {
    const index = Number(o.index);
    if (!Number.isInteger(index) || index < 0)
      throw new UserError(`--index must be a whole number >= 0, got ${o.index}`);
    const specs = await loadMeta(meta, { mediaRoot: o.mediaRoot });
    const spec =
      o.dataset === undefined && specs.length === 1
        ? specs[0]
        : specs.find((s) => s.name === o.dataset);
    if (!spec)
      throw new UserError(
        o.dataset === undefined
          ? `${meta}: --dataset is required: it has ${specs.map((s) => s.name).join(", ")}`
          : `${meta}: no dataset "${o.dataset}"; it has: ${specs.map((s) => s.name).join(", ")}`,
      );
    let record: DataRecord | undefined;
    let seen = 0;
    for await (const item of readRecords(spec)) {
      if (seen++ !== index) continue;
      if (!item.record) {
        const errors = item.issues.filter((i) => i.severity === "error");
        throw new UserError(
          `${spec.annotation}:${item.line}: not a usable record: ${errors.map((e) => `${e.field}: ${e.message}`).join("; ")}`,
        );
      }
      try {
        record = await withHeaderSizes(item.record, spec);
      } catch (e) {
        if (e instanceof ImageHeaderError || e instanceof MediaPathError)
          throw new UserError(`${spec.annotation}:${item.line}: ${mediaErrorText(e)}`);
        throw e;
      }
      break;
    }
    if (!record)
      throw new UserError(
        `${spec.annotation}: has ${seen} records; --index ${index} is past the end`,
      );
    const maxLength = o.maxLength === undefined ? undefined : Number(o.maxLength);
    // The dataset's own settings in the meta file win, as in prepare.
    const run = parsePositiveInt(o.maxDynamicPatch, "--max-dynamic-patch");
    const { model, tokenizer, ctx } = await modelContextFromOptions(
      { ...o, maxDynamicPatch: maxDynamicPatchOf(spec, run) },
      {
        mediaRoot: spec.mediaRoot,
        videoFrames: videoFramesOf(spec, parsePositiveInt(o.videoFrames, "--video-frames")),
        maxLength,
      },
    );
    const style: PreviewStyle = { color: o.color !== false && process.stdout.isTTY === true };
    const out = await renderPreview(record, { ctx, model, tokenizer }, o.json ? "json" : style);
    process.stdout.write(`${out}\n`);
  });
}
