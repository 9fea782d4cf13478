import type { Command } from "commander";
import { runDemo } from "../demo/demo.ts";
import { formatMpoReport, runMpoDemo } from "../demo/mpo.ts";
import { formatDemoReport } from "../demo/report.ts";
import { UserError } from "../util/errors.ts";

function int(v: string | undefined, flag: string, min: number): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min)
    throw new UserError(`${flag}: expected a whole number ≥ ${min}, got ${v}`);
  return n;
}

export function registerDemo(program: Command): void {
  program
    .command("demo")
    .description(
      "fine-tune a tiny InternVL2-layout model on synthetic pictures, on this CPU, in minutes",
    )
    .option("--out <dir>", "where the data, model, run and export go", "tessera-demo")
    .option("--steps <n>", "optimizer steps (default: the demo's measured setting)")
    .option("--seed <n>", "seed of the data, the model and the plan", "0")
    .option("--fast", "a shortened run (fewer records and steps), for tests")
    .option("--model <dir>", "fine-tune this InternVL2 folder instead of the tiny model")
    .option("--meta <file>", "train on this meta file instead of the synthetic data (with --eval)")
    .option("--eval <file>", "held-out questions (meta file or JSONL) scored before and after")
    .option("--config <file>", "a training config (YAML) whose settings replace the demo's")
    .option(
      "--method <m>",
      "sft (default) | mpo: preference optimisation continuing from the SFT demo's export",
      "sft",
    )
    .option("--venv <dir>", "the engine's virtual environment")
    .option("--json", "print the full report as JSON")
    .action(async (o) => {
      if (o.method !== "sft" && o.method !== "mpo")
        throw new UserError(`--method: expected sft or mpo, got ${o.method}`);
      if (o.method === "mpo") {
        const m = await runMpoDemo({
          out: o.out,
          steps: int(o.steps, "--steps", 1),
          seed: int(o.seed, "--seed", 0)!,
          fast: o.fast === true,
          venv: o.venv,
        });
        process.stdout.write(
          o.json
            ? `${JSON.stringify({ ...m, before: { ...m.before, items: undefined }, after: { ...m.after, items: undefined }, sftReport: undefined }, null, 2)}\n`
            : `${formatMpoReport(m)}\n`,
        );
        return;
      }
      const r = await runDemo({
        out: o.out,
        steps: int(o.steps, "--steps", 1),
        seed: int(o.seed, "--seed", 0)!,
        fast: o.fast === true,
        venv: o.venv,
        model: o.model,
        meta: o.meta,
        evalMeta: o.eval,
        config: o.config,
      });
      if (o.json)
        process.stdout.write(
          `${JSON.stringify({ ...r, before: { ...r.before, items: undefined }, after: { ...r.after, items: undefined } }, null, 2)}\n`,
        );
      else process.stdout.write(`${formatDemoReport(r)}\n`);
    });
}
