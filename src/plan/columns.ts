/** Flat little-endian column files: written whole or streamed, read whole into typed arrays. */
import { createHash, type Hash } from "node:crypto";
import { closeSync, openSync, readSync, statSync } from "node:fs";
import { type FileHandle, open, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { UserError } from "../util/errors.ts";

export type Dtype = "<i4" | "<i8" | "|u1" | "<f8";

export interface ColumnSpec {
  file: string;
  dtype: Dtype;
  count: number;
  /**
   * Written with the file, checked on load: bytes, modification time (ns, as a decimal
   * string), sha256. Absent in caches written before checksums.
   */
  size?: number;
  mtime_ns?: string;
  sha256?: string;
}

const EXT: Record<Dtype, string> = { "<i4": "i32", "<i8": "i64", "|u1": "u8", "<f8": "f64" };
const SIZE: Record<Dtype, number> = { "<i4": 4, "<i8": 8, "|u1": 1, "<f8": 8 };

export function columnFile(name: string, dtype: Dtype): string {
  return `${name}.${EXT[dtype]}`;
}

function bytesOf(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

export async function writeColumn(
  dir: string,
  name: string,
  dtype: Dtype,
  data: ArrayBufferView,
): Promise<ColumnSpec> {
  const file = columnFile(name, dtype);
  await writeFile(join(dir, file), bytesOf(data));
  return { file, dtype, count: data.byteLength / SIZE[dtype] };
}

/**
 * A column streamed to disk through a fixed buffer: memory stays constant however many values
 * are appended.
 */
export class ColumnWriter {
  private buf: ArrayBuffer;
  private view: DataView;
  private used = 0;
  count = 0;
  private fh?: FileHandle;
  private readonly hash: Hash = createHash("sha256");
  readonly file: string;
  constructor(
    readonly dir: string,
    readonly name: string,
    readonly dtype: Dtype,
    bufferBytes = 1 << 20,
  ) {
    this.file = columnFile(name, dtype);
    this.buf = new ArrayBuffer(bufferBytes);
    this.view = new DataView(this.buf);
  }
  async openFile(): Promise<void> {
    this.fh = await open(join(this.dir, this.file), "w");
  }
  private async flush(): Promise<void> {
    if (this.used === 0) return;
    const chunk = new Uint8Array(this.buf.slice(0, this.used));
    this.used = 0;
    this.hash.update(chunk);
    await this.fh!.write(chunk);
  }
  /** Append values (numbers; int64 columns take numbers below 2^53). */
  async push(v: number): Promise<void> {
    const sz = SIZE[this.dtype];
    if (this.used + sz > this.buf.byteLength) await this.flush();
    switch (this.dtype) {
      case "<i4":
        this.view.setInt32(this.used, v, true);
        break;
      case "<i8":
        this.view.setBigInt64(this.used, BigInt(v), true);
        break;
      case "<f8":
        this.view.setFloat64(this.used, v, true);
        break;
      default:
        this.view.setUint8(this.used, v);
    }
    this.used += sz;
    this.count++;
  }
  /** Append raw bytes of a typed array whose element type matches the dtype. */
  async pushArray(a: ArrayBufferView): Promise<void> {
    const b = bytesOf(a);
    if (this.used + b.byteLength > this.buf.byteLength) await this.flush();
    if (b.byteLength > this.buf.byteLength) {
      this.hash.update(b);
      await this.fh!.write(b);
    } else {
      new Uint8Array(this.buf, this.used, b.byteLength).set(b);
      this.used += b.byteLength;
    }
    this.count += b.byteLength / SIZE[this.dtype];
  }
  async close(): Promise<ColumnSpec> {
    await this.flush();
    await this.fh!.sync();
    await this.fh!.close();
    return {
      file: this.file,
      dtype: this.dtype,
      count: this.count,
      ...fileRecord(join(this.dir, this.file), this.hash),
    };
  }
  async abort(): Promise<void> {
    await this.fh?.close().catch(() => {});
  }
}

/** What a manifest keeps of a file just written: size, mtime and the sha256 of its bytes. */
function fileRecord(path: string, hash: Hash): Pick<ColumnSpec, "size" | "mtime_ns" | "sha256"> {
  const st = statSync(path, { bigint: true });
  return { size: Number(st.size), mtime_ns: st.mtimeNs.toString(), sha256: hash.digest("hex") };
}

/** Read a whole column into a typed array (int64 columns as Float64Array of exact integers). */
export function readColumn(dir: string, spec: ColumnSpec): Int32Array | Float64Array | Uint8Array {
  const path = join(dir, spec.file);
  const size = statSync(path).size;
  const want = spec.count * SIZE[spec.dtype];
  if (size !== want) throw new Error(`${path}: ${size} bytes, manifest says ${want}`);
  const buf = new ArrayBuffer(size);
  const u8 = new Uint8Array(buf);
  const fd = openSync(path, "r");
  try {
    let at = 0;
    while (at < size) {
      const n = readSync(fd, u8, at, Math.min(size - at, 1 << 26), at);
      if (n <= 0) throw new Error(`${path}: short read`);
      at += n;
    }
  } finally {
    closeSync(fd);
  }
  // The bytes are in memory already: the full check costs one hash.
  if (spec.sha256 !== undefined && createHash("sha256").update(u8).digest("hex") !== spec.sha256)
    throw new UserError(
      `${path}: its sha256 differs from the one recorded when it was written: the file is corrupt or was changed (run \`tessera data prepare\` again)`,
    );
  switch (spec.dtype) {
    case "<i4":
      return new Int32Array(buf);
    case "<f8":
      return new Float64Array(buf);
    case "<i8": {
      const b = new BigInt64Array(buf);
      return Float64Array.from(b, (x) => Number(x));
    }
    default:
      return u8;
  }
}

/** Read `count` int32 values at element `offset` of a column file (random access, no mapping). */
export function readInt32At(path: string, offset: number, count: number): Int32Array {
  const out = new Int32Array(count);
  if (count === 0) return out;
  const fd = openSync(path, "r");
  try {
    readSync(fd, new Uint8Array(out.buffer), 0, count * 4, offset * 4);
  } finally {
    closeSync(fd);
  }
  return out;
}
