/**
 * `tessera setup --with NAME`: an optional dependency is installed only when the engine's
 * Python cannot import it, with pip's requirement from the table; unknown names are refused.
 * A stand-in python records what it is asked to do.
 */
import { chmodSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { installOptional, OPTIONAL_DEPENDENCIES } from "../../src/engine/setup.ts";
import { UserError } from "../../src/util/errors.ts";

/** A python that can import only the modules listed in `have`, and logs every call. */
function fakePython(have: string[]): { py: string; calls: () => string[] } {
  const dir = mkdtempSync(join(tmpdir(), "tessera-fake-py-"));
  const log = join(dir, "calls");
  writeFileSync(log, "");
  const py = join(dir, "python");
  writeFileSync(
    py,
    `#!/bin/sh
echo "$*" >> "${log}"
if [ "$1" = "-c" ]; then
  case "$2" in
${have.map((m) => `    "import ${m}") exit 0 ;;`).join("\n")}
    *) exit 1 ;;
  esac
fi
exit 0
`,
  );
  chmodSync(py, 0o755);
  return { py, calls: () => readFileSync(log, "utf8").trim().split("\n").filter(Boolean) };
}

describe("setup --with", () => {
  it("installs what is missing, and nothing that is there", async () => {
    const { py, calls } = fakePython(["tensorboard"]);
    const said: string[] = [];
    expect(await installOptional(py, ["tensorboard", "wandb"], (l) => said.push(l))).toBe(true);
    expect(calls()).toEqual([
      "-c import tensorboard",
      "-c import wandb",
      `-m pip install ${OPTIONAL_DEPENDENCIES.wandb.spec}`,
    ]);
    expect(said).toEqual([`installing ${OPTIONAL_DEPENDENCIES.wandb.spec} (--with wandb)`]);
    const again = fakePython(["tensorboard", "wandb"]);
    expect(await installOptional(again.py, ["tensorboard", "wandb"], () => {})).toBe(false);
    expect(again.calls().some((c) => c.includes("pip"))).toBe(false);
  });

  it("refuses an unknown name, listing the known ones", async () => {
    const { py } = fakePython([]);
    const p = installOptional(py, ["mlflow"], () => {});
    await expect(p).rejects.toThrow(UserError);
    await expect(installOptional(py, ["mlflow"], () => {})).rejects.toThrow(
      /--with mlflow: unknown; choose from tensorboard, wandb/,
    );
  });
});
