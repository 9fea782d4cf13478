/**
 * Activation memory per rank on one long packed row with sequence parallelism (sp 2, ring 2)
 * against one rank, on CPU with gloo. The measurement is in bench/sequence_parallel.py, run
 * with the engine's venv; BENCH_SP_ARGS passes extra flags (e.g. "--tokens 8192").
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
const extra = (process.env.BENCH_SP_ARGS ?? "").split(/\s+/).filter(Boolean);
const r = spawnSync(python, [join(root, "bench", "sequence_parallel.py"), ...extra], {
  stdio: "inherit",
});
process.exit(r.status ?? 1);
