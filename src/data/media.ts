/** Image and video paths of records: resolved against media_root, kept inside it. */
import { realpathSync } from "node:fs";
import { isAbsolute, relative, resolve, sep } from "node:path";
import type { DatasetSpec } from "./meta.ts";

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

/** The same rule as a relative path check only (no file system access): true when allowed. */
export function isContainedPath(relPath: string): boolean {
  if (isAbsolute(relPath)) return false;
  const r = relative("/r", resolve("/r", relPath));
  return !(r === ".." || r.startsWith(`..${sep}`));
}
