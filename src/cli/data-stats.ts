/** `tessera data stats META`: what one epoch of a meta file holds, per dataset and overall. */
import type { Command } from "commander";
import { MEDIA_ROOT_HELP, META_ARG_HELP } from "../data/meta.ts";
import { byteProgress } from "../data/progress.ts";
import {
  computeStats,
  type DatasetStats,
  type LengthsFn,
  renderHistogram,
  type StatsReport,
  type Summary,
} from "../data/stats.ts";
import { UserError } from "../util/errors.ts";

function num(x: number, digits = 0): string {
  return x.toLocaleString("en-US", { maximumFractionDigits: digits });
}

function summaryLine(label: string, s: Summary | undefined, digits = 0): string {
  if (!s) return `  ${label.padEnd(12)} —`;
  const f = (x: number) => num(x, digits);
  return `  ${label.padEnd(12)} min ${f(s.min)} · p50 ${f(s.p50)} · p90 ${f(s.p90)} · p99 ${f(s.p99)} · max ${f(s.max)} · mean ${num(s.mean, 1)}`;
}

function block(
  title: string,
  d: Omit<DatasetStats, "name" | "annotation" | "repeatTime">,
  histogram: boolean,
): string[] {
  const ipr = Object.entries(d.imagesPerRecord)
    .sort((a, b) => Number(a[0]) - Number(b[0]))
    .map(([k, v]) => `${k}: ${num(v)}`)
    .join(" · ");
  const out = [
    title,
    `  records      ${num(d.records)} in the files → ${num(d.selected)} per epoch after repeat_time${d.invalid ? ` (${num(d.invalid)} unusable lines left out: run \`tessera data check\`)` : ""}`,
    `  kinds        multimodal ${num(d.multimodal)} (video ${num(d.video)}) · text ${num(d.text)}${d.pairs ? ` · preference pairs ${num(d.pairs)} (tokens: both sides)` : ""}`,
    `  images/rec   ${ipr || "—"}`,
    summaryLine("width", d.width),
    summaryLine("height", d.height),
    summaryLine("megapixels", d.megapixels, 3),
    summaryLine("turns", d.turns),
  ];
  if (d.imagesWithoutSize)
    out.push(
      `  ${num(d.imagesWithoutSize)} images have no size (no image_wh): run \`tessera data fill-wh\` or pass --headers`,
    );
  if (d.tokens !== undefined || d.tokenErrors) {
    out.push(summaryLine("tokens", d.tokens));
    if (d.tokenErrors) out.push(`  ${num(d.tokenErrors)} records have no length: ${d.tokenError}`);
    if (histogram && d.tokenHistogram)
      out.push("  token lengths:", ...renderHistogram(d.tokenHistogram).map((l) => `    ${l}`));
  }
  return out;
}

export function formatStats(r: StatsReport): string {
  const out: string[] = [];
  const many = r.datasets.length > 1;
  for (const d of r.datasets)
    out.push(...block(`${d.name}  (${d.annotation}, repeat_time ${d.repeatTime})`, d, !many), "");
  if (many || r.datasets.length === 0)
    out.push(...block("overall (weighted by repeat_time)", r.overall, true));
  return out.join("\n").trimEnd();
}

function positiveInt(v: string | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1)
    throw new UserError(`${name} must be a positive whole number, got ${v}`);
  return n;
}

export function registerDataStats(data: Command): void {
  data
    .command("stats")
    .description(
      "records after repeat_time, images per record, image sizes, turns and token lengths, per dataset and overall",
    )
    .argument("<meta>", META_ARG_HELP)
    .option("--media-root <dir>", MEDIA_ROOT_HELP)
    .option("--json", "print the figures as JSON")
    .option("--headers", "read image headers for images that have no image_wh")
    .option(
      "--model <dir>",
      "an InternVL2 model folder: adds token lengths (its tokenizer and tiling)",
    )
    .option("--max-dynamic-patch <n>", "tiles per image at most (default: the model's)")
    .option(
      "--video-frames <n>",
      "frames per video record, as prepare plans them (a dataset's own video_frames wins; default 8)",
    )
    .option("--max-length <n>", "count records longer than this as dropped")
    .action(async (meta: string, o) => {
      const maxDynamicPatch = positiveInt(o.maxDynamicPatch, "--max-dynamic-patch");
      const videoFrames = positiveInt(o.videoFrames, "--video-frames");
      const maxLength = positiveInt(o.maxLength, "--max-length");
      if ((maxDynamicPatch || videoFrames || maxLength) && !o.model)
        throw new UserError(
          "--max-dynamic-patch, --video-frames and --max-length need --model (token lengths come from its tokenizer)",
        );
      let lengthsOf: LengthsFn | undefined;
      if (o.model) {
        const { tokenLengths } = await import("../data/stats-tokens.ts");
        lengthsOf = await tokenLengths(o.model, { maxDynamicPatch, videoFrames, maxLength });
      }
      const bar = byteProgress("reading", !o.json && process.stderr.isTTY === true);
      let r: StatsReport;
      try {
        r = await computeStats(meta, {
          headers: o.headers === true,
          mediaRoot: o.mediaRoot,
          lengthsOf,
          onProgress: (d, t) => bar.update(d, t),
        });
      } finally {
        bar.stop();
      }
      process.stdout.write(`${o.json ? JSON.stringify(r, null, 2) : formatStats(r)}\n`);
    });
}
