/**
 * `tessera data stats`: per dataset and overall, what one epoch holds: records after
 * repeat_time, images per record, image sizes, turns and (given a length function from the
 * text layer) token lengths, with percentiles and terminal histograms.
 */
import { stat } from "node:fs/promises";
import { HeaderReader } from "../vision/headers.ts";
import { displayPath, readRecords } from "./jsonl.ts";
import { resolveMediaPath } from "./media.ts";
import { type DatasetSpec, loadMeta, selectedRecordCount } from "./meta.ts";
import type { DataRecord } from "./record.ts";

/** A growable list of numbers (one per record or per image), in file order. */
export class NumList {
  data = new Float64Array(1024);
  length = 0;
  push(v: number): void {
    if (this.length === this.data.length) {
      const d = new Float64Array(this.data.length * 2);
      d.set(this.data);
      this.data = d;
    }
    this.data[this.length++] = v;
  }
  values(n = this.length): Float64Array {
    return this.data.subarray(0, Math.min(n, this.length));
  }
}

export interface Summary {
  count: number;
  min: number;
  max: number;
  mean: number;
  p50: number;
  p90: number;
  p95: number;
  p99: number;
}

export interface Histogram {
  /** Bin edges (bins + 1 of them); a value v falls in [edges[i], edges[i+1]), the last bin is closed. */
  edges: number[];
  counts: number[];
}

/** Weighted groups of values: each group's values count `weight` times (repeat_time). */
export type Weighted = { values: Float64Array; weight: number }[];

function sortedPairs(groups: Weighted): { v: Float64Array; w: Float64Array; total: number } {
  let n = 0;
  for (const g of groups) for (const x of g.values) if (!Number.isNaN(x)) n++;
  const idx = new Uint32Array(n);
  const v = new Float64Array(n);
  const w = new Float64Array(n);
  let k = 0;
  for (const g of groups)
    for (let i = 0; i < g.values.length; i++) {
      if (Number.isNaN(g.values[i])) continue;
      v[k] = g.values[i];
      w[k] = g.weight;
      idx[k] = k;
      k++;
    }
  idx.sort((a, b) => v[a] - v[b]);
  const sv = new Float64Array(n);
  const sw = new Float64Array(n);
  let total = 0;
  for (let i = 0; i < n; i++) {
    sv[i] = v[idx[i]];
    sw[i] = w[idx[i]];
    total += sw[i];
  }
  return { v: sv, w: sw, total };
}

/** Count, extremes, mean and nearest-rank percentiles of weighted values; undefined when empty. */
export function summarize(groups: Weighted): Summary | undefined {
  const { v, w, total } = sortedPairs(groups);
  if (v.length === 0 || total === 0) return undefined;
  let sum = 0;
  for (let i = 0; i < v.length; i++) sum += v[i] * w[i];
  const q = (p: number) => {
    const target = Math.max(1, Math.ceil(p * total));
    let acc = 0;
    for (let i = 0; i < v.length; i++) {
      acc += w[i];
      if (acc >= target) return v[i];
    }
    return v[v.length - 1];
  };
  return {
    count: total,
    min: v[0],
    max: v[v.length - 1],
    mean: sum / total,
    p50: q(0.5),
    p90: q(0.9),
    p95: q(0.95),
    p99: q(0.99),
  };
}

/** Equal-width bins from min to max (integer-wide bins when the values are integers). */
export function histogram(groups: Weighted, bins = 12): Histogram | undefined {
  let min = Number.POSITIVE_INFINITY;
  let max = Number.NEGATIVE_INFINITY;
  let ints = true;
  for (const g of groups)
    for (const x of g.values) {
      if (Number.isNaN(x)) continue;
      if (x < min) min = x;
      if (x > max) max = x;
      if (ints && !Number.isInteger(x)) ints = false;
    }
  if (min > max) return undefined;
  // Integers: bins [lo, hi) covering min..max; reals: bins of (max-min)/bins, the last closed.
  const width = ints ? Math.max(1, Math.ceil((max - min + 1) / bins)) : (max - min) / bins || 1;
  const n = ints ? Math.ceil((max - min + 1) / width) : max > min ? bins : 1;
  const counts = new Array<number>(n).fill(0);
  for (const g of groups)
    for (const x of g.values)
      if (!Number.isNaN(x)) counts[Math.min(n - 1, Math.floor((x - min) / width))] += g.weight;
  const edges = Array.from({ length: n + 1 }, (_, i) => min + i * width);
  if (!ints) edges[n] = Math.max(max, edges[n]);
  return { edges, counts };
}

/** A histogram as text bars, one line a bin. */
export function renderHistogram(
  h: Histogram,
  barWidth = 40,
  fmt = (x: number) => String(Math.round(x)),
): string[] {
  const peak = Math.max(1, ...h.counts);
  const labels = h.counts.map((_, i) => `${fmt(h.edges[i])}–${fmt(h.edges[i + 1])}`);
  const lw = Math.max(...labels.map((l) => l.length));
  return h.counts.map((c, i) => {
    const n = (c / peak) * barWidth;
    const bar = "█".repeat(Math.floor(n)) + (n % 1 >= 0.5 ? "▌" : "");
    return `${labels[i].padStart(lw)} │${bar} ${c}`;
  });
}

