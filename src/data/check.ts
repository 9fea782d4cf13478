/** `tessera data check`: every record, placeholder, image_wh and media file of a meta file. */

import { readFile, stat } from "node:fs/promises";
import { availableParallelism, loadavg } from "node:os";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Worker } from "node:worker_threads";
import { HeaderReader, headerProblem, ImageHeaderError } from "../vision/headers.ts";
import { DEEP_SAMPLE, type DecodeEntry, DecodeSample } from "./decode.ts";
import { type DataIssue, issue } from "./issues.ts";
import { displayPath, lineAlignedRanges, readRecordBatches } from "./jsonl.ts";
import { MediaPathError, resolveMediaPath } from "./media.ts";
import type { DatasetSpec } from "./meta.ts";
import type { DataRecord } from "./record.ts";
import { selectedRecordCount } from "./repeat.ts";

export interface DatasetSummary {
  name: string;
  annotation: string;
  repeatTime: number;
  /** Lines in the file (empty ones included). */
  lines: number;
  /** Usable records (warnings allowed). */
  records: number;
  /** Records one epoch takes after repeat_time. */
  selected: number;
  /** Lines that are not usable records. */
  invalid: number;
  multimodal: number;
  text: number;
  video: number;
  /** Image references (a multi-image record counts each). */
  images: number;
  /** Image headers read: each distinct file once (once per worker thread in a parallel check). */
  distinctImages: number;
  /** Multimodal image records that have no image_wh (needed for length grouping and packing). */
  missingImageWh: number;
  errors: Record<string, number>;
  warnings: Record<string, number>;
}

export interface CheckReport {
  meta: string;
  datasets: DatasetSummary[];
  /** The first problems in file and line order (at most maxErrors), errors and warnings. */
  issues: DataIssue[];
  errorCount: number;
  warningCount: number;
  /** True when more problems were found than `issues` lists. */
  truncated: boolean;
  /** True when --fail-fast stopped the check at the first error. */
  stoppedEarly: boolean;
  /** The decoding pass (`deep`), when asked for. */
  decode?: DecodeSummary;
}

export interface CheckOptions {
  /** Problems listed in the report (all are counted). Default 100. */
  maxErrors?: number;
  /** Stop at the first error. */
  failFast?: boolean;
  /** Read image headers and compare them with image_wh (default true). */
  checkMedia?: boolean;
  /** Accept media paths outside media_root. */
  allowOutside?: boolean;
  /** With a lone JSONL: the folder its media paths are relative to. */
  mediaRoot?: string;
  /** Where official-style relative paths resolve (default: the working directory). */
  cwd?: string;
  /** Header reads in flight at once. Default 64. */
  concurrency?: number;
  /** Worker threads (default: one per idle core, at most 8); 1 checks in this thread. */
  workers?: number;
  /** How workers load the code: one esbuild bundle (default; tsx when esbuild fails) or tsx. */
  workerEntry?: "bundle" | "tsx";
  /** Size of the ranges files are cut into for the workers (default 16 MiB). */
  rangeBytes?: number;
  /** Meta files whose annotations hold fewer bytes in all are checked in this thread (default 32 MiB). */
  parallelMinBytes?: number;
  /** Progress over all annotation files, in bytes. */
  onProgress?: (done: number, total: number) => void;
  /** Strings record text must not hold (default RESERVED_STRINGS; `--model` adds the model's special tokens). */
  reserved?: readonly string[];
  /**
   * Decode images fully in the engine, as training will: "all", "sample" (all up to
   * `deepSample` distinct images, a sample of that many above) or "off" (default: headers only).
   */
  deep?: "all" | "sample" | "off";
  /** Size of the "sample" (default DEEP_SAMPLE). */
  deepSample?: number;
  /** The engine's python for `deep` (default: the set-up engine; none: no decoding, said in the report). */
  python?: string;
  /** Progress of the decoding pass. */
  onDecodeProgress?: (done: number, total: number) => void;
}

/** What the decoding pass did. */
export interface DecodeSummary {
  /** Distinct images decoded. */
  decoded: number;
  /** Distinct images whose headers were read (decoded ones among them). */
  of: number;
  /** True when a sample was decoded. */
  sampled: boolean;
  /** Why nothing was decoded, when so. */
  skipped?: string;
}

