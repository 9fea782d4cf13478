import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { LOCK_FILE, lockFolder, lockFolderWaiting } from "../../src/util/lock.ts";
import { PACKAGE_ROOT } from "../../src/util/paths.ts";

const LOCK_MODULE = join(PACKAGE_ROOT, "src", "util", "lock.ts");

/**
 * A node process that takes the lock and holds it until `release` exists, or says it was
 * refused and exits (code 3).
 */
function contender(dir: string, release: string): Promise<{ code: number | null; out: string }> {
  const code = `
    const { existsSync } = await import("node:fs");
    const { lockFolder } = await import(${JSON.stringify(LOCK_MODULE)});
    try {
      lockFolder(${JSON.stringify(dir)}, "work dir", "tessera train");
      console.log("locked " + process.pid);
      while (!existsSync(${JSON.stringify(release)})) await new Promise((r) => setTimeout(r, 20));
    } catch (e) {
      console.log("refused: " + e.message);
      process.exitCode = 3;
    }`;
  return new Promise((res) => {
    const p = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", code], {
      cwd: PACKAGE_ROOT,
    });
    let out = "";
    p.stdout.on("data", (d) => (out += d));
    p.stderr.on("data", (d) => (out += d));
    p.on("close", (c) => res({ code: c, out }));
  });
}

describe("folder locks", () => {
  it("lets one of two concurrent processes in and refuses the other, naming pid and host", async () => {
    const dir = mkdtempSync(join(tmpdir(), "tessera-lock-"));
    const release = join(dir, "release");
    const runs = [contender(dir, release), contender(dir, release)];
    // The refused one ends by itself; the holder keeps the lock until told to let go.
    await Promise.race(runs);
    writeFileSync(release, "");
    const [a, b] = await Promise.all(runs);
    const won = [a, b].filter((r) => r.code === 0);
    const lost = [a, b].filter((r) => r.code === 3);
    expect(won).toHaveLength(1);
    expect(lost).toHaveLength(1);
    const pid = /locked (\d+)/.exec(won[0].out)?.[1];
    expect(lost[0].out).toContain(`in use by tessera train (pid ${pid} on host ${hostname()}`);
    expect(lost[0].out).not.toMatch(/ENOENT|at .*\.ts:\d+/);
    // released when its holder exits
    expect(existsSync(join(dir, LOCK_FILE))).toBe(false);
  });

  it("takes over a lock whose holder died, and refuses one held by a live process", () => {
    const dir = mkdtempSync(join(tmpdir(), "tessera-lock-"));
    const dead = spawnSync(process.execPath, ["-e", "0"]).pid;
    const stale = { pid: dead, host: hostname(), since: "then", what: "tessera train", token: "x" };
    writeFileSync(join(dir, LOCK_FILE), JSON.stringify(stale));
    const lock = lockFolder(dir, "work dir", "tessera train");
    expect(JSON.parse(readFileSync(join(dir, LOCK_FILE), "utf8")).pid).toBe(process.pid);
    // held by this (live) process: a second taker is refused
    expect(() => lockFolder(dir, "work dir", "data prepare")).toThrow(
      new RegExp(`in use by tessera train \\(pid ${process.pid} on host`),
    );
    lock.release();
    expect(existsSync(join(dir, LOCK_FILE))).toBe(false);
    // a lock of another host cannot be checked: refused, with the file to remove
    writeFileSync(join(dir, LOCK_FILE), JSON.stringify({ ...stale, host: "elsewhere" }));
    expect(() => lockFolder(dir, "cache", "data prepare")).toThrow(/remove .*\.tessera\.lock/);
  });

  it("waits for a held cache when asked (the nodes of one multi-node run), then takes it", async () => {
    const dir = mkdtempSync(join(tmpdir(), "tessera-lock-"));
    const first = lockFolder(dir, "cache", "data prepare");
    const said: string[] = [];
    setTimeout(() => first.release(), 300);
    const second = await lockFolderWaiting(dir, "cache", "data prepare", {
      onWait: (m) => said.push(m),
    });
    expect(said[0]).toMatch(/in use by data prepare .*: waiting/);
    expect(JSON.parse(readFileSync(join(dir, LOCK_FILE), "utf8")).pid).toBe(process.pid);
    second.release();
    // a node's own lock file next to node 0's: both held at once
    const a = lockFolder(dir, "work dir", "tessera train");
    const b = lockFolder(dir, "work dir", "tessera train", `${LOCK_FILE}.node-1`);
    a.release();
    b.release();
  });
});
