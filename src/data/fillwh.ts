/**
 * `tessera data fill-wh`: writes `image_wh` from image headers into new JSONL files beside
 * the originals (never in place), and gives a meta file that points at them.
 */
import { readFile, rm, stat } from "node:fs/promises";
import { basename, dirname, extname, join, relative, resolve } from "node:path";
import { AtomicFileWriter } from "../util/atomic.ts";
import { UserError } from "../util/errors.ts";
import { HeaderReader, ImageHeaderError } from "../vision/headers.ts";
import { type DataIssue, issue } from "./issues.ts";
import { displayPath, readRecords } from "./jsonl.ts";
import { MediaPathError, resolveMediaPath } from "./media.ts";
import { type DatasetSpec, isLoneJsonl, loadMetaChecked } from "./meta.ts";

export interface FillWhOptions {
  /** With a lone JSONL: the folder its media paths are relative to. */
  mediaRoot?: string;
  /** Where official-style relative paths resolve (default: the working directory). */
  cwd?: string;
  /** Inserted before the extension of each output file: `x.jsonl` → `x_wh.jsonl`. */
  outSuffix?: string;
  /** Header reads in flight at once. */
  concurrency?: number;
  allowOutside?: boolean;
  /** Where the new meta file will live: its paths are written relative to it (absolute otherwise). */
  metaOut?: string;
  onProgress?: (done: number, total: number) => void;
}

export interface FillWhDataset {
  name: string;
  annotation: string;
  /** The written file, or undefined when nothing needed image_wh (the original is kept). */
  output?: string;
  lines: number;
  /** Image records whose image_wh was written from headers. */
  filled: number;
  /** Of those, records whose image_wh was absent or different before. */
  changed: number;
  /** Image records left as they were because an image could not be read. */
  failed: number;
}

export interface FillWhReport {
  datasets: FillWhDataset[];
  /** Every problem (images that cannot be read, lines that are not JSON objects, meta problems). */
  issues: DataIssue[];
  errorCount: number;
  /** The new meta file's content. */
  meta: Record<string, unknown>;
}

/** `dir/x.jsonl` → `dir/x_wh.jsonl`. */
export function fillWhOutputPath(annotation: string, suffix: string): string {
  const ext = extname(annotation);
  return join(dirname(annotation), `${basename(annotation, ext)}${suffix}${ext || ".jsonl"}`);
}

/** The image list of a raw line, when `image` is well formed; undefined otherwise. */
function imagesOf(raw: unknown): string[] | undefined {
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) return undefined;
  const img = (raw as Record<string, unknown>).image;
  if (typeof img === "string" && img !== "") return [img];
  if (Array.isArray(img) && img.length > 0 && img.every((x) => typeof x === "string" && x !== ""))
    return img as string[];
  return undefined;
}

type Pending = { text: string } | Promise<{ text: string }>;