/** Keeps the first `max` problems in (dataset, line) order while counting all of them. */
export class IssueList {
  private list: { d: number; i: DataIssue }[] = [];
  errors = 0;
  warnings = 0;
  truncated = false;
  constructor(private readonly max: number) {}
  add(d: number, i: DataIssue, s: DatasetSummary): void {
    if (i.severity === "error") {
      this.errors++;
      s.errors[i.kind] = (s.errors[i.kind] ?? 0) + 1;
    } else {
      this.warnings++;
      s.warnings[i.kind] = (s.warnings[i.kind] ?? 0) + 1;
    }
    this.list.push({ d, i });
    if (this.list.length > 2 * this.max + 16) this.trim();
  }
  private trim(): void {
    this.list.sort((a, b) => a.d - b.d || a.i.line - b.i.line);
    if (this.list.length > this.max) {
      this.truncated = true;
      this.list.length = this.max;
    }
  }
  /** Adds what a parallel range found: its counts, and its listed problems shifted by `offset` lines. */
  merge(d: number, r: RangeResult, offset: number): void {
    this.errors += r.errors;
    this.warnings += r.warnings;
    if (r.truncated) this.truncated = true;
    for (const i of r.issues) {
      this.list.push({ d, i: i.line > 0 ? { ...i, line: i.line + offset } : i });
      if (this.list.length > 2 * this.max + 16) this.trim();
    }
  }
  /** Removes a listed problem (and its count), e.g. a file note repeated by a later range. */
  drop(pred: (i: DataIssue) => boolean, s: DatasetSummary): void {
    const k = this.list.findIndex((x) => pred(x.i));
    if (k < 0) return;
    const [{ i }] = this.list.splice(k, 1);
    const m = i.severity === "error" ? s.errors : s.warnings;
    if (i.severity === "error") this.errors--;
    else this.warnings--;
    if (--m[i.kind] === 0) delete m[i.kind];
  }
  result(): DataIssue[] {
    this.trim();
    return this.list.map((x) => x.i);
  }
}

type MediaResult =
  | { ok: true; w: number; h: number; abs: string }
  | { ok: false; kind: string; message: string; found?: string; expected?: string };

function newSummary(spec: DatasetSpec): DatasetSummary {
  return {
    name: spec.name,
    annotation: displayPath(spec.annotation),
    repeatTime: spec.repeatTime,
    lines: 0,
    records: 0,
    selected: 0,
    invalid: 0,
    multimodal: 0,
    text: 0,
    video: 0,
    images: 0,
    distinctImages: 0,
    missingImageWh: 0,
    errors: {},
    warnings: {},
  };
}

/**
 * Media paths resolved and checked once each: settled results answer synchronously (the
 * common case once a dataset's images have been seen), pending ones share one promise.
 * Results are kept per media_root, keyed by the path as written.
 */
export class MediaChecker {
  readonly reader: HeaderReader;
  private readonly roots = new Map<string, MediaLookup>();
  constructor(concurrency: number) {
    this.reader = new HeaderReader(concurrency);
  }
  /** The lookup for one dataset's media paths. */
  forSpec(spec: DatasetSpec, allowOutside: boolean): MediaLookup {
    const key = `${spec.mediaRoot}\0${allowOutside}`;
    let m = this.roots.get(key);
    if (!m) {
      m = new MediaLookup(spec, allowOutside, this.reader);
      this.roots.set(key, m);
    }
    return m;
  }
}

export class MediaLookup {
  private settled = new Map<string, MediaResult>();
  private readonly pending = new Map<string, Promise<MediaResult>>();
  constructor(
    private readonly spec: DatasetSpec,
    private readonly allowOutside: boolean,
    private readonly reader: HeaderReader,
  ) {}
  get(rel: string, video: boolean): MediaResult | Promise<MediaResult> {
    const key = video ? `\0${rel}` : rel;
    const hit = this.settled.get(key);
    if (hit) return hit;
    let p = this.pending.get(key);
    if (!p) {
      p = resolveMedia(this.spec, rel, video, this.reader, this.allowOutside).then((r) => {
        if (this.settled.size >= 1_000_000) this.settled = new Map();
        this.settled.set(key, r);
        this.pending.delete(key);
        return r;
      });
      this.pending.set(key, p);
    }
    return p;
  }
}

