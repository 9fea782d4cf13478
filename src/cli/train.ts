/**
 * `tessera train [CONFIG.yaml] [flags]`: fine-tune from a meta file and a model folder.
 * Every setting of the config is also a flag; the seed launcher's flags work too.
 */
import type { Command } from "commander";
import { addConfigOptions, flagsToConfig, resolveConfig } from "../train/config.ts";
import { train } from "../train/driver.ts";

export function registerTrain(program: Command): void {
  const cmd = program
    .command("train")
    .description(
      "fine-tune a model: prepare, plan, train (one process or torchrun), checkpoint, export",
    )
    .argument("[config]", "a YAML config file (every setting can also be given as a flag)")
    .option("--resume", "continue from the work dir's latest checkpoint")
    .option("--venv <dir>", "the engine's virtual environment")
    .option("--no-progress", "log lines instead of a progress bar")
    .option("--dashboard [port]", "serve the live dashboard while training (default port 8686)");
  addConfigOptions(cmd);
  cmd.action(async (file: string | undefined, o: Record<string, unknown>) => {
    const c = resolveConfig(file, flagsToConfig(o));
    const r = await train(c, {
      resume: Boolean(o.resume),
      venv: o.venv as string | undefined,
      progress: o.progress === false ? false : undefined,
      handleSignals: true,
      dashboardPort:
        o.dashboard === undefined ? undefined : o.dashboard === true ? 8686 : Number(o.dashboard),
    });
    const last = r.losses.length ? r.losses[r.losses.length - 1].toFixed(4) : "-";
    process.stderr.write(
      `${r.stopped ? "stopped" : "finished"} at step ${r.stepsDone}/${r.totalSteps} · last loss ${last}\n` +
        (r.checkpoint ? `checkpoint: ${r.checkpoint}\n` : "") +
        (r.export ? `model: ${r.export.adapter ?? r.export.dir}\n` : "") +
        `metrics: ${r.metricsPath}\n` +
        (r.stopped ? "continue with: tessera train ... --resume\n" : ""),
    );
  });
}
