/**
 * The dataset explorer: a local web page that shows any record of a meta file the way the
 * model sees it: its images with the planned tile grid drawn over them, the text with special
 * tokens visible, image tokens collapsed and learned spans marked, and the counts. A record
 * that cannot become a sample shows its problems (field and message) instead.
 */
import { closeSync, constants, createReadStream, fstatSync, openSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import { extname, relative } from "node:path";
import { displayPath, parseRecordLine } from "../data/jsonl.ts";
import { MediaPathError, realMediaPath, resolveMediaPath, withHeaderSizes } from "../data/media.ts";
import { type DatasetSpec, loadMeta, maxDynamicPatchOf, videoFramesOf } from "../data/meta.ts";
import type { ModelInfo } from "../text/model-info.ts";
import { previewData } from "../text/preview.ts";
import { makeSampleContext, type SampleContext } from "../text/sample.ts";
import type { TextTokenizer } from "../text/tokenizer.ts";
import { UserError } from "../util/errors.ts";
import { type LocalServer, listen } from "../util/http.ts";
import { LineIndex } from "./lines.ts";
import { EXPLORER_HTML } from "./page.ts";

export interface ExplorerOptions {
  meta: string;
  /** With a lone JSONL: the folder its media paths are relative to. */
  mediaRoot?: string;
  model: ModelInfo;
  tokenizer: TextTokenizer;
  /** Frames per video (a dataset's own video_frames wins). */
  videoFrames?: number;
  maxLength?: number;
  host?: string;
  port?: number;
}

export type Explorer = LocalServer;

interface Dataset {
  spec: DatasetSpec;
  /** The model's settings with this dataset's own tile budget, as prepare plans it. */
  model: ModelInfo;
  ctx: SampleContext;
  lines?: Promise<LineIndex>;
}

const MEDIA_TYPES: Record<string, string> = {
  ".png": "image/png",
  ".jpg": "image/jpeg",
  ".jpeg": "image/jpeg",
  ".gif": "image/gif",
  ".webp": "image/webp",
  ".bmp": "image/bmp",
  ".mp4": "video/mp4",
  ".webm": "video/webm",
  ".mkv": "video/x-matroska",
  ".mov": "video/quicktime",
};

function json(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
}

/** What the page shows for line `index` of a dataset's annotation file. */
async function sampleAt(ds: Dataset, index: number, tk: TextTokenizer) {
  const model = ds.model;
  if (!ds.lines) ds.lines = LineIndex.build(ds.spec.annotation);
  const lines = await ds.lines;
  if (!Number.isInteger(index) || index < 0 || index >= lines.count)
    return {
      status: 404,
      body: { error: `no record ${index}: the file has ${lines.count} lines` },
    };
  const file = displayPath(ds.spec.annotation);
  const item = parseRecordLine(
    { line: index + 1, text: lines.line(index), unterminated: false },
    file,
  );
  const head = { dataset: ds.spec.name, index, of: lines.count, file, line: index + 1 };
  const issues = item.issues.map((i) => ({
    severity: i.severity,
    field: i.field,
    message: i.message,
  }));
  if (!item.record) return { status: 200, body: { ...head, issues } };
  try {
    const record = await withHeaderSizes(item.record, ds.spec);
    const data = await previewData(record, { ctx: ds.ctx, model, tokenizer: tk });
    if ("dropped" in data) return { status: 200, body: { ...head, issues, dropped: data.reason } };
    const { sample, inputIds, labels, ...shown } = data;
    return { status: 200, body: { ...head, issues, preview: shown } };
  } catch (e) {
    if (!(e instanceof UserError)) throw e;
    return {
      status: 200,
      body: { ...head, issues: [...issues, { severity: "error", field: "", message: e.message }] },
    };
  }
}

export async function startExplorer(o: ExplorerOptions): Promise<Explorer> {
  const datasets = new Map<string, Dataset>();
  for (const spec of await loadMeta(o.meta, { mediaRoot: o.mediaRoot })) {
    const model = {
      ...o.model,
      maxDynamicPatch: maxDynamicPatchOf(spec, o.model.maxDynamicPatch) ?? o.model.maxDynamicPatch,
    };
    datasets.set(spec.name, {
      spec,
      model,
      ctx: makeSampleContext({
        tokenizer: o.tokenizer,
        model,
        maxLength: o.maxLength,
        videoFrames: videoFramesOf(spec, o.videoFrames),
        // A long-lived server: each path resolved afresh (no per-directory cache).
        resolvePath: (p) => resolveMediaPath(spec, p),
      }),
    });
  }
  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? "/", "http://localhost");
    const ds = datasets.get(url.searchParams.get("dataset") ?? "");
    if (url.pathname === "/") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      res.end(EXPLORER_HTML);
    } else if (url.pathname === "/api/datasets") {
      json(res, 200, {
        meta: o.meta,
        model: o.model.dir,
        template: o.model.template,
        datasets: [...datasets.values()].map((d) => ({
          name: d.spec.name,
          annotation: displayPath(d.spec.annotation),
          repeatTime: d.spec.repeatTime,
        })),
      });
    } else if (url.pathname === "/api/sample") {
      if (!ds) return json(res, 404, { error: "no such dataset" });
      const r = await sampleAt(ds, Number(url.searchParams.get("index")), o.tokenizer);
      json(res, r.status, r.body);
    } else if (url.pathname === "/media") {
      // Only files inside the dataset's media_root, by the same rules as training.
      const path = url.searchParams.get("path") ?? "";
      if (!ds) return json(res, 404, { error: "no such dataset" });
      // Resolved afresh on every request (no cache): a symlink that appears after a first
      // look is seen. The file opened is the checked real path, not following a last link.
      let real: string;
      try {
        real = realMediaPath(ds.spec, relative(ds.spec.mediaRoot, path));
      } catch (e) {
        if (e instanceof MediaPathError) return json(res, 403, { error: e.message });
        throw e;
      }
      let fd: number;
      try {
        fd = openSync(real, constants.O_RDONLY | constants.O_NOFOLLOW);
      } catch {
        return json(res, 404, { error: `${path}: not found` });
      }
      if (!fstatSync(fd).isFile()) {
        closeSync(fd);
        return json(res, 404, { error: `${path}: not a file` });
      }
      res.writeHead(200, {
        "content-type": MEDIA_TYPES[extname(real).toLowerCase()] ?? "application/octet-stream",
      });
      createReadStream("", { fd }).pipe(res);
    } else json(res, 404, { error: "not found" });
  };
  return listen(
    (req, res) => {
      handle(req, res).catch((e: Error) => {
        if (!res.headersSent) json(res, 500, { error: e.message });
        else res.end();
      });
    },
    { host: o.host, port: o.port },
  );
}
