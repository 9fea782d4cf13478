/**
 * The prepared cache (docs/cache-format.md): `prepareCache` writes it, `openCacheTable` reads
 * the per-sample columns the planner needs.
 */
import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { mkdir, readdir, rename, rm, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { cpus } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { Worker } from "node:worker_threads";
import { displayPath, MAX_LINE_CHARS, readLineBatches } from "../data/jsonl.ts";
import { type DatasetSpec, loadMeta, maxDynamicPatchOf, videoFramesOf } from "../data/meta.ts";
import { loadModelInfo, type ModelInfo } from "../text/model-info.ts";
import { writeFileAtomic } from "../util/atomic.ts";
import { namedWriteError, UserError } from "../util/errors.ts";
import { lockFolder, lockFolderWaiting } from "../util/lock.ts";
import { type ColumnSpec, ColumnWriter, type Dtype, readColumn, readInt32At } from "./columns.ts";
import { hashJson } from "./fingerprint.ts";
import type { MixtureDataset } from "./mixture.ts";
import type { SampleTable } from "./plan.ts";
import {
  FLAG_MULTIMODAL,
  type Lines,
  type LinesBatch,
  type MakerModule,
  type MakerOptions,
  makeLinesBatch,
  type SampleBatch,
} from "./sample-batch.ts";

/** 2: input_ids and labels leave each image's context run out (docs/cache-format.md). */
export const CACHE_VERSION = 2;
const DEFAULT_MAKER = new URL("./sample-maker.ts", import.meta.url).href;
// The ESM entry of tsx's API, found from its package.json (import.meta.resolve is missing
// under the test runner, and require.resolve would give the CommonJS entry).
const TSX_API = pathToFileURL(
  join(
    dirname(createRequire(import.meta.url).resolve("tsx/package.json")),
    "dist/esm/api/index.mjs",
  ),
).href;

/**
 * Records per batch: small enough that a batch's per-record objects die young, large enough
 * that the tokenizer call and the message to the worker are shared by many records.
 */
export const PREPARE_BATCH_SIZE = 256;

/**
 * One worker per core, at most 8: the reading thread only splits lines and writes columns
 * (about a third of a core at 35,000 records/s), so it shares a core rather than keeping one
 * to itself; past ~8 workers it is the bound, and each worker holds its own tokenizer
 * (a few hundred MB), which a 128-core node would multiply for nothing.
 */
export function defaultPrepareWorkers(): number {
  return Math.min(8, Math.max(1, cpus().length));
}

export interface PrepareOptions {
  /** Meta file path, or its datasets already loaded. */
  meta: string | DatasetSpec[];
  /** With a lone JSONL as `meta`: the folder its media paths are relative to. */
  mediaRoot?: string;
  /** Model folder (original InternVL2 layout). */
  model: string;
  maxLength: number;
  maxDynamicPatch?: number;
  /** Frames per video (default DEFAULT_VIDEO_FRAMES; a dataset's `video_frames` wins). */
  videoFrames?: number;
  template?: string;
  truncate?: "truncate" | "drop";
  cacheDir: string;
  /** Worker threads (default: defaultPrepareWorkers()); 0 runs in this thread. */
  workers?: number;
  /** Records per batch sent to a worker (default PREPARE_BATCH_SIZE). */
  batchSize?: number;
  /** Wait while another process prepares this cache instead of refusing (multi-node runs). */
  waitForLock?: boolean;
  /** Module that builds the record → sample function (default: src/plan/sample-maker.ts). */
  makerModule?: string;
  onProgress?: (e: {
    dataset: string;
    records: number;
    samples: number;
    /** Bytes of the annotation file read so far, of `totalBytes`. */
    bytes?: number;
    totalBytes?: number;
    done?: boolean;
    reused?: boolean;
  }) => void;
}

export interface CacheDatasetEntry {
  name: string;
  dir: string;
  fingerprint: string;
  first_sample: number;
  samples: number;
  /** Tokens of the samples (sum of their lengths). */
  tokens: number;
  /** Values in input_ids and labels: tokens less the image context runs. */
  stored_tokens: number;
  images: number;
  /** The `<IMG_CONTEXT>` id the readers put back (−1: no image). */
  img_context_id: number;
  /** Video records, and the frames each was given (a change rebuilds only if videos > 0). */
  videos: number;
  video_frames: number;
  repeat_time: number;
  annotation: string;
  media_root: string;
  skipped: number;
  dropped: number;
  truncated: number;
  /** A preference dataset: pair k is samples 2k (chosen) and 2k+1 (rejected). */
  preference?: boolean;
}

export interface CacheManifest {
  format: "tessera-cache";
  version: number;
  fingerprint: string;
  tokens_per_tile: number;
  max_length: number;
  samples: number;
  tokens: number;
  images: number;
  datasets: CacheDatasetEntry[];
}

export interface PrepareResult {
  manifest: CacheManifest;
  rebuilt: string[];
  reused: string[];
}

function fileStamp(p: string): { size: number; mtimeMs: number } | null {
  try {
    const s = statSync(p);
    return { size: s.size, mtimeMs: s.mtimeMs };
  } catch {
    return null;
  }
}

const TOKENIZER_FILES = [
  "config.json",
  "tokenizer.json",
  "tokenizer.model",
  "tokenizer_config.json",
  "vocab.json",
  "merges.txt",
  "added_tokens.json",
  "special_tokens_map.json",
];

/** Everything a dataset's samples depend on; its hash names the dataset's folder. */
export function datasetInputs(
  spec: DatasetSpec,
  info: ModelInfo,
  o: PrepareOptions,
): Record<string, unknown> {
  const annotation = resolve(spec.annotation);
  const stamp = fileStamp(annotation);
  if (!stamp)
    throw new UserError(
      `${spec.metaPath}: dataset "${spec.name}": annotation ${annotation} not found`,
    );
  // Frames per video are not hashed: they matter only to datasets with videos, which the
  // manifest knows once the dataset is built (see the reuse test in prepareCache).
  return {
    cache_version: CACHE_VERSION,
    annotation,
    annotation_size: stamp.size,
    annotation_mtime_ms: stamp.mtimeMs,
    media_root: spec.mediaRoot,
    model_files: Object.fromEntries(TOKENIZER_FILES.map((f) => [f, fileStamp(join(info.dir, f))])),
    template: o.template ?? info.template,
    tiling: {
      // The budget this dataset's grids were planned with: the engine checks them against it.
      max_dynamic_patch: maxDynamicPatchOf(spec, o.maxDynamicPatch) ?? info.maxDynamicPatch,
      min_dynamic_patch: info.minDynamicPatch,
      use_thumbnail: info.useThumbnail,
      dynamic_image_size: info.dynamicImageSize,
      tile_size: info.tileSize,
      tokens_per_tile: info.tokensPerTile,
    },
    max_length: o.maxLength,
    truncate: o.truncate ?? "truncate",
    maker: o.makerModule ?? DEFAULT_MAKER,
    code: codeStamp(o.makerModule ?? DEFAULT_MAKER),
  };
}

const codeStamps = new Map<string, string>();

/**
 * A hash of the code that turns records into samples (the maker module and the text and
 * tiling sources), so a tessera update that changes tokenization rebuilds the cache.
 */
function codeStamp(makerModule: string): string {
  let stamp = codeStamps.get(makerModule);
  if (stamp) return stamp;
  const h = createHash("sha256");
  const files: string[] = [];
  if (makerModule.startsWith("file:")) files.push(fileURLToPath(makerModule));
  for (const dir of ["../text", "../vision"]) {
    const abs = fileURLToPath(new URL(dir, import.meta.url));
    if (existsSync(abs))
      for (const f of readdirSync(abs).sort()) if (f.endsWith(".ts")) files.push(join(abs, f));
  }
  for (const f of files) h.update(f.slice(f.lastIndexOf("/src/") + 1)).update(readFileSync(f));
  stamp = h.digest("hex");
  codeStamps.set(makerModule, stamp);
  return stamp;
}

function safeName(name: string): string {
  return name.replace(/[^A-Za-z0-9_.-]/g, "_").slice(0, 64);
}

const SAMPLE_COLUMNS: [string, Dtype][] = [
  ["tok_offset", "<i8"],
  ["length", "<i4"],
  ["learned", "<i4"],
  ["line", "<i4"],
  ["flags", "|u1"],
  ["img_offset", "<i8"],
  ["input_ids", "<i4"],
  ["labels", "<i4"],
  ["img_w", "<i4"],
  ["img_h", "<i4"],
  ["img_cols", "<i4"],
  ["img_rows", "<i4"],
  ["img_tiles", "<i4"],
  ["img_thumbnail", "|u1"],
  ["img_frame", "<i4"],
  ["img_context_start", "<i4"],
  ["img_path_offset", "<i8"],
  ["img_paths", "|u1"],
];

/** Streams one dataset's columns into a folder. */
class DatasetWriter {
  readonly cols: Record<string, ColumnWriter> = {};
  /** Tokens of the samples (their lengths). */
  tokens = 0;
  /** Values in input_ids and labels (tokens less the context runs). */
  stored = 0;
  /** The id of every image's context run (−1 until an image is written). */
  contextId = -1;
  /** Samples with a video (their first frame is frame 0). */
  videos = 0;
  images = 0;
  pathBytes = 0;
  samples = 0;
  dropped = 0;
  truncated = 0;
  constructor(readonly dir: string) {
    for (const [name, dtype] of SAMPLE_COLUMNS)
      this.cols[name] = new ColumnWriter(
        dir,
        name,
        dtype,
        name === "input_ids" || name === "labels" ? 1 << 22 : 1 << 18,
      );
  }
  async open(): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    for (const c of Object.values(this.cols)) await c.openFile();
    await this.cols.tok_offset.push(0);
    await this.cols.img_offset.push(0);
    await this.cols.img_path_offset.push(0);
  }
  async write(b: SampleBatch): Promise<void> {
    const c = this.cols;
    if (b.imgW.length) {
      if (this.contextId >= 0 && b.imgContextId !== this.contextId)
        throw new Error(
          `batch ${b.seq}: image context token ${b.imgContextId}, earlier batches used ${this.contextId}`,
        );
      this.contextId = b.imgContextId;
    }
    for (let j = 0; j < b.imgFrame.length; j++) if (b.imgFrame[j] === 0) this.videos++;
    for (let k = 0; k < b.count; k++) {
      this.tokens += b.length[k];
      this.stored += b.stored[k];
      this.images += b.imgCount[k];
      await c.tok_offset.push(this.stored);
      await c.img_offset.push(this.images);
    }
    await c.length.pushArray(b.length);
    await c.learned.pushArray(b.learned);
    await c.line.pushArray(b.line);
    await c.flags.pushArray(b.flags);
    await c.input_ids.pushArray(b.inputIds);
    await c.labels.pushArray(b.labels);
    await c.img_w.pushArray(b.imgW);
    await c.img_h.pushArray(b.imgH);
    await c.img_cols.pushArray(b.imgCols);
    await c.img_rows.pushArray(b.imgRows);
    await c.img_tiles.pushArray(b.imgTiles);
    await c.img_thumbnail.pushArray(b.imgThumb);
    await c.img_frame.pushArray(b.imgFrame);
    await c.img_context_start.pushArray(b.imgContext);
    for (const p of b.imgPaths) {
      const bytes = Buffer.from(p, "utf8");
      await c.img_paths.pushArray(bytes);
      this.pathBytes += bytes.length;
      await c.img_path_offset.push(this.pathBytes);
    }
    this.samples += b.count;
    this.dropped += b.dropped;
    this.truncated += b.truncated;
  }
  async close(): Promise<Record<string, ColumnSpec>> {
    const out: Record<string, ColumnSpec> = {};
    for (const [name, c] of Object.entries(this.cols)) out[name] = await c.close();
    return out;
  }
  async abort(): Promise<void> {
    for (const c of Object.values(this.cols)) await c.abort();
  }
}