/** One per worker thread, shared by the ranges it checks, so each image is read once per thread. */
let threadMedia: MediaChecker | undefined;

const EXPECTED: Record<string, string> = {
  "path-escapes": "a relative path inside media_root",
  "missing-image": "an image file",
  "unreadable-image": "an image header (PNG, JPEG, WebP, GIF, BMP, TIFF, ...)",
  "missing-video": "a video file",
};

type RangeOptions = CheckOptions & {
  onBytes?: (n: number) => void;
  start?: number;
  end?: number;
  /** Where images whose header passed are offered for decoding. */
  decode?: DecodeSample;
};

/**
 * Checks one dataset, or the byte range [start, end) of its file (line numbers then count
 * from the range's first line); problems go to `list` under dataset index `d`.
 */
export async function checkRange(
  spec: DatasetSpec,
  d: number,
  list: IssueList,
  opts: RangeOptions,
  media = new MediaChecker(opts.concurrency ?? 64),
): Promise<DatasetSummary> {
  const s = newSummary(spec);
  const file = s.annotation;
  const checkMedia = opts.checkMedia !== false;
  const readsBefore = media.reader.reads;
  const allowOutside = opts.allowOutside === true;
  let outstanding: Promise<void>[] = [];
  const failFast = opts.failFast === true;
  let stopped = false;
  const add = (i: DataIssue) => {
    list.add(d, i, s);
    if (failFast && i.severity === "error") stopped = true;
  };
  const paths = media.forSpec(spec, allowOutside);
  const lookup = (rel: string, video: boolean) => paths.get(rel, video);

  const judge = (
    r: MediaResult,
    line: number,
    field: string,
    k: number,
    wh: [number, number] | undefined,
    rel: string,
  ) => {
    if (!r.ok) {
      let message = r.message;
      if (r.kind === "missing-image" || r.kind === "missing-video") {
        if (spec.mediaHint) message += `; ${spec.mediaHint}`;
        if (spec.mediaRootAlt)
          message += `; relative to the meta file it would be ${resolve(spec.mediaRootAlt, rel)}`;
      }
      add(
        issue(file, line, field, r.kind, message, {
          expected: r.expected ?? EXPECTED[r.kind],
          found: r.found,
        }),
      );
      return;
    }
    if (opts.decode && field !== "video") opts.decode.offer(r.abs, d, line, field);
    if (wh && (wh[0] !== r.w || wh[1] !== r.h))
      add(
        issue(
          file,
          line,
          `image_wh[${k}]`,
          "image-wh-mismatch",
          "image_wh differs from the image file's header",
          {
            expected: `[${r.w}, ${r.h}] (header)`,
            found: `[${wh[0]}, ${wh[1]}]`,
          },
        ),
      );
  };

  const checkRecordMedia = (rec: DataRecord, line: number) => {
    const n = rec.images.length;
    for (let k = 0; k < n; k++) {
      const field = n === 1 ? "image" : `image[${k}]`;
      const wh = rec.imageWh?.[k];
      const r = lookup(rec.images[k], false);
      const rel = rec.images[k];
      if (r instanceof Promise) outstanding.push(r.then((x) => judge(x, line, field, k, wh, rel)));
      else judge(r, line, field, k, wh, rel);
    }
    if (rec.video !== undefined) {
      const r = lookup(rec.video, true);
      if (r instanceof Promise)
        outstanding.push(r.then((x) => judge(x, line, "video", 0, undefined, rec.video!)));
      else judge(r, line, "video", 0, undefined, rec.video);
    }
  };

  const batches = readRecordBatches(spec, {
    onBytes: opts.onBytes,
    start: opts.start,
    end: opts.end,
    reserved: opts.reserved,
  });
  outer: for await (const batch of batches)
    for (const item of batch) {
      s.lines = item.line;
      for (const i of item.issues) add(i);
      const rec = item.record;
      if (!rec) {
        if (item.issues.some((i) => i.severity === "error")) s.invalid++;
      } else {
        s.records++;
        if (rec.images.length > 0) {
          s.multimodal++;
          s.images += rec.images.length;
          if (!rec.imageWh) s.missingImageWh++;
        } else if (rec.video !== undefined) {
          s.multimodal++;
          s.video++;
        } else s.text++;
        if (checkMedia && (rec.images.length > 0 || rec.video !== undefined))
          checkRecordMedia(rec, item.line);
      }
      if (outstanding.length >= 4096) {
        await Promise.all(outstanding);
        outstanding = [];
      }
      if (stopped) break outer;
    }
  await Promise.all(outstanding);
  s.distinctImages = media.reader.reads - readsBefore;
  s.selected = selectedRecordCount(s.records, spec.repeatTime);
  return s;
}

