/** Problems found in datasets: every one names the file, the line and the field. */

export type Severity = "error" | "warning";

export interface DataIssue {
  /** The file the problem is in (a JSONL annotation or the meta file), as the user named it. */
  file: string;
  /** 1-based line number; 0 when the problem concerns the whole file. */
  line: number;
  /** Dotted path of the field, e.g. `conversations[2].from`, `image_wh[0]`, `(line)` for the line itself. */
  field: string;
  /** Short stable identifier, used for counting (`invalid-json`, `missing-image`, ...). */
  kind: string;
  severity: Severity;
  expected?: string;
  found?: string;
  message: string;
}

export function issue(
  file: string,
  line: number,
  field: string,
  kind: string,
  message: string,
  extra: { expected?: string; found?: string; severity?: Severity } = {},
): DataIssue {
  const out: DataIssue = { file, line, field, kind, severity: extra.severity ?? "error", message };
  if (extra.expected !== undefined) out.expected = extra.expected;
  if (extra.found !== undefined) out.found = extra.found;
  return out;
}

/** `file:line: error [kind] field: message (expected X, found Y)`: one line a problem. */
export function formatIssue(i: DataIssue): string {
  const where = i.line > 0 ? `${i.file}:${i.line}` : i.file;
  const parts: string[] = [];
  if (i.expected !== undefined) parts.push(`expected ${i.expected}`);
  if (i.found !== undefined) parts.push(`found ${i.found}`);
  const ef = parts.length ? ` (${parts.join(", ")})` : "";
  return `${where}: ${i.severity} [${i.kind}] ${i.field}: ${i.message}${ef}`;
}

/** A short rendering of a JSON value for messages: type and a clipped preview. */
export function describe(v: unknown): string {
  if (v === undefined) return "nothing";
  if (v === null) return "null";
  if (Array.isArray(v)) return `an array ${clip(JSON.stringify(v))}`;
  if (typeof v === "object") return `an object ${clip(JSON.stringify(v))}`;
  if (typeof v === "string") return `a string ${clip(JSON.stringify(v))}`;
  return `a ${typeof v} ${String(v)}`;
}

export function clip(s: string, n = 60): string {
  return s.length > n ? `${s.slice(0, n - 1)}…` : s;
}