/** A pool of prepare workers that returns batches in the order they were sent. */
class Pool {
  private workers: Worker[] = [];
  private next = 0;
  private waiting = new Map<
    number,
    { resolve: (b: LinesBatch) => void; reject: (e: Error) => void }
  >();
  private failed?: Error;
  get size(): number {
    return this.workers.length;
  }
  constructor(n: number) {
    const url = new URL("./prepare-worker.ts", import.meta.url);
    for (let i = 0; i < n; i++) {
      // Register tsx's loader inside the worker, then load the TypeScript module: works
      // whether the parent runs under tsx, vitest or plain node.
      const boot = `import(${JSON.stringify(TSX_API)}).then((m) => { m.register(); return import(${JSON.stringify(url.href)}); })`;
      const w = new Worker(boot, { eval: true });
      w.on("message", (m: { type: string; made?: LinesBatch; message?: string }) => {
        if (m.type === "batch" && m.made) {
          const p = this.waiting.get(m.made.batch.seq);
          this.waiting.delete(m.made.batch.seq);
          p?.resolve(m.made);
        } else this.fail(new Error(`prepare worker: ${m.message}`));
      });
      w.on("error", (e) => this.fail(e));
      w.on("exit", (code) => {
        if (code !== 0) this.fail(new Error(`prepare worker exited with code ${code}`));
      });
      this.workers.push(w);
    }
  }
  private fail(e: Error): void {
    this.failed ??= e;
    for (const p of this.waiting.values()) p.reject(e);
    this.waiting.clear();
  }
  dataset(
    key: string,
    makerModule: string,
    options: MakerOptions,
    tokensPerTile: number,
    file: string,
  ): void {
    for (const w of this.workers)
      w.postMessage({ type: "dataset", key, makerModule, options, tokensPerTile, file });
  }
  run(key: string, seq: number, lines: Lines): Promise<LinesBatch> {
    if (this.failed) return Promise.reject(this.failed);
    const w = this.workers[this.next++ % this.workers.length];
    return new Promise((res, rej) => {
      this.waiting.set(seq, { resolve: res, reject: rej });
      w.postMessage({ type: "batch", key, seq, lines });
    });
  }
  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}

