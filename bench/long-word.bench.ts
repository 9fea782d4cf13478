/**
 * One record whose text is a single long word (DNA, base64 and long URLs are like this):
 * `data prepare` of it end to end, with the real Qwen2 BPE tokenizer. Merging a word's
 * symbols must stay O(n log n) in its length. Target: a 1,000,000-character word prepared
 * in under 10 s.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { prepareCache } from "../src/plan/cache.ts";
import { makeModelFolder } from "../test/helpers/model-folder.ts";

const model = makeModelFolder({ vocab: "qwen2", template: "Hermes-2" });

function dna(n: number): string {
  let s = "";
  let x = 12345;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    s += "ACGT"[x >>> 30];
  }
  return s;
}

async function prepareOne(label: string, word: string): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "tessera-bench-long-"));
  const record = {
    conversations: [
      { from: "human", value: "Repeat the sequence." },
      { from: "gpt", value: word },
    ],
  };
  writeFileSync(join(dir, "a.jsonl"), `${JSON.stringify(record)}\n`);
  writeFileSync(
    join(dir, "meta.json"),
    JSON.stringify({ long: { annotation: "a.jsonl", media_root: "." } }),
  );
  const t0 = performance.now();
  const r = await prepareCache({
    meta: join(dir, "meta.json"),
    model,
    maxLength: 2_000_000,
    cacheDir: join(dir, "cache"),
    workers: 1,
  });
  const s = (performance.now() - t0) / 1000;
  console.log(
    `${label}: ${word.length.toLocaleString("en")} characters → ${r.manifest.tokens.toLocaleString("en")} tokens, prepared in ${s.toFixed(2)} s`,
  );
  rmSync(dir, { recursive: true, force: true });
}

for (const n of [100_000, 1_000_000]) {
  await prepareOne(`one word of "x"`, "x".repeat(n));
  await prepareOne("one word of DNA", dna(n));
}
