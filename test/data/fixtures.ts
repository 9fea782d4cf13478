/** Small on-disk datasets for the data tests: tiny real PNG/JPEG headers, JSONL, meta files. */
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { deflateSync } from "node:zlib";
import { expect } from "vitest";
import { type DataIssue, formatIssue } from "../../src/data/issues.ts";

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(b: Buffer): number {
  let c = 0xffffffff;
  for (const x of b) c = CRC_TABLE[(c ^ x) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type: string, data: Buffer): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const td = Buffer.concat([Buffer.from(type, "latin1"), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(td));
  return Buffer.concat([len, td, crc]);
}

/** A valid w×h grey PNG. */
export function png(w: number, h: number): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr.set([8, 0, 0, 0, 0], 8); // 8-bit greyscale
  const raw = Buffer.alloc((w + 1) * h);
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("IDAT", deflateSync(raw)),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

/** The header of a baseline JPEG of w×h (SOI, JFIF APP0, SOF0, EOI): enough for a size. */
export function jpegHeader(w: number, h: number): Buffer {
  const app0 = Buffer.from([
    0xff, 0xe0, 0x00, 0x10, 0x4a, 0x46, 0x49, 0x46, 0x00, 0x01, 0x01, 0x00, 0x00, 0x01, 0x00, 0x01,
    0x00, 0x00,
  ]);
  const sof = Buffer.from([
    0xff,
    0xc0,
    0x00,
    0x11,
    0x08,
    h >> 8,
    h & 0xff,
    w >> 8,
    w & 0xff,
    0x03,
    1,
    0x22,
    0,
    2,
    0x11,
    1,
    3,
    0x11,
    1,
  ]);
  return Buffer.concat([Buffer.from([0xff, 0xd8]), app0, sof, Buffer.from([0xff, 0xd9])]);
}

export function tempDir(prefix = "tessera-data-"): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export function write(path: string, data: string | Buffer): string {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, data);
  return path;
}

export const turns = (q = "<image>\nwhat is it?", a = "a cat") => [
  { from: "human", value: q },
  { from: "gpt", value: a },
];

/** One dataset `ds` under `dir`: images/ holding the given files, ds.jsonl with `lines`, meta.json. */
export function dataset(
  dir: string,
  lines: (string | object)[],
  images: Record<string, Buffer> = {},
  entry: object = {},
): string {
  for (const [name, data] of Object.entries(images)) write(join(dir, "images", name), data);
  mkdirSync(join(dir, "images"), { recursive: true });
  write(
    join(dir, "ds.jsonl"),
    `${lines.map((l) => (typeof l === "string" ? l : JSON.stringify(l))).join("\n")}\n`,
  );
  return write(
    join(dir, "meta.json"),
    JSON.stringify({ ds: { media_root: "images", annotation: "ds.jsonl", ...entry } }, null, 2),
  );
}

/** Asserts the problem names its file (ending), line and field, in its data and its message. */
export function expectNamed(
  i: DataIssue | undefined,
  file: string,
  line: number,
  field: string,
): DataIssue {
  expect(i, `no issue for ${file}:${line} ${field}`).toBeDefined();
  const x = i as DataIssue;
  expect(x.file.endsWith(file)).toBe(true);
  expect(x.line).toBe(line);
  expect(x.field).toBe(field);
  const text = formatIssue(x);
  expect(text).toContain(`${x.file}:${line}`);
  expect(text).toContain(field);
  return x;
}
