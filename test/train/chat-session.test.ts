/** `tessera chat` without a question: one engine process keeps the model loaded for every turn,
 * each turn's prompt holds the earlier ones; the command line reads turns from stdin lines. */
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { ChatSession } from "../../src/cli/chat.ts";
import type { EngineEvent } from "../../src/engine/protocol.ts";
import { ensureEngine } from "../../src/engine/setup.ts";
import { PACKAGE_ROOT } from "../../src/util/paths.ts";
import { png } from "../data/fixtures.ts";
import { buildTinyModel } from "../helpers/tiny-model.ts";

let python: string;
let root: string;
let model: string;
let image: string;

beforeAll(async () => {
  python = await ensureEngine({ quiet: true });
  root = mkdtempSync(join(tmpdir(), "tessera-chat-"));
  model = join(root, "model");
  image = join(root, "a.png");
  writeFileSync(image, png(40, 30));
  await buildTinyModel(python, model, { maxDynamicPatch: 2 });
}, 600_000);

describe("tessera chat session", () => {
  it("keeps one engine for every turn; each prompt holds the conversation so far", async () => {
    const events: EngineEvent[] = [];
    const o = { python, images: [image], maxNewTokens: 4 };
    const session = await ChatSession.open(model, { ...o, onEvent: (e) => events.push(e) });
    const first = await session.ask("what is in the image?");
    const second = await session.ask("and the colour?");
    expect(session.history.map((t) => t.from)).toEqual(["human", "gpt", "human", "gpt"]);
    expect(session.history[1].value).toBe(first.answer);
    // the second prompt carries the first turn and its answer (the image once, in the first turn)
    expect(second.promptTokens).toBeGreaterThan(first.promptTokens + first.newTokens);
    expect(second.tiles).toEqual(first.tiles);
    session.reset();
    const again = await session.ask("what is in the image?");
    await session.close();
    expect(events.filter((e) => e.event === "hello")).toHaveLength(1);
    expect(events.filter((e) => e.event === "answer")).toHaveLength(3);
    expect(again.answer).toBe(first.answer);

    // The command line: turns from stdin lines, the same greedy answers.
    const p = spawn(process.execPath, [
      join(PACKAGE_ROOT, "bin", "tessera.mjs"),
      "chat",
      model,
      "--image",
      image,
      "--max-new-tokens",
      "3",
      "--adapter",
      join(root, "nope"),
    ]);
    let out = "";
    p.stderr.on("data", (d) => (out += d));
    p.stdin.end("hello\n");
    const code = await new Promise((res) => p.on("close", res));
    expect(code).not.toBe(0);
    expect(out).toMatch(/--adapter .*nope: no adapter_config\.json/);

    const q = spawn(process.execPath, [
      join(PACKAGE_ROOT, "bin", "tessera.mjs"),
      "chat",
      model,
      "--image",
      image,
      "--max-new-tokens",
      "4",
    ]);
    let answers = "";
    q.stdout.on("data", (d) => (answers += d));
    q.stdin.end("what is in the image?\n\nand the colour?\n/reset\nwhat is in the image?\n");
    expect(await new Promise((res) => q.on("close", res))).toBe(0);
    expect(answers).toBe(`${first.answer}\n${second.answer}\n${first.answer}\n`);
  }, 360_000);
});
