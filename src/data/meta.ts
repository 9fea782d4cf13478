/**
 * The meta file: one JSON object naming datasets. Two styles are read as they are: tessera's
 * (`media_root`, paths relative to the meta file) and the official InternVL one (`root`,
 * `data_augment`, `length`; paths relative to the working directory, as its scripts open
 * them). A lone JSONL of records stands for a meta file of one dataset.
 */
import { readFile, stat } from "node:fs/promises";
import { basename, dirname, extname, isAbsolute, resolve } from "node:path";
import { z } from "zod";
import { DEFAULT_VIDEO_FRAMES } from "../text/types.ts";
import { UserError } from "../util/errors.ts";
import { type DataIssue, describe, formatIssue, issue } from "./issues.ts";

export interface DatasetSpec {
  /** The dataset's key in the meta file. */
  name: string;
  /** Absolute path of the meta file that named it. */
  metaPath: string;
  /** Absolute folder that image and video paths are relative to. */
  mediaRoot: string;
  /** Absolute path of the JSONL annotation file. */
  annotation: string;
  /** 1 by default; an integer > 1 repeats, a fraction < 1 keeps the first part. */
  repeatTime: number;
  /** The other fields the meta file gives this dataset, kept as written (e.g. max_dynamic_patch). */
  extra: Record<string, unknown>;
  /**
   * Where a relative media path would be found under the other reading of the meta file
   * (an official `root` relative to the meta file instead of the working directory), so a
   * missing file's error can name both places.
   */
  mediaRootAlt?: string;
  /** A sentence added to a missing media file's error (how media paths were resolved). */
  mediaHint?: string;
}

/** How every data command names its input. */
export const META_ARG_HELP =
  "a meta file (tessera's or the official InternVL style), or a lone JSONL of records";
export const MEDIA_ROOT_HELP =
  "with a lone JSONL: the folder its image and video paths are relative to (default: its folder)";

/** True for the one dataset that stands for a lone JSONL. */
export function isLoneJsonl(spec: DatasetSpec): boolean {
  return spec.annotation === spec.metaPath;
}

export interface MetaOptions {
  /** With a lone JSONL: the folder its media paths are relative to (default: the JSONL's folder). */
  mediaRoot?: string;
  /** The working directory that official-style relative paths resolve against (default: process.cwd()). */
  cwd?: string;
}

/**
 * Upper limits of the meta file's numbers: far above any real use (InternVL2 trains with 6 to
 * 12 tiles per image and 8 to 32 frames per video), low enough that a typo such as 1e9 is
 * named here instead of exhausting memory or time hours into prepare or training.
 */
export const MAX_REPEAT_TIME = 10_000;
export const MAX_DYNAMIC_PATCH = 256;
export const MAX_VIDEO_FRAMES = 1024;

const entrySchema = z.looseObject({
  media_root: z
    .string({ error: "must be a string (a folder; empty for pure-text datasets)" })
    .optional(),
  // The official scripts' name for media_root (relative to the working directory).
  root: z.string({ error: "must be a string (a folder; empty for pure-text datasets)" }).optional(),
  // Official: image augmentation on or off for this dataset.
  data_augment: z.boolean({ error: "must be true or false" }).optional(),
  // Official: the number of lines of the annotation file (checked by `data check`).
  length: z
    .number({ error: "must be a number" })
    .int("must be a whole number")
    .min(0, "must not be negative")
    .optional(),
  annotation: z
    .string({ error: "must be a string (the path of a JSONL file)" })
    .min(1, "must not be empty"),
  repeat_time: z
    .number({ error: "must be a number" })
    .refine((v) => Number.isFinite(v) && v > 0, "must be greater than 0")
    .refine(
      (v) => v <= 1 || Number.isInteger(v),
      "must be an integer when above 1 (a fraction above 1 is not supported)",
    )
    .refine((v) => v <= MAX_REPEAT_TIME, `must be at most ${MAX_REPEAT_TIME}`)
    .optional(),
  // tessera's own per-dataset settings (kept in `extra`): checked here so `data check` names them.
  max_dynamic_patch: z
    .number({ error: "must be a number" })
    .int("must be a whole number")
    .min(1, "must be at least 1")
    .max(MAX_DYNAMIC_PATCH, `must be at most ${MAX_DYNAMIC_PATCH}`)
    .optional(),
  video_frames: z
    .number({ error: "must be a number" })
    .int("must be a whole number")
    .min(1, "must be at least 1")
    .max(MAX_VIDEO_FRAMES, `must be at most ${MAX_VIDEO_FRAMES}`)
    .optional(),
  preference: z.boolean({ error: "must be true or false" }).optional(),
});

