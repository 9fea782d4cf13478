import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { writeFileAtomic } from "../util/atomic.ts";
import { UserError } from "../util/errors.ts";
import { ENGINE_DIR } from "../util/paths.ts";
import { venvDir, venvExists, venvPython } from "./venv.ts";

/**
 * torch is installed first with an exact pin, then the engine (whose own range that pin
 * satisfies, so it installs no second torch). On Linux, PyPI's torch==X is a CUDA build;
 * where a local CPU wheel of X is configured, pip takes that instead.
 */
export const DEFAULT_TORCH_SPEC = "torch==2.13.0";

/** Optional engine dependencies `tessera setup --with NAME` installs: the import that proves one is there, and pip's requirement. */
export const OPTIONAL_DEPENDENCIES: Record<string, { module: string; spec: string }> = {
  tensorboard: { module: "tensorboard", spec: "tensorboard>=2.14" },
  wandb: { module: "wandb", spec: "wandb>=0.17" },
};

export interface SetupOptions {
  venv?: string;
  /** Optional dependencies to install too (keys of OPTIONAL_DEPENDENCIES). */
  with?: string[];
  python?: string;
  torchSpec?: string;
  force?: boolean;
  quiet?: boolean;
  log?: (line: string) => void;
}

export interface SetupResult {
  venv: string;
  python: string;
  changed: boolean;
}

const STAMP = ".tessera-engine-stamp";

/** What the venv must have been built from; any change triggers a reinstall. */
function stampFor(torchSpec: string): string {
  const h = createHash("sha256");
  h.update(torchSpec);
  h.update(readFileSync(join(ENGINE_DIR, "pyproject.toml")));
  return h.digest("hex");
}

function run(cmd: string, args: string[], onLine: (l: string) => void): Promise<void> {
  return new Promise((res, rej) => {
    const p = spawn(cmd, args, {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, PIP_DISABLE_PIP_VERSION_CHECK: "1" },
    });
    const tail: string[] = [];
    const take = (buf: Buffer) => {
      for (const l of buf.toString().split(/\r?\n|\r/)) {
        if (!l.trim()) continue;
        tail.push(l);
        if (tail.length > 30) tail.shift();
        onLine(l);
      }
    };
    p.stdout.on("data", take);
    p.stderr.on("data", take);
    p.on("error", (e) => rej(new UserError(`could not run ${cmd}: ${e.message}`)));
    p.on("close", (code) =>
      code === 0
        ? res()
        : rej(new UserError(`${cmd} ${args.join(" ")} failed (exit ${code}):\n${tail.join("\n")}`)),
    );
  });
}

/** Create the engine's venv and install the engine into it; a second run is a no-op. */
export async function setupEngine(opts: SetupOptions = {}): Promise<SetupResult> {
  const venv = venvDir(opts.venv);
  const py = venvPython(venv);
  const torchSpec = opts.torchSpec ?? process.env.TESSERA_TORCH ?? DEFAULT_TORCH_SPEC;
  const stamp = stampFor(torchSpec);
  const stampPath = join(venv, STAMP);
  const say =
    opts.log ?? ((l: string) => (opts.quiet ? undefined : process.stderr.write(`${l}\n`)));
  if (!opts.force && venvExists(venv) && existsSync(stampPath)) {
    if ((await readFile(stampPath, "utf8")).trim() === stamp)
      return { venv, python: py, changed: await installOptional(py, opts.with ?? [], say) };
  }
  const started = Date.now();
  const steps = [
    [
      "creating virtual environment",
      () =>
        venvExists(venv)
          ? Promise.resolve()
          : run(
              opts.python ?? process.env.TESSERA_PYTHON ?? "python3",
              ["-m", "venv", venv],
              () => {},
            ),
    ],
    [`installing ${torchSpec}`, () => run(py, ["-m", "pip", "install", torchSpec], live)],
    ["installing the engine", () => run(py, ["-m", "pip", "install", "-e", ENGINE_DIR], live)],
  ] as const;
  let current = "";
  function live(line: string) {
    if (opts.quiet || !process.stderr.isTTY) return;
    const elapsed = ((Date.now() - started) / 1000).toFixed(0);
    process.stderr.write(`\r\x1b[2K  ${current} (${elapsed}s) ${line.slice(0, 80)}`);
  }
  for (const [i, [label, step]] of steps.entries()) {
    current = `[${i + 1}/${steps.length}] ${label}`;
    say(`${current} ...`);
    await step();
    if (!opts.quiet && process.stderr.isTTY) process.stderr.write("\r\x1b[2K");
  }
  await writeFileAtomic(stampPath, `${stamp}\n`);
  say(`engine ready in ${venv} (${((Date.now() - started) / 1000).toFixed(0)}s)`);
  await installOptional(py, opts.with ?? [], say);
  return { venv, python: py, changed: true };
}

/**
 * Install the optional dependencies that the venv cannot import yet. They stay out of the
 * engine's stamp: adding one never reinstalls the engine, and a later plain setup keeps it.
 */
export async function installOptional(
  py: string,
  names: string[],
  say: (l: string) => void,
): Promise<boolean> {
  let changed = false;
  for (const name of names) {
    const dep = OPTIONAL_DEPENDENCIES[name];
    if (!dep)
      throw new UserError(
        `--with ${name}: unknown; choose from ${Object.keys(OPTIONAL_DEPENDENCIES).join(", ")}`,
      );
    const ok = await run(py, ["-c", `import ${dep.module}`], () => {}).then(
      () => true,
      () => false,
    );
    if (ok) continue;
    say(`installing ${dep.spec} (--with ${name})`);
    await run(py, ["-m", "pip", "install", dep.spec], () => {});
    changed = true;
  }
  return changed;
}

/** The engine's python, set up on first use. */
export async function ensureEngine(opts: SetupOptions = {}): Promise<string> {
  return (await setupEngine(opts)).python;
}
