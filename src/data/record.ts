/**
 * One JSONL record: its schema, checked by hand (this runs on millions of lines, so no
 * per-record schema library), and the placeholder rules of the official training code.
 */
import { TEMPLATES } from "../text/templates.ts";
import { clip, type DataIssue, describe, issue } from "./issues.ts";
import { looksLikePair, PAIR_KEYS, type PairAnswers, validatePairFields } from "./pairs.ts";

export type { DataIssue } from "./issues.ts";

export type Role = "human" | "gpt" | "system";

export interface Turn {
  from: Role;
  value: string;
}

export interface DataRecord {
  id?: string | number;
  conversations: Turn[];
  /** Image paths as written in the JSONL (relative to media_root); always a list, empty for text. */
  images: string[];
  video?: string;
  /** One [width, height] per image, when the JSONL gives them. */
  imageWh?: [number, number][];
  /** Every other field of the line, kept as written. */
  extra: Record<string, unknown>;
  /**
   * A preference record (question, chosen, rejected): `conversations` is the chosen one and
   * this holds both answers (data/pairs.ts).
   */
  pair?: PairAnswers;
}

export const IMAGE_PLACEHOLDER = "<image>";
export const VIDEO_PLACEHOLDER = "<video>";

const KNOWN = new Set(["id", "conversations", "image", "video", "image_wh"]);

/**
 * Strings a record's text must not hold: the tokenizer reads them as special tokens, so a
 * literal `<IMG_CONTEXT>` would add an image token without an image (training stops on the
 * mismatch) and a role token would forge a turn. The image tokens and the role tokens of
 * every chat template; `data check --model` adds the model's own special tokens. The
 * grounding tokens (`<ref>`, `<box>`, `<quad>` and their ends) are meant to be written in
 * text and are not listed.
 */
export const RESERVED_STRINGS: readonly string[] = (() => {
  const out = new Set(["<IMG_CONTEXT>", "<img>", "</img>"]);
  for (const t of Object.values(TEMPLATES))
    for (const s of [t.systemPrefix, t.userPrefix, t.assistantPrefix, t.turnEnd, ...t.neverLearned])
      for (const m of s.matchAll(/<\|[A-Za-z0-9_]+\|>/g)) out.add(m[0]);
  return [...out];
})();

/** Special tokens meant to be written in record text (grounding), never refused. */
export const TEXT_TOKENS: ReadonlySet<string> = new Set([
  "<ref>",
  "</ref>",
  "<box>",
  "</box>",
  "<quad>",
  "</quad>",
]);

/** The first reserved string in `s` and where it is, or null. */
function reservedIn(s: string, reserved: readonly string[]): { token: string; at: number } | null {
  let best: { token: string; at: number } | null = null;
  for (const r of reserved) {
    const at = s.indexOf(r);
    if (at !== -1 && (best === null || at < best.at)) best = { token: r, at };
  }
  return best;
}

/** A path character that no file system path should hold: NUL and the other control characters. */
function controlCharIn(p: string): number {
  for (let i = 0; i < p.length; i++) {
    const c = p.charCodeAt(i);
    if (c < 32 || c === 127) return i;
  }
  return -1;
}

function checkPath(
  issues: DataIssue[],
  file: string,
  line: number,
  field: string,
  p: string,
): void {
  const at = controlCharIn(p);
  if (at !== -1)
    fail(
      issues,
      file,
      line,
      field,
      "bad-path",
      `the path holds a control character (U+${p.charCodeAt(at).toString(16).toUpperCase().padStart(4, "0")} at character ${at + 1})`,
      "a path without NUL or control characters",
      clip(JSON.stringify(p)),
    );
}
const KNOWN_PAIR = new Set([...KNOWN, ...PAIR_KEYS]);

const isSide = (v: unknown): v is number => Number.isInteger(v) && (v as number) > 0;

/**
 * Image sizes in the official records' spellings: `width`/`height` (one image) or
 * `width_list`/`height_list` (one per image). Undefined when the record has neither.
 */
