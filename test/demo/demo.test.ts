/**
 * The shortened demo end to end: data, check, tiny model, eval, training, export, eval.
 * The held-out colour questions must go from chance (1 in 6) to clearly above it.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { runDemo } from "../../src/demo/demo.ts";
import { formatDemoReport } from "../../src/demo/report.ts";

const out = mkdtempSync(join(tmpdir(), "tessera-demo-"));
afterAll(() => rmSync(out, { recursive: true, force: true }));

describe("tessera demo --fast", () => {
  it("learns the colour questions", { timeout: 900_000 }, async () => {
    const lines: string[] = [];
    const r = await runDemo({
      out,
      seed: 0,
      fast: true,
      bar: false,
      dashboard: false,
      log: (l) => lines.push(l),
    });
    const before = r.before.byType.colour;
    const after = r.after.byType.colour;
    expect(before.total).toBeGreaterThanOrEqual(30);
    expect(after.total).toBe(before.total);
    // an untrained model answers gibberish; chance for a guess among six colours is 17%
    expect(before.accuracy).toBeLessThan(0.2);
    expect(after.accuracy).toBeGreaterThanOrEqual(0.5);
    expect(r.train.steps).toBeGreaterThan(0);
    expect(r.train.lastLoss!).toBeLessThan(r.train.firstLoss!);
    expect(r.train.packFill).toBeGreaterThan(0.5);
    // The held-out loss, measured during training (before the first step, every 40, at the end), falls.
    const held = r.train.heldOut;
    expect(held.map((h) => h.step)).toEqual([0, 40, 80]);
    expect(held[2].loss).toBeLessThan(held[0].loss * 0.8);
    expect(lines.some((l) => /eval at step 80\/80: held-out loss/.test(l))).toBe(true);
    expect(r.check.errors).toBe(0);
    const text = formatDemoReport(r, out);
    expect(text).toMatch(/colour\s+\d+\.\d%\s+\d+\.\d%/);
    expect(text).toContain("tokens/s");
    expect(text).toMatch(/held out {4}loss \d+\.\d+ → \d+\.\d+/);
    expect(lines.some((l) => l.startsWith("[5/6] training"))).toBe(true);
  });
});
