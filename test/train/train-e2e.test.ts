/**
 * `tessera train` end to end on a tiny model: meta → cache → plan → engine → checkpoint →
 * export, through the command line, then a refused restart and a stop-and-resume.
 */
import { spawn, spawnSync } from "node:child_process";
import {
  appendFileSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { parse as parseYaml } from "yaml";
import { chat } from "../../src/cli/chat.ts";
import { ensureEngine } from "../../src/engine/setup.ts";
import { resolveConfig } from "../../src/train/config.ts";
import { train } from "../../src/train/driver.ts";
import { PACKAGE_ROOT } from "../../src/util/paths.ts";
import { buildTinyModel } from "../helpers/tiny-model.ts";

let python: string;
let root: string;
let model: string;
let meta: string;

beforeAll(async () => {
  python = await ensureEngine({ quiet: true });
  root = mkdtempSync(join(tmpdir(), "tessera-train-e2e-"));
  model = join(root, "model");
  await buildTinyModel(python, model, { maxDynamicPatch: 4 });
  // Images of a few sizes (so grids and thumbnails vary), and a text-only dataset.
  const media = join(root, "media");
  const py = spawnSync(python, [
    "-c",
    `
import os, sys
from PIL import Image
os.makedirs(sys.argv[1], exist_ok=True)
for i, (w, h, c) in enumerate([(40, 30, "red"), (28, 28, "green"), (90, 30, "blue"), (30, 60, "yellow")]):
    Image.new("RGB", (w, h), c).save(os.path.join(sys.argv[1], f"{i}.png"))
# Short videos: 10 frames fading from one colour to another.
import av, numpy as np
for i in range(3):
    with av.open(os.path.join(sys.argv[1], f"clip{i}.mp4"), "w") as out:
        s = out.add_stream("mpeg4", rate=5)
        s.width, s.height, s.pix_fmt = 48, 32, "yuv420p"
        for k in range(10):
            a = np.zeros((32, 48, 3), np.uint8)
            a[..., i] = 25 * k
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
`,
    media,
  ]);
  expect(py.status, py.stderr.toString()).toBe(0);
  const sizes = [
    [40, 30],
    [28, 28],
    [90, 30],
    [30, 60],
  ];
  const colours = ["red", "green", "blue", "yellow"];
  const lines = Array.from({ length: 12 }, (_, i) =>
    JSON.stringify({
      id: i,
      image: `${i % 4}.png`,
      conversations: [
        { from: "human", value: "<image>\nWhat colour is the picture?" },
        { from: "gpt", value: colours[i % 4] },
      ],
      image_wh: [sizes[i % 4]],
    }),
  );
  writeFileSync(join(root, "colours.jsonl"), `${lines.join("\n")}\n`);
  const text = Array.from({ length: 6 }, (_, i) =>
    JSON.stringify({
      id: i,
      conversations: [
        { from: "human", value: `Say ${i}.` },
        { from: "gpt", value: `${i}` },
      ],
    }),
  );
  writeFileSync(join(root, "text.jsonl"), `${text.join("\n")}\n`);
  meta = join(root, "meta.json");
  writeFileSync(
    meta,
    JSON.stringify({
      colours: { media_root: media, annotation: join(root, "colours.jsonl"), repeat_time: 2 },
      text: { media_root: "", annotation: join(root, "text.jsonl"), repeat_time: 0.5 },
    }),
  );
});

function tessera(args: string[]): Promise<{ code: number | null; out: string }> {
  return new Promise((res) => {
    const p = spawn(process.execPath, [join(PACKAGE_ROOT, "bin", "tessera.mjs"), ...args], {
      env: { ...process.env, OMP_NUM_THREADS: "1" },
    });
    let out = "";
    p.stdout.on("data", (d) => (out += d));
    p.stderr.on("data", (d) => (out += d));
    p.on("close", (code) => res({ code, out }));
  });
}

describe("tessera train", () => {
  it("runs end to end from the command line: cache, plan, engine, checkpoints, export, metrics", async () => {
    const work = join(root, "run");
    const config = join(root, "train.yaml");
    writeFileSync(
      config,
      `model: ${model}\nmeta: ${meta}\nwork_dir: ${work}\nmax_length: 128\nlr: 0.002\nwarmup_ratio: 0\n`,
    );
    const running = tessera([
      "train",
      config,
      "--dset-pack",
      "--pack-max-length",
      "256",
      "--global-batch-size",
      "2",
      "--mirco-batch-size",
      "1",
      "--steps",
      "4",
      "--checkpoint-interval",
      "2",
      "--checkpoint-keep",
      "3",
      "--no-freeze-vit",
      "--num-workers",
      "1",
      "--no-gradient-checkpointing",
      "--no-progress",
      "--device",
      "cpu",
    ]);
    // A second run on the same work dir while the first holds it: refused, naming the holder.
    const lockFile = join(work, ".tessera.lock");
    while (!existsSync(lockFile)) await new Promise((res) => setTimeout(res, 20));
    const holder = JSON.parse(readFileSync(lockFile, "utf8"));
    const second = await tessera(["train", config, "--steps", "4", "--no-progress"]);
    expect(second.code).toBe(1);
    expect(second.out).toContain(`in use by tessera train (pid ${holder.pid} on host`);
    expect(second.out).not.toMatch(/ENOENT|\n\s+at /);
    const r = await running;
    expect(r.code, r.out).toBe(0);
    expect(r.out).toContain("finished at step 4/4");
    expect(existsSync(lockFile)).toBe(false);

    const resolved = parseYaml(readFileSync(join(work, "config.yaml"), "utf8"));
    expect(resolved).toMatchObject({
      model,
      meta,
      packing: "soft",
      pack_max_length: 256,
      micro_batch_size: 1,
      freeze_vit: false,
    });
    const metrics = readFileSync(join(work, "metrics.jsonl"), "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(metrics.map((m) => m.step)).toEqual([1, 2, 3, 4]);
    for (const m of metrics) {
      for (const k of [
        "loss",
        "lr",
        "grad_norm",
        "tokens_per_s_per_gpu",
        "samples_per_s",
        "step_time",
        "data_wait",
        "peak_memory",
        "pack_fill",
      ])
        expect(typeof m[k], k).toBe("number");
      expect(m.pack_fill).toBeGreaterThan(0);
      expect(m.pack_fill).toBeLessThanOrEqual(1);
    }
    expect(readdirSync(join(work, "checkpoints")).sort()).toEqual([
      "step-00000002",
      "step-00000004",
    ]);
    const exported = join(work, "export");
    expect(
      JSON.parse(readFileSync(join(exported, "config.json"), "utf8")).llm_config.architectures,
    ).toHaveLength(1);
    expect(
      existsSync(join(exported, "model.safetensors")) ||
        existsSync(join(exported, "model.safetensors.index.json")),
    ).toBe(true);
    expect(existsSync(join(exported, "tokenizer.json"))).toBe(true);

    // Starting over in a work dir with checkpoints is refused; it points at --resume.
    const again = await tessera(["train", config, "--steps", "4", "--no-progress"]);
    expect(again.code).toBe(1);
    expect(again.out).toContain("--resume");
  });

  it("evaluates held-out data as it trains, logs to TensorBoard and W&B offline, and prints by the clock", async () => {
    const work = join(root, "eval");
    const held = join(root, "held.jsonl");
    const colours = ["red", "green", "blue", "yellow"];
    writeFileSync(
      held,
      `${Array.from({ length: 8 }, (_, i) =>
        JSON.stringify({
          id: 100 + i,
          image: `${(i + 1) % 4}.png`,
          conversations: [
            { from: "human", value: "<image>\nWhat colour is the picture?" },
            { from: "gpt", value: colours[(i + 1) % 4] },
          ],
          image_wh: [
            [
              [40, 30],
              [28, 28],
              [90, 30],
              [30, 60],
            ][(i + 1) % 4],
          ],
        }),
      ).join("\n")}\n`,
    );
    const heldMeta = join(root, "held-meta.json");
    writeFileSync(
      heldMeta,
      JSON.stringify({ held: { media_root: join(root, "media"), annotation: held } }),
    );
    const c = resolveConfig(undefined, {
      model,
      meta,
      work_dir: work,
      max_length: 128,
      pack_max_length: 128,
      global_batch_size: 2,
      steps: 8,
      lr: 0.01,
      warmup_ratio: 0,
      freeze_vit: false,
      num_workers: 0,
      gradient_checkpointing: false,
      checkpoint_interval: 0,
      device: "cpu",
      export: "none",
      eval_meta: heldMeta,
      eval_interval: 4,
      eval_generate: 2,
      save_best: "eval_loss",
      report_to: ["tensorboard", "wandb"],
      print_interval: 3600,
    });
    const lines: string[] = [];
    const r = await train(c, {
      python,
      progress: false,
      log: (l) => lines.push(l),
      prepareWorkers: 0,
      env: { OMP_NUM_THREADS: "1", WANDB_MODE: "offline", WANDB_SILENT: "true" },
    });
    const rows = readFileSync(join(work, "metrics.jsonl"), "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    const evals = rows.filter((m) => m.event === "eval");
    const metrics = rows.filter((m) => m.event === undefined);
    expect(evals.map((e) => e.step)).toEqual([0, 4, 8]);
    expect(evals[2].eval_loss).toBeLessThan(evals[0].eval_loss * 0.8);
    for (const e of evals) expect(e.eval_exact_match).toBeGreaterThanOrEqual(0);
    expect(r.eval?.eval_loss).toBe(evals[2].eval_loss);
    expect(r.best?.path).toBe(join(work, "checkpoints", "best"));
    expect(
      JSON.parse(readFileSync(join(work, "checkpoints", "best", "meta.json"), "utf8")).eval
        .eval_loss,
    ).toBe(Math.min(evals[1].eval_loss, evals[2].eval_loss));
    // status.json: finished, with the final figures.
    const status = JSON.parse(readFileSync(join(work, "status.json"), "utf8"));
    expect(status).toMatchObject({ status: "finished", step: 8, total: 8, loss: metrics[7].loss });
    expect(status.eval.eval_loss).toBe(evals[2].eval_loss);
    // Without a terminal: the first and the last step (the interval is an hour), with an ETA.
    const progress = lines.filter((l) => l.startsWith("step "));
    expect(progress).toHaveLength(2);
    expect(progress[0]).toMatch(/^step 1\/8 · loss [\d.]+ · \d+ tok\/s\/gpu · lr \S+ · eta -$/);
    expect(progress[1]).toMatch(/^step 8\/8 .* eta 0:00$/);
    expect(lines.filter((l) => l.startsWith("eval at step"))).toHaveLength(3);

    // TensorBoard's own reader finds the values of metrics.jsonl at the same steps.
    const tb = spawnSync(python, [
      "-c",
      `
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1]); acc.Reload()
print(json.dumps({k: [[e.step, e.value] for e in acc.Scalars(k)] for k in acc.Tags()["scalars"]}))
`,
      join(work, "tensorboard"),
    ]);
    expect(tb.status, tb.stderr.toString()).toBe(0);
    const scalars = JSON.parse(tb.stdout.toString()) as Record<string, [number, number][]>;
    const near = (a: number, b: number) => Math.abs(a - b) <= 1e-6 * Math.max(1, Math.abs(b));
    for (const [key, source] of [
      ["loss", metrics],
      ["lr", metrics],
      ["tokens_per_s_per_gpu", metrics],
      ["pack_fill", metrics],
      ["loss_by_dataset/colours", metrics],
      ["eval_loss", evals],
    ] as const) {
      const want = source
        .map((m) => [m.step, key.includes("/") ? m.loss_by_dataset?.colours : m[key]])
        .filter(([, v]) => typeof v === "number");
      const got = scalars[key];
      expect(
        got?.map(([s]) => s),
        key,
      ).toEqual(want.map(([s]) => s));
      for (let i = 0; i < want.length; i++) expect(near(got[i][1], want[i][1]), key).toBe(true);
    }
    // The W&B run, written offline.
    const wandbDir = join(work, "wandb");
    const runs = readdirSync(wandbDir).filter((n) => n.startsWith("offline-run-"));
    expect(runs).toHaveLength(1);
    expect(readdirSync(join(wandbDir, runs[0])).some((n) => n.endsWith(".wandb"))).toBe(true);
  });

  it("stops on request with a checkpoint, and --resume finishes the run", async () => {
    const work = join(root, "stop");
    const c = resolveConfig(undefined, {
      model,
      meta,
      work_dir: work,
      max_length: 128,
      pack_max_length: 128,
      global_batch_size: 2,
      steps: 6,
      lr: 0.002,
      freeze_vit: false,
      num_workers: 0,
      gradient_checkpointing: false,
      checkpoint_interval: 0,
      device: "cpu",
      export: "none",
    });
    const ac = new AbortController();
    const common = {
      python,
      progress: false,
      log: () => {},
      prepareWorkers: 0,
      env: { OMP_NUM_THREADS: "1" },
    };
    const first = await train(c, {
      ...common,
      stopSignal: ac.signal,
      // The engine finishes the step it is in, checkpoints, and stops.
      onEvent: (e) => e.event === "metric" && e.step === 2 && ac.abort(),
    });
    expect(first.stopped).toBe(true);
    expect(first.stepsDone).toBeGreaterThanOrEqual(2);
    expect(first.stepsDone).toBeLessThan(6);
    expect(first.checkpoint).toMatch(new RegExp(`step-0*${first.stepsDone}$`));

    // As if killed after logging steps the checkpoint does not hold (and mid-line).
    const metricsPath = join(work, "metrics.jsonl");
    appendFileSync(
      metricsPath,
      `${JSON.stringify({ step: first.stepsDone + 1, loss: 99 })}\n${JSON.stringify({ step: first.stepsDone + 2, loss: 99 })}\n{"step": ${first.stepsDone + 3}, "lo`,
    );
    const second = await train(c, { ...common, resume: true });
    expect(second.stopped).toBe(false);
    expect(second.startStep).toBe(first.stepsDone);
    expect(second.stepsDone).toBe(6);
    expect(second.losses).toHaveLength(6 - first.stepsDone);
    const steps = readFileSync(join(work, "metrics.jsonl"), "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l).step);
    // one line per step: the lines logged after the checkpoint were cut back on resume
    expect(steps).toEqual([1, 2, 3, 4, 5, 6]);
    expect(readFileSync(metricsPath, "utf8")).not.toContain('"loss":99');
  });

  it("trains on video records: each video's planned frames decoded and fed as one tile each", async () => {
    const clips = Array.from({ length: 3 }, (_, i) =>
      JSON.stringify({
        id: i,
        video: `clip${i}.mp4`,
        conversations: [
          { from: "human", value: "<video>\nWhich colour fades in?" },
          { from: "gpt", value: ["red", "green", "blue"][i] },
        ],
      }),
    );
    writeFileSync(join(root, "clips.jsonl"), `${clips.join("\n")}\n`);
    const videoMeta = join(root, "video-meta.json");
    writeFileSync(
      videoMeta,
      JSON.stringify({
        clips: {
          media_root: join(root, "media"),
          annotation: join(root, "clips.jsonl"),
          video_frames: 3,
        },
      }),
    );
    const work = join(root, "video");
    const c = resolveConfig(undefined, {
      model,
      meta: videoMeta,
      work_dir: work,
      max_length: 128,
      pack_max_length: 128,
      global_batch_size: 1,
      steps: 3,
      lr: 0.002,
      freeze_vit: false,
      num_workers: 0,
      gradient_checkpointing: false,
      checkpoint_interval: 0,
      device: "cpu",
      export: "none",
    });
    const r = await train(c, {
      python,
      progress: false,
      log: () => {},
      prepareWorkers: 0,
      env: { OMP_NUM_THREADS: "1" },
    });
    expect(r.stepsDone).toBe(3);
    expect(r.losses.every((l) => Number.isFinite(l))).toBe(true);
    const manifest = JSON.parse(readFileSync(join(work, "cache", "manifest.json"), "utf8"));
    expect(manifest.images).toBe(3 * 3); // 3 videos × 3 planned frames
  });

  it("trains a dataset whose own max_dynamic_patch differs from the run's", async () => {
    // The run allows 4 tiles (the model's), the dataset 2: the 90×30 image is planned 2×1 + a
    // thumbnail, not 3×1; the engine checks that grid against the dataset's budget.
    const ownMeta = join(root, "own-budget-meta.json");
    writeFileSync(
      ownMeta,
      JSON.stringify({
        colours: {
          media_root: join(root, "media"),
          annotation: join(root, "colours.jsonl"),
          max_dynamic_patch: 2,
        },
      }),
    );
    const work = join(root, "own-budget");
    const c = resolveConfig(undefined, {
      model,
      meta: ownMeta,
      work_dir: work,
      max_length: 128,
      pack_max_length: 128,
      global_batch_size: 2,
      steps: 2,
      lr: 0.002,
      max_dynamic_patch: 4,
      freeze_vit: false,
      num_workers: 0,
      gradient_checkpointing: false,
      checkpoint_interval: 0,
      device: "cpu",
      export: "none",
    });
    const r = await train(c, {
      python,
      progress: false,
      log: () => {},
      prepareWorkers: 0,
      env: { OMP_NUM_THREADS: "1" },
    });
    expect(r.stepsDone).toBe(2);
    expect(r.losses.every((l) => Number.isFinite(l))).toBe(true);
    const manifest = JSON.parse(readFileSync(join(work, "cache", "manifest.json"), "utf8"));
    const ds = JSON.parse(
      readFileSync(join(work, "cache", manifest.datasets[0].dir, "dataset.json"), "utf8"),
    );
    expect(ds.inputs.tiling.max_dynamic_patch).toBe(2);
    // 12 records cycling 40×30, 28×28, 90×30, 30×60: at most 2 tiles + a thumbnail each.
    const raw = readFileSync(join(work, "cache", manifest.datasets[0].dir, "img_tiles.i32"));
    const tiles = Array.from({ length: raw.length / 4 }, (_, i) => raw.readInt32LE(4 * i));
    expect(tiles).toHaveLength(12);
    expect(Math.max(...tiles)).toBe(3);
  });

  it("skips and counts a sample whose image cannot be loaded, or stops on it by policy", async () => {
    // The colours dataset with its 90×30 image cut short: the header reads, the pixels do not.
    const media = join(root, "media-cut");
    mkdirSync(media, { recursive: true });
    for (const f of ["0.png", "1.png", "2.png", "3.png"])
      copyFileSync(join(root, "media", f), join(media, f));
    const whole = readFileSync(join(media, "2.png"));
    writeFileSync(join(media, "2.png"), whole.subarray(0, Math.ceil(whole.length / 2)));
    const cutMeta = join(root, "cut-meta.json");
    writeFileSync(
      cutMeta,
      JSON.stringify({ colours: { media_root: media, annotation: join(root, "colours.jsonl") } }),
    );
    const config = (work: string, policy: "skip" | "stop") =>
      resolveConfig(undefined, {
        model,
        meta: cutMeta,
        work_dir: join(root, work),
        cache_dir: join(root, "cut-cache"),
        max_length: 128,
        pack_max_length: 128,
        global_batch_size: 4,
        steps: 3,
        lr: 0.002,
        num_workers: 0,
        gradient_checkpointing: false,
        checkpoint_interval: 0,
        device: "cpu",
        export: "none",
        bad_sample_policy: policy,
      });
    const common = {
      python,
      progress: false,
      prepareWorkers: 0,
      env: { OMP_NUM_THREADS: "1" },
    };
    const logs: string[] = [];
    const r = await train(config("cut-skip", "skip"), { ...common, log: (l) => logs.push(l) });
    expect(r.stepsDone).toBe(3);
    // Records 3, 7 and 11 name 2.png: each is skipped, named by dataset, file, line and path.
    expect(r.skipped).toBe(3);
    const skipped = readFileSync(r.skipListPath, "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(skipped.map((x) => x.line).sort((a, b) => a - b)).toEqual([3, 7, 11]);
    for (const x of skipped)
      expect(x).toMatchObject({
        dataset: "colours",
        file: join(root, "colours.jsonl"),
        path: join(media, "2.png"),
      });
    expect(skipped[0].reason).toMatch(/truncated/);
    expect(
      logs.some((l) => /skipped a sample at step \d+ .*colours\.jsonl:\d+, .*2\.png/.test(l)),
    ).toBe(true);
    await expect(train(config("cut-stop", "stop"), { ...common, log: () => {} })).rejects.toThrow(
      /dataset colours, .*colours\.jsonl:(3|7|11), .*2\.png: .*truncated/,
    );
  }, 300_000);

  it("chats with the exported model: the prompt is built as in training, the engine answers", async () => {
    const exported = join(root, "run", "export");
    const r = await chat(exported, "What colour is the picture?", {
      python,
      images: [join(root, "media", "2.png")],
      maxNewTokens: 5,
    });
    // 90×30 with at most 4 tiles: a 3×1 grid and a thumbnail.
    expect(r.tiles).toEqual([4]);
    expect(r.promptTokens).toBeGreaterThan(4);
    expect(r.newTokens).toBeLessThanOrEqual(5);
    expect(typeof r.answer).toBe("string");
    // A video: its planned frames, one tile each, decoded by the engine as in training.
    const v = await chat(exported, "Which colour fades in?", {
      python,
      video: join(root, "media", "clip1.mp4"),
      videoFrames: 3,
      maxNewTokens: 3,
    });
    expect(v.tiles).toEqual([1, 1, 1]);
    expect(v.newTokens).toBeLessThanOrEqual(3);
    await expect(
      chat(exported, "?", { python, video: join(root, "media", "nope.mp4") }),
    ).rejects.toThrow(/--video .*nope\.mp4: not found/);
  });
});
