/**
 * `tessera train [CONFIG.yaml] [flags]`: fine-tune from a meta file and a model folder.
 * Every setting of the config is also a flag; the seed launcher's flags and the official
 * InternVL script's arguments work too, and `--from-script` reads an official shell script.
 */
import type { Command } from "commander";
import { stringify as toYaml } from "yaml";
import {
  addConfigOptions,
  type ConfigFlags,
  flagsToConfig,
  resolveConfig,
} from "../train/config.ts";
import { train } from "../train/driver.ts";
import { importScript } from "../train/official.ts";

/** The script's settings under the command line's: flags given to tessera win. */
async function withScript(path: string, flags: ConfigFlags): Promise<ConfigFlags> {
  const s = await importScript(path);
  const fromScript: ConfigFlags = { ...s.launcher, ...s.settings };
  if (s.gradAccum !== undefined && flags.global_batch_size === undefined)
    fromScript.gradient_accumulation_steps = s.gradAccum;
  const notes = [...s.notes, ...(flags.notes ?? [])];
  const checks = [...s.modelChecks, ...(flags.model_checks ?? [])];
  return {
    ...fromScript,
    ...flags,
    ...(notes.length ? { notes } : {}),
    ...(checks.length ? { model_checks: checks } : {}),
  };
}

export function registerTrain(program: Command): void {
  const cmd = program
    .command("train")
    .description(
      "fine-tune a model: prepare, plan, train (one process or torchrun), checkpoint, export",
    )
    .argument("[config]", "a YAML config file (every setting can also be given as a flag)")
    .option("--resume", "continue from the work dir's latest checkpoint (the same plan)")
    .option(
      "--from-script <file>",
      "an official InternVL fine-tuning shell script (torchrun or srun): print the equivalent config, or train with it when --work-dir is given",
    )
    .option(
      "--verify",
      "hash every checkpoint and cache file against its manifest (default: changed and small files only)",
    )
    .option("--venv <dir>", "the engine's virtual environment")
    .option("--no-progress", "log lines instead of a progress bar")
    .option("--dashboard [port]", "serve the live dashboard while training (default port 8686)");
  addConfigOptions(cmd);
  cmd.action(async (file: string | undefined, o: Record<string, unknown>) => {
    let flags = flagsToConfig(o);
    const script = o.fromScript as string | undefined;
    if (script) flags = await withScript(script, flags);
    const c = resolveConfig(file, flags);
    const notes = flags.notes ?? [];
    if (
      script &&
      o.workDir === undefined &&
      o.output_dir === undefined &&
      o.outputDir === undefined
    ) {
      // The equivalent config: `tessera train config.yaml` trains with it.
      const head = [`# tessera config from ${script}`, ...notes.map((n) => `# ${n}`)];
      process.stdout.write(`${head.join("\n")}\n${toYaml(c)}`);
      return;
    }
    for (const n of notes) process.stderr.write(`note: ${n}\n`);
    const r = await train(c, {
      resume: Boolean(o.resume),
      verify: Boolean(o.verify),
      venv: o.venv as string | undefined,
      progress: o.progress === false ? false : undefined,
      handleSignals: true,
      dashboardPort:
        o.dashboard === undefined ? undefined : o.dashboard === true ? 8686 : Number(o.dashboard),
      command: ["tessera", ...process.argv.slice(2)]
        .map((a) => (/^[\w./:=@,+-]+$/.test(a) ? a : JSON.stringify(a)))
        .join(" "),
    });
    const last = r.losses.length ? r.losses[r.losses.length - 1].toFixed(4) : "-";
    process.stderr.write(
      `${r.stopped ? "stopped" : "finished"} at step ${r.stepsDone}/${r.totalSteps} · last loss ${last}\n` +
        (r.checkpoint ? `checkpoint: ${r.checkpoint}\n` : "") +
        (r.export ? `model: ${r.export.adapter ?? r.export.dir}\n` : "") +
        `metrics: ${r.metricsPath}\n` +
        (r.skipped
          ? `skipped ${r.skipped} sample(s) whose media could not be loaded: ${r.skipListPath}\n`
          : "") +
        (r.stopped ? "continue with: tessera train ... --resume\n" : ""),
    );
  });
}
