import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { PACKAGE_ROOT } from "../util/paths.ts";

/** Where the engine's virtual environment lives: --venv, then TESSERA_VENV, then <package>/.venv. */
export function venvDir(override?: string): string {
  if (override) return resolve(override);
  if (process.env.TESSERA_VENV) return resolve(process.env.TESSERA_VENV);
  return join(PACKAGE_ROOT, ".venv");
}

export function venvPython(venv: string): string {
  return process.platform === "win32"
    ? join(venv, "Scripts", "python.exe")
    : join(venv, "bin", "python");
}

export function venvExists(venv: string): boolean {
  return existsSync(venvPython(venv));
}