async function loadSpecs(
  meta: string | DatasetSpec[],
  mediaRoot: string | undefined,
): Promise<DatasetSpec[]> {
  return typeof meta === "string" ? loadMeta(meta, { mediaRoot }) : meta;
}

function readManifest(cacheDir: string): CacheManifest | null {
  const p = join(cacheDir, "manifest.json");
  if (!existsSync(p)) return null;
  try {
    const m = JSON.parse(readFileSync(p, "utf8")) as CacheManifest;
    return m.format === "tessera-cache" && m.version === CACHE_VERSION ? m : null;
  } catch {
    return null;
  }
}

/**
 * Build (or bring up to date) the prepared cache of a meta file: each dataset whose
 * fingerprint changed is rebuilt into a fresh folder, the others are kept; the manifest is
 * replaced last, atomically. Memory stays constant: records stream in, columns stream out.
 */
export async function prepareCache(o: PrepareOptions): Promise<PrepareResult> {
  // One writer per cache: a second prepare is refused, naming the holder (or, for the nodes
  // of one multi-node run, waits for it).
  const lock = o.waitForLock
    ? await lockFolderWaiting(resolve(o.cacheDir), "cache", "data prepare")
    : lockFolder(resolve(o.cacheDir), "cache", "data prepare");
  try {
    return await prepareLocked(o);
  } finally {
    lock.release();
  }
}

