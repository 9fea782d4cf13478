import type { Command } from "commander";
import { setupEngine } from "../engine/setup.ts";

export function registerSetup(program: Command): void {
  program
    .command("setup")
    .description("create the engine's Python environment and install the engine (idempotent)")
    .option(
      "--venv <dir>",
      "virtual environment to use (default: .venv in the tessera folder, or TESSERA_VENV)",
    )
    .option("--python <exe>", "Python used to create the environment", "python3")
    .option("--torch <spec>", "pip requirement for torch (default torch==2.13.0, or TESSERA_TORCH)")
    .option("--force", "reinstall even if the environment is up to date")
    .option("--quiet", "print nothing when there is nothing to do")
    .option(
      "--with <names>",
      "optional dependencies to install too, comma-separated: tensorboard, wandb (for report_to)",
    )
    .action(async (o) => {
      const r = await setupEngine({
        venv: o.venv,
        python: o.python,
        torchSpec: o.torch,
        force: o.force,
        quiet: o.quiet,
        with: o.with
          ? String(o.with)
              .split(",")
              .map((x) => x.trim())
              .filter(Boolean)
          : [],
      });
      if (!r.changed && !o.quiet) process.stderr.write(`engine up to date in ${r.venv}\n`);
    });
}
