import { describe, expect, it } from "vitest";
import { duration } from "../../src/demo/report.ts";

describe("demo report durations", () => {
  it("rounds once: never 60 seconds in a minute", () => {
    expect(duration(299.6)).toBe("5m00s");
    expect(duration(59.96)).toBe("1m00s");
    expect(duration(59.9)).toBe("59.9s");
    expect(duration(125.2)).toBe("2m05s");
    expect(duration(3.14)).toBe("3.1s");
  });
});
