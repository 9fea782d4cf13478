/**
 * `tessera data explore META --model DIR`: a local web page to browse every record of a meta
 * file the way the model sees it (src/explore/).
 */
import { resolve } from "node:path";
import type { Command } from "commander";
import { MEDIA_ROOT_HELP, META_ARG_HELP } from "../data/meta.ts";
import { startExplorer } from "../explore/server.ts";
import { loadModelInfo } from "../text/model-info.ts";
import { addModelOptions, parsePositiveInt } from "../text/options.ts";
import { loadTokenizer } from "../text/tokenizer.ts";

export function registerDataExplore(data: Command): void {
  const cmd = data
    .command("explore")
    .description(
      "browse records in a web page as the model sees them: tile grids, tokens, learned spans",
    )
    .argument("<meta>", META_ARG_HELP)
    .option("--media-root <dir>", MEDIA_ROOT_HELP)
    .option("--video-frames <n>", "frames per video (a dataset's own video_frames wins)")
    .option("--max-length <n>", "truncate as training would (whole rounds dropped)")
    .option(
      "--host <host>",
      "address to listen on (beyond loopback, the address printed carries a token every request needs)",
      "127.0.0.1",
    )
    .option("--port <n>", "port (0 picks a free one)", "8687");
  addModelOptions(cmd).action(async (meta: string, o) => {
    const model = loadModelInfo(o.model, {
      maxDynamicPatch: parsePositiveInt(o.maxDynamicPatch, "--max-dynamic-patch"),
      template: o.template,
    });
    const e = await startExplorer({
      meta: resolve(meta),
      mediaRoot: o.mediaRoot,
      model,
      tokenizer: await loadTokenizer(model.dir),
      videoFrames: parsePositiveInt(o.videoFrames, "--video-frames"),
      maxLength: parsePositiveInt(o.maxLength, "--max-length"),
      host: o.host,
      port: Number(o.port),
    });
    process.stderr.write(`explorer: ${e.url} (Ctrl-C to stop)\n`);
    await new Promise<void>((res) => process.once("SIGINT", res));
    await e.close();
  });
}
