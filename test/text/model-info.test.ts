import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { loadModelInfo } from "../../src/text/model-info.ts";
import { UserError } from "../../src/util/errors.ts";
import { makeModelFolder } from "../helpers/model-folder.ts";

describe("loadModelInfo", () => {
  it("reads an InternVL2 config and computes tokens per tile", () => {
    const m = loadModelInfo(
      makeModelFolder({ vocab: "qwen2", maxDynamicPatch: 6, tokenizerFiles: "none" }),
    );
    expect(m).toMatchObject({
      template: "Hermes-2",
      tileSize: 448,
      patchSize: 14,
      downsampleRatio: 0.5,
      tokensPerTile: 256,
      minDynamicPatch: 1,
      maxDynamicPatch: 6,
      useThumbnail: true,
      dynamicImageSize: true,
      llmFamily: "qwen2",
      llmArchitecture: "Qwen2ForCausalLM",
    });
  });

  it("never hard-codes 448 or 256: tiny tiles give their own count", () => {
    const m = loadModelInfo(makeModelFolder({ imageSize: 56, patchSize: 14 }));
    expect([m.tileSize, m.tokensPerTile]).toEqual([56, 4]);
    const n = loadModelInfo(
      makeModelFolder({ imageSize: 224, patchSize: 14, downsampleRatio: 0.25 }),
    );
    expect(n.tokensPerTile).toBe(16);
  });

  it("does not crash when llm_config has no architectures (old checkpoints)", () => {
    const m = loadModelInfo(makeModelFolder({ vocab: "llama2", llmArchitecture: null }));
    expect(m.llmArchitecture).toBeUndefined();
    expect(m.llmFamily).toBe("llama"); // from llm_config.model_type
    const t = loadModelInfo(
      makeModelFolder({ vocab: "llama2", llmArchitecture: null, config: { llm_config: {} } }),
    );
    expect(t.llmFamily).toBe("internlm2"); // from the template
  });

  it("applies overrides (--max-dynamic-patch, --template)", () => {
    const dir = makeModelFolder({ maxDynamicPatch: 12 });
    const m = loadModelInfo(dir, { maxDynamicPatch: 4, template: "internvl2_5" });
    expect([m.maxDynamicPatch, m.template]).toEqual([4, "internvl2_5"]);
    expect(() => loadModelInfo(dir, { maxDynamicPatch: 0 })).toThrow(/max_dynamic_patch/);
  });

  it("names the file and field it cannot use", () => {
    const empty = mkdtempSync(join(tmpdir(), "tessera-nomodel-"));
    expect(() => loadModelInfo(empty)).toThrow(UserError);
    expect(() => loadModelInfo(empty)).toThrow(/config\.json: not found/);
    writeFileSync(join(empty, "config.json"), "{ nope");
    expect(() => loadModelInfo(empty)).toThrow(/config\.json: cannot parse/);
    const noTemplate = makeModelFolder({ config: { template: undefined } });
    expect(() => loadModelInfo(noTemplate)).toThrow(/"template" is missing/);
    const odd = makeModelFolder({ imageSize: 100, patchSize: 14 });
    expect(() => loadModelInfo(odd)).toThrow(/not a whole number of tokens per tile/);
  });
});
