/**
 * A lock file per folder (a run's work dir, a prepared cache): one writer at a time. The
 * file holds the holder's pid and host; a second process is refused with both in the message.
 * A lock left by a process that died (same host, pid no longer running) is taken over.
 */
import { randomBytes } from "node:crypto";
import {
  closeSync,
  linkSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import { UserError } from "./errors.ts";

export const LOCK_FILE = ".tessera.lock";

interface LockInfo {
  pid: number;
  host: string;
  since: string;
  what: string;
  /** Tells this holder's file from a later one of the same pid. */
  token: string;
}

/** The folder is held by another live process (or one on another host). */
export class FolderLockedError extends UserError {}

export interface FolderLock {
  path: string;
  release(): void;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM"; // running, owned by someone else
  }
}

function readInfo(path: string): { text: string; info: LockInfo | null } | null {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw e;
  }
  try {
    const info = JSON.parse(text) as LockInfo;
    return { text, info: typeof info.pid === "number" ? info : null };
  } catch {
    return { text, info: null }; // being written right now
  }
}

const sleep = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);

/**
 * Hold `dir`'s lock until release() (or this process's exit). `what` says what holds it
 * ("tessera train", "data prepare"), `name` what the folder is ("work dir", "cache").
 */
export function lockFolder(
  dir: string,
  name: string,
  what: string,
  file: string = LOCK_FILE,
): FolderLock {
  mkdirSync(dir, { recursive: true });
  const path = join(dir, file);
  const info: LockInfo = {
    pid: process.pid,
    host: hostname(),
    since: new Date().toISOString(),
    what,
    token: randomBytes(8).toString("hex"),
  };
  const mine = `${JSON.stringify(info)}\n`;
  for (let attempt = 0; ; attempt++) {
    try {
      const fd = openSync(path, "wx");
      try {
        writeSync(fd, mine);
      } finally {
        closeSync(fd);
      }
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
    }
    const held = readInfo(path);
    if (held === null) continue; // released in between: try again
    const h = held.info;
    if (h === null) {
      // Created but not yet written: the holder is writing it now.
      if (attempt < 50) {
        sleep(20);
        continue;
      }
      throw new UserError(
        `${name} ${dir} is locked (${path} is unreadable): if no tessera process uses it, remove that file`,
      );
    }
    if (h.host === info.host && !alive(h.pid) && attempt < 50) {
      // Stale: its holder died. Move it aside under a name of our own; only one taker wins.
      const aside = `${path}.stale-${process.pid}-${info.token}`;
      try {
        renameSync(path, aside);
      } catch {
        continue; // another process took it over first
      }
      if (readInfo(aside)?.text !== held.text) {
        // A fresh lock was written between our read and our rename: give it back.
        try {
          linkSync(aside, path);
        } catch {
          // someone else holds the lock now; theirs stands
        }
      }
      try {
        unlinkSync(aside);
      } catch {
        // already gone
      }
      continue;
    }
    throw new FolderLockedError(
      `${name} ${dir} is in use by ${h.what} (pid ${h.pid} on host ${h.host}, since ${h.since}): ` +
        `wait for it to finish or use another ${name}` +
        (h.host === info.host ? "" : `; if that process is gone, remove ${path}`),
    );
  }
  let held = true;
  const release = () => {
    if (!held) return;
    held = false;
    process.off("exit", release);
    // Only our own file: never one a later holder wrote.
    if (readInfo(path)?.text === mine) {
      try {
        unlinkSync(path);
      } catch {
        // already gone
      }
    }
  };
  process.on("exit", release);
  return { path, release };
}

/**
 * lockFolder, waiting while another process holds the folder (the nodes of one multi-node
 * run share a cache: one prepares it, the others wait, then find it ready).
 */
export async function lockFolderWaiting(
  dir: string,
  name: string,
  what: string,
  o: { timeoutMs?: number; onWait?: (message: string) => void } = {},
): Promise<FolderLock> {
  const until = Date.now() + (o.timeoutMs ?? 6 * 3600_000);
  let told = false;
  for (;;) {
    try {
      return lockFolder(dir, name, what);
    } catch (e) {
      if (!(e instanceof FolderLockedError) || Date.now() > until) throw e;
      if (!told) o.onWait?.(`${e.message}: waiting`);
      told = true;
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
}