/** What a range checked in a worker sends back. */
export interface RangeResult {
  summary: DatasetSummary;
  issues: DataIssue[];
  errors: number;
  warnings: number;
  truncated: boolean;
  /** Images offered for decoding (their lines count from the range's first line). */
  decode?: DecodeEntry[];
}

/** The worker side: check one range with its own problem list. */
export async function checkRangeJob(
  job: { spec: DatasetSpec; opts: RangeOptions },
  onBytes: (n: number) => void,
): Promise<RangeResult> {
  const list = new IssueList(job.opts.maxErrors ?? 100);
  threadMedia ??= new MediaChecker(job.opts.concurrency ?? 64);
  const decode = deepLimit(job.opts) ? new DecodeSample(deepLimit(job.opts)) : undefined;
  const summary = await checkRange(
    job.spec,
    0,
    list,
    { ...job.opts, onBytes, decode },
    threadMedia,
  );
  return {
    summary,
    issues: list.result(),
    errors: list.errors,
    warnings: list.warnings,
    truncated: list.truncated,
    decode: decode?.entries(),
  };
}

/** Distinct images the decoding pass keeps: 0 when it is off. */
function deepLimit(o: CheckOptions): number {
  if (!o.deep || o.deep === "off") return 0;
  return o.deep === "all" ? Number.POSITIVE_INFINITY : (o.deepSample ?? DEEP_SAMPLE);
}

/** Below this many bytes in all, a meta file is checked in this thread. */
const PARALLEL_MIN_BYTES = 32 << 20;
/** A file is cut into ranges of about this size (and into at least one per worker when larger). */
const RANGE_BYTES = 16 << 20;

type Job = { spec: DatasetSpec; opts: RangeOptions };

/** Persistent worker threads taking range jobs one at a time each; startup is paid once. */
class CheckPool {
  private readonly idle: Worker[] = [];
  private readonly all: Worker[] = [];
  private readonly queue: {
    job: Job;
    onBytes: (n: number) => void;
    resolve: (r: RangeResult) => void;
    reject: (e: Error) => void;
  }[] = [];
  private readonly busy = new Map<Worker, (typeof this.queue)[number]>();
  private failed: Error | undefined;
  private closing = false;

  constructor(size: number, script: URL) {
    for (let i = 0; i < size; i++) {
      const w = new Worker(script, { execArgv: workerExecArgv() });
      w.on("error", (e) => this.fail(e, w));
      w.on("exit", (code) => {
        if (!this.closing) this.fail(new Error(`a check worker stopped (exit code ${code})`), w);
      });
      this.all.push(w);
      this.idle.push(w);
    }
  }

  run(job: Job, onBytes: (n: number) => void): Promise<RangeResult> {
    return new Promise((resolve, reject) => {
      if (this.failed) return reject(this.failed);
      this.queue.push({ job, onBytes, resolve, reject });
      this.pump();
    });
  }

  private pump(): void {
    while (this.idle.length && this.queue.length) {
      const w = this.idle.pop() as Worker;
      const t = this.queue.shift() as (typeof this.queue)[number];
      const onMessage = (m: { bytes?: number; result?: RangeResult; error?: string }) => {
        if (m.bytes) t.onBytes(m.bytes);
        if (m.result === undefined && m.error === undefined) return;
        w.off("message", onMessage);
        this.busy.delete(w);
        this.idle.push(w);
        if (m.error !== undefined) t.reject(new Error(m.error));
        else t.resolve(m.result as RangeResult);
        this.pump();
      };
      w.on("message", onMessage);
      this.busy.set(w, t);
      w.postMessage(t.job);
    }
  }

