/** Image and video paths of records: resolved against media_root, kept inside it. */
import { readdirSync, realpathSync } from "node:fs";
import { basename, dirname, isAbsolute, relative, resolve, sep } from "node:path";
import { HeaderReader } from "../vision/headers.ts";
import type { DatasetSpec } from "./meta.ts";
import type { DataRecord } from "./record.ts";

export type MediaPathProblem = "absolute" | "escapes" | "symlink-escapes";

/** A media path that is not allowed; `kind` says why. */
export class MediaPathError extends Error {
  constructor(
    readonly kind: MediaPathProblem,
    readonly relPath: string,
    message: string,
  ) {
    super(message);
    this.name = "MediaPathError";
  }
}

export interface ResolveMediaOptions {
  /** Opt-in escape hatch: accept absolute paths and paths leading outside media_root. */
  allowOutside?: boolean;
  /**
   * Follow symlinks and refuse a file whose real location is outside media_root's real
   * location (default true). Costs one realpath per call; a file that does not exist is
   * returned as resolved, for the caller to report as missing.
   */
  checkSymlinks?: boolean;
}

const realRoots = new Map<string, string>();

function realRoot(root: string): string {
  let r = realRoots.get(root);
  if (r === undefined) {
    try {
      r = realpathSync.native(root);
    } catch {
      r = root;
    }
    realRoots.set(root, r);
  }
  return r;
}

function inside(root: string, p: string): boolean {
  if (p === root) return true;
  return p.startsWith(root.endsWith(sep) ? root : root + sep);
}

/**
 * The absolute path of `relPath` (as written in a record) under the dataset's media_root.
 * Throws MediaPathError for an absolute path, a `..` that climbs out, or a symlink that
 * leads out, unless `allowOutside` is set.
 */
export function resolveMediaPath(
  spec: Pick<DatasetSpec, "mediaRoot">,
  relPath: string,
  opts: ResolveMediaOptions = {},
): string {
  const root = spec.mediaRoot;
  if (isAbsolute(relPath)) {
    if (opts.allowOutside) return resolve(relPath);
    throw new MediaPathError(
      "absolute",
      relPath,
      `an absolute path is not allowed; paths are relative to media_root (${root})`,
    );
  }
  const abs = resolve(root, relPath);
  if (opts.allowOutside) return abs;
  if (!inside(root, abs))
    throw new MediaPathError(
      "escapes",
      relPath,
      `the path climbs out of media_root (${root}) with ".."`,
    );
  if (opts.checkSymlinks !== false) {
    let real: string;
    try {
      real = realpathSync.native(abs);
    } catch {
      return abs;
    }
    const rr = realRoot(root);
    if (!inside(rr, real))
      throw new MediaPathError(
        "symlink-escapes",
        relPath,
        `a symlink leads out of media_root (${root}) to ${real}`,
      );
  }
  return abs;
}

/**
 * The real location of `relPath` under media_root, by the rules of resolveMediaPath, with
 * every link (media_root's own included) resolved now: for long-lived servers, where a
 * symlink may appear after a first look. A missing file is returned as resolved.
 */
export function realMediaPath(spec: Pick<DatasetSpec, "mediaRoot">, relPath: string): string {
  const abs = resolveMediaPath(spec, relPath, { checkSymlinks: false });
  let real: string;
  try {
    real = realpathSync.native(abs);
  } catch {
    return abs;
  }
  let rr: string;
  try {
    rr = realpathSync.native(spec.mediaRoot);
  } catch {
    rr = spec.mediaRoot;
  }
  if (!inside(rr, real))
    throw new MediaPathError(
      "symlink-escapes",
      relPath,
      `a symlink leads out of media_root (${spec.mediaRoot}) to ${real}`,
    );
  return real;
}