async function prepareLocked(o: PrepareOptions): Promise<PrepareResult> {
  const cacheDir = resolve(o.cacheDir);
  const specs = await loadSpecs(o.meta, o.mediaRoot);
  if (specs.length === 0) throw new UserError("the meta file names no datasets");
  const info = loadModelInfo(o.model, { template: o.template, maxDynamicPatch: o.maxDynamicPatch });
  await mkdir(cacheDir, { recursive: true });
  const old = readManifest(cacheDir);
  const nWorkers = o.workers ?? defaultPrepareWorkers();
  const makerModule = o.makerModule ?? DEFAULT_MAKER;
  const batchSize = o.batchSize ?? PREPARE_BATCH_SIZE;
  let pool: Pool | undefined;
  const entries: CacheDatasetEntry[] = [];
  const rebuilt: string[] = [];
  const reused: string[] = [];
  let first = 0;
  try {
    for (const spec of specs) {
      const inputs = datasetInputs(spec, info, o);
      const fp = hashJson(inputs);
      const dirName = `ds-${safeName(spec.name)}-${fp.slice(0, 12)}`;
      const dsDir = join(cacheDir, dirName);
      const frames = videoFramesOf(spec, o.videoFrames);
      const prev = old?.datasets.find(
        (d) =>
          d.dir === dirName &&
          d.fingerprint === fp &&
          (d.videos === 0 || d.video_frames === frames),
      );
      let entry: Omit<CacheDatasetEntry, "first_sample" | "repeat_time">;
      if (prev && existsSync(join(dsDir, "dataset.json")) && hasChecksums(dsDir)) {
        entry = prev;
        reused.push(spec.name);
        o.onProgress?.({
          dataset: spec.name,
          records: 0,
          samples: prev.samples,
          done: true,
          reused: true,
        });
      } else {
        if (nWorkers > 0 && !pool) pool = new Pool(nWorkers);
        entry = await buildDataset(
          spec,
          inputs,
          fp,
          dsDir,
          dirName,
          info,
          o,
          makerModule,
          batchSize,
          pool,
        );
        rebuilt.push(spec.name);
      }
      entries.push({ ...entry, first_sample: first, repeat_time: spec.repeatTime });
      first += entry.samples;
    }
  } finally {
    await pool?.close();
  }
  const manifest: CacheManifest = {
    format: "tessera-cache",
    version: CACHE_VERSION,
    fingerprint: hashJson(entries.map((e) => [e.name, e.fingerprint])),
    tokens_per_tile: info.tokensPerTile,
    max_length: o.maxLength,
    samples: first,
    tokens: entries.reduce((a, e) => a + e.tokens, 0),
    images: entries.reduce((a, e) => a + e.images, 0),
    datasets: entries,
  };
  await writeFileAtomic(join(cacheDir, "manifest.json"), `${JSON.stringify(manifest, null, 2)}\n`);
  // Folders the new manifest does not name (older fingerprints, crashed writes) go last.
  const keep = new Set(entries.map((e) => e.dir));
  for (const f of await readdir(cacheDir)) {
    if ((f.startsWith("ds-") && !keep.has(f)) || (f.startsWith(".ds-") && f.includes(".tmp-"))) {
      await rm(join(cacheDir, f), { recursive: true, force: true });
    }
  }
  return { manifest, rebuilt, reused };
}

