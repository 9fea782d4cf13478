import { join } from "node:path";
import { describe, expect, it } from "vitest";
import type { DataIssue } from "../../src/data/issues.ts";
import {
  lineAlignedRanges,
  type ReadItem,
  readLineBatches,
  readRecords,
} from "../../src/data/jsonl.ts";
import { normalizePlaceholders, validateRecord } from "../../src/data/record.ts";
import { expectNamed, tempDir, turns, write } from "./fixtures.ts";

async function readAll(
  text: string | Buffer,
  chunkSize?: number,
): Promise<{ items: ReadItem[]; issues: DataIssue[] }> {
  const p = write(join(tempDir(), "x.jsonl"), text);
  const items: ReadItem[] = [];
  for await (const it of readRecords({ annotation: p }, { chunkSize })) items.push(it);
  return { items, issues: items.flatMap((i) => i.issues) };
}

const line = (o: object) => JSON.stringify(o);
const good = line({ id: 1, conversations: turns("hello", "hi") });

describe("readRecords: lines", () => {
  it("reports a truncated last line and keeps the lines before it", async () => {
    const { items, issues } = await readAll(`${good}\n${good}\n{"id": 3, "conversations": [{"fr`);
    expect(items.filter((i) => i.record)).toHaveLength(2);
    const i = expectNamed(
      issues.find((x) => x.kind === "truncated-line"),
      "x.jsonl",
      3,
      "(line)",
    );
    expect(i.severity).toBe("error");
    expect(i.message).toMatch(/truncated/);
  });

  it("accepts a valid last line without a newline", async () => {
    const { items, issues } = await readAll(`${good}\n${good}`);
    expect(items.filter((i) => i.record)).toHaveLength(2);
    expect(issues).toHaveLength(0);
  });

  it("reports invalid JSON and keeps going", async () => {
    const { items, issues } = await readAll(`${good}\n{"id": 2, conversations: []}\n${good}\n`);
    expect(items.filter((i) => i.record).map((i) => i.line)).toEqual([1, 3]);
    const i = expectNamed(
      issues.find((x) => x.kind === "invalid-json"),
      "x.jsonl",
      2,
      "(line)",
    );
    expect(i.message).toMatch(/not valid JSON/);
  });

  it("removes a BOM with a warning", async () => {
    const { items, issues } = await readAll(
      Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(`${good}\n${good}\n`)]),
    );
    expect(items.filter((i) => i.record)).toHaveLength(2);
    const i = expectNamed(
      issues.find((x) => x.kind === "bom"),
      "x.jsonl",
      1,
      "(line)",
    );
    expect(i.severity).toBe("warning");
  });

  it("accepts CRLF line ends, warning once with the first line", async () => {
    const { items, issues } = await readAll(`${good}\r\n${good}\r\n${good}\r\n`);
    expect(items.filter((i) => i.record)).toHaveLength(3);
    expect(items[0].record?.conversations[1].value).toBe("hi");
    const crlf = issues.filter((x) => x.kind === "crlf");
    expect(crlf).toHaveLength(1);
    expectNamed(crlf[0], "x.jsonl", 1, "(line)");
    expect(crlf[0].severity).toBe("warning");
  });

  it("skips empty lines with a warning each, keeping line numbers", async () => {
    const { items, issues } = await readAll(`${good}\n\n   \n${good}\n`);
    expect(items.filter((i) => i.record).map((i) => i.line)).toEqual([1, 4]);
    const empty = issues.filter((x) => x.kind === "empty-line");
    expect(empty.map((x) => x.line)).toEqual([2, 3]);
    expectNamed(empty[0], "x.jsonl", 2, "(line)");
  });

  it("reports a line that is not an object", async () => {
    const { issues } = await readAll(`${good}\n[1, 2]\n"text"\n`);
    expectNamed(
      issues.find((x) => x.line === 2),
      "x.jsonl",
      2,
      "(line)",
    );
    const s = expectNamed(
      issues.find((x) => x.line === 3),
      "x.jsonl",
      3,
      "(line)",
    );
    expect(s.kind).toBe("not-object");
    expect(s.found).toMatch(/string/);
  });

  it("numbers lines right across read chunks, multi-byte characters included", async () => {
    const rec = line({ conversations: turns("héllo wörld — 你好", "ok") });
    const text = `${Array.from({ length: 50 }, () => rec).join("\n")}\n{bad\n`;
    const { items, issues } = await readAll(text, 7);
    expect(items.filter((i) => i.record)).toHaveLength(50);
    expect(items[10].record?.conversations[0].value).toBe("héllo wörld — 你好");
    expectNamed(issues[0], "x.jsonl", 51, "(line)");
  });
});

