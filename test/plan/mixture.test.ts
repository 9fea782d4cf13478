import { describe, expect, it } from "vitest";
import { epochMixture, mixtureList, mixtureSize } from "../../src/plan/mixture.ts";

const ds = [
  { name: "a", first: 0, count: 10, repeatTime: 3 },
  { name: "b", first: 10, count: 7, repeatTime: 0.5 },
  { name: "c", first: 17, count: 4, repeatTime: 1 },
];

describe("mixture", () => {
  it("repeats integer repeat_time and takes the FIRST records for a fraction", () => {
    const list = Array.from(mixtureList(ds));
    expect(mixtureSize(ds)).toBe(30 + 3 + 4);
    const b = list.filter((i) => i >= 10 && i < 17);
    expect(b).toEqual([10, 11, 12]); // floor(7 · 0.5) = 3, the first three
    const counts = new Map<number, number>();
    for (const i of list) counts.set(i, (counts.get(i) ?? 0) + 1);
    for (let i = 0; i < 10; i++) expect(counts.get(i)).toBe(3);
    for (let i = 17; i < 21; i++) expect(counts.get(i)).toBe(1);
  });

  it("shuffles with the seed: same seed and epoch give the same order, other epochs another", () => {
    const e0 = epochMixture(ds, 42, 0);
    expect(Array.from(epochMixture(ds, 42, 0))).toEqual(Array.from(e0));
    const e1 = epochMixture(ds, 42, 1);
    expect(Array.from(e1)).not.toEqual(Array.from(e0));
    expect(Array.from(epochMixture(ds, 43, 0))).not.toEqual(Array.from(e0));
    // a shuffle, not a change of content
    expect(Array.from(e1).sort((x, y) => x - y)).toEqual(
      Array.from(mixtureList(ds)).sort((x, y) => x - y),
    );
  });
});