/** True when every column of a dataset folder carries its checksum (older caches are rebuilt). */
function hasChecksums(dsDir: string): boolean {
  try {
    const info = JSON.parse(readFileSync(join(dsDir, "dataset.json"), "utf8")) as {
      columns: Record<string, ColumnSpec>;
    };
    return Object.values(info.columns).every((c) => typeof c.sha256 === "string");
  } catch {
    return false;
  }
}

async function buildDataset(
  spec: DatasetSpec,
  inputs: Record<string, unknown>,
  fp: string,
  dsDir: string,
  dirName: string,
  info: ModelInfo,
  o: PrepareOptions,
  makerModule: string,
  batchSize: number,
  pool: Pool | undefined,
): Promise<Omit<CacheDatasetEntry, "first_sample" | "repeat_time">> {
  const tmp = join(o.cacheDir, `.${dirName}.tmp-${process.pid}-${Date.now()}`);
  const w = new DatasetWriter(tmp);
  const makerOptions: MakerOptions = {
    model: info.dir,
    maxLength: o.maxLength,
    maxDynamicPatch: o.maxDynamicPatch,
    videoFrames: videoFramesOf(spec, o.videoFrames),
    template: o.template,
    truncate: o.truncate,
    dataset: {
      name: spec.name,
      mediaRoot: spec.mediaRoot,
      annotation: spec.annotation,
      metaPath: spec.metaPath,
      repeatTime: spec.repeatTime,
      extra: spec.extra ?? {},
    },
  };
  const file = displayPath(spec.annotation);
  let skipped = 0;
  let records = 0;
  let pairs = 0;
  let preference = false;
  const errors: { line: number; message: string }[] = [];
  try {
    await w.open();
    let local: ((lines: Lines, seq: number) => Promise<LinesBatch>) | undefined;
    if (pool) pool.dataset(fp, makerModule, makerOptions, info.tokensPerTile, file);
    else {
      const mod = (await import(makerModule)) as MakerModule;
      const maker = await mod.createSampleMaker(makerOptions);
      local = (lines, seq) => makeLinesBatch(seq, lines, file, maker, info.tokensPerTile);
    }
    // This thread only splits lines and writes columns; workers parse, validate and make
    // samples. Bounded in-flight batches, written in order: constant memory, deterministic.
    const inflight: Promise<LinesBatch>[] = [];
    const maxInflight = pool ? 4 * pool.size : 1;
    const totalBytes = statSync(spec.annotation).size;
    let bytes = 0;
    let seq = 0;
    let texts: string[] = [];
    let first = 1;
    let lastUnterminated = false;
    const drain = async (keep: number) => {
      while (inflight.length > keep) {
        const made = await inflight.shift()!;
        const b = made.batch;
        records += made.records;
        skipped += made.skipped;
        pairs += made.pairs;
        errors.push(...b.errors);
        await w.write(b);
        o.onProgress?.({ dataset: spec.name, records, samples: w.samples, bytes, totalBytes });
      }
    };
    const send = async () => {
      if (!texts.length) return;
      const lines: Lines = { first, texts, lastUnterminated };
      first += texts.length;
      texts = [];
      inflight.push(pool ? pool.run(fp, seq++, lines) : local!(lines, seq++));
      await drain(maxInflight - 1);
    };
    for await (const batch of readLineBatches(spec.annotation, {
      onBytes: (n) => {
        bytes += n;
      },
    }))
      for (const l of batch) {
        if (l.tooLong)
          throw new UserError(
            `${file}:${l.line}: the line is longer than ${MAX_LINE_CHARS} characters; it cannot be a record (\`tessera data check\` lists such lines)`,
          );
        texts.push(l.text);
        lastUnterminated = l.unterminated;
        if (texts.length >= batchSize) await send();
      }
    await send();
    await drain(0);
    if (errors.length) {
      const shown = errors.slice(0, 10).map((e) => `  ${file}:${e.line}: ${e.message}`);
      throw new UserError(
        `${errors.length} record(s) of dataset "${spec.name}" could not become samples:\n${shown.join("\n")}${errors.length > 10 ? `\n  … and ${errors.length - 10} more` : ""}`,
      );
    }
    preference = pairs > 0 || spec.extra?.preference === true;
    if (preference && pairs !== records)
      throw new UserError(
        `dataset "${spec.name}" (${file}): ${pairs} preference pair(s) and ${records - pairs} conversation record(s); a dataset holds one kind (put them in two datasets)`,
      );
    const columns = await w.close();
    const ds = {
      name: spec.name,
      fingerprint: fp,
      inputs,
      samples: w.samples,
      tokens: w.tokens,
      stored_tokens: w.stored,
      images: w.images,
      img_context_id: w.contextId,
      videos: w.videos,
      video_frames: videoFramesOf(spec, o.videoFrames),
      path_bytes: w.pathBytes,
      ...(preference ? { preference: true } : {}),
      columns,
    };
    await writeFile(join(tmp, "dataset.json"), `${JSON.stringify(ds, null, 2)}\n`);
    await rm(dsDir, { recursive: true, force: true });
    await rename(tmp, dsDir);
  } catch (e) {
    await w.abort();
    // The partial folder goes, whatever failed (a full disk would otherwise keep it).
    await rm(tmp, { recursive: true, force: true });
    throw namedWriteError(e, `${tmp} (dataset ${spec.name}; the partial folder was removed)`);
  }
  o.onProgress?.({ dataset: spec.name, records, samples: w.samples, done: true });
  return {
    name: spec.name,
    dir: dirName,
    fingerprint: fp,
    samples: w.samples,
    tokens: w.tokens,
    stored_tokens: w.stored,
    images: w.images,
    img_context_id: w.contextId,
    videos: w.videos,
    video_frames: videoFramesOf(spec, o.videoFrames),
    annotation: resolve(spec.annotation),
    media_root: spec.mediaRoot,
    skipped,
    dropped: w.dropped,
    truncated: w.truncated,
    ...(preference ? { preference: true } : {}),
  };
}