export interface DatasetStats {
  name: string;
  annotation: string;
  repeatTime: number;
  /** Usable records in the file. */
  records: number;
  /** Records one epoch takes (after repeat_time). */
  selected: number;
  /** Lines that are not usable records (run `tessera data check`). */
  invalid: number;
  multimodal: number;
  text: number;
  video: number;
  /** Preference records (question, chosen, rejected); their token length is both sides'. */
  pairs?: number;
  /** Records by image count, as "0", "1", "2", ... */
  imagesPerRecord: Record<string, number>;
  /** Over the images of the records one epoch takes. */
  width?: Summary;
  height?: Summary;
  megapixels?: Summary;
  /** Images with neither image_wh nor a header read (see `headers`). */
  imagesWithoutSize: number;
  /** Turns per record (system turn included). */
  turns?: Summary;
  /** Token lengths, when a length function is given (records that cannot be planned left out). */
  tokens?: Summary;
  tokenHistogram?: Histogram;
  /** Records whose length could not be computed, and the first reason. */
  tokenErrors?: number;
  tokenError?: string;
}

export interface StatsReport {
  datasets: DatasetStats[];
  overall: Omit<DatasetStats, "name" | "annotation" | "repeatTime">;
}

/**
 * Token lengths of a batch of records (from the text layer's recordsToColumns): null for a
 * record that does not fit max_length. May throw for records that cannot be planned.
 */
export type LengthsFn = (records: DataRecord[], spec: DatasetSpec) => Promise<(number | null)[]>;

export interface StatsOptions {
  /** With a lone JSONL: the folder its media paths are relative to. */
  mediaRoot?: string;
  /** Read image headers for images that have no image_wh. */
  headers?: boolean;
  /** Token lengths of records; adds token percentiles and a histogram. */
  lengthsOf?: LengthsFn;
  concurrency?: number;
  onProgress?: (done: number, total: number) => void;
}

interface Collected {
  s: DatasetStats;
  /** Per record, in file order. */
  turns: NumList;
  tokens: NumList;
  images: NumList;
  unsized: NumList;
  /** Per image with a known size, and the index of the record it belongs to. */
  w: NumList;
  h: NumList;
  imgRecord: NumList;
}

const WINDOW = 512;

async function collect(
  spec: DatasetSpec,
  opts: StatsOptions,
  reader: HeaderReader,
  onBytes: (n: number) => void,
): Promise<Collected> {
  const s: DatasetStats = {
    name: spec.name,
    annotation: displayPath(spec.annotation),
    repeatTime: spec.repeatTime,
    records: 0,
    selected: 0,
    invalid: 0,
    multimodal: 0,
    text: 0,
    video: 0,
    imagesPerRecord: {},
    imagesWithoutSize: 0,
  };
  const c: Collected = {
    s,
    turns: new NumList(),
    tokens: new NumList(),
    images: new NumList(),
    unsized: new NumList(),
    w: new NumList(),
    h: new NumList(),
    imgRecord: new NumList(),
  };
  let window: DataRecord[] = [];
  for await (const item of readRecords(spec, { onBytes })) {
    const rec = item.record;
    if (!rec) {
      if (item.issues.some((i) => i.severity === "error")) s.invalid++;
      continue;
    }
    window.push(rec);
    if (window.length >= WINDOW) {
      await flush(spec, window, opts, reader, c);
      window = [];
    }
  }
  await flush(spec, window, opts, reader, c);
  s.selected = selectedRecordCount(s.records, spec.repeatTime);
  return c;
}

/** Sizes from headers for records without image_wh (all or nothing per record). */
async function headerSizes(
  spec: DatasetSpec,
  rec: DataRecord,
  reader: HeaderReader,
): Promise<[number, number][] | undefined> {
  const got = await Promise.all(
    rec.images.map(async (p) => {
      try {
        const h = await reader.get(resolveMediaPath(spec, p));
        return [h.width, h.height] as [number, number];
      } catch {
        return undefined;
      }
    }),
  );
  return got.every((x) => x !== undefined) ? (got as [number, number][]) : undefined;
}