/** Keys that become DatasetSpec fields; every other known key is kept in `extra`. */
const KNOWN = new Set(["media_root", "root", "annotation", "repeat_time"]);
/** Every key a dataset entry may have; others get a warning. */
const ALL_KEYS = new Set(Object.keys(entrySchema.shape));

const META_EXPECTED: Record<string, string> = {
  media_root: "a folder path (empty for pure-text datasets)",
  annotation: "the path of a JSONL file",
  root: "a folder path (the official name of media_root)",
  data_augment: "true or false",
  length: "a whole number ≥ 0: the annotation file's line count",
  repeat_time: `a number > 0 and ≤ ${MAX_REPEAT_TIME}: an integer to repeat, a fraction < 1 to take the first part`,
  max_dynamic_patch: `a whole number from 1 to ${MAX_DYNAMIC_PATCH}: tiles per image at most, for this dataset`,
  video_frames: `a whole number from 1 to ${MAX_VIDEO_FRAMES}: frames taken from each video of this dataset`,
  preference: "true when every record is a preference pair (question, chosen, rejected)",
};

function ownSetting(spec: DatasetSpec, key: string, max: number): number | undefined {
  const own = spec.extra?.[key];
  if (own === undefined) return undefined;
  if (typeof own !== "number" || !Number.isInteger(own) || own < 1 || own > max)
    throw new UserError(
      `${spec.metaPath}: dataset "${spec.name}": ${key} must be a whole number from 1 to ${max}, got ${JSON.stringify(own)}`,
    );
  return own;
}

/** Frames per video of a dataset: its meta entry's `video_frames`, else the run's (default DEFAULT_VIDEO_FRAMES). */
export function videoFramesOf(spec: DatasetSpec, run: number | undefined): number {
  return ownSetting(spec, "video_frames", MAX_VIDEO_FRAMES) ?? run ?? DEFAULT_VIDEO_FRAMES;
}

/**
 * The tile budget of a dataset's images: its meta entry's `max_dynamic_patch`, else the run's
 * (undefined: the model's). The one rule prepare, stats, preview and explore apply; the plan
 * then carries each image's grid and the engine only checks it.
 */
export function maxDynamicPatchOf(spec: DatasetSpec, run: number | undefined): number | undefined {
  return ownSetting(spec, "max_dynamic_patch", MAX_DYNAMIC_PATCH) ?? run;
}

// The repeat_time arithmetic lives in a module without zod, for threads that only need it.
export { selectedRecordCount, selectedRecordIndex } from "./repeat.ts";

/** Line numbers of the top-level keys (`name`) and of their fields (`name.field`) in a JSON text. */
export function jsonKeyLines(text: string): Map<string, number> {
  const out = new Map<string, number>();
  let depth = 0;
  let line = 1;
  let top = "";
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "\n") line++;
    else if (c === "{" || c === "[") depth++;
    else if (c === "}" || c === "]") depth--;
    else if (c === '"') {
      const start = i;
      const startLine = line;
      for (i++; i < text.length && text[i] !== '"'; i++) if (text[i] === "\\") i++;
      let j = i + 1;
      while (j < text.length && /\s/.test(text[j])) j++;
      if (text[j] !== ":") continue;
      let key: string;
      try {
        key = JSON.parse(text.slice(start, i + 1));
      } catch {
        continue;
      }
      if (depth === 1) {
        top = key;
        if (!out.has(key)) out.set(key, startLine);
      } else if (depth === 2 && !out.has(`${top}.${key}`)) out.set(`${top}.${key}`, startLine);
    }
  }
  return out;
}

function jsonErrorLine(text: string, e: Error): number {
  const lc = /line (\d+)/.exec(e.message);
  if (lc) return Number(lc[1]);
  const pos = /position (\d+)/.exec(e.message);
  if (pos) return text.slice(0, Number(pos[1])).split("\n").length;
  return 0;
}

async function exists(p: string, kind: "file" | "dir"): Promise<boolean> {
  try {
    const s = await stat(p);
    return kind === "file" ? s.isFile() : s.isDirectory();
  } catch {
    return false;
  }
}