async function fillDataset(
  spec: DatasetSpec,
  outPath: string,
  reader: HeaderReader,
  opts: FillWhOptions,
  issues: DataIssue[],
  onBytes: (n: number) => void,
): Promise<FillWhDataset> {
  const file = displayPath(spec.annotation);
  const r: FillWhDataset = {
    name: spec.name,
    annotation: file,
    lines: 0,
    filled: 0,
    changed: 0,
    failed: 0,
  };
  const out = new AtomicFileWriter(outPath);
  // Lines are written in order; header reads for the lines of a window run in parallel.
  let window: Pending[] = [];
  const flush = async () => {
    let buf = "";
    for (const p of window) buf += `${(p instanceof Promise ? await p : p).text}\n`;
    window = [];
    if (buf) await out.write(buf);
  };
  // Each distinct path is resolved and read once; settled results answer synchronously.
  type Got = { w: number; h: number } | { kind: string; message: string; found: string };
  const known = new Map<string, Got>();
  const pending = new Map<string, Promise<Got>>();
  const lookup = (rel: string): Got | Promise<Got> => {
    const hit = known.get(rel);
    if (hit) return hit;
    let p = pending.get(rel);
    if (!p) {
      p = (async (): Promise<Got> => {
        try {
          const h = await reader.get(
            resolveMediaPath(spec, rel, { allowOutside: opts.allowOutside }),
          );
          return { w: h.width, h: h.height };
        } catch (e) {
          if (e instanceof MediaPathError)
            return { kind: "path-escapes", message: e.message, found: JSON.stringify(rel) };
          if (e instanceof ImageHeaderError)
            return {
              kind: e.kind === "missing" ? "missing-image" : "unreadable-image",
              message: e.message,
              found: e.path,
            };
          throw e;
        }
      })().then((g) => {
        if (known.size >= 1_000_000) known.clear();
        known.set(rel, g);
        pending.delete(rel);
        return g;
      });
      pending.set(rel, p);
    }
    return p;
  };
  const finish = (
    raw: Record<string, unknown>,
    line: number,
    text: string,
    got: Got[],
  ): { text: string } => {
    const wh: [number, number][] = [];
    let ok = true;
    for (let k = 0; k < got.length; k++) {
      const g = got[k];
      if ("w" in g) wh.push([g.w, g.h]);
      else {
        ok = false;
        issues.push(
          issue(
            file,
            line,
            got.length === 1 ? "image" : `image[${k}]`,
            g.kind,
            `image_wh not filled: ${g.message}`,
            {
              expected: "a readable image inside media_root",
              found: g.found,
            },
          ),
        );
      }
    }
    if (!ok) {
      r.failed++;
      return { text };
    }
    r.filled++;
    if (JSON.stringify(raw.image_wh) !== JSON.stringify(wh)) r.changed++;
    raw.image_wh = wh;
    return { text: JSON.stringify(raw) };
  };
  try {
    for await (const item of readRecords(spec, { keepRaw: true, onBytes })) {
      r.lines = item.line;
      const text = item.text ?? "";
      const images = imagesOf(item.raw);
      if (item.raw === undefined) {
        for (const i of item.issues) if (i.severity === "error") issues.push(i);
        window.push({ text });
      } else if (!images) {
        if (item.raw === null || typeof item.raw !== "object" || Array.isArray(item.raw))
          for (const i of item.issues) if (i.severity === "error") issues.push(i);
        window.push({ text });
      } else {
        const raw = item.raw as Record<string, unknown>;
        const line = item.line;
        const got = images.map(lookup);
        window.push(
          got.some((g) => g instanceof Promise)
            ? Promise.all(got).then((g) => finish(raw, line, text, g))
            : finish(raw, line, text, got as Got[]),
        );
      }
      if (window.length >= 4096) await flush();
    }
    await flush();
  } catch (e) {
    await out.abort();
    throw e;
  }
  if (r.filled + r.failed === 0) {
    // Nothing to fill: finish the temporary file, then remove it (the original stays in use).
    await new Promise<void>((res) => out.stream.end(() => res()));
    await rm(out.tmp, { force: true });
    return r;
  }
  await out.commit();
  r.output = displayPath(outPath);
  return r;
}

export async function fillWh(metaPath: string, opts: FillWhOptions = {}): Promise<FillWhReport> {
  const suffix = opts.outSuffix ?? "_wh";
  if (!suffix)
    throw new UserError("--out-suffix must not be empty: fill-wh never overwrites its input");
  if (opts.metaOut && resolve(opts.metaOut) === resolve(metaPath))
    throw new UserError(
      `--meta-out must differ from the input meta file (${metaPath}): fill-wh never overwrites its input`,
    );
  const { specs, issues } = await loadMetaChecked(metaPath, {
    mediaRoot: opts.mediaRoot,
    cwd: opts.cwd,
  });
  // A lone JSONL becomes a meta file of one dataset; a meta file's entries are kept as written.
  const doc: Record<string, Record<string, unknown>> = specs.length === 1 && isLoneJsonl(specs[0])
    ? { [specs[0].name]: {} }
    : issues.some((i) => i.kind.startsWith("meta-") && i.field === "(file)")
      ? {}
      : JSON.parse((await readFile(metaPath, "utf8")).replace(/^\uFEFF/, ""));
  const reader = new HeaderReader(opts.concurrency ?? 64);
  let total = 0;
  for (const s of specs) total += (await stat(s.annotation)).size;
  let done = 0;
  const onBytes = (n: number) => {
    done += n;
    opts.onProgress?.(done, total);
  };
  const base = opts.metaOut ? dirname(resolve(opts.metaOut)) : undefined;
  // Paths relative to the new meta file's folder ("" for the folder itself), else absolute.
  const rel = (p: string) => (base ? relative(base, p) : p);
  const meta: Record<string, unknown> = {};
  const datasets: FillWhDataset[] = [];
  const byName = new Map(specs.map((s) => [s.name, s]));
  for (const [name, entry] of Object.entries(doc)) {
    const spec = byName.get(name);
    if (!spec) {
      meta[name] = entry; // a problem dataset: reported, copied as written
      continue;
    }
    const outPath = fillWhOutputPath(spec.annotation, suffix);
    const found: DataIssue[] = [];
    const d = await fillDataset(spec, outPath, reader, opts, found, onBytes);
    found.sort((a, b) => a.line - b.line);
    issues.push(...found);
    datasets.push(d);
    const annotation = d.output ? outPath : spec.annotation;
    // The new meta file is in tessera's style: an official `root` becomes media_root.
    const { root: _root, ...kept } = entry;
    meta[name] = { ...kept, media_root: rel(spec.mediaRoot), annotation: rel(annotation) };
  }
  return {
    datasets,
    issues,
    errorCount: issues.filter((i) => i.severity === "error").length,
    meta,
  };
}