/** What a MediaResolver knows of one directory. */
interface DirInfo {
  /** Lookups so far (the directory is listed once it has enough). */
  lookups: number;
  /** Names of its entries that are symlinks, once listed; null before. */
  links: Set<string> | null;
  /** True when the directory itself resolves inside media_root (false: check each file). */
  inside: boolean;
}

/** Lookups in one directory before it is listed once instead of resolved file by file. */
const LIST_AFTER = 64;

/**
 * resolveMediaPath for the many paths of one dataset (prepare's hot path). The same rules and
 * errors; the symlink check costs a map lookup instead of a realpath per file: a directory's
 * real location is resolved once, and a directory used often is listed once to learn which of
 * its entries are symlinks (only those are resolved). Entries that change after the listing
 * are not seen: it is for one pass over a dataset.
 */
export class MediaResolver {
  private dirs = new Map<string, DirInfo>();

  constructor(
    private readonly spec: Pick<DatasetSpec, "mediaRoot">,
    private readonly opts: ResolveMediaOptions = {},
  ) {}

  resolve(relPath: string): string {
    const o = this.opts;
    if (o.allowOutside || o.checkSymlinks === false || isAbsolute(relPath))
      return resolveMediaPath(this.spec, relPath, o);
    const root = this.spec.mediaRoot;
    const abs = resolve(root, relPath);
    if (!inside(root, abs)) return resolveMediaPath(this.spec, relPath, o); // throws "escapes"
    const dir = dirname(abs);
    let d = this.dirs.get(dir);
    if (d === undefined) {
      let realDir: string | null = null;
      try {
        realDir = realpathSync.native(dir);
      } catch {
        // A missing directory: its files are missing, reported by the caller.
      }
      d = { lookups: 0, links: null, inside: realDir === null || inside(realRoot(root), realDir) };
      if (realDir === null) d.links = new Set();
      this.dirs.set(dir, d);
    }
    if (!d.inside) return resolveMediaPath(this.spec, relPath, o);
    if (d.links === null && ++d.lookups >= LIST_AFTER) {
      d.links = new Set();
      try {
        for (const e of readdirSync(dir, { withFileTypes: true }))
          if (e.isSymbolicLink()) d.links.add(e.name);
      } catch {
        d.links = null;
        d.lookups = Number.NEGATIVE_INFINITY; // unreadable: resolve file by file
      }
    }
    // Not listed yet, or a symlink: the full check. A listed non-link is a file (or missing)
    // inside the directory, which is inside media_root.
    if (d.links === null || d.links.has(basename(abs)))
      return resolveMediaPath(this.spec, relPath, o);
    return abs;
  }
}

/** The same rule as a relative path check only (no file system access): true when allowed. */
export function isContainedPath(relPath: string): boolean {
  if (isAbsolute(relPath)) return false;
  const r = relative("/r", resolve("/r", relPath));
  return !(r === ".." || r.startsWith(`..${sep}`));
}

/**
 * The record with its image sizes read from the image headers when it gives none (no
 * image_wh, width/height): for preview, explore and eval, which take one record at a time
 * and so need no `data fill-wh` first. Throws MediaPathError or ImageHeaderError.
 */
/** One line for a media error of withHeaderSizes: the image and what is wrong with it. */
export function mediaErrorText(e: MediaPathError | { path: string; message: string }): string {
  return e instanceof MediaPathError
    ? `image ${e.relPath}: ${e.message}`
    : `image ${e.path}: ${e.message}`;
}

export async function withHeaderSizes(
  record: DataRecord,
  spec: Pick<DatasetSpec, "mediaRoot">,
  reader: HeaderReader = new HeaderReader(16),
): Promise<DataRecord> {
  if (record.images.length === 0 || record.imageWh) return record;
  const imageWh = await Promise.all(
    record.images.map(async (rel): Promise<[number, number]> => {
      const h = await reader.get(resolveMediaPath(spec, rel));
      return [h.width, h.height];
    }),
  );
  return { ...record, imageWh };
}
