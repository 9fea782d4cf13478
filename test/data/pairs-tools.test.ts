/** data check, stats and preview on preference records (question, chosen, rejected). */
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { checkMeta } from "../../src/data/check.ts";
import { validateRecord } from "../../src/data/record.ts";
import { computeStats } from "../../src/data/stats.ts";
import { tokenLengths } from "../../src/data/stats-tokens.ts";
import { modelContextFromOptions } from "../../src/text/options.ts";
import { renderPreview } from "../../src/text/preview.ts";
import { makeModelFolder } from "../helpers/model-folder.ts";

const dir = mkdtempSync(join(tmpdir(), "tessera-pairs-tools-"));
const lines = [
  {
    question: "what colour is it?",
    chosen: "red",
    rejected: "a blue one",
    image: "a.png",
    image_wh: [[56, 56]],
  },
  { question: "say hi", chosen: "hi", rejected: "hello there friend" },
  { question: "bad", chosen: "x" },
];
writeFileSync(join(dir, "p.jsonl"), `${lines.map((l) => JSON.stringify(l)).join("\n")}\n`);
const meta = join(dir, "meta.json");
writeFileSync(
  meta,
  JSON.stringify({ prefs: { media_root: dir, annotation: join(dir, "p.jsonl") } }),
);

describe("preference records in the data tools", () => {
  const model = makeModelFolder({ vocab: "qwen2", maxDynamicPatch: 6 });

  it("data check names the bad pair by line and field", async () => {
    const r = await checkMeta(meta, { checkMedia: false });
    expect(r.errorCount).toBe(1);
    expect(r.issues[0]).toMatchObject({ line: 3, field: "rejected", kind: "missing-field" });
  });

  it("data preview shows both answers, each with its learned span", async () => {
    const pc = await modelContextFromOptions({ model });
    const { record } = validateRecord(lines[0], "p.jsonl", 1);
    const text = await renderPreview(record!, pc, { color: false });
    expect(text).toMatch(
      /── chosen ──[\s\S]*«red<\|im_end\|>»[\s\S]*── rejected ──[\s\S]*«a blue one<\|im_end\|>»/,
    );
    // the `<image>\n` prefix rule, as in SFT, on both sides
    expect(text.match(/<img><IMG_CONTEXT>/g)?.length).toBe(2);
    const json = JSON.parse(await renderPreview(record!, pc, "json"));
    expect(json.pair).toBe(true);
    expect(json.chosen.learned).toBeLessThan(json.rejected.learned);
  });

  it("data stats counts pairs and gives each the tokens of both sides", async () => {
    const pc = await modelContextFromOptions({ model });
    const lengthsOf = await tokenLengths(model);
    const r = await computeStats(meta, { lengthsOf });
    const d = r.datasets[0];
    expect(d.pairs).toBe(2);
    const { record } = validateRecord(lines[1], "p.jsonl", 2);
    const a = await renderPreview({ ...record!, pair: undefined }, pc, "json");
    const b = await renderPreview(
      {
        ...record!,
        conversations: [record!.conversations[0], { from: "gpt", value: "hello there friend" }],
        pair: undefined,
      },
      pc,
      "json",
    );
    const both = JSON.parse(a).length + JSON.parse(b).length;
    expect(d.tokens?.max).toBeGreaterThanOrEqual(both);
    expect(d.tokens?.min).toBe(both);
  });
});

describe("the explorer page with a pair", () => {
  it("its script parses and draws both sequences", async () => {
    const { EXPLORER_HTML } = await import("../../src/explore/page.ts");
    const script = /<script>([\s\S]*?)<\/script>/.exec(EXPLORER_HTML)![1];
    expect(() => new Function(script)).not.toThrow();
    expect(script).toContain("p.rejected.segments");
  });
});