describe("validateRecord: fields", () => {
  const v = (o: unknown) => validateRecord(o, "f.jsonl", 7);

  it("skips a first turn from gpt with a warning, as the official preprocess does; two are an error", () => {
    const h = (value: string) => ({ from: "human", value });
    const g = (value: string) => ({ from: "gpt", value });
    const s = { from: "system", value: "sys" };
    const r = v({ conversations: [s, g("hello"), h("q"), g("a")] });
    expect(r.record?.conversations).toEqual([s, h("q"), g("a")]);
    expect(r.issues.map((i) => [i.kind, i.severity, i.field])).toEqual([
      ["starts-with-gpt", "warning", "conversations[1]"],
    ]);
    const two = v({ conversations: [g("x"), g("y"), h("q"), g("a")] });
    expect(two.record).toBeUndefined();
    expect(two.issues.map((i) => [i.kind, i.message])).toContainEqual([
      "bad-alternation",
      "two gpt turns in a row",
    ]);
    // Nothing left to learn once it is skipped.
    expect(v({ conversations: [g("x"), h("q")] }).issues.map((i) => i.kind)).toContain("no-answer");
  });

  it("reports wrong field types, naming each field", () => {
    const r = v({ id: { a: 1 }, conversations: "hi", image: 3, video: 5 });
    expect(r.record).toBeUndefined();
    expectNamed(
      r.issues.find((i) => i.field === "id"),
      "f.jsonl",
      7,
      "id",
    );
    expectNamed(
      r.issues.find((i) => i.field === "conversations"),
      "f.jsonl",
      7,
      "conversations",
    );
    expectNamed(
      r.issues.find((i) => i.field === "image"),
      "f.jsonl",
      7,
      "image",
    );
    expectNamed(
      r.issues.find((i) => i.field === "video"),
      "f.jsonl",
      7,
      "video",
    );
    const t = v({
      conversations: [
        { from: "human", value: 3 },
        { from: "gpt", value: "x" },
      ],
      image: ["a.png", 4],
      image_wh: "100x200",
    });
    expectNamed(
      t.issues.find((i) => i.field === "conversations[0].value"),
      "f.jsonl",
      7,
      "conversations[0].value",
    );
    expectNamed(
      t.issues.find((i) => i.field === "image[1]"),
      "f.jsonl",
      7,
      "image[1]",
    );
    expectNamed(
      t.issues.find((i) => i.field === "image_wh"),
      "f.jsonl",
      7,
      "image_wh",
    );
    expect(v({ image: "a.png" }).issues[0].kind).toBe("missing-field");
  });

  it("rejects from values other than human, gpt and system", () => {
    const r = v({
      conversations: [
        { from: "user", value: "q" },
        { from: "assistant", value: "a" },
      ],
    });
    const i = expectNamed(r.issues[0], "f.jsonl", 7, "conversations[0].from");
    expect(i.kind).toBe("bad-role");
    expect(i.found).toBe('a string "user"');
    expectNamed(r.issues[1], "f.jsonl", 7, "conversations[1].from");
  });

  it("rejects two human turns in a row", () => {
    const r = v({
      conversations: [
        { from: "human", value: "q" },
        { from: "human", value: "q2" },
        { from: "gpt", value: "a" },
      ],
    });
    const i = expectNamed(r.issues[0], "f.jsonl", 7, "conversations[1].from");
    expect(i.message).toMatch(/two human turns in a row/);
    expect(r.record).toBeUndefined();
  });

  it("accepts a leading system turn and several rounds; rejects gpt first and late system turns", () => {
    const ok = v({
      conversations: [
        { from: "system", value: "be brief" },
        ...turns("q1", "a1"),
        ...turns("q2", "a2"),
      ],
    });
    expect(ok.issues).toEqual([]);
    expect(ok.record?.conversations).toHaveLength(5);
    expectNamed(
      v({ conversations: [{ from: "gpt", value: "a" }] }).issues[0],
      "f.jsonl",
      7,
      "conversations[0].from",
    );
    const late = v({
      conversations: [
        ...turns("q", "a"),
        { from: "system", value: "s" },
        { from: "gpt", value: "b" },
      ],
    });
    expect(late.issues[0].message).toMatch(/system turn is only allowed first/);
  });

  it("drops a last human turn with a warning", () => {
    const r = v({ conversations: [...turns("q1", "a1"), { from: "human", value: "q2" }] });
    const i = expectNamed(r.issues[0], "f.jsonl", 7, "conversations[2]");
    expect(i.severity).toBe("warning");
    expect(r.record?.conversations.map((t) => t.value)).toEqual(["q1", "a1"]);
    // Nothing left to learn is an error.
    expect(v({ conversations: [{ from: "human", value: "q" }] }).issues[0].kind).toBe("no-answer");
  });

  it("reports a placeholder count that differs from the image count", () => {
    const two = v({ image: ["a.png", "b.png"], conversations: turns("<image>\nwhich?", "left") });
    const i = expectNamed(two.issues[0], "f.jsonl", 7, "conversations");
    expect(i.kind).toBe("placeholder-mismatch");
    expect(i.expected).toBe("2 <image>");
    expect(i.found).toBe("1");
    const none = v({ conversations: turns("<image>\nwhat?", "x") });
    expectNamed(none.issues[0], "f.jsonl", 7, "conversations");
    const vid = v({ video: "v.mp4", conversations: turns("<image>\nwhat?", "x") });
    expect(vid.issues[0].kind).toBe("placeholder-mismatch");
  });

  it("reports image_wh of the wrong length and non-positive sizes", () => {
    const len = v({
      image: ["a.png", "b.png"],
      image_wh: [[10, 10]],
      conversations: turns("<image><image>", "x"),
    });
    const i = expectNamed(len.issues[0], "f.jsonl", 7, "image_wh");
    expect(i.kind).toBe("image-wh-count");
    expect(i.expected).toBe("2 pair(s)");
    const zero = v({
      image: ["a.png", "b.png"],
      image_wh: [
        [10, 10],
        [0, 5],
      ],
      conversations: turns("<image><image>", "x"),
    });
    expectNamed(zero.issues[0], "f.jsonl", 7, "image_wh[1]");
    const neg = v({ image: "a.png", image_wh: [[-3, 5]], conversations: turns() });
    expect(expectNamed(neg.issues[0], "f.jsonl", 7, "image_wh[0]").found).toBe("[-3,5]");
    const frac = v({ image: "a.png", image_wh: [[3.5, 5]], conversations: turns() });
    expect(frac.issues[0].kind).toBe("bad-image-wh");
    const flat = v({ image: "a.png", image_wh: [100, 200], conversations: turns() });
    expectNamed(flat.issues[0], "f.jsonl", 7, "image_wh[0]");
  });

  it("keeps unknown fields in extra, images always a list", () => {
    const r = v({
      id: "x",
      image: "a.png",
      image_wh: [[3, 4]],
      conversations: turns(),
      source: "coco",
      score: 0.5,
    });
    expect(r.issues).toEqual([]);
    expect(r.record).toEqual({
      id: "x",
      images: ["a.png"],
      imageWh: [[3, 4]],
      conversations: turns(),
      extra: { source: "coco", score: 0.5 },
    });
    expect(v({ conversations: turns("hi", "ho") }).record?.images).toEqual([]);
  });
});

