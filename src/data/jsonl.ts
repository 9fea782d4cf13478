/** Streaming JSONL: any file size, constant memory, every line numbered. */
import { createReadStream } from "node:fs";
import { isAbsolute, relative } from "node:path";
import { StringDecoder } from "node:string_decoder";
import { clip, type DataIssue, issue } from "./issues.ts";
import type { DatasetSpec } from "./meta.ts";
import { type DataRecord, validateRecord } from "./record.ts";

/** How a path is shown in messages: relative to the working folder when inside it. */
export function displayPath(abs: string): string {
  const r = relative(process.cwd(), abs);
  return r && !r.startsWith("..") && !isAbsolute(r) ? r : abs;
}

export interface RawLine {
  /** 1-based line number. */
  line: number;
  /** The line's text, without its line end (`\n` or `\r\n`). */
  text: string;
  /** True when the line ended with `\r\n`. */
  crlf: boolean;
  /** True for the last line of a file that does not end with a newline. */
  unterminated: boolean;
  /** Set on line 1 when the file started with a UTF-8 BOM (removed from `text`). */
  bom?: boolean;
  /** Set when the line is longer than MAX_LINE_CHARS: `text` is empty and the line is skipped unread. */
  tooLong?: boolean;
}

/**
 * The longest line read (in UTF-16 code units, about bytes for ASCII): far above any record
 * (a 1,000,000-character text is 1 Mi), far below what a JavaScript string holds, so a line
 * without end (a binary file, a missing newline) is named at once instead of failing minutes later.
 */
export const MAX_LINE_CHARS = 64 * 1024 * 1024;

export interface LineReadOptions {
  /** Called with the number of bytes read after each chunk (for progress bars). */
  onBytes?: (bytes: number) => void;
  /** Chunk size in bytes. */
  chunkSize?: number;
  /**
   * Read only bytes [start, end) of the file, a range that begins at a line start (see
   * lineAlignedRanges); line numbers then count from the range's first line.
   */
  start?: number;
  end?: number;
}

/**
 * Lines of a text file in batches (one batch per read chunk, so callers pay one await per
 * chunk, not per line). A leading UTF-8 BOM is removed and flagged on line 1.
 */
export async function* readLineBatches(
  path: string,
  opts: LineReadOptions = {},
): AsyncGenerator<RawLine[]> {
  const stream = createReadStream(path, {
    highWaterMark: opts.chunkSize ?? 1 << 20,
    start: opts.start,
    end: opts.end !== undefined ? opts.end - 1 : undefined,
  });
  const decoder = new StringDecoder("utf8");
  let carry = "";
  let lineNo = 0;
  // Inside a line over the limit: its text is dropped until its end.
  let skipping = false;
  // A BOM only means something at the very start of the file.
  let first = !opts.start;
  let bom = false;
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    opts.onBytes?.(chunk.length);
    let s = carry + decoder.write(chunk);
    if (first && s.length > 0) {
      first = false;
      if (s.charCodeAt(0) === 0xfeff) {
        s = s.slice(1);
        bom = true;
      }
    }
    const batch: RawLine[] = [];
    let start = 0;
    if (skipping) {
      const nl = s.indexOf("\n");
      if (nl === -1) continue;
      skipping = false;
      start = nl + 1;
    }
    for (let nl = s.indexOf("\n", start); nl !== -1; nl = s.indexOf("\n", start)) {
      const crlf = nl > start && s.charCodeAt(nl - 1) === 13;
      batch.push({
        line: ++lineNo,
        text: s.slice(start, crlf ? nl - 1 : nl),
        crlf,
        unterminated: false,
      });
      start = nl + 1;
    }
    carry = s.slice(start);
    if (carry.length > MAX_LINE_CHARS) {
      batch.push({ line: ++lineNo, text: "", crlf: false, unterminated: false, tooLong: true });
      carry = "";
      skipping = true;
    }
    if (batch.length) {
      if (bom && batch[0].line === 1) batch[0].bom = true;
      yield batch;
    }
  }
  carry += decoder.end();
  if (skipping) carry = "";
  if (first && carry.charCodeAt(0) === 0xfeff) {
    carry = carry.slice(1);
    bom = true;
  }
  if (carry.length > 0 || (bom && lineNo === 0)) {
    const crlf = carry.charCodeAt(carry.length - 1) === 13;
    const l: RawLine = {
      line: ++lineNo,
      text: crlf ? carry.slice(0, -1) : carry,
      crlf,
      unterminated: true,
    };
    if (bom && l.line === 1) l.bom = true;
    yield [l];
  }
}

