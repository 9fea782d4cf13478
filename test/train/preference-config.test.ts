import { Command } from "commander";
import { describe, expect, it } from "vitest";
import { addConfigOptions, flagsToConfig, resolveConfig } from "../../src/train/config.ts";

function parse(argv: string[]) {
  const cmd = addConfigOptions(new Command("train").exitOverride().argument("[config]"));
  cmd.parse(argv, { from: "user" });
  return resolveConfig(undefined, { model: "/m", meta: "/d.json", ...flagsToConfig(cmd.opts()) });
}

describe("preference settings", () => {
  it("--method mpo takes the official recipe's defaults; a pack holds a pair", () => {
    const c = parse(["--method", "mpo", "--max-length", "1024"]);
    expect(c.loss_type).toBe("sigmoid,bco_pair");
    expect(c.loss_weights).toEqual([0.8, 0.2]);
    expect(c.rpo_alpha).toBe(1);
    expect(c.beta).toBe(0.1);
    expect(c.reference).toBe("precomputed");
    expect(c.pack_max_length).toBe(2048);
  });

  it("accepts the official script's flags and tessera's own", () => {
    const c = parse([
      "--method",
      "mpo",
      "--loss_type",
      "sigmoid,bco_pair",
      "--sigmoid_loss_weight",
      "0.6",
      "--bco_pair_loss_weight",
      "0.4",
      "--rpo_alpha",
      "0.5",
      "--beta",
      "0.2",
    ]);
    expect(c.loss_weights).toEqual([0.6, 0.4]);
    expect(c.rpo_alpha).toBe(0.5);
    expect(c.beta).toBe(0.2);
    const d = parse([
      "--method",
      "dpo",
      "--loss-type",
      "ipo,hinge",
      "--loss-weights",
      "0.3,0.7",
      "--reference",
      "frozen",
    ]);
    expect(d.loss_type).toBe("ipo,hinge");
    expect(d.loss_weights).toEqual([0.3, 0.7]);
    expect(d.rpo_alpha).toBe(0);
    expect(d.reference).toBe("frozen");
    expect(parse(["--method", "dpo"]).loss_weights).toEqual([1]);
  });

  it("names what is wrong with the loss settings", () => {
    expect(() => parse(["--method", "dpo", "--loss-type", "kto"])).toThrow(/unknown term "kto"/);
    expect(() =>
      parse(["--method", "mpo", "--loss-type", "sigmoid,bco_pair", "--loss-weights", "1"]),
    ).toThrow(/loss_weights has 1 value\(s\) for 2 loss term/);
    expect(() =>
      parse(["--method", "dpo", "--loss-type", "hinge", "--label-smoothing", "0.1"]),
    ).toThrow(/label_smoothing applies to the sigmoid term/);
    expect(() => parse(["--method", "ppo"])).toThrow(/method/);
  });
});

describe("the MPO demo's pairs and reward accuracy", () => {
  it("makes colour and style pairs from the colour questions", async () => {
    const { colourPairs } = await import("../../src/demo/mpo.ts");
    const recs = Array.from({ length: 6 }, (_, i) => ({
      id: `c-${i}`,
      type: "colour" as const,
      image: `c/${i}.png`,
      image_wh: [[56, 56]] as [number, number][],
      conversations: [
        {
          from: "human" as const,
          value: "<image>\nWhat colour is the circle? Answer with one word.",
        },
        { from: "gpt" as const, value: "red" },
      ],
    }));
    const pairs = colourPairs(recs, 0, 1);
    expect(pairs.map((p) => p.kind)).toEqual([
      "colour",
      "colour",
      "style",
      "colour",
      "colour",
      "style",
    ]);
    for (const p of pairs) {
      expect(p.chosen).toBe("red");
      expect(p.rejected).not.toBe("red");
    }
    expect(pairs[2].rejected).toBe("The circle in the picture is red.");
    expect(colourPairs(recs, 0, 1)).toEqual(pairs);
  });

  it("scores a pair by its rewards against the reference; ties count half", async () => {
    const { rewardAccuracy } = await import("../../src/demo/mpo.ts");
    // pair 1: chosen reward 0.1·(−1 + 2) = 0.1 > rejected 0.1·(−5 + 4) = −0.1 → right
    // pair 2: policy = reference → both rewards 0 → half
    const r = rewardAccuracy([-1, -5, -3, -3], [-2, -4, -3, -3], ["colour", "style"], 0.1);
    expect(r.accuracy).toBeCloseTo(0.75);
    expect(r.byKind).toEqual({ colour: 1, style: 0.5 });
    expect(r.margin).toBeCloseTo(0.1);
  });
});

describe("the official MPO shell script", () => {
  it("imports with --method mpo and its loss arguments", async () => {
    const { mkdtempSync, writeFileSync } = await import("node:fs");
    const { tmpdir } = await import("node:os");
    const { join } = await import("node:path");
    const { importScript } = await import("../../src/train/official.ts");
    const dir = mkdtempSync(join(tmpdir(), "tessera-mpo-script-"));
    const script = join(dir, "mpo.sh");
    writeFileSync(
      script,
      [
        "torchrun --nproc_per_node=8 internvl/train/internvl_chat_mpo.py \\",
        "  --model_name_or_path ./InternVL2-8B --meta_path ./mmpr.json --output_dir out \\",
        "  --loss_type sigmoid,bco_pair --sigmoid_loss_weight 0.8 --bco_pair_loss_weight 0.2 \\",
        "  --rpo_alpha 1 --beta 0.1 --learning_rate 5e-7 --lr_scheduler_type cosine",
        "",
      ].join("\n"),
    );
    const s = await importScript(script, {}, dir);
    expect(s.settings).toMatchObject({
      method: "mpo",
      loss_type: "sigmoid,bco_pair",
      sigmoid_loss_weight: 0.8,
      bco_pair_loss_weight: 0.2,
      rpo_alpha: 1,
      beta: 0.1,
    });
  });
});

describe("metrics.jsonl of a preference run", () => {
  it("keeps the rewards, accuracy and each loss term", async () => {
    const { metricLine } = await import("../../src/train/driver.ts");
    const line = JSON.parse(
      metricLine({
        event: "metric",
        step: 3,
        loss: 0.6,
        reward_accuracy: 0.75,
        reward_margin: 0.2,
        rewards_chosen: 0.1,
        rewards_rejected: -0.1,
        loss_sigmoid: 0.55,
        loss_bco_pair: 0.7,
        nll_loss: 1.2,
        bco_baseline: 0.01,
        rank: 0,
      }),
    );
    expect(line).toEqual({
      step: 3,
      loss: 0.6,
      reward_accuracy: 0.75,
      reward_margin: 0.2,
      rewards_chosen: 0.1,
      rewards_rejected: -0.1,
      loss_sigmoid: 0.55,
      loss_bco_pair: 0.7,
      nll_loss: 1.2,
      bco_baseline: 0.01,
    });
  });
});
