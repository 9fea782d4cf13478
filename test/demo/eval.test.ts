import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { formatEval, loadQuestions } from "../../src/eval/eval.ts";
import { isExactMatch, normalizeAnswer, scoreAnswers } from "../../src/eval/score.ts";
import { png } from "../data/fixtures.ts";

const dir = mkdtempSync(join(tmpdir(), "tessera-eval-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("exact-match scoring", () => {
  it("ignores case, surrounding space and punctuation, nothing else", () => {
    expect(normalizeAnswer("  Red.\n")).toBe("red");
    expect(isExactMatch(" Blue!", "blue")).toBe(true);
    expect(isExactMatch("light  blue", "light blue")).toBe(true);
    expect(isExactMatch("blue", "blue green")).toBe(false);
    expect(isExactMatch("redd", "red")).toBe(false);
    expect(isExactMatch("3", "three")).toBe(false);
    expect(isExactMatch("", "red")).toBe(false);
    expect(isExactMatch("1/8/93", "1/8/93.")).toBe(true);
  });

  it("counts per type and overall", () => {
    const { report, scored } = scoreAnswers([
      { type: "colour", answer: "red", prediction: "red" },
      { type: "colour", answer: "red", prediction: "blue" },
      { type: "count", answer: "3", prediction: "3" },
      { type: "colour", answer: "green", prediction: "Green" },
    ]);
    expect(report.byType.colour).toEqual({ correct: 2, total: 3, accuracy: 2 / 3 });
    expect(report.byType.count).toEqual({ correct: 1, total: 1, accuracy: 1 });
    expect(report.overall).toEqual({ correct: 3, total: 4, accuracy: 0.75 });
    expect(scored.map((s) => s.correct)).toEqual([true, false, true, true]);
    const table = formatEval(report);
    expect(table).toMatch(/colour\s+2\/3\s+66\.7%/);
    expect(table).toMatch(/overall\s+3\/4\s+75\.0%/);
  });
});

describe("questions", () => {
  it("asks everything up to the last answer; type from the record, else the dataset", async () => {
    const a = join(dir, "a.jsonl");
    writeFileSync(join(dir, "x.png"), png(10, 10));
    writeFileSync(
      a,
      [
        {
          id: 1,
          type: "colour",
          image: "x.png",
          image_wh: [[10, 10]],
          conversations: [
            { from: "human", value: "<image>\nWhat colour?" },
            { from: "gpt", value: "red" },
          ],
        },
        {
          id: 2,
          conversations: [
            { from: "human", value: "hi" },
            { from: "gpt", value: "hello" },
            { from: "human", value: "2+2?" },
            { from: "gpt", value: "4" },
          ],
        },
      ]
        .map((r) => JSON.stringify(r))
        .join("\n"),
    );
    const meta = join(dir, "meta.json");
    writeFileSync(
      meta,
      JSON.stringify({ chat: { media_root: "", annotation: "a.jsonl", repeat_time: 0.5 } }),
    );
    const { questions } = await loadQuestions(a);
    expect(questions.map((q) => [q.id, q.type, q.answer])).toEqual([
      ["1", "colour", "red"],
      ["2", "questions", "4"],
    ]);
    expect(questions[1].record.conversations).toHaveLength(3);
    expect(questions[1].record.conversations.at(-1)!.value).toBe("2+2?");
    const bad = join(dir, "bad.jsonl");
    writeFileSync(
      bad,
      `${JSON.stringify({ conversations: [{ from: "human", value: "no answer" }] })}\n`,
    );
    await expect(loadQuestions(bad)).rejects.toThrow(/bad\.jsonl:1: .*no gpt turn/);
    // a meta file: every record of each dataset (repeat_time is for training), typed by dataset
    const fromMeta = await loadQuestions(meta);
    expect(fromMeta.questions.map((q) => q.type)).toEqual(["colour", "chat"]);
    const limited = await loadQuestions(meta, { limit: 1 });
    expect(limited.questions).toHaveLength(1);
    // Frames per video as in training: the dataset's own video_frames, else the run's, else 8.
    expect(fromMeta.videoFrames.get("chat")).toBe(8);
    expect((await loadQuestions(meta, { videoFrames: 5 })).videoFrames.get("chat")).toBe(5);
    writeFileSync(
      meta,
      JSON.stringify({ chat: { media_root: "", annotation: "a.jsonl", video_frames: 3 } }),
    );
    expect((await loadQuestions(meta, { videoFrames: 5 })).videoFrames.get("chat")).toBe(3);
    // every image is checked before a model loads, sizes given or not: named by file:line and path
    rmSync(join(dir, "x.png"));
    await expect(loadQuestions(a)).rejects.toThrow(
      /a\.jsonl:1: question 1 \(questions\): image .*x\.png: the file does not exist/,
    );
    const v = join(dir, "v.jsonl");
    writeFileSync(
      v,
      `${JSON.stringify({
        id: 7,
        video: "nope.mp4",
        conversations: [
          { from: "human", value: "<video>\nWhat?" },
          { from: "gpt", value: "x" },
        ],
      })}\n`,
    );
    await expect(loadQuestions(v)).rejects.toThrow(
      /v\.jsonl:1: question 7 \(questions\): video nope\.mp4: .*nope\.mp4 does not exist/,
    );
  });
});
