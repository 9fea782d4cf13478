/** The short report `tessera demo` prints at the end. */
import { relative } from "node:path";
import type { DemoReport } from "./demo.ts";

const pct = (x: number) => `${(x * 100).toFixed(1)}%`;

export function duration(s: number): string {
  if (s < 59.95) return `${s.toFixed(1)}s`;
  const whole = Math.round(s); // rounded once, so 299.6 s reads 5m00s, not 4m60s
  return `${Math.floor(whole / 60)}m${String(whole % 60).padStart(2, "0")}s`;
}

export function formatDemoReport(r: DemoReport, cwd = process.cwd()): string {
  const rel = (p: string) => {
    const x = relative(cwd, p);
    return x && !x.startsWith("..") ? x : p;
  };
  const types = Object.keys(r.after.byType);
  const w = Math.max(8, ...types.map((t) => t.length));
  const lines = [
    "",
    `tessera demo: done in ${duration(r.seconds)} (engine setup excluded)`,
    "",
    "held-out accuracy (exact match)",
    `  ${"type".padEnd(w)}  ${"before".padStart(7)}  ${"after".padStart(7)}  questions`,
  ];
  for (const t of types) {
    const b = r.before.byType[t];
    const a = r.after.byType[t];
    lines.push(
      `  ${t.padEnd(w)}  ${(b ? pct(b.accuracy) : "-").padStart(7)}  ${pct(a.accuracy).padStart(7)}  ${a.total}`,
    );
  }
  lines.push(
    `  ${"overall".padEnd(w)}  ${pct(r.before.overall.accuracy).padStart(7)}  ${pct(r.after.overall.accuracy).padStart(7)}  ${r.after.overall.total}`,
  );
  const t = r.train;
  const loss =
    t.firstLoss !== null && t.lastLoss !== null
      ? ` · loss ${t.firstLoss.toFixed(2)} → ${t.lastLoss.toFixed(2)}`
      : "";
  const held = t.heldOut.length > 1 ? t.heldOut : [];
  const heldLine = held.length
    ? [
        `held out    loss ${held[0].loss.toFixed(2)} → ${held[held.length - 1].loss.toFixed(2)} (evaluated during training at steps ${held.map((h) => h.step).join(", ")})`,
      ]
    : [];
  lines.push(
    "",
    `training    ${t.steps} steps in ${duration(t.seconds)} · ${Math.round(t.tokensPerS).toLocaleString("en-US")} tokens/s · pack fill ${pct(t.packFill)}${loss}`,
    ...heldLine,
    `data        ${rel(r.data.trainMeta)} (train) · ${rel(r.data.evalMeta)} (held out)`,
    `model       ${rel(r.model)} (before) → ${rel(t.export)} (after, original InternVL2 format)`,
  );
  if (t.checkpoint) lines.push(`checkpoint  ${rel(t.checkpoint)}`);
  lines.push(
    `stages      ${Object.entries(r.timings)
      .map(([k, v]) => `${k} ${duration(v)}`)
      .join(" · ")}`,
    "",
    `try         tessera eval ${rel(t.export)} ${rel(r.data.evalMeta)} --show 10`,
  );
  return lines.join("\n");
}