describe("normalizePlaceholders", () => {
  it("prepends one <image>\\n per image to the first human turn when none is written", () => {
    const { record } = validateRecord(
      {
        image: ["a.png", "b.png"],
        conversations: [{ from: "system", value: "s" }, ...turns("compare", "same")],
      },
      "f",
      1,
    );
    const n = normalizePlaceholders(record!);
    expect(n.conversations[1].value).toBe("<image>\n<image>\ncompare");
    expect(record!.conversations[1].value).toBe("compare");
  });

  it("leaves written placeholders and text records alone; adds <video>\\n to video records", () => {
    const { record } = validateRecord(
      { image: "a.png", conversations: turns("look <image> here", "ok") },
      "f",
      1,
    );
    expect(normalizePlaceholders(record!)).toBe(record);
    const text = validateRecord({ conversations: turns("hi", "ho") }, "f", 1).record!;
    expect(normalizePlaceholders(text)).toBe(text);
    const vid = validateRecord(
      { video: "v.mp4", conversations: turns("what happens?", "x") },
      "f",
      1,
    ).record!;
    expect(normalizePlaceholders(vid).conversations[0].value).toBe("<video>\nwhat happens?");
  });
});

describe("lineAlignedRanges", () => {
  it("cuts a file into ranges that start at line starts and cover it exactly", async () => {
    const text = ["a", "bb", "x".repeat(300), "", "ccc", "d".repeat(50), "e"].join("\n");
    const p = write(join(tempDir(), "r.jsonl"), text);
    for (const parts of [1, 2, 3, 5, 40]) {
      const ranges = await lineAlignedRanges(p, text.length, parts);
      expect(ranges[0][0]).toBe(0);
      expect(ranges[ranges.length - 1][1]).toBe(text.length);
      for (let k = 1; k < ranges.length; k++) {
        expect(ranges[k][0]).toBe(ranges[k - 1][1]);
        expect(text[ranges[k][0] - 1]).toBe("\n");
      }
      // Reading every range gives every line once, in order.
      const lines: string[] = [];
      for (const [start, end] of ranges)
        for await (const b of readLineBatches(p, { start, end }))
          lines.push(...b.map((l) => l.text));
      expect(lines).toEqual(text.split("\n"));
    }
  });
});

