/**
 * Image sizes from file headers only: the first bytes of a file are read and parsed by the
 * image-size package; pixels are never decoded. Sizes are the stored width and height, as
 * PIL's Image.open(...).size reports them (EXIF orientation is not applied, as in training).
 */
import { close as fsClose, open as fsOpen, read as fsRead } from "node:fs";
import { imageSize } from "image-size";

export interface ImageHeader {
  width: number;
  height: number;
  /** Format as image-size names it: png, jpg, webp, gif, bmp, tiff, ... */
  type: string;
}

/**
 * Pixels an image may have: Pillow's `Image.MAX_IMAGE_PIXELS` (training decodes with Pillow,
 * which warns of a decompression bomb above it and refuses above twice it). A header that
 * declares more is refused from the header alone, before anything decodes it.
 */
export const MAX_IMAGE_PIXELS = 89_478_485;

/** Formats training decodes (as image-size names them); vector (SVG) and others are refused. */
export const RASTER_TYPES: ReadonlySet<string> = new Set([
  "png",
  "jpg",
  "gif",
  "bmp",
  "tiff",
  "webp",
]);

/** What is wrong with an image whose header was read, or null: a non-raster format, too many pixels. */
export function headerProblem(h: ImageHeader): {
  kind: "not-raster" | "too-many-pixels";
  message: string;
  expected: string;
  found: string;
} | null {
  if (!RASTER_TYPES.has(h.type))
    return {
      kind: "not-raster",
      message: `a ${h.type.toUpperCase()} file is not an image training can decode`,
      expected: [...RASTER_TYPES].join(", "),
      found: h.type,
    };
  if (h.width * h.height > MAX_IMAGE_PIXELS)
    return {
      kind: "too-many-pixels",
      message: `the header declares ${h.width}×${h.height} pixels: a decompression bomb, refused before decoding`,
      expected: `at most ${MAX_IMAGE_PIXELS.toLocaleString("en-US")} pixels`,
      found: `${(h.width * h.height).toLocaleString("en-US")} pixels`,
    };
  return null;
}

/** Why a header could not be read: the file is missing, or it is not a readable image. */
export class ImageHeaderError extends Error {
  constructor(
    readonly kind: "missing" | "unreadable",
    readonly path: string,
    message: string,
  ) {
    super(message);
    this.name = "ImageHeaderError";
  }
}

/** Most formats put their size in the first bytes; JPEG's SOF can follow a large EXIF block. */
const FIRST_READ = 16 * 1024;
const MAX_READ = 4 * 1024 * 1024;

/** Reads the header of one image file. Throws ImageHeaderError. */
export async function readImageHeader(path: string): Promise<ImageHeader> {
  let size = FIRST_READ;
  for (;;) {
    const { buf, n } = await readHead(path, size);
    let lastError: Error;
    try {
      if (n === 0) throw new ImageHeaderError("unreadable", path, "the file is empty");
      const r = imageSize(buf.subarray(0, n));
      if (Number.isInteger(r.width) && Number.isInteger(r.height) && r.width > 0 && r.height > 0)
        return { width: r.width, height: r.height, type: r.type ?? "unknown" };
      lastError = new Error(`the header gives no size (${r.width}×${r.height})`);
    } catch (e) {
      if (e instanceof ImageHeaderError) throw e;
      lastError = e as Error;
    } finally {
      release(buf);
    }
    // Whole file seen, or an unknown format: no larger read will help.
    const unknown = /unsupported file type: undefined/.test(lastError.message);
    if (n < size || size >= MAX_READ || unknown)
      throw new ImageHeaderError(
        "unreadable",
        path,
        unknown
          ? "not a known image format (unrecognised header bytes)"
          : `not a readable image header: ${lastError.message}`,
      );
    size *= 8;
  }
}

// First-read buffers are reused: image-size keeps no reference to its input, and a fresh
// 16 KiB buffer per image would be most of the garbage a check makes.
const spare: Buffer[] = [];
function release(buf: Buffer): void {
  if (buf.length === FIRST_READ && spare.length < 256) spare.push(buf);
}

/** The first `size` bytes of a file. Callback fs calls: far less overhead than FileHandle. */
function readHead(path: string, size: number): Promise<{ buf: Buffer; n: number }> {
  return new Promise((resolve, reject) => {
    fsOpen(path, "r", (e, fd) => {
      if (e) {
        const missing = e.code === "ENOENT" || e.code === "ENOTDIR";
        reject(
          new ImageHeaderError(
            missing ? "missing" : "unreadable",
            path,
            missing ? "the file does not exist" : `cannot open the file: ${e.message}`,
          ),
        );
        return;
      }
      const buf = (size === FIRST_READ && spare.pop()) || Buffer.allocUnsafe(size);
      fsRead(fd, buf, 0, size, 0, (e2, n) => {
        fsClose(fd, () => {});
        if (e2) {
          release(buf);
          reject(new ImageHeaderError("unreadable", path, `cannot read the file: ${e2.message}`));
        } else resolve({ buf, n });
      });
    });
  });
}

/**
 * Reads headers with at most `concurrency` files open at once, each distinct path once
 * (results are kept in a bounded cache, so a path named by many records costs one read).
 */
export class HeaderReader {
  private readonly cache = new Map<string, Promise<ImageHeader>>();
  private running = 0;
  private readonly waiting: (() => void)[] = [];
  /** Distinct files actually read. */
  reads = 0;

  constructor(
    readonly concurrency = 64,
    readonly maxCached = 1_000_000,
  ) {}

  /** The header of `path` (cached). The promise rejects with ImageHeaderError. */
  get(path: string): Promise<ImageHeader> {
    let p = this.cache.get(path);
    if (p === undefined) {
      if (this.cache.size >= this.maxCached) this.cache.clear();
      p = this.schedule(path);
      // Avoid unhandled-rejection noise for callers that only look later.
      p.catch(() => {});
      this.cache.set(path, p);
    }
    return p;
  }

  /** Reads currently started or queued. */
  get pending(): number {
    return this.running + this.waiting.length;
  }

  private async schedule(path: string): Promise<ImageHeader> {
    if (this.running >= this.concurrency) await new Promise<void>((r) => this.waiting.push(r));
    this.running++;
    this.reads++;
    try {
      return await readImageHeader(path);
    } finally {
      this.running--;
      this.waiting.shift()?.();
    }
  }
}
