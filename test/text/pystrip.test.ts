import { beforeAll, describe, expect, it } from "vitest";
import { isPySpace, pyLstrip, pyRstrip, pyStrip } from "../../src/text/pystrip.ts";
import { askPython } from "./reference.ts";

/** Every code point JavaScript's trim() or \s treats as whitespace. */
function jsSpaces(): number[] {
  const out: number[] = [];
  for (let c = 0; c < 0x110000; c++) {
    if (c >= 0xd800 && c < 0xe000) continue;
    const s = String.fromCodePoint(c);
    if (s.trim() === "" || /\s/u.test(s)) out.push(c);
  }
  return out;
}

describe("Python's strip", () => {
  let python: number[];
  let table: string[];
  let answers: [string, string, string][];

  beforeAll(async () => {
    [python] = (await askPython([{ op: "isspace" }])) as [number[]];
    const all = [...new Set([...python, ...jsSpaces()])].sort((a, b) => a - b);
    table = [];
    for (const c of all) {
      const w = String.fromCodePoint(c);
      table.push(w, `${w}a${w}${w}`, `a${w}b`, `${w} x \t${w}`, `\u200b${w}`, `${w}\ufeff${w}`);
    }
    [answers] = (await askPython([{ op: "strip", texts: table }])) as [[string, string, string][]];
  });

  it("strips exactly what Python strips, over every code point Python or JavaScript calls whitespace", () => {
    expect(table.length).toBeGreaterThan(6 * 29);
    table.forEach((t, i) => {
      const what = JSON.stringify(t);
      expect([pyStrip(t), pyLstrip(t), pyRstrip(t)], what).toEqual(answers[i]);
    });
    // The code points where the two languages disagree, and Python's side of it.
    for (const c of [0x1c, 0x1d, 0x1e, 0x1f, 0x85]) {
      expect(isPySpace(c)).toBe(true);
      expect(String.fromCharCode(c).trim()).not.toBe("");
    }
    expect(isPySpace(0xfeff)).toBe(false);
    expect("\ufeff".trim()).toBe("");
    expect(pyStrip("\ufeff x\u0085")).toBe("\ufeff x");
  });

  it("knows every code point Python's isspace() knows, and no other", () => {
    const mine: number[] = [];
    for (let c = 0; c < 0x10000; c++) if (isPySpace(c)) mine.push(c);
    expect(mine).toEqual(python);
  });
});