describe("validateRecord: empty media fields", () => {
  it("treats an empty image string or list and an empty video as a text record, as the official code does", () => {
    for (const o of [{ image: "" }, { image: [] }, { video: "" }, { image: null }]) {
      const r = validateRecord({ ...o, conversations: turns("hi", "ho") }, "f", 1);
      expect(r.issues).toEqual([]);
      expect(r.record?.images).toEqual([]);
      expect(r.record?.video).toBeUndefined();
    }
  });
});

describe("readRecords: encoding", () => {
  it("refuses bytes that are not UTF-8, naming the line", async () => {
    const bad = Buffer.concat([
      Buffer.from(`${good}\n{"conversations": [{"from": "human", "value": "caf`),
      Buffer.from([0xe9]),
      Buffer.from(`"}, {"from": "gpt", "value": "x"}]}\n`),
    ]);
    const { items, issues } = await readAll(bad);
    expect(items.filter((i) => i.record)).toHaveLength(1);
    const i = expectNamed(
      issues.find((x) => x.kind === "not-utf8"),
      "x.jsonl",
      2,
      "(line)",
    );
    expect(i.severity).toBe("error");
  });
});

describe("readRecords: iteration", () => {
  it("stops cleanly when the reader breaks out early, and can be read again", async () => {
    const p = write(
      join(tempDir(), "x.jsonl"),
      `${Array.from({ length: 5000 }, () => good).join("\n")}\n`,
    );
    let n = 0;
    for await (const it of readRecords({ annotation: p }, { chunkSize: 4096 })) {
      if (++n === 3) break;
      expect(it.record).toBeDefined();
    }
    expect(n).toBe(3);
    let all = 0;
    for await (const _ of readRecords({ annotation: p })) all++;
    expect(all).toBe(5000);
  });
});
