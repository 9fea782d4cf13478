/**
 * Learned-only chunked logits vs full logits (LM head + cross-entropy, forward and backward) on one
 * long packed row with InternVL2-1B's vocabulary: peak memory and time. The measurement is in
 * bench/model_logits.py, run with the engine's venv; BENCH_LOGITS_ARGS passes extra flags
 * (e.g. "--tokens 16384 --device cuda --dtype bfloat16").
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
const extra = (process.env.BENCH_LOGITS_ARGS ?? "").split(/\s+/).filter(Boolean);
const r = spawnSync(python, [join(root, "bench", "model_logits.py"), ...extra], {
  stdio: "inherit",
});
process.exit(r.status ?? 1);
