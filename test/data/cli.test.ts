import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { checkMeta } from "../../src/data/check.ts";
import { PACKAGE_ROOT } from "../../src/util/paths.ts";
import { dataset, png, tempDir, turns } from "./fixtures.ts";

const run = promisify(execFile);
const BIN = join(PACKAGE_ROOT, "bin", "tessera.mjs");

async function tessera(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [BIN, ...args], { cwd: PACKAGE_ROOT });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, stdout: x.stdout, stderr: x.stderr };
  }
}

describe("tessera data (command line)", () => {
  it("check --json prints clean JSON and exits 1 on errors; fill-wh writes a meta file that checks clean", async () => {
    const dir = tempDir();
    const m = dataset(
      dir,
      [
        { image: "a.png", conversations: turns() },
        { image: "a.png", image_wh: [[5, 5]], conversations: turns() },
      ],
      { "a.png": png(6, 4) },
    );
    const bad = await tessera(["data", "check", m, "--json"]);
    expect(bad.code).toBe(1);
    const report = JSON.parse(bad.stdout);
    expect(report.errorCount).toBe(1);
    expect(report.issues[0]).toMatchObject({
      line: 2,
      field: "image_wh[0]",
      kind: "image-wh-mismatch",
      expected: "[6, 4] (header)",
    });

    const metaOut = join(dir, "meta_wh.json");
    const fill = await tessera(["data", "fill-wh", m, "--meta-out", metaOut]);
    expect(fill.code).toBe(0);
    expect(fill.stderr).toContain("2 records filled (2 changed)");
    expect(JSON.parse(readFileSync(metaOut, "utf8")).ds.annotation).toBe("ds_wh.jsonl");

    const good = await checkMeta(metaOut);
    expect(good.errorCount).toBe(0);
    expect(good.datasets[0]).toMatchObject({ records: 2, lines: 2, missingImageWh: 0 });
  }, 60_000);
});
