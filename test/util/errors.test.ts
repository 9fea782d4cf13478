import { writeFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { namedWriteError, UserError } from "../../src/util/errors.ts";

describe("write errors", () => {
  it("names a full disk and the path being written (a real ENOSPC from /dev/full)", () => {
    let raw: unknown;
    try {
      writeFileSync("/dev/full", "x".repeat(1 << 16));
    } catch (e) {
      raw = e;
    }
    expect((raw as NodeJS.ErrnoException).code).toBe("ENOSPC");
    const named = namedWriteError(raw, "/data/cache/ds-x");
    expect(named).toBeInstanceOf(UserError);
    expect((named as Error).message).toBe("disk full while writing /data/cache/ds-x");
    const other = new Error("something else");
    expect(namedWriteError(other, "/p")).toBe(other);
  });
});