  /** A worker died: its job and every queued job fail (the check cannot be complete). */
  private fail(e: Error, w: Worker): void {
    this.failed ??= e;
    this.busy.get(w)?.reject(e);
    this.busy.delete(w);
    for (const t of this.queue.splice(0)) t.reject(e);
  }

  async close(): Promise<void> {
    this.closing = true;
    await Promise.all(this.all.map((w) => w.terminate()));
  }
}

/**
 * Cores that are free now (at most 8): on a machine already busy with other work, extra
 * threads get no more CPU time and only add their start-up and merging.
 */
export function defaultWorkers(): number {
  const cores = availableParallelism();
  return Math.max(1, Math.min(8, cores - Math.floor(loadavg()[0])));
}

/**
 * This process's Node flags minus a TypeScript loader (`--import tsx`): inherited, it would
 * start a loader thread in every worker, which neither worker entry needs.
 */
function workerExecArgv(): string[] {
  const out: string[] = [];
  const args = process.execArgv;
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (
      (a === "--import" ||
        a === "--loader" ||
        a === "--experimental-loader" ||
        a === "--require" ||
        a === "-r") &&
      /tsx/.test(args[i + 1] ?? "")
    )
      i++;
    else if (!/^--(import|loader|experimental-loader|require)=.*tsx/.test(a)) out.push(a);
  }
  return out;
}

let bundled: Promise<URL> | undefined;

/**
 * The worker's code. Bundled once per process with esbuild into one self-contained module
 * (a worker then starts in about 0.1 s); a worker loading the TypeScript sources through tsx
 * instead pays a loader thread and a module compile each, over a second. The tsx entry stays
 * as the fallback.
 */
function workerScript(entry: "bundle" | "tsx" = "bundle"): Promise<URL> {
  const fallback = new URL("./check-worker.mjs", import.meta.url);
  if (entry === "tsx") return Promise.resolve(fallback);
  bundled ??= (async () => {
    try {
      const { build } = await import("esbuild");
      const entry = [
        'import { parentPort } from "node:worker_threads";',
        'import { checkRangeJob } from "./check.ts";',
        'parentPort.on("message", async (job) => {',
        "  try {",
        "    const result = await checkRangeJob(job, (bytes) => parentPort.postMessage({ bytes }));",
        "    parentPort.postMessage({ result });",
        "  } catch (e) {",
        "    parentPort.postMessage({ error: e instanceof Error ? (e.stack ?? e.message) : String(e) });",
        "  }",
        "});",
      ].join("\n");
      const out = await build({
        stdin: {
          contents: entry,
          resolveDir: dirname(fileURLToPath(import.meta.url)),
          loader: "ts",
          sourcefile: "check-worker-entry.ts",
        },
        bundle: true,
        platform: "node",
        format: "esm",
        target: "node20",
        write: false,
        logLevel: "silent",
      });
      return new URL(
        `data:text/javascript;base64,${Buffer.from(out.outputFiles[0].text).toString("base64")}`,
      );
    } catch {
      return fallback;
    }
  })();
  return bundled;
}

/** Only plain data crosses to a worker (no callbacks). */
function plainOptions(o: RangeOptions, start: number, end: number): RangeOptions {
  return {
    maxErrors: o.maxErrors,
    checkMedia: o.checkMedia,
    allowOutside: o.allowOutside,
    concurrency: o.concurrency,
    reserved: o.reserved,
    deep: o.deep,
    deepSample: o.deepSample,
    start,
    end,
  };
}

/** Merges the ranges of one file, in order, as if the file had been read in one pass. */
function mergeRanges(
  spec: DatasetSpec,
  d: number,
  list: IssueList,
  results: RangeResult[],
  decode?: DecodeSample,
): DatasetSummary {
  const s = newSummary(spec);
  let offset = 0;
  let crlfSeen = false;
  for (const r of results) {
    const x = r.summary;
    for (const k of [
      "records",
      "invalid",
      "multimodal",
      "text",
      "video",
      "images",
      "distinctImages",
      "missingImageWh",
    ] as const)
      s[k] += x[k];
    for (const [k, n] of Object.entries(x.errors)) s.errors[k] = (s.errors[k] ?? 0) + n;
    for (const [k, n] of Object.entries(x.warnings)) s.warnings[k] = (s.warnings[k] ?? 0) + n;
    list.merge(d, r, offset);
    if (r.decode && decode) decode.merge(r.decode, d, offset);
    // CRLF is noted once per file: a later range repeats it.
    if (x.warnings.crlf) {
      if (crlfSeen)
        list.drop((i) => i.kind === "crlf" && i.file === s.annotation && i.line > offset, s);
      crlfSeen = true;
    }
    offset += x.lines;
  }
  s.lines = offset;
  s.selected = selectedRecordCount(s.records, spec.repeatTime);
  return s;
}

