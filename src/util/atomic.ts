import { randomBytes } from "node:crypto";
import {
  createWriteStream,
  mkdirSync,
  renameSync,
  rmSync,
  type WriteStream,
  writeFileSync,
} from "node:fs";
import { mkdir, rename, rm, writeFile } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { namedWriteError } from "./errors.ts";

/** A temporary name beside `path`, so the final rename stays on one filesystem. */
export function tempPathFor(path: string): string {
  return join(
    dirname(path),
    `.${basename(path)}.tmp-${process.pid}-${randomBytes(4).toString("hex")}`,
  );
}

/** Write a whole file atomically: readers see the old file or the new one, never half. */
export async function writeFileAtomic(path: string, data: string | Uint8Array): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const tmp = tempPathFor(path);
  try {
    await writeFile(tmp, data);
    await rename(tmp, path);
  } catch (e) {
    await rm(tmp, { force: true });
    throw namedWriteError(e, path);
  }
}

/** writeFileAtomic for callers that cannot wait (event handlers). */
export function writeFileAtomicSync(path: string, data: string | Uint8Array): void {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = tempPathFor(path);
  try {
    writeFileSync(tmp, data);
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw namedWriteError(e, path);
  }
}

/**
 * A streamed file that appears at `path` only on commit(); abort() (or a crash) leaves
 * whatever was there before untouched.
 */
export class AtomicFileWriter {
  readonly tmp: string;
  readonly stream: WriteStream;
  constructor(readonly path: string) {
    this.tmp = tempPathFor(path);
    this.stream = createWriteStream(this.tmp);
  }
  write(chunk: string | Uint8Array): Promise<void> {
    return new Promise((res, rej) => {
      if (this.stream.write(chunk)) res();
      else {
        this.stream.once("drain", res);
        this.stream.once("error", rej);
      }
    });
  }
  async commit(): Promise<void> {
    await new Promise<void>((res, rej) =>
      this.stream.end((e?: Error | null) => (e ? rej(e) : res())),
    );
    await rename(this.tmp, this.path);
  }
  async abort(): Promise<void> {
    this.stream.destroy();
    await rm(this.tmp, { force: true });
  }
}