/** Whether a file holds records (a lone JSONL) rather than a meta file: from its name, else its text. */
function looksLikeRecords(path: string, text: string | undefined): boolean {
  if (extname(path).toLowerCase() === ".jsonl") return true;
  if (text === undefined) return false;
  const isRecord = (v: unknown) =>
    v !== null && typeof v === "object" && !Array.isArray(v) && "conversations" in v;
  try {
    return isRecord(JSON.parse(text));
  } catch {
    const first = text.split("\n", 1)[0];
    try {
      return isRecord(JSON.parse(first));
    } catch {
      return false;
    }
  }
}

/** A lone JSONL as a meta file of one dataset named after the file. */
async function loneJsonl(
  path: string,
  opts: MetaOptions,
): Promise<{ specs: DatasetSpec[]; issues: DataIssue[] }> {
  const abs = resolve(path);
  const cwd = opts.cwd ?? process.cwd();
  if (!(await exists(abs, "file")))
    return {
      specs: [],
      issues: [
        issue(path, 0, "(file)", "meta-unreadable", "the JSONL file does not exist", {
          expected: "an existing JSONL file",
          found: abs,
        }),
      ],
    };
  const mediaRoot = opts.mediaRoot !== undefined ? resolve(cwd, opts.mediaRoot) : dirname(abs);
  if (opts.mediaRoot !== undefined && !(await exists(mediaRoot, "dir")))
    return {
      specs: [],
      issues: [
        issue(path, 0, "--media-root", "meta-media-root-missing", "--media-root is not a folder", {
          expected: "an existing folder",
          found: mediaRoot,
        }),
      ],
    };
  const spec: DatasetSpec = {
    name: basename(abs, extname(abs)),
    metaPath: abs,
    mediaRoot,
    annotation: abs,
    repeatTime: 1,
    extra: {},
  };
  if (opts.mediaRoot === undefined)
    spec.mediaHint =
      "media paths of a lone JSONL are relative to its folder: pass --media-root DIR if they are relative to another folder";
  return { specs: [spec], issues: [] };
}

/**
 * Reads a meta file (or a lone JSONL) and reports every problem instead of stopping at the
 * first: the datasets that are usable come back in `specs`, the others are named in
 * `issues` (warnings too: unknown keys, `data_augment`). A meta file that cannot be read
 * at all gives no specs and one issue.
 */