export interface ReadItem {
  line: number;
  /** Present when the line is a usable record (it may still carry warnings). */
  record?: DataRecord;
  issues: DataIssue[];
  /** The parsed JSON value as written, with `keepRaw`. */
  raw?: unknown;
  /** The line's text as written, with `keepRaw`. */
  text?: string;
}

export interface ReadRecordsOptions extends LineReadOptions {
  /** Also yield each line's parsed value and text (fill-wh rewrites lines from them). */
  keepRaw?: boolean;
  /** The file name used in messages (default: the annotation path as displayPath shows it). */
  displayName?: string;
  /** Strings record text must not hold (default RESERVED_STRINGS). */
  reserved?: readonly string[];
}

const EMPTY: DataIssue[] = [];

/**
 * Every line of a dataset's annotation file, parsed and validated, in order. Empty lines
 * yield a warning and no record; lines that are not usable records yield their errors.
 * File-level notes (BOM, CRLF line ends) come once, with the line they were first seen on.
 * Items come in batches (one per read chunk) so hot loops pay one await per batch.
 */
export async function* readRecordBatches(
  spec: Pick<DatasetSpec, "annotation">,
  opts: ReadRecordsOptions = {},
): AsyncGenerator<ReadItem[]> {
  const file = opts.displayName ?? displayPath(spec.annotation);
  const keep = opts.keepRaw === true;
  const gen = readLineBatches(spec.annotation, opts);
  let sawCrlf = false;
  for await (const batch of gen) {
    const out: ReadItem[] = [];
    for (const l of batch) {
      let issues = EMPTY;
      if (l.bom) issues = [bomIssue(file)];
      if (l.crlf && !sawCrlf) {
        sawCrlf = true;
        issues = [
          ...issues,
          issue(
            file,
            l.line,
            "(line)",
            "crlf",
            "the file uses CRLF (Windows) line ends; they are accepted",
            {
              severity: "warning",
              expected: "\\n",
              found: "\\r\\n",
            },
          ),
        ];
      }
      out.push(parseRecordLine(l, file, keep, issues, opts.reserved));
    }
    yield out;
  }
}

/**
 * One line of an annotation file, parsed and validated: a usable record and its warnings, or
 * the line's errors. `issues` are file-level notes to report with it (BOM, CRLF). Prepare's
 * workers call it on the lines the reader sends them.
 */