function officialSizes(
  o: Record<string, unknown>,
  nImages: number,
  issues: DataIssue[],
  file: string,
  line: number,
): [number, number][] | undefined {
  const single = o.width !== undefined || o.height !== undefined;
  const listed = o.width_list !== undefined || o.height_list !== undefined;
  if (!single && !listed) return undefined;
  if (listed) {
    const ws = o.width_list;
    const hs = o.height_list;
    if (!Array.isArray(ws) || !Array.isArray(hs)) {
      fail(
        issues,
        file,
        line,
        Array.isArray(ws) ? "height_list" : "width_list",
        "wrong-type",
        "width_list and height_list must both be lists of sizes",
        "a list of positive integers",
        describe(Array.isArray(ws) ? hs : ws),
      );
      return undefined;
    }
    if (ws.length !== nImages || hs.length !== nImages) {
      fail(
        issues,
        file,
        line,
        "width_list",
        "image-wh-count",
        "width_list and height_list must give one size per image",
        `${nImages} each`,
        `${ws.length} and ${hs.length}`,
      );
      return undefined;
    }
    const out: [number, number][] = [];
    for (let i = 0; i < nImages; i++) {
      if (!isSide(ws[i]) || !isSide(hs[i])) {
        fail(
          issues,
          file,
          line,
          `width_list[${i}]`,
          "bad-image-wh",
          "width and height must be positive integers",
          "w, h ≥ 1",
          `${JSON.stringify(ws[i])}, ${JSON.stringify(hs[i])}`,
        );
        return undefined;
      }
      out.push([ws[i], hs[i]]);
    }
    return out;
  }
  if (!isSide(o.width) || !isSide(o.height)) {
    fail(
      issues,
      file,
      line,
      isSide(o.width) ? "height" : "width",
      "bad-image-wh",
      "width and height must be positive integers",
      "w, h ≥ 1",
      `${JSON.stringify(o.width)}, ${JSON.stringify(o.height)}`,
    );
    return undefined;
  }
  if (nImages !== 1) {
    fail(
      issues,
      file,
      line,
      "width",
      "image-wh-count",
      "width/height give one image's size: a record with several images needs width_list/height_list",
      "1 image",
      `${nImages}`,
    );
    return undefined;
  }
  return [[o.width, o.height]];
}

export function countOccurrences(s: string, needle: string): number {
  let n = 0;
  for (let i = s.indexOf(needle); i !== -1; i = s.indexOf(needle, i + needle.length)) n++;
  return n;
}

function countInHuman(turns: Turn[], needle: string): number {
  let n = 0;
  for (const t of turns) if (t.from === "human") n += countOccurrences(t.value, needle);
  return n;
}

// A module-level helper, not a closure per record: this runs millions of times.
function fail(
  issues: DataIssue[],
  file: string,
  line: number,
  field: string,
  kind: string,
  message: string,
  expected?: string,
  found?: string,
): void {
  issues.push(issue(file, line, field, kind, message, { expected, found }));
}

/**
 * Validates one parsed JSONL line. Returns the record when it is usable (warnings only)
 * and every problem found; a record with any error is not returned.
 */