async function flush(
  spec: DatasetSpec,
  window: DataRecord[],
  opts: StatsOptions,
  reader: HeaderReader,
  c: Collected,
): Promise<void> {
  if (window.length === 0) return;
  if (opts.headers) {
    const sizes = await Promise.all(
      window.map((r) =>
        r.images.length > 0 && !r.imageWh ? headerSizes(spec, r, reader) : undefined,
      ),
    );
    for (let i = 0; i < window.length; i++) {
      const wh = sizes[i];
      if (wh) window[i] = { ...window[i], imageWh: wh };
    }
  }
  const s = c.s;
  for (const rec of window) {
    const index = s.records++;
    c.turns.push(rec.conversations.length);
    c.images.push(rec.images.length);
    if (rec.images.length > 0 || rec.video !== undefined) s.multimodal++;
    else s.text++;
    if (rec.video !== undefined) s.video++;
    if (rec.pair) s.pairs = (s.pairs ?? 0) + 1;
    if (rec.imageWh) {
      c.unsized.push(0);
      for (const [w, h] of rec.imageWh) {
        c.w.push(w);
        c.h.push(h);
        c.imgRecord.push(index);
      }
    } else c.unsized.push(rec.images.length);
  }
  if (opts.lengthsOf) {
    let lengths: (number | null)[];
    try {
      lengths = await opts.lengthsOf(window, spec);
    } catch {
      // Find the records that cannot be planned, one by one; the others still count.
      lengths = [];
      for (const r of window) {
        try {
          lengths.push((await opts.lengthsOf([r], spec))[0]);
        } catch (e) {
          s.tokenErrors = (s.tokenErrors ?? 0) + 1;
          s.tokenError ??= (e as Error).message;
          lengths.push(null);
        }
      }
    }
    for (const l of lengths) c.tokens.push(l ?? Number.NaN);
  }
}

/** Values of one per-image list that belong to the first `n` records. */
function imageValues(c: Collected, list: NumList, n: number): Float64Array {
  if (n >= c.s.records) return list.values();
  const out = new NumList();
  for (let i = 0; i < c.imgRecord.length; i++) if (c.imgRecord.data[i] < n) out.push(list.data[i]);
  return out.values();
}

type Totals = Omit<DatasetStats, "name" | "annotation" | "repeatTime">;

/**
 * Figures over what one epoch takes: a fraction keeps the first `selected` records, an
 * integer repeat counts each record that many times (so the overall mix is weighted).
 */
function totals(
  groups: { c: Collected; n: number; weight: number }[],
  withTokens: boolean,
): Totals {
  const g = (f: (x: (typeof groups)[number]) => Float64Array): Weighted =>
    groups.map((x) => ({ values: f(x), weight: x.weight }));
  const ws = g((x) => imageValues(x.c, x.c.w, x.n));
  const hs = g((x) => imageValues(x.c, x.c.h, x.n));
  const mp: Weighted = ws.map((x, i) => ({
    values: x.values.map((w, k) => (w * hs[i].values[k]) / 1e6),
    weight: x.weight,
  }));
  const imagesPerRecord: Record<string, number> = {};
  let imagesWithoutSize = 0;
  for (const x of groups) {
    const im = x.c.images.values(x.n);
    const un = x.c.unsized.values(x.n);
    for (let i = 0; i < im.length; i++) {
      imagesPerRecord[im[i]] = (imagesPerRecord[im[i]] ?? 0) + x.weight;
      imagesWithoutSize += un[i] * x.weight;
    }
  }
  const sum = (f: (x: DatasetStats) => number) => groups.reduce((a, x) => a + f(x.c.s), 0);
  const out: Totals = {
    records: sum((s) => s.records),
    selected: sum((s) => s.selected),
    invalid: sum((s) => s.invalid),
    multimodal: sum((s) => s.multimodal),
    ...(groups.some((x) => x.c.s.pairs) ? { pairs: sum((s) => s.pairs ?? 0) } : {}),
    text: sum((s) => s.text),
    video: sum((s) => s.video),
    imagesPerRecord,
    width: summarize(ws),
    height: summarize(hs),
    megapixels: summarize(mp),
    imagesWithoutSize,
    turns: summarize(g((x) => x.c.turns.values(x.n))),
  };
  if (withTokens) {
    const tokens = g((x) => x.c.tokens.values(x.n));
    out.tokens = summarize(tokens);
    out.tokenHistogram = histogram(tokens);
    const errs = groups.reduce((a, x) => a + (x.c.s.tokenErrors ?? 0), 0);
    if (errs) {
      out.tokenErrors = errs;
      out.tokenError = groups.find((x) => x.c.s.tokenError)?.c.s.tokenError;
    }
  }
  return out;
}

export async function computeStats(
  metaPath: string,
  opts: StatsOptions = {},
): Promise<StatsReport> {
  const specs = await loadMeta(metaPath, { mediaRoot: opts.mediaRoot });
  const reader = new HeaderReader(opts.concurrency ?? 64);
  let total = 0;
  for (const s of specs) total += (await stat(s.annotation)).size;
  let done = 0;
  const onBytes = (n: number) => {
    done += n;
    opts.onProgress?.(done, total);
  };
  const all: { c: Collected; n: number; weight: number }[] = [];
  for (const spec of specs) {
    const c = await collect(spec, opts, reader, onBytes);
    const rt = spec.repeatTime;
    all.push({ c, n: rt < 1 ? c.s.selected : c.s.records, weight: Math.max(1, rt) });
  }
  const withTokens = opts.lengthsOf !== undefined;
  const datasets = all.map((x) => ({
    name: x.c.s.name,
    annotation: x.c.s.annotation,
    repeatTime: x.c.s.repeatTime,
    ...totals([x], withTokens),
  }));
  return { datasets, overall: totals(all, withTokens) };
}
