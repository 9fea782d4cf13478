/**
 * `data check --deep`: each image decoded once, fully, by the engine (Pillow, what loads the
 * pixels in training), so a file that only training would trip on (a truncated PNG, a corrupt
 * JPEG stream) is named by file:line now. Which images: all of them, or a sample of a fixed
 * size chosen by a hash of the path (the same images on every run, uniform over the dataset,
 * and the same whether one thread or many read the files).
 */

/** One image to decode: its path and the first record that names it. */
export interface DecodeEntry {
  abs: string;
  /** Dataset index and 1-based line of the first record naming it, and the field. */
  d: number;
  line: number;
  field: string;
  hash: number;
}

/** FNV-1a over the UTF-16 code units: a cheap, stable hash of a path. */
function hash32(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/**
 * The distinct images to decode: all of them (limit Infinity), or the `limit` whose path
 * hashes lowest (a bottom-k sample: mergeable across threads, the same on every run).
 * Memory holds at most 2 × limit entries.
 */
export class DecodeSample {
  private kept = new Map<string, DecodeEntry>();
  private threshold = Number.POSITIVE_INFINITY;
  /** Distinct images offered (an upper bound once entries were dropped). */
  constructor(readonly limit: number) {}

  offer(abs: string, d: number, line: number, field: string): void {
    const e = this.kept.get(abs);
    if (e) {
      if (d < e.d || (d === e.d && line < e.line)) Object.assign(e, { d, line, field });
      return;
    }
    const hash = hash32(abs);
    if (hash > this.threshold) return;
    this.kept.set(abs, { abs, d, line, field, hash });
    if (this.kept.size > 2 * this.limit) this.trim();
  }

  /** Adds entries found elsewhere (a worker thread), their lines shifted by `offset`. */
  merge(entries: DecodeEntry[], d: number, offset: number): void {
    for (const e of entries) this.offer(e.abs, d, e.line + offset, e.field);
  }

  private trim(): void {
    const all = [...this.kept.values()].sort((a, b) => a.hash - b.hash || (a.abs < b.abs ? -1 : 1));
    if (all.length <= this.limit) return;
    this.threshold = all[this.limit - 1].hash;
    this.kept = new Map(all.slice(0, this.limit).map((e) => [e.abs, e]));
  }

  /** The chosen images, in dataset and line order. */
  entries(): DecodeEntry[] {
    this.trim();
    return [...this.kept.values()].sort((a, b) => a.d - b.d || a.line - b.line);
  }
}

/** Distinct images decoded in full by default; above it, a sample of this many (`--deep` for all). */
export const DEEP_SAMPLE = 20_000;

export interface DecodeFailure {
  entry: DecodeEntry;
  message: string;
}

/** Decodes the entries in the engine; the ones that fail, with the decoder's message. */
export async function decodeInEngine(
  entries: DecodeEntry[],
  python: string,
  onProgress?: (done: number, total: number) => void,
): Promise<DecodeFailure[]> {
  if (!entries.length) return [];
  const { runEngine } = await import("../engine/protocol.ts");
  const r = (await runEngine(
    { kind: "decode-images", paths: entries.map((e) => e.abs) },
    {
      python,
      onEvent: (e) => {
        if (e.event === "progress") onProgress?.(Number(e.done), Number(e.total));
      },
    },
  )) as { failures: { index: number; message: string }[] };
  return r.failures.map((f) => ({ entry: entries[f.index], message: f.message }));
}

/** The engine's python when it is set up (`tessera setup`), else undefined. */
export async function enginePython(): Promise<string | undefined> {
  const { venvDir, venvExists, venvPython } = await import("../engine/venv.ts");
  const venv = venvDir();
  return venvExists(venv) ? venvPython(venv) : undefined;
}
