import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import {
  firstSlurmHost,
  launchEngine,
  slurmTopology,
  torchrunArgs,
} from "../../src/engine/launch.ts";
import { EngineError, type EngineEvent } from "../../src/engine/protocol.ts";
import { ensureEngine } from "../../src/engine/setup.ts";
import { resolveConfig } from "../../src/train/config.ts";
import { metricLine, topologyOf } from "../../src/train/driver.ts";

let python: string;
beforeAll(async () => {
  python = await ensureEngine({ quiet: true });
});

const two = { nprocPerNode: 2, nnodes: 1, nodeRank: 0, masterAddr: "127.0.0.1", masterPort: 29500 };

describe("launching ranks", () => {
  it("reads Slurm's environment for several nodes", () => {
    expect(firstSlurmHost("gpu[007-012,020],login1")).toBe("gpu007");
    expect(firstSlurmHost("node5")).toBe("node5");
    const env = {
      SLURM_JOB_ID: "1",
      SLURM_NNODES: "4",
      SLURM_NODEID: "2",
      SLURM_JOB_NODELIST: "a[10-13]",
      SLURM_GPUS_ON_NODE: "8",
    };
    expect(slurmTopology(env)).toEqual({
      nnodes: 4,
      nodeRank: 2,
      masterAddr: "a10",
      nprocPerNode: 8,
    });
    expect(slurmTopology({ SLURM_JOB_ID: "1", SLURM_NNODES: "1" })).toBeUndefined();
    const c = resolveConfig(undefined, { model: "m", meta: "x", global_batch_size: 64 }, "/w");
    expect(topologyOf(c, env)).toMatchObject({
      nnodes: 4,
      nodeRank: 2,
      masterAddr: "a10",
      nprocPerNode: 8,
    });
    expect(topologyOf(c, {})).toMatchObject({ nnodes: 1, nprocPerNode: 1 });
  });

  it("passes nodes, node rank and master address to torchrun", () => {
    expect(torchrunArgs(two)).toContain("--standalone");
    const multi = torchrunArgs({
      ...two,
      nnodes: 2,
      nodeRank: 1,
      masterAddr: "n0",
      masterPort: 1234,
    });
    expect(multi.join(" ")).toBe(
      "--nproc-per-node 2 --tee 3 --nnodes 2 --node-rank 1 --master-addr n0 --master-port 1234",
    );
  });

  it("writes only the metric fields to metrics.jsonl", () => {
    const line = JSON.parse(
      metricLine({ event: "metric", rank: 0, time: 5, step: 3, loss: 0.5, lr: 1e-4, extra: 1 }),
    );
    expect(line).toEqual({ step: 3, loss: 0.5, lr: 1e-4, time: 5 });
  });

  it("collects every rank's events over the socket and settles on rank 0's result", async () => {
    const events: EngineEvent[] = [];
    const dir = mkdtempSync(join(tmpdir(), "tessera-launch-"));
    const run = await launchEngine(
      { kind: "echo", count: 20 },
      {
        python,
        topology: two,
        jobPath: join(dir, "job.json"),
        onEvent: (e) => events.push(e),
        env: { OMP_NUM_THREADS: "1" },
      },
    );
    const result = await run.done;
    expect(result.count).toBe(20);
    const hellos = events.filter((e) => e.event === "hello").map((e) => e.rank);
    expect(hellos.sort()).toEqual([0, 1]);
    for (const r of [0, 1])
      expect(events.filter((e) => e.event === "metric" && e.rank === r)).toHaveLength(20);
    expect(run.pids()).toHaveLength(2);
  });

  it("stops the run when one rank fails, with that rank's last lines", async () => {
    const dir = mkdtempSync(join(tmpdir(), "tessera-launch-"));
    const run = await launchEngine(
      { kind: "echo", count: 100_000, delay_s: 0.01, fail_on_rank: 1 },
      { python, topology: two, jobPath: join(dir, "job.json"), env: { OMP_NUM_THREADS: "1" } },
    );
    const err = await run.done.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(EngineError);
    const e = err as EngineError;
    expect(e.message).toMatch(/^rank 1 failed: RuntimeError: asked to fail on rank 1/);
    expect(e.message).toContain("last output of rank 1");
    expect(e.message).toContain("rank 1 about to fail");
    expect(e.exitCode).not.toBe(0);
  });

  it("runs several nodes with --nnodes/--node-rank/--master-addr (two nodes on this machine)", async () => {
    const dir = mkdtempSync(join(tmpdir(), "tessera-launch-"));
    const port = 20000 + Math.floor(Math.random() * 20000);
    const events: EngineEvent[][] = [[], []];
    const nodes = await Promise.all(
      [0, 1].map((nodeRank) =>
        launchEngine(
          { kind: "echo", count: 3 },
          {
            python,
            topology: {
              nprocPerNode: 1,
              nnodes: 2,
              nodeRank,
              masterAddr: "127.0.0.1",
              masterPort: port,
            },
            jobPath: join(dir, `job${nodeRank}.json`),
            onEvent: (e) => events[nodeRank].push(e),
            env: { OMP_NUM_THREADS: "1" },
          },
        ),
      ),
    );
    const results = await Promise.all(nodes.map((n) => n.done));
    expect(results.map((r) => r.count)).toEqual([3, 3]);
    // Each node hears its own ranks: global rank 0 on node 0, global rank 1 on node 1.
    expect(events[0].filter((e) => e.event === "hello").map((e) => e.rank)).toEqual([0]);
    expect(events[1].filter((e) => e.event === "hello").map((e) => e.rank)).toEqual([1]);
  });
});