export function validateRecord(
  obj: unknown,
  file: string,
  line: number,
  reserved: readonly string[] = RESERVED_STRINGS,
): { record?: DataRecord; issues: DataIssue[] } {
  const issues: DataIssue[] = [];
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) {
    issues.push(
      issue(file, line, "(line)", "not-object", "each line must be one JSON object", {
        expected: "an object",
        found: describe(obj),
      }),
    );
    return { issues };
  }
  const o = obj as Record<string, unknown>;

  // id
  const id = o.id;
  if (id !== undefined && typeof id !== "string" && typeof id !== "number")
    fail(
      issues,
      file,
      line,
      "id",
      "wrong-type",
      "id must be a string or a number",
      "a string or a number",
      describe(id),
    );

  // conversations (a preference record's chosen one)
  let turns: Turn[] = [];
  let pair: PairAnswers | undefined;
  let conv = o.conversations;
  const isPair = looksLikePair(o);
  if (isPair) {
    const made = validatePairFields(o, file, line, issues);
    if (!made) return { issues };
    conv = made.turns;
    pair = made.pair;
  }
  if (conv === undefined)
    fail(
      issues,
      file,
      line,
      "conversations",
      "missing-field",
      "the record has no conversations",
      "a list of turns",
      "nothing",
    );
  else if (!Array.isArray(conv))
    fail(
      issues,
      file,
      line,
      "conversations",
      "wrong-type",
      "conversations must be a list of turns",
      "a list",
      describe(conv),
    );
  else if (conv.length === 0)
    fail(
      issues,
      file,
      line,
      "conversations",
      "empty-conversation",
      "conversations is empty",
      "at least one human and one gpt turn",
      "[]",
    );
  else {
    let shapeOk = true;
    for (let i = 0; i < conv.length; i++) {
      const t = conv[i] as Record<string, unknown>;
      if (t === null || typeof t !== "object" || Array.isArray(t)) {
        fail(
          issues,
          file,
          line,
          `conversations[${i}]`,
          "wrong-type",
          "each turn must be an object with from and value",
          "an object",
          describe(t),
        );
        shapeOk = false;
        continue;
      }
      const from = t.from;
      if (from !== "human" && from !== "gpt" && from !== "system") {
        fail(
          issues,
          file,
          line,
          `conversations[${i}].from`,
          "bad-role",
          'from must be "human", "gpt" or "system"',
          '"human", "gpt" or "system"',
          describe(from),
        );
        shapeOk = false;
      }
      if (typeof t.value !== "string") {
        fail(
          issues,
          file,
          line,
          `conversations[${i}].value`,
          "wrong-type",
          "value must be a string",
          "a string",
          describe(t.value),
        );
        shapeOk = false;
      }
    }
    if (shapeOk) {
      turns = conv as Turn[];
      // Alternation: [system] human gpt human gpt ...
      const start = turns[0].from === "system" ? 1 : 0;
      // The official preprocess skips one first turn that is not the human's: so does tessera,
      // with a warning (a second one in a row is an alternation error, as it is there).
      const skip = turns.length > start + 1 && turns[start].from === "gpt" ? start : -1;
      if (skip >= 0)
        issues.push(
          issue(
            file,
            line,
            `conversations[${skip}]`,
            "starts-with-gpt",
            "the first turn (after an optional system turn) is from gpt; it is skipped, as the official code does",
            { severity: "warning", expected: '"human"', found: '"gpt"' },
          ),
        );
      for (let i = 0; i < turns.length; i++) {
        if (i === skip) continue;
        const p = skip >= 0 && i > skip ? i - 1 : i;
        const want: Role = p < start ? "system" : (p - start) % 2 === 0 ? "human" : "gpt";
        if (turns[i].from !== want) {
          const prev = i > 0 ? turns[i - 1].from : undefined;
          const why =
            turns[i].from === "system"
              ? "a system turn is only allowed first"
              : prev === turns[i].from
                ? `two ${prev} turns in a row`
                : p === start
                  ? "the first turn (after an optional system turn) must be human"
                  : "turns must alternate human, gpt";
          fail(
            issues,
            file,
            line,
            `conversations[${i}].from`,
            "bad-alternation",
            why,
            `"${want}"`,
            `"${turns[i].from}"`,
          );
          shapeOk = false;
          break;
        }
      }
      if (shapeOk) {
        if (turns[turns.length - 1].from !== "gpt") {
          const last = turns.length - 1;
          if (turns[last].from === "human" && last > start + (skip >= 0 ? 1 : 0)) {
            issues.push(
              issue(
                file,
                line,
                `conversations[${last}]`,
                "ends-on-human",
                "the conversation ends on a human turn; that turn is dropped",
                {
                  severity: "warning",
                  expected: "a last gpt turn",
                  found: '"human"',
                },
              ),
            );
            turns = turns.slice(0, last);
          } else {
            fail(
              issues,
              file,
              line,
              "conversations",
              "no-answer",
              "the conversation has no gpt turn to learn from",
              "at least one human and one gpt turn",
              `${turns.length} turn(s)`,
            );
          }
        }
        if (skip >= 0) turns = [...turns.slice(0, skip), ...turns.slice(skip + 1)];
      }
    }
  }

  // image
  let images: string[] = [];
  const img = o.image;
  if (typeof img === "string") {
    // An empty string is no image, as in the official code (`len(data_item['image']) != 0`).
    if (img !== "") {
      images = [img];
      checkPath(issues, file, line, "image", img);
    }
  } else if (Array.isArray(img)) {
    for (let i = 0; i < img.length; i++)
      if (typeof img[i] !== "string" || img[i] === "")
        fail(
          issues,
          file,
          line,
          `image[${i}]`,
          "wrong-type",
          "each image must be a non-empty path string",
          "a path",
          describe(img[i]),
        );
      else checkPath(issues, file, line, `image[${i}]`, img[i]);
    images = img as string[];
  } else if (img !== undefined && img !== null)
    fail(
      issues,
      file,
      line,
      "image",
      "wrong-type",
      "image must be a path or a list of paths",
      "a string or a list of strings",
      describe(img),
    );

  // video
  let video: string | undefined;
  const vid = o.video;
  if (typeof vid === "string") {
    if (vid !== "") {
      video = vid;
      checkPath(issues, file, line, "video", vid);
    }
  } else if (vid !== undefined && vid !== null)
    fail(
      issues,
      file,
      line,
      "video",
      "wrong-type",
      "video must be a path",
      "a string",
      describe(vid),
    );
  if (video !== undefined && images.length > 0) {
    // The official code takes the images and ignores the video; say so rather than guess.
    issues.push(
      issue(
        file,
        line,
        "video",
        "image-and-video",
        "the record has both images and a video; the video is ignored",
        {
          severity: "warning",
          expected: "image or video",
          found: "both",
        },
      ),
    );
    video = undefined;
  }

  // image_wh
  let imageWh: [number, number][] | undefined;
  const wh = o.image_wh;
  if (wh !== undefined && wh !== null) {
    if (!Array.isArray(wh))
      fail(
        issues,
        file,
        line,
        "image_wh",
        "wrong-type",
        "image_wh must be a list of [width, height] pairs",
        "a list of [w, h]",
        describe(wh),
      );
    else {
      let ok = true;
      for (let i = 0; i < wh.length; i++) {
        const p = wh[i];
        if (!Array.isArray(p) || p.length !== 2) {
          fail(
            issues,
            file,
            line,
            `image_wh[${i}]`,
            "bad-image-wh",
            "each image_wh entry must be a [width, height] pair",
            "[w, h]",
            describe(p),
          );
          ok = false;
        } else if (!(Number.isInteger(p[0]) && p[0] > 0 && Number.isInteger(p[1]) && p[1] > 0)) {
          fail(
            issues,
            file,
            line,
            `image_wh[${i}]`,
            "bad-image-wh",
            "width and height must be positive integers",
            "[w, h] with w, h ≥ 1",
            JSON.stringify(p),
          );
          ok = false;
        }
      }
      if (wh.length !== images.length) {
        fail(
          issues,
          file,
          line,
          "image_wh",
          "image-wh-count",
          "image_wh must give one [width, height] per image",
          `${images.length} pair(s)`,
          `${wh.length}`,
        );
        ok = false;
      }
      if (ok && images.length > 0) imageWh = wh as [number, number][];
    }
  } else if (images.length > 0) imageWh = officialSizes(o, images.length, issues, file, line);

  // placeholders, once the turns are known to be sound
  if (turns.length > 0) {
    let nImg = 0;
    let nVid = 0;
    let otherRoles = 0;
    const allAngled = reserved === RESERVED_STRINGS || reserved.every((r) => r[0] === "<");
    for (let k = 0; k < turns.length; k++) {
      const t = turns[k];
      // One cheap scan for "<" rules out both placeholders and the reserved strings in most turns.
      const angled = t.value.indexOf("<") !== -1;
      if (angled || !allAngled) {
        const hit = reservedIn(t.value, reserved);
        if (hit)
          fail(
            issues,
            file,
            line,
            `conversations[${k}].value`,
            "special-token",
            `the text holds ${hit.token}, which the tokenizer reads as a special token, not as text`,
            "text without special-token strings",
            `${hit.token} at character ${hit.at + 1}`,
          );
      }
      if (!angled) continue;
      if (t.from === "human") {
        nImg += countOccurrences(t.value, IMAGE_PLACEHOLDER);
        nVid += countOccurrences(t.value, VIDEO_PLACEHOLDER);
      } else otherRoles += countOccurrences(t.value, IMAGE_PLACEHOLDER);
    }
    if (video !== undefined) {
      if (nImg > 0)
        fail(
          issues,
          file,
          line,
          "conversations",
          "placeholder-mismatch",
          "a video record must not contain <image> placeholders (its frames replace <video>)",
          "0 <image>",
          `${nImg}`,
        );
      if (nVid > 1)
        fail(
          issues,
          file,
          line,
          "conversations",
          "placeholder-mismatch",
          "a video record takes at most one <video> placeholder",
          "0 or 1 <video>",
          `${nVid}`,
        );
    } else {
      if (nVid > 0)
        fail(
          issues,
          file,
          line,
          "conversations",
          "placeholder-mismatch",
          "<video> placeholder in a record without a video",
          "0 <video>",
          `${nVid}`,
        );
      if (nImg > 0 && nImg !== images.length)
        fail(
          issues,
          file,
          line,
          "conversations",
          "placeholder-mismatch",
          "the number of <image> placeholders differs from the number of images",
          `${images.length} <image>`,
          `${nImg}`,
        );
    }
    if (otherRoles > 0)
      issues.push(
        issue(
          file,
          line,
          "conversations",
          "placeholder-outside-human",
          "<image> outside human turns is kept as plain text",
          {
            severity: "warning",
            expected: "<image> only in human turns",
            found: `${otherRoles}`,
          },
        ),
      );
  }

  for (let k = 0; k < issues.length; k++) if (issues[k].severity === "error") return { issues };

  const extra: Record<string, unknown> = {};
  const keys = Object.keys(o);
  const known = isPair ? KNOWN_PAIR : KNOWN;
  for (let k = 0; k < keys.length; k++) if (!known.has(keys[k])) extra[keys[k]] = o[keys[k]];
  const record: DataRecord = { conversations: turns, images, extra };
  if (pair !== undefined) record.pair = pair;
  if (id !== undefined) record.id = id as string | number;
  if (video !== undefined) record.video = video;
  if (imageWh !== undefined) record.imageWh = imageWh;
  return { record, issues };
}

/**
 * The official placeholder rule: a record with images and no `<image>` gets `<image>\n`
 * once per image at the start of its first human turn; a video record without `<video>`
 * gets `<video>\n` there. Returns a new record; the input is not changed.
 */
export function normalizePlaceholders(record: DataRecord): DataRecord {
  const turns = record.conversations;
  const first = turns.findIndex((t) => t.from === "human");
  if (first < 0) return record;
  let prefix = "";
  if (record.images.length > 0 && countInHuman(turns, IMAGE_PLACEHOLDER) === 0)
    prefix = `${IMAGE_PLACEHOLDER}\n`.repeat(record.images.length);
  else if (record.video !== undefined && countInHuman(turns, VIDEO_PLACEHOLDER) === 0)
    prefix = `${VIDEO_PLACEHOLDER}\n`;
  if (!prefix) return record;
  const conversations = turns.slice();
  conversations[first] = { from: "human", value: prefix + turns[first].value };
  return { ...record, conversations };
}

/** True when the record carries images or a video. */
export function isMultimodal(record: DataRecord): boolean {
  return record.images.length > 0 || record.video !== undefined;
}
