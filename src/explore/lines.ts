/**
 * Random access to the lines of a big annotation file: one pass records where each line
 * starts (8 bytes per line), then any line is one read.
 */
import { closeSync, createReadStream, openSync, readSync } from "node:fs";

export class LineIndex {
  private constructor(
    readonly path: string,
    /** Byte offset of each line's start, and the file's end last. */
    private readonly starts: Float64Array,
  ) {}

  static async build(path: string): Promise<LineIndex> {
    let starts = new Float64Array(1024);
    let n = 0;
    let pos = 0;
    let endsWithNewline = true;
    const push = (at: number) => {
      if (n === starts.length) {
        const next = new Float64Array(starts.length * 2);
        next.set(starts);
        starts = next;
      }
      starts[n++] = at;
    };
    push(0);
    for await (const chunk of createReadStream(path, {
      highWaterMark: 1 << 20,
    }) as AsyncIterable<Buffer>) {
      for (let i = chunk.indexOf(10); i !== -1; i = chunk.indexOf(10, i + 1)) push(pos + i + 1);
      pos += chunk.length;
      endsWithNewline = chunk.length === 0 ? endsWithNewline : chunk[chunk.length - 1] === 10;
    }
    // The last start is the end of the file; a final line without a newline still counts.
    if (!endsWithNewline) push(pos);
    return new LineIndex(path, starts.slice(0, n));
  }

  /** Lines in the file. */
  get count(): number {
    return this.starts.length - 1;
  }

  /** Line i (0-based) without its line end; a BOM on the first line is removed. */
  line(i: number): string {
    const from = this.starts[i];
    const to = this.starts[i + 1];
    const buf = Buffer.alloc(to - from);
    const fd = openSync(this.path, "r");
    try {
      readSync(fd, buf, 0, buf.length, from);
    } finally {
      closeSync(fd);
    }
    let s = buf.toString("utf8");
    if (s.endsWith("\n")) s = s.slice(0, s.endsWith("\r\n") ? -2 : -1);
    if (i === 0 && s.charCodeAt(0) === 0xfeff) s = s.slice(1);
    return s;
  }
}
