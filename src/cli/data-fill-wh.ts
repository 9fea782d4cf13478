/** `tessera data fill-wh META`: image_wh from image headers, into new files beside the originals. */
import type { Command } from "commander";
import { fillWh } from "../data/fillwh.ts";
import { formatIssue } from "../data/issues.ts";
import { MEDIA_ROOT_HELP, META_ARG_HELP } from "../data/meta.ts";
import { byteProgress } from "../data/progress.ts";
import { writeFileAtomic } from "../util/atomic.ts";
import { UserError } from "../util/errors.ts";

export function registerDataFillWh(data: Command): void {
  data
    .command("fill-wh")
    .description(
      "write image_wh from image headers into new JSONL files (x.jsonl → x_wh.jsonl) and print a meta file for them",
    )
    .argument("<meta>", META_ARG_HELP)
    .option("--media-root <dir>", MEDIA_ROOT_HELP)
    .option("--out-suffix <suffix>", "inserted before .jsonl in each output file name", "_wh")
    .option(
      "--meta-out <file>",
      "write the new meta file here (paths relative to it) instead of printing it",
    )
    .option("--max-errors <n>", "list at most this many problems", "100")
    .option("--allow-outside-media-root", "accept media paths outside media_root")
    .option("--concurrency <n>", "image headers read at once", "64")
    .action(async (meta: string, o) => {
      const concurrency = Number(o.concurrency);
      if (!Number.isInteger(concurrency) || concurrency < 1)
        throw new UserError(`--concurrency must be a positive whole number, got ${o.concurrency}`);
      const maxErrors = Number(o.maxErrors);
      if (!Number.isInteger(maxErrors) || maxErrors < 0)
        throw new UserError(`--max-errors must be a whole number, got ${o.maxErrors}`);
      const bar = byteProgress("filling image_wh");
      let r: Awaited<ReturnType<typeof fillWh>>;
      try {
        r = await fillWh(meta, {
          outSuffix: o.outSuffix,
          metaOut: o.metaOut,
          concurrency,
          allowOutside: o.allowOutsideMediaRoot === true,
          mediaRoot: o.mediaRoot,
          onProgress: (d, t) => bar.update(d, t),
        });
      } finally {
        bar.stop();
      }
      const err = process.stderr;
      for (const i of r.issues.slice(0, maxErrors)) err.write(`${formatIssue(i)}\n`);
      if (r.issues.length > maxErrors)
        err.write(`… ${r.issues.length - maxErrors} more problems not listed\n`);
      for (const d of r.datasets)
        err.write(
          d.output
            ? `${d.name}: ${d.filled} records filled (${d.changed} changed), ${d.failed} left as they were → ${d.output}\n`
            : `${d.name}: no image records, ${d.annotation} kept\n`,
        );
      const text = `${JSON.stringify(r.meta, null, 2)}\n`;
      if (o.metaOut) {
        await writeFileAtomic(o.metaOut, text);
        err.write(`meta file written: ${o.metaOut}\n`);
      } else process.stdout.write(text);
      if (r.errorCount > 0) process.exitCode = 1;
    });
}
