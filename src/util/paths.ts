import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** The tessera package's root (where package.json, engine/ and the default .venv live). */
export const PACKAGE_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const ENGINE_DIR = resolve(PACKAGE_ROOT, "engine");
