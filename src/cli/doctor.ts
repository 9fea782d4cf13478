import type { Command } from "commander";
import { EngineError, runEngine } from "../engine/protocol.ts";
import { venvDir, venvExists, venvPython } from "../engine/venv.ts";
import { UserError } from "../util/errors.ts";

export interface DoctorReport {
  node: string;
  venv: string;
  engine: Record<string, unknown>;
}

export async function doctor(venvOverride?: string): Promise<DoctorReport> {
  const venv = venvDir(venvOverride);
  if (!venvExists(venv))
    throw new UserError(
      `the engine environment is missing (${venv}). Fix: run \`npx tessera setup\``,
    );
  try {
    const engine = await runEngine({ kind: "doctor" }, { python: venvPython(venv) });
    return { node: process.version, venv, engine };
  } catch (e) {
    if (e instanceof EngineError)
      throw new UserError(
        `the engine does not import (${e.message.split("\n")[0]}). Fix: run \`npx tessera setup --force\``,
      );
    throw e;
  }
}

export function registerDoctor(program: Command): void {
  program
    .command("doctor")
    .description(
      "check Node, Python, torch, GPUs and transformers, and say how to fix what is missing",
    )
    .option("--venv <dir>", "virtual environment to check")
    .option("--json", "print the report as JSON")
    .action(async (o) => {
      const r = await doctor(o.venv);
      if (o.json) {
        process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
      } else {
        const e = r.engine as Record<string, unknown> & {
          gpus?: { name: string; memory_gib: number }[];
        };
        const gpus = e.gpus ?? [];
        const lines = [
          `node          ${r.node}`,
          `python        ${e.python}  (${r.venv})`,
          `torch         ${e.torch}${e.torch_cuda ? ` (CUDA ${e.torch_cuda})` : " (CPU build)"}`,
          `gpus          ${gpus.length ? gpus.map((g) => `${g.name} ${g.memory_gib} GiB`).join(", ") : "none"}`,
          `transformers  ${e.transformers ?? `missing: ${e.transformers_error}`}`,
          `flash-attn    ${e.flash_attn ?? "not installed (PyTorch attention is used)"}`,
          `engine        imports`,
        ];
        process.stdout.write(`${lines.join("\n")}\n`);
      }
      const e = r.engine as Record<string, unknown>;
      if (!e.transformers || !e.native_internvl)
        throw new UserError(
          "transformers with native InternVL (>= 4.52) is missing. Fix: run `npx tessera setup --force`",
        );
    });
}