/** Open a cache's manifest, or say how to make one. */
export function openManifest(cacheDir: string): CacheManifest {
  const m = readManifest(resolve(cacheDir));
  if (!m)
    throw new UserError(`${cacheDir}: no prepared cache here (run \`tessera data prepare\` first)`);
  return m;
}

/**
 * The per-sample columns the planner needs, over all datasets in global order, plus random
 * access to labels and image spans for concat packing. `repeatTimes` overrides the manifest's.
 */
export function openCacheTable(
  cacheDir: string,
  repeatTimes?: Record<string, number>,
): SampleTable & { manifest: CacheManifest } {
  const root = resolve(cacheDir);
  const m = openManifest(root);
  const n = m.samples;
  const lengths = new Int32Array(n);
  const learned = new Int32Array(n);
  const tiles = new Int32Array(n);
  const images = new Int32Array(n);
  const multimodal = new Uint8Array(n);
  const perDs: {
    dir: string;
    first: number;
    tokOffset: Float64Array;
    imgOffset: Float64Array;
    ctx: Int32Array;
    imgTiles: Int32Array;
  }[] = [];
  for (const d of m.datasets) {
    const dir = join(root, d.dir);
    const info = JSON.parse(readFileSync(join(dir, "dataset.json"), "utf8")) as {
      fingerprint: string;
      columns: Record<string, ColumnSpec>;
    };
    if (info.fingerprint !== d.fingerprint)
      throw new UserError(
        `${dir}: fingerprint differs from the manifest; run \`tessera data prepare\` again`,
      );
    const c = (name: string) => readColumn(dir, info.columns[name]);
    lengths.set(c("length") as Int32Array, d.first_sample);
    learned.set(c("learned") as Int32Array, d.first_sample);
    const flags = c("flags") as Uint8Array;
    const imgOffset = c("img_offset") as Float64Array;
    const imgTiles = c("img_tiles") as Int32Array;
    for (let k = 0; k < d.samples; k++) {
      const i = d.first_sample + k;
      multimodal[i] = flags[k] & FLAG_MULTIMODAL;
      let t = 0;
      for (let j = imgOffset[k]; j < imgOffset[k + 1]; j++) t += imgTiles[j];
      tiles[i] = t;
      images[i] = imgOffset[k + 1] - imgOffset[k];
    }
    perDs.push({
      dir,
      first: d.first_sample,
      tokOffset: c("tok_offset") as Float64Array,
      imgOffset,
      ctx: c("img_context_start") as Int32Array,
      imgTiles,
    });
  }
  const locate = (s: number) => {
    let lo = 0;
    let hi = perDs.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (perDs[mid].first <= s) lo = mid;
      else hi = mid - 1;
    }
    return perDs[lo];
  };
  const tpt = m.tokens_per_tile;
  const datasets: MixtureDataset[] = m.datasets.map((d) => ({
    name: d.name,
    first: d.first_sample,
    count: d.samples,
    repeatTime: repeatTimes?.[d.name] ?? d.repeat_time,
  }));
  return {
    manifest: m,
    cacheDir: root,
    fingerprint: m.fingerprint,
    datasets,
    lengths,
    learned,
    tiles,
    images,
    multimodal,
    learnedIn: (s, start, end) => {
      const d = locate(s);
      const k = s - d.first;
      // A piece's first token has nothing before it in its row to be predicted from: the
      // engine learns the labels after it, so those are what the plan counts.
      const from = start + 1;
      if (from >= end) return 0;
      // Stored labels leave the context runs out (all −100): map the token range onto them.
      const stored = (p: number) => {
        let q = p;
        for (let j = d.imgOffset[k]; j < d.imgOffset[k + 1]; j++) {
          const a = d.ctx[j];
          q -= Math.max(0, Math.min(p, a + d.imgTiles[j] * tpt) - a);
        }
        return q;
      };
      const lo = stored(from);
      const labels = readInt32At(join(d.dir, "labels.i32"), d.tokOffset[k] + lo, stored(end) - lo);
      let n = 0;
      for (const l of labels) if (l !== -100) n++;
      return n;
    },
    tileSpanIn: (s, start, end) => {
      const d = locate(s);
      const k = s - d.first;
      let t = 0;
      for (let j = d.imgOffset[k]; j < d.imgOffset[k + 1]; j++) {
        const a = d.ctx[j];
        const lo = Math.max(a, start);
        const hi = Math.min(a + d.imgTiles[j] * tpt, end);
        if (lo < hi) t += Math.ceil((hi - a) / tpt) - Math.floor((lo - a) / tpt);
      }
      return t;
    },
    tilesIn: (s, start, end) => {
      const d = locate(s);
      const k = s - d.first;
      let t = 0;
      for (let j = d.imgOffset[k]; j < d.imgOffset[k + 1]; j++) {
        const a = d.ctx[j];
        const b = a + d.imgTiles[j] * tpt;
        if (a < end && b > start) t += d.imgTiles[j];
      }
      return t;
    },
  };
}
