import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { loadTokenizer } from "../../src/text/tokenizer.ts";
import { UserError } from "../../src/util/errors.ts";

describe("tokenizer files that cannot be used", () => {
  it("a missing or garbage tokenizer is a UserError naming the path", async () => {
    const empty = mkdtempSync(join(tmpdir(), "tessera-tok-none-"));
    const missing = loadTokenizer(empty, { cacheDir: join(empty, "cache") });
    await expect(missing).rejects.toBeInstanceOf(UserError);
    await expect(missing).rejects.toThrow(new RegExp(`${empty}: no tokenizer found`));
    const garbage = mkdtempSync(join(tmpdir(), "tessera-tok-bad-"));
    writeFileSync(join(garbage, "tokenizer.json"), "{ not json at all");
    const bad = loadTokenizer(garbage, { cacheDir: join(garbage, "cache") });
    await expect(bad).rejects.toBeInstanceOf(UserError);
    await expect(bad).rejects.toThrow(
      new RegExp(`${join(garbage, "tokenizer.json")}: cannot load`),
    );
  });
});
