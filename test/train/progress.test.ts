/** Progress lines without a terminal: by the clock, not by the step, with the ETA from the pace. */
import { describe, expect, it } from "vitest";
import { formatDuration, progressLines } from "../../src/train/driver.ts";

describe("progress lines", () => {
  it("prints the first step, then one line per interval of wall time, and the last step", () => {
    let now = 0;
    const lines = progressLines(30, () => now);
    const printed: (string | undefined)[] = [];
    // 100 steps, 2 s each: a line at step 1, then every 15 steps (30 s), and at step 100.
    for (let step = 1; step <= 100; step++) {
      now = step * 2000;
      printed.push(
        lines({
          event: "metric",
          step,
          total: 100,
          loss: 1 / step,
          lr: 1e-4,
          tokens_per_s_per_gpu: 1234.4,
        }),
      );
    }
    const at = printed.flatMap((l, i) => (l ? [i + 1] : []));
    expect(at).toEqual([1, 16, 31, 46, 61, 76, 91, 100]);
    expect(printed[0]).toBe("step 1/100 · loss 1.000 · 1234 tok/s/gpu · lr 0.000100 · eta -");
    // 15 steps in 30 s: 2 s a step, 84 steps left
    expect(printed[15]).toBe(
      "step 16/100 · loss 0.06250 · 1234 tok/s/gpu · lr 0.000100 · eta 2:48",
    );
    expect(printed[99]).toMatch(/^step 100\/100 .* eta 0:00$/);
  });

  it("formats durations as m:ss or h:mm:ss", () => {
    expect(formatDuration(5)).toBe("0:05");
    expect(formatDuration(3723)).toBe("1:02:03");
    expect(formatDuration(Number.NaN)).toBe("-");
  });
});
