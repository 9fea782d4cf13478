import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import {
  EngineError,
  type EngineEvent,
  runEngine,
  startEngine,
} from "../../src/engine/protocol.ts";
import { ensureEngine } from "../../src/engine/setup.ts";
import { PACKAGE_ROOT } from "../../src/util/paths.ts";

let python: string;
beforeAll(async () => {
  python = await ensureEngine({ quiet: true });
});

describe("engine protocol", () => {
  it("echoes the job and streams every metric line in order, then exits cleanly", async () => {
    const events: EngineEvent[] = [];
    const N = 500;
    const result = await runEngine(
      { kind: "echo", count: N, payload: { text: "héllo ✓", nested: [1, 2, 3] } },
      { python, onEvent: (e) => events.push(e) },
    );
    expect(result.count).toBe(N);
    expect(result.echo).toMatchObject({
      kind: "echo",
      protocol: 1,
      payload: { text: "héllo ✓", nested: [1, 2, 3] },
    });
    const metrics = events.filter((e) => e.event === "metric");
    expect(metrics.map((m) => m.step)).toEqual(Array.from({ length: N }, (_, i) => i + 1));
    expect(events[0]).toMatchObject({ event: "hello", protocol: 1, job: "echo" });
    expect(events.at(-1)?.event).toBe("done");
  });

  it("reports a clear error, not a hang, when the engine is killed mid-stream", async () => {
    const seen: EngineEvent[] = [];
    const run = await startEngine(
      { kind: "echo", count: 10_000, delay_s: 0.01 },
      {
        python,
        onEvent: (e) => {
          seen.push(e);
          if (e.event === "metric" && e.step === 5) run.child.kill("SIGKILL");
        },
      },
    );
    const err = await run.done.catch((e) => e);
    expect(err).toBeInstanceOf(EngineError);
    expect(err.signal).toBe("SIGKILL");
    expect(err.message).toMatch(/killed by SIGKILL/);
    expect(seen.filter((e) => e.event === "metric").length).toBeGreaterThanOrEqual(5);
    expect(seen.some((e) => e.event === "done")).toBe(false);
  });

  it("shows an error about a user's file as its message alone, without the traceback", async () => {
    const err = await runEngine(
      { kind: "echo", file_problem: "/data/model.safetensors: not a readable safetensors file" },
      { python },
    ).catch((e) => e);
    expect(err).toBeInstanceOf(EngineError);
    expect(err.message).toBe("/data/model.safetensors: not a readable safetensors file");
  });

  it("surfaces the engine's own error message and traceback for a failing job", async () => {
    const err = await runEngine({ kind: "no-such-job" }, { python }).catch((e) => e);
    expect(err).toBeInstanceOf(EngineError);
    expect(err.message).toMatch(/unknown job kind 'no-such-job'/);
  });
});

describe("tessera doctor", () => {
  const cli = join(PACKAGE_ROOT, "bin", "tessera.mjs");
  it("reports the CPU build of torch and no GPU, and exits 0", () => {
    const r = spawnSync(process.execPath, [cli, "doctor", "--json"], { encoding: "utf8" });
    expect(r.status, r.stderr).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.engine.torch).toMatch(/^2\./);
    expect(report.engine.native_internvl).toBe(true);
    if (!report.engine.cuda_available) expect(report.engine.gpus).toEqual([]);
  });
  it("exits non-zero with a one-line fix when the environment is missing", () => {
    const r = spawnSync(process.execPath, [cli, "doctor", "--venv", "/nonexistent/venv"], {
      encoding: "utf8",
    });
    expect(r.status).not.toBe(0);
    const lines = r.stderr.trim().split("\n");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/missing.*Fix: run `npx tessera setup`/);
  });
});