/**
 * Checks datasets on a pool of worker threads: every file is cut into line-aligned ranges
 * (large files into at least one per worker), all ranges of all files share the pool, and the
 * findings are merged per file as if read in one pass.
 */
async function checkParallel(
  specs: DatasetSpec[],
  sizes: number[],
  list: IssueList,
  workers: number,
  opts: RangeOptions,
): Promise<DatasetSummary[]> {
  const pool = new CheckPool(workers, await workerScript(opts.workerEntry));
  try {
    const perFile = await Promise.all(
      specs.map(async (spec, d) => {
        const rb = opts.rangeBytes ?? RANGE_BYTES;
        const parts = Math.max(1, Math.ceil(sizes[d] / rb), sizes[d] >= rb ? workers : 1);
        const ranges = await lineAlignedRanges(spec.annotation, sizes[d], parts);
        return Promise.all(
          ranges.map(([start, end]) =>
            pool.run({ spec, opts: plainOptions(opts, start, end) }, (n) => opts.onBytes?.(n)),
          ),
        );
      }),
    );
    return perFile.map((results, d) => mergeRanges(specs[d], d, list, results, opts.decode));
  } finally {
    await pool.close();
  }
}

async function resolveMedia(
  spec: DatasetSpec,
  rel: string,
  video: boolean,
  reader: HeaderReader,
  allowOutside: boolean,
): Promise<MediaResult> {
  let abs: string;
  try {
    abs = resolveMediaPath(spec, rel, { allowOutside });
  } catch (e) {
    if (e instanceof MediaPathError)
      return { ok: false, kind: "path-escapes", message: e.message, found: JSON.stringify(rel) };
    throw e;
  }
  if (video) {
    try {
      const st = await stat(abs);
      if (!st.isFile())
        return {
          ok: false,
          kind: "missing-video",
          message: "the video path is not a file",
          found: abs,
        };
      return { ok: true, w: 0, h: 0, abs };
    } catch {
      return {
        ok: false,
        kind: "missing-video",
        message: "the video file does not exist",
        found: abs,
      };
    }
  }
  try {
    const h = await reader.get(abs);
    const bad = headerProblem(h);
    if (bad)
      return {
        ok: false,
        kind: bad.kind,
        message: `${bad.message}: ${abs}`,
        expected: bad.expected,
        found: bad.found,
      };
    return { ok: true, w: h.width, h: h.height, abs };
  } catch (e) {
    if (e instanceof ImageHeaderError)
      return e.kind === "missing"
        ? { ok: false, kind: "missing-image", message: "the image file does not exist", found: abs }
        : {
            ok: false,
            kind: "unreadable-image",
            message: `the image cannot be read: ${e.message}`,
            found: abs,
          };
    throw e;
  }
}

/** The official `length` of each dataset, against the lines its annotation file has. */
async function checkLengths(
  metaPath: string,
  specs: DatasetSpec[],
  datasets: DatasetSummary[],
  list: IssueList,
  metaSummary: DatasetSummary,
): Promise<void> {
  const given = specs.map((s) => s.extra.length);
  if (!given.some((n) => typeof n === "number")) return;
  const { jsonKeyLines } = await import("./meta.ts");
  const keyLines = jsonKeyLines(await readFile(specs[0].metaPath, "utf8"));
  for (let d = 0; d < datasets.length; d++) {
    const n = given[d];
    if (typeof n !== "number" || n === datasets[d].lines) continue;
    const name = specs[d].name;
    list.add(
      -1,
      issue(
        metaPath,
        keyLines.get(`${name}.length`) ?? 0,
        `${name}.length`,
        "meta-length-mismatch",
        `dataset "${name}": length ${n} differs from the ${datasets[d].lines} lines of ${displayPath(specs[d].annotation)}`,
        { severity: "warning", expected: `${datasets[d].lines}`, found: `${n}` },
      ),
      metaSummary,
    );
  }
}