export function parseRecordLine(
  l: Pick<RawLine, "line" | "text" | "unterminated" | "tooLong">,
  file: string,
  keep = false,
  issues: DataIssue[] = EMPTY,
  reserved?: readonly string[],
): ReadItem {
  const t = l.text;
  if (l.tooLong)
    return {
      line: l.line,
      issues: [
        ...issues,
        issue(file, l.line, "(line)", "line-too-long", "the line is too long to be a record", {
          expected: `at most ${MAX_LINE_CHARS} characters`,
          found: `more than ${MAX_LINE_CHARS}`,
        }),
      ],
    };
  if (t.length === 0 || (t.charCodeAt(0) <= 32 && t.trim() === "")) {
    const item: ReadItem = {
      line: l.line,
      issues: [
        ...issues,
        issue(file, l.line, "(line)", "empty-line", "empty line skipped", {
          severity: "warning",
          expected: "one JSON object",
          found: "an empty line",
        }),
      ],
    };
    if (keep) item.text = t;
    return item;
  }
  // Bytes that are not UTF-8 decode to U+FFFD: an error, so the replacement character is
  // never trained (Python's strict reader would refuse the bytes too).
  const bad = t.indexOf("\uFFFD");
  if (bad !== -1) {
    const fault = issue(
      file,
      l.line,
      "(line)",
      "not-utf8",
      "the line holds bytes that are not UTF-8 (they read as U+FFFD); fix the file's encoding",
      {
        expected: "UTF-8 text",
        found: `U+FFFD at character ${bad + 1}: ${clip(JSON.stringify(t.slice(Math.max(0, bad - 20), bad + 20)))}`,
      },
    );
    return keep
      ? { line: l.line, issues: [...issues, fault], text: l.text }
      : { line: l.line, issues: [...issues, fault] };
  }
  let value: unknown;
  try {
    value = JSON.parse(t);
  } catch (e) {
    const msg = (e as Error).message;
    const bad = l.unterminated
      ? issue(
          file,
          l.line,
          "(line)",
          "truncated-line",
          `the last line is cut short (no line end and not valid JSON: ${msg}); the file looks truncated`,
          {
            expected: "a complete JSON object and a line end",
            found: clip(JSON.stringify(t.slice(-40))),
          },
        )
      : issue(file, l.line, "(line)", "invalid-json", `not valid JSON: ${msg}`, {
          expected: "one JSON object",
          found: clip(JSON.stringify(t)),
        });
    return keep
      ? { line: l.line, issues: [...issues, bad], text: l.text }
      : { line: l.line, issues: [...issues, bad] };
  }
  const v = validateRecord(value, file, l.line, reserved);
  const all = issues.length ? [...issues, ...v.issues] : v.issues;
  const item: ReadItem = { line: l.line, issues: all };
  if (v.record) item.record = v.record;
  if (keep) {
    item.raw = value;
    item.text = l.text;
  }
  return item;
}

/** readRecordBatches one item at a time. */
export function readRecords(
  spec: Pick<DatasetSpec, "annotation">,
  opts: ReadRecordsOptions = {},
): AsyncIterableIterator<ReadItem> {
  // A hand-written iterator over the batches: an async generator re-yielding each item costs
  // several times more per record than handing out already-settled results.
  const batches = readRecordBatches(spec, opts);
  let batch: ReadItem[] = [];
  let at = 0;
  const it: AsyncIterableIterator<ReadItem> = {
    async next(): Promise<IteratorResult<ReadItem>> {
      while (at >= batch.length) {
        const r = await batches.next();
        if (r.done) return { value: undefined, done: true };
        batch = r.value;
        at = 0;
      }
      return { value: batch[at++], done: false };
    },
    async return(): Promise<IteratorResult<ReadItem>> {
      await batches.return(undefined);
      return { value: undefined, done: true };
    },
    [Symbol.asyncIterator]() {
      return it;
    },
  };
  return it;
}

function bomIssue(file: string): DataIssue {
  return issue(
    file,
    1,
    "(line)",
    "bom",
    "the file starts with a UTF-8 byte order mark; it is ignored (Python's json.loads rejects it)",
    {
      severity: "warning",
      expected: "UTF-8 without a BOM",
      found: "EF BB BF",
    },
  );
}

/**
 * Splits a file of `size` bytes into at most `parts` byte ranges that each begin at a line
 * start, so each can be read on its own (in parallel). Ranges are [start, end).
 */
export async function lineAlignedRanges(
  path: string,
  size: number,
  parts: number,
): Promise<[number, number][]> {
  const { open } = await import("node:fs/promises");
  const cuts = [0];
  const h = await open(path, "r");
  try {
    const buf = Buffer.allocUnsafe(64 * 1024);
    for (let k = 1; k < parts; k++) {
      let pos = Math.max(Math.floor((size * k) / parts), cuts[cuts.length - 1]);
      let found = -1;
      while (found < 0 && pos < size) {
        const { bytesRead } = await h.read(buf, 0, buf.length, pos);
        if (bytesRead === 0) break;
        const i = buf.subarray(0, bytesRead).indexOf(10);
        if (i >= 0) found = pos + i + 1;
        else pos += bytesRead;
      }
      if (found < 0 || found >= size) break;
      if (found > cuts[cuts.length - 1]) cuts.push(found);
    }
  } finally {
    await h.close();
  }
  return cuts.map((c, i) => [c, i + 1 < cuts.length ? cuts[i + 1] : size]);
}
