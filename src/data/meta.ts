/** The meta file: one JSON object naming datasets (media_root, annotation, repeat_time). */
import { readFile, stat } from "node:fs/promises";
import { dirname, resolve } from "node:path";
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

const KNOWN = new Set(["media_root", "annotation", "repeat_time"]);

const META_EXPECTED: Record<string, string> = {
  media_root: "a folder path (empty for pure-text datasets)",
  annotation: "the path of a JSONL file",
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

/**
 * Reads a meta file and reports every problem instead of stopping at the first: the
 * datasets that are usable come back in `specs`, the others are named in `issues`.
 * A meta file that cannot be read at all gives no specs and one issue.
 */
export async function loadMetaChecked(
  path: string,
): Promise<{ specs: DatasetSpec[]; issues: DataIssue[] }> {
  const metaPath = resolve(path);
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
    const mediaRoot = resolve(base, v.media_root ?? "");
    const annotation = resolve(base, v.annotation);
    let ok = true;
    if (!(await exists(annotation, "file"))) {
      ok = false;
      issues.push(
        issue(
          path,
          at("annotation"),
          `${name}.annotation`,
          "meta-annotation-missing",
          `dataset "${name}": the annotation file does not exist`,
          {
            expected: "an existing JSONL file",
            found: annotation,
          },
        ),
      );
    }
    if (v.media_root && !(await exists(mediaRoot, "dir"))) {
      ok = false;
      issues.push(
        issue(
          path,
          at("media_root"),
          `${name}.media_root`,
          "meta-media-root-missing",
          `dataset "${name}": media_root is not an existing folder`,
          {
            expected: "an existing folder",
            found: mediaRoot,
          },
        ),
      );
    }
    if (!ok) continue;
    const extra: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) if (!KNOWN.has(k)) extra[k] = x;
    specs.push({ name, metaPath, mediaRoot, annotation, repeatTime: v.repeat_time ?? 1, extra });
  }
  return { specs, issues };
}

/** Reads a meta file; any problem is a UserError naming file:line, the dataset and the field. */
export async function loadMeta(path: string): Promise<DatasetSpec[]> {
  const { specs, issues } = await loadMetaChecked(path);
  const errors = issues.filter((i) => i.severity === "error");
  if (errors.length) throw new UserError(errors.map(formatIssue).join("\n"));
  return specs;
}
