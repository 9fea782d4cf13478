import type { Command } from "commander";
import { ensureEngine } from "../engine/setup.ts";
import { evaluate, formatEval } from "../eval/eval.ts";
import { UserError } from "../util/errors.ts";

function posInt(v: string | undefined, flag: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0)
    throw new UserError(`${flag}: expected a positive integer, got ${v}`);
  return n;
}

export function registerEval(program: Command): void {
  program
    .command("eval")
    .description(
      "exact-match accuracy of a model on questions with answers, overall and per question type",
    )
    .argument("<model>", "model folder (original InternVL2 format)")
    .argument(
      "<questions>",
      "a meta file, or one JSONL of records whose last turn is the expected answer",
    )
    .option(
      "--media-root <dir>",
      "folder image paths of a lone JSONL are relative to (default: its folder)",
    )
    .option("--limit <n>", "at most n questions per dataset")
    .option("--batch-size <n>", "prompts per generation batch", "16")
    .option("--max-new-tokens <n>", "longest answer in tokens", "8")
    .option("--max-dynamic-patch <n>", "tiles per image at most (default: the model's config)")
    .option(
      "--video-frames <n>",
      "frames per video, as in training (a dataset's own video_frames wins; default 8)",
    )
    .option("--adapter <dir>", "a PEFT adapter applied to the model (a LoRA run's export/adapter)")
    .option("--venv <dir>", "the engine's virtual environment")
    .option("--show <n>", "print the first n answers next to the expected ones", "0")
    .option("--json", "print the full result (every answer) as JSON")
    .action(async (model: string, questions: string, o) => {
      const python = await ensureEngine({ venv: o.venv, quiet: true });
      const r = await evaluate(model, questions, {
        python,
        mediaRoot: o.mediaRoot,
        limit: posInt(o.limit, "--limit"),
        batchSize: posInt(o.batchSize, "--batch-size"),
        maxNewTokens: posInt(o.maxNewTokens, "--max-new-tokens"),
        maxDynamicPatch: posInt(o.maxDynamicPatch, "--max-dynamic-patch"),
        videoFrames: posInt(o.videoFrames, "--video-frames"),
        adapter: o.adapter,
        onEvent: (e) => {
          if (!o.json && e.event === "progress" && e.stage === "generate" && process.stderr.isTTY)
            process.stderr.write(`\r\x1b[2K  answering ${e.done}/${e.total}`);
        },
      });
      if (!o.json && process.stderr.isTTY) process.stderr.write("\r\x1b[2K");
      if (o.json) {
        process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
        return;
      }
      const show = posInt(o.show === "0" ? undefined : o.show, "--show") ?? 0;
      for (const it of r.items.slice(0, show))
        process.stdout.write(
          `${it.correct ? "✓" : "✗"} [${it.type}] ${it.id}: expected ${JSON.stringify(it.answer)}, got ${JSON.stringify(it.prediction)}\n`,
        );
      process.stdout.write(
        `${formatEval(r)}\n(${r.items.length} questions in ${r.seconds.toFixed(1)}s)\n`,
      );
    });
}
