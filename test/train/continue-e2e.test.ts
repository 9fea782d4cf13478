/**
 * Continuing a run: `--resume` on a plan that changed is refused before the model loads, with
 * both plan fingerprints and the `--init-from` command; `init_from` starts a new plan from a
 * run's trained weights.
 */
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import type { EngineEvent } from "../../src/engine/protocol.ts";
import { ensureEngine } from "../../src/engine/setup.ts";
import { type ConfigFlags, resolveConfig } from "../../src/train/config.ts";
import { latestCheckpoint, train } from "../../src/train/driver.ts";
import { buildTinyModel } from "../helpers/tiny-model.ts";

let python: string;
let root: string;
let model: string;
let meta: string;

beforeAll(async () => {
  python = await ensureEngine({ quiet: true });
  root = mkdtempSync(join(tmpdir(), "tessera-continue-"));
  model = join(root, "model");
  await buildTinyModel(python, model, { maxDynamicPatch: 2 });
  const lines = Array.from({ length: 16 }, (_, i) =>
    JSON.stringify({
      id: i,
      conversations: [
        { from: "human", value: `What comes after ${i}?` },
        { from: "gpt", value: `${i + 1} comes after ${i}.` },
      ],
    }),
  );
  writeFileSync(join(root, "count.jsonl"), `${lines.join("\n")}\n`);
  meta = join(root, "meta.json");
  writeFileSync(meta, JSON.stringify({ count: { annotation: "count.jsonl", repeat_time: 2 } }));
});

const config = (over: ConfigFlags) =>
  resolveConfig(undefined, {
    model,
    meta,
    max_length: 64,
    pack_max_length: 64,
    global_batch_size: 2,
    steps: 4,
    lr: 0.003,
    warmup_ratio: 0,
    freeze_vit: false,
    num_workers: 0,
    gradient_checkpointing: false,
    checkpoint_interval: 0,
    device: "cpu",
    export: "none",
    ...over,
  });

const common = () => ({
  python,
  progress: false,
  log: () => {},
  prepareWorkers: 0,
  env: { OMP_NUM_THREADS: "1" },
});

describe("continuing a run", () => {
  it("refuses --resume on a changed plan in under 5 s, and init_from continues from the weights", {
    timeout: 600_000,
  }, async () => {
    const first = join(root, "first");
    const a = await train(config({ work_dir: first }), common());
    expect(a.stepsDone).toBe(4);
    const ckpt = latestCheckpoint(first)!;
    expect(ckpt).toMatch(/step-00000004$/);
    const was = JSON.parse(readFileSync(join(ckpt, "meta.json"), "utf8")).plan_fingerprint;
    const configBefore = readFileSync(join(first, "config.yaml"), "utf8");

    // Another batch size: another plan. Refused before the engine starts.
    const t0 = Date.now();
    const refused = train(config({ work_dir: first, global_batch_size: 4 }), {
      ...common(),
      resume: true,
      command: `tessera train --meta ${meta} --global-batch-size 4 --work-dir ${first} --resume`,
    });
    await expect(refused).rejects.toThrow(/--resume: the plan changed/);
    const err = await refused.catch((e: Error) => e.message);
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(err).toContain(`its plan ${was}`);
    expect(err).toMatch(/this config's plan [0-9a-f]{16,}/);
    expect(err).not.toContain(`this config's plan ${was}`);
    expect(err).toContain(
      `tessera train --meta ${meta} --global-batch-size 4 --init-from ${ckpt} --work-dir ${first}-continued`,
    );
    // Nothing of the first run was replaced.
    expect(readFileSync(join(first, "config.yaml"), "utf8")).toBe(configBefore);

    // The same new plan twice: from scratch, and from the first run's weights (its work dir).
    const events: EngineEvent[] = [];
    const fresh = await train(
      config({ work_dir: join(root, "fresh"), global_batch_size: 4, steps: 2 }),
      common(),
    );
    const cont = await train(
      config({ work_dir: join(root, "cont"), global_batch_size: 4, steps: 2, init_from: first }),
      { ...common(), onEvent: (e) => events.push(e) },
    );
    expect(cont.startStep).toBe(0);
    expect(cont.stepsDone).toBe(2);
    expect(
      events.some((e) => e.event === "log" && String(e.message).includes(`weights of ${ckpt}`)),
    ).toBe(true);
    // Trained weights start lower than fresh ones on the same batches.
    expect(cont.losses[0]).toBeLessThan(fresh.losses[0] - 0.1);
    expect(readFileSync(join(root, "cont", "config.yaml"), "utf8")).toContain(
      `init_from: ${first}`,
    );
  });
});
