/**
 * Preference pairs: tokens/s of a packed pair step against the same pairs padded (CPU, tiny
 * model), and the memory of precomputed reference log-probabilities against a frozen copy. The
 * measurement is in bench/preference_pairs.py, run with the engine's venv; BENCH_PREF_ARGS passes
 * extra flags (e.g. "--pairs 96 --hidden 256").
 */
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const python = join(root, ".venv", "bin", "python");
if (!existsSync(python)) {
  console.log("skipped: no engine venv (run `tessera setup` first)");
  process.exit(0);
}
const extra = (process.env.BENCH_PREF_ARGS ?? "").split(/\s+/).filter(Boolean);
const r = spawnSync(python, [join(root, "bench", "preference_pairs.py"), ...extra], {
  stdio: "inherit",
});
process.exit(r.status ?? 1);