/** Checks a whole meta file: meta problems, then every dataset in order. */
export async function checkMeta(metaPath: string, opts: CheckOptions = {}): Promise<CheckReport> {
  const maxErrors = opts.maxErrors ?? 100;
  const list = new IssueList(maxErrors);
  // Loaded here, not at the top: worker threads import this module and never need zod.
  const { loadMetaChecked } = await import("./meta.ts");
  const { specs, issues: metaIssues } = await loadMetaChecked(metaPath, {
    mediaRoot: opts.mediaRoot,
    cwd: opts.cwd,
  });
  const metaSummary = newSummary({
    name: "(meta)",
    metaPath,
    mediaRoot: "",
    annotation: metaPath,
    repeatTime: 1,
    extra: {},
  });
  for (const i of metaIssues) list.add(-1, i, metaSummary);
  let stoppedEarly = opts.failFast === true && metaIssues.some((i) => i.severity === "error");
  const datasets: DatasetSummary[] = [];
  const sizes = await Promise.all(specs.map(async (s) => (await stat(s.annotation)).size));
  const total = sizes.reduce((a, b) => a + b, 0);
  let done = 0;
  const onBytes = (n: number) => {
    done += n;
    opts.onProgress?.(done, total);
  };
  const workers = opts.workers ?? defaultWorkers();
  const limit = deepLimit(opts);
  const decode = limit && opts.checkMedia !== false ? new DecodeSample(limit) : undefined;
  if (workers >= 2 && !opts.failFast && total >= (opts.parallelMinBytes ?? PARALLEL_MIN_BYTES)) {
    datasets.push(
      ...(await checkParallel(specs, sizes, list, workers, { ...opts, onBytes, decode })),
    );
  } else {
    const media = new MediaChecker(opts.concurrency ?? 64);
    for (let d = 0; d < specs.length && !stoppedEarly; d++) {
      const before = list.errors;
      datasets.push(await checkRange(specs[d], d, list, { ...opts, onBytes, decode }, media));
      if (opts.failFast && list.errors > before) stoppedEarly = true;
    }
  }
  let decodeSummary: DecodeSummary | undefined;
  if (decode && !stoppedEarly)
    decodeSummary = await decodePass(decode, limit, datasets, list, opts);
  if (!stoppedEarly) await checkLengths(metaPath, specs, datasets, list, metaSummary);
  return {
    meta: displayPath(metaSummary.annotation),
    datasets,
    issues: list.result(),
    errorCount: list.errors,
    warningCount: list.warnings,
    truncated: list.truncated,
    stoppedEarly,
    ...(decodeSummary ? { decode: decodeSummary } : {}),
  };
}

/** Decodes the chosen images in the engine; each failure is an error at the first record naming it. */
async function decodePass(
  decode: DecodeSample,
  limit: number,
  datasets: DatasetSummary[],
  list: IssueList,
  opts: CheckOptions,
): Promise<DecodeSummary> {
  const { decodeInEngine, enginePython } = await import("./decode.ts");
  const entries = decode.entries();
  const of = datasets.reduce((a, s) => a + s.distinctImages, 0);
  const python = opts.python ?? (await enginePython());
  if (!python)
    return {
      decoded: 0,
      of,
      sampled: false,
      skipped:
        "the engine is not set up (`tessera setup`); image headers were read, pixels not decoded",
    };
  for (const f of await decodeInEngine(entries, python, opts.onDecodeProgress)) {
    const e = f.entry;
    list.add(
      e.d,
      issue(
        datasets[e.d].annotation,
        e.line,
        e.field,
        "undecodable-image",
        `the image cannot be decoded as training decodes it (Pillow): ${e.abs}`,
        { expected: "an image that decodes fully", found: f.message },
      ),
      datasets[e.d],
    );
  }
  return {
    decoded: entries.length,
    of: Math.max(of, entries.length),
    sampled: entries.length >= limit && of > limit,
  };
}
