/** `tessera data check META`: validate records, placeholders, image_wh and media files. */
import type { Command } from "commander";
import { type CheckReport, checkMeta } from "../data/check.ts";
import { DEEP_SAMPLE } from "../data/decode.ts";
import { formatIssue } from "../data/issues.ts";
import { MEDIA_ROOT_HELP, META_ARG_HELP } from "../data/meta.ts";
import { byteProgress } from "../data/progress.ts";
import { reservedStrings } from "../text/reserved.ts";
import { UserError } from "../util/errors.ts";

function kinds(m: Record<string, number>): string {
  const e = Object.entries(m).sort((a, b) => b[1] - a[1]);
  return e.length ? e.map(([k, n]) => `${k} ${n}`).join(", ") : "none";
}

export function formatCheckReport(r: CheckReport): string {
  const out: string[] = [];
  for (const i of r.issues) out.push(formatIssue(i));
  if (r.truncated) out.push(`… more problems not listed (raise --max-errors to see them)`);
  if (r.issues.length) out.push("");
  for (const d of r.datasets) {
    out.push(`${d.name}  (${d.annotation}, repeat_time ${d.repeatTime})`);
    out.push(
      `  records ${d.records} of ${d.lines} lines (${d.invalid} unusable) · after repeat_time ${d.selected}`,
      `  multimodal ${d.multimodal} (video ${d.video}) · text ${d.text} · images ${d.images} (${d.distinctImages} files read)`,
      `  errors: ${kinds(d.errors)}`,
      `  warnings: ${kinds(d.warnings)}`,
    );
    if (d.missingImageWh > 0)
      out.push(
        `  ${d.missingImageWh} image records have no image_wh (needed for length grouping and packing): run \`tessera data fill-wh\``,
      );
  }
  if (r.decode)
    out.push(
      r.decode.skipped
        ? `images not decoded: ${r.decode.skipped}`
        : r.decode.sampled
          ? `decoded a sample of ${r.decode.decoded} of ${r.decode.of} images as training will (--deep decodes all)`
          : `decoded all ${r.decode.decoded} images as training will`,
    );
  out.push(
    `${r.errorCount} error(s), ${r.warningCount} warning(s) in ${r.datasets.length} dataset(s)${r.stoppedEarly ? " (stopped at the first error: --fail-fast)" : ""}`,
  );
  return out.join("\n");
}

export function registerDataCheck(data: Command): void {
  data
    .command("check")
    .description("validate every record, placeholder, image_wh and image file of a meta file")
    .argument("<meta>", META_ARG_HELP)
    .option("--media-root <dir>", MEDIA_ROOT_HELP)
    .option("--max-errors <n>", "list at most this many problems (all are counted)", "100")
    .option("--json", "print the report as JSON")
    .option("--fail-fast", "stop at the first error")
    .option("--no-media", "skip image and video files (records only)")
    .option("--allow-outside-media-root", "accept media paths outside media_root")
    .option("--concurrency <n>", "image headers read at once", "64")
    .option("--workers <n>", "threads for large meta files (default: one per idle core)")
    .option(
      "--deep",
      `decode every image fully, as training will (default: all up to ${DEEP_SAMPLE.toLocaleString("en-US")} distinct images, a sample of that many above)`,
    )
    .option("--no-deep", "read image headers only, decode nothing")
    .option(
      "--model <dir>",
      "also refuse the model's own special tokens in record text (read from its tokenizer files)",
    )
    .action(async (meta: string, o) => {
      const maxErrors = Number(o.maxErrors);
      if (!Number.isInteger(maxErrors) || maxErrors < 0)
        throw new UserError(`--max-errors must be a whole number, got ${o.maxErrors}`);
      const concurrency = Number(o.concurrency);
      if (!Number.isInteger(concurrency) || concurrency < 1)
        throw new UserError(`--concurrency must be a positive whole number, got ${o.concurrency}`);
      const workers = o.workers === undefined ? undefined : Number(o.workers);
      if (workers !== undefined && (!Number.isInteger(workers) || workers < 1))
        throw new UserError(`--workers must be a positive whole number, got ${o.workers}`);
      const bar = byteProgress("checking", !o.json && process.stderr.isTTY === true);
      let r: CheckReport;
      try {
        r = await checkMeta(meta, {
          maxErrors,
          failFast: o.failFast === true,
          checkMedia: o.media !== false,
          allowOutside: o.allowOutsideMediaRoot === true,
          mediaRoot: o.mediaRoot,
          concurrency,
          workers,
          reserved: o.model ? reservedStrings(o.model) : undefined,
          deep: o.deep === true ? "all" : o.deep === false ? "off" : "sample",
          onDecodeProgress: (d, t) => {
            if (!o.json && process.stderr.isTTY)
              process.stderr.write(`\r\x1b[2Kdecoding images ${d}/${t}${d === t ? "\n" : ""}`);
          },
          onProgress: (d, t) => bar.update(d, t),
        });
      } finally {
        bar.stop();
      }
      process.stdout.write(`${o.json ? JSON.stringify(r, null, 2) : formatCheckReport(r)}\n`);
      if (r.errorCount > 0) process.exitCode = 1;
    });
}