export async function loadMetaChecked(
  path: string,
  opts: MetaOptions = {},
): Promise<{ specs: DatasetSpec[]; issues: DataIssue[] }> {
  const metaPath = resolve(path);
  const cwd = opts.cwd ?? process.cwd();
  if (looksLikeRecords(path, undefined)) return loneJsonl(path, opts);
  const issues: DataIssue[] = [];
  let text: string;
  try {
    text = await readFile(metaPath, "utf8");
  } catch (e) {
    return {
      specs: [],
      issues: [
        issue(
          path,
          0,
          "(file)",
          "meta-unreadable",
          `cannot read the meta file: ${(e as Error).message}`,
        ),
      ],
    };
  }
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  if (looksLikeRecords(path, text)) return loneJsonl(path, opts);
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    const line = jsonErrorLine(text, e as Error);
    return {
      specs: [],
      issues: [
        issue(
          path,
          line,
          "(file)",
          "meta-invalid-json",
          `the meta file is not valid JSON: ${(e as Error).message}`,
        ),
      ],
    };
  }
  if (doc === null || typeof doc !== "object" || Array.isArray(doc)) {
    return {
      specs: [],
      issues: [
        issue(
          path,
          1,
          "(file)",
          "meta-not-object",
          "the meta file must be one JSON object whose keys name datasets",
          {
            expected: "an object",
            found: describe(doc),
          },
        ),
      ],
    };
  }
  if (opts.mediaRoot !== undefined)
    return {
      specs: [],
      issues: [
        issue(
          path,
          0,
          "--media-root",
          "meta-media-root-flag",
          "--media-root is for a lone JSONL; a meta file gives each dataset's media_root (or root): remove --media-root or edit the meta file",
        ),
      ],
    };
  const lines = jsonKeyLines(text);
  const base = dirname(metaPath);
  const specs: DatasetSpec[] = [];
  const entries = Object.entries(doc as Record<string, unknown>);
  if (entries.length === 0)
    issues.push(issue(path, 1, "(file)", "meta-empty", "the meta file names no datasets"));
  for (const [name, value] of entries) {
    const at = (field?: string) =>
      (field ? lines.get(`${name}.${field}`) : undefined) ?? lines.get(name) ?? 0;
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      issues.push(
        issue(
          path,
          at(),
          name,
          "meta-wrong-type",
          `dataset "${name}" must be an object with media_root, annotation and repeat_time`,
          {
            expected: "an object",
            found: describe(value),
          },
        ),
      );
      continue;
    }
    const parsed = entrySchema.safeParse(value);
    if (!parsed.success) {
      for (const zi of parsed.error.issues) {
        const field = String(zi.path[0] ?? "(entry)");
        const found = (value as Record<string, unknown>)[field];
        issues.push(
          issue(
            path,
            at(field),
            `${name}.${field}`,
            `meta-${field.replace(/_/g, "-")}`,
            `dataset "${name}": ${field} ${zi.message}`,
            {
              expected: META_EXPECTED[field],
              found: describe(found),
            },
          ),
        );
      }
      continue;
    }
    const v = parsed.data;
    for (const k of Object.keys(value))
      if (!ALL_KEYS.has(k))
        issues.push(
          issue(
            path,
            at(k),
            `${name}.${k}`,
            "meta-unknown-key",
            `dataset "${name}": unknown key "${k}" is ignored`,
            { severity: "warning", expected: [...ALL_KEYS].join(", ") },
          ),
        );
    if (v.root !== undefined && v.media_root !== undefined) {
      issues.push(
        issue(
          path,
          at("root"),
          `${name}.root`,
          "meta-root-and-media-root",
          `dataset "${name}" gives both root and media_root: keep one (root is the official name, relative to the working directory; media_root is relative to the meta file)`,
        ),
      );
      continue;
    }
    // The official scripts open `root` and `annotation` as given, so relative to the working
    // directory; tessera's style resolves against the meta file's folder.
    const official = v.root !== undefined;
    const from = official ? cwd : base;
    const rootText = official ? v.root! : (v.media_root ?? "");
    const mediaRoot = resolve(from, rootText);
    const annotation = resolve(from, v.annotation);
    const elsewhere = (p: string) =>
      official && !isAbsolute(p) && resolve(base, p) !== resolve(cwd, p)
        ? ` (the official scripts resolve it against the working directory: ${resolve(cwd, p)}; relative to the meta file it would be ${resolve(base, p)})`
        : "";
    let ok = true;
    if (!(await exists(annotation, "file"))) {
      ok = false;
      issues.push(
        issue(
          path,
          at("annotation"),
          `${name}.annotation`,
          "meta-annotation-missing",
          `dataset "${name}": the annotation file does not exist${elsewhere(v.annotation)}`,
          {
            expected: "an existing JSONL file",
            found: annotation,
          },
        ),
      );
    }
    const rootField = official ? "root" : "media_root";
    if (rootText && !(await exists(mediaRoot, "dir"))) {
      ok = false;
      issues.push(
        issue(
          path,
          at(rootField),
          `${name}.${rootField}`,
          "meta-media-root-missing",
          `dataset "${name}": ${rootField} is not an existing folder${elsewhere(rootText)}`,
          {
            expected: "an existing folder",
            found: mediaRoot,
          },
        ),
      );
    }
    if (v.data_augment === true)
      issues.push(
        issue(
          path,
          at("data_augment"),
          `${name}.data_augment`,
          "meta-data-augment",
          `dataset "${name}": data_augment is on, but tessera has no image augmentation: its images are used as they are`,
          { severity: "warning" },
        ),
      );
    if (!ok) continue;
    const extra: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) if (!KNOWN.has(k)) extra[k] = x;
    const spec: DatasetSpec = {
      name,
      metaPath,
      mediaRoot,
      annotation,
      repeatTime: v.repeat_time ?? 1,
      extra,
    };
    if (official && !isAbsolute(rootText) && resolve(base, rootText) !== mediaRoot) {
      spec.mediaRootAlt = resolve(base, rootText);
      spec.mediaHint = `root "${rootText}" resolves against the working directory, as the official scripts do`;
    }
    specs.push(spec);
  }
  return { specs, issues };
}

/**
 * Reads a meta file (or a lone JSONL); any error is a UserError naming file:line, the
 * dataset and the field. Warnings go to `warn` (default: stderr), one line each.
 */
export async function loadMeta(
  path: string,
  opts: MetaOptions & { warn?: (line: string) => void } = {},
): Promise<DatasetSpec[]> {
  const { specs, issues } = await loadMetaChecked(path, opts);
  const errors = issues.filter((i) => i.severity === "error");
  if (errors.length) throw new UserError(errors.map(formatIssue).join("\n"));
  const warn = opts.warn ?? ((l: string) => process.stderr.write(`${l}\n`));
  for (const i of issues) if (i.severity === "warning") warn(formatIssue(i));
  return specs;
}
