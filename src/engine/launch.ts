/**
 * Launching the engine for a run: one process (CPU or one GPU), or torchrun for several
 * GPUs and nodes. For torchrun, fd 3 does not reach the ranks, so every rank connects to a
 * Unix socket this process listens on (TESSERA_EVENTS=unix:PATH) and its lines join one
 * event stream, which the protocol's supervisor reads as for a single process.
 *
 * A failed rank stops the run: torchrun ends the others, and the error names that rank and
 * shows its own last output lines (torchrun's `--tee` prefixes each line with its rank).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { PassThrough } from "node:stream";
import { writeFileAtomic } from "../util/atomic.ts";
import { ENGINE_DIR } from "../util/paths.ts";
import {
  EngineError,
  type EngineEvent,
  type Job,
  PROTOCOL_VERSION,
  type RunEngineOptions,
  startEngine,
  superviseEngine,
} from "./protocol.ts";

export interface Topology {
  nprocPerNode: number;
  nnodes: number;
  nodeRank: number;
  masterAddr: string;
  masterPort: number;
}

export interface LaunchOptions extends Omit<RunEngineOptions, "command" | "jobPath"> {
  topology: Topology;
  /** Where to write the job file (kept: it documents the run). */
  jobPath: string;
  /** Seconds to wait for the other ranks to end after one reports an error, before killing them. */
  failGraceSeconds?: number;
}

export interface Launch {
  /** The process started: the engine itself, or torchrun. */
  child: ChildProcess;
  /** Resolves with rank 0's result (on other nodes: their first rank's); rejects with an EngineError naming the failed rank. */
  done: Promise<Record<string, unknown>>;
  /** Ask every local rank to checkpoint and stop at the end of its step (SIGTERM to each). */
  stop(): void;
  /** Pids of the local ranks that said hello. */
  pids(): number[];
}

const RANK_TAIL = 30;

/** Nodes, node rank and master address from Slurm's environment, when it describes several nodes. */
export function slurmTopology(env: NodeJS.ProcessEnv = process.env): Partial<Topology> | undefined {
  const nnodes = Number(env.SLURM_NNODES ?? env.SLURM_JOB_NUM_NODES);
  if (!env.SLURM_JOB_ID || !Number.isInteger(nnodes) || nnodes < 2) return undefined;
  const nodeRank = Number(env.SLURM_NODEID);
  const list = env.SLURM_JOB_NODELIST ?? env.SLURM_NODELIST;
  const out: Partial<Topology> = { nnodes };
  if (Number.isInteger(nodeRank)) out.nodeRank = nodeRank;
  if (list) out.masterAddr = firstSlurmHost(list);
  const gpus = Number(env.SLURM_GPUS_ON_NODE);
  if (Number.isInteger(gpus) && gpus > 0) out.nprocPerNode = gpus;
  return out;
}

/** The first host of a Slurm host list such as `gpu[007-012,020],login1` (here: `gpu007`). */
export function firstSlurmHost(list: string): string {
  const m = /^([^,[\]]+)(?:\[([^\]]+)\])?/.exec(list.trim());
  if (!m) throw new Error(`cannot read the Slurm host list ${JSON.stringify(list)}`);
  if (!m[2]) return m[1];
  const first = m[2].split(",")[0].split("-")[0];
  return m[1] + first;
}

export function isDistributed(t: Topology): boolean {
  return t.nprocPerNode * t.nnodes > 1;
}

/** torchrun's arguments for a topology (after `python -m torch.distributed.run`). */
export function torchrunArgs(t: Topology): string[] {
  const args = ["--nproc-per-node", String(t.nprocPerNode), "--tee", "3"];
  if (t.nnodes === 1) return [...args, "--standalone"];
  return [
    ...args,
    "--nnodes",
    String(t.nnodes),
    "--node-rank",
    String(t.nodeRank),
    "--master-addr",
    t.masterAddr,
    "--master-port",
    String(t.masterPort),
  ];
}

/** Start the engine on a job: one process, or torchrun with an event socket for its ranks. */
export async function launchEngine(job: Job, opts: LaunchOptions): Promise<Launch> {
  const t = opts.topology;
  const pidSet = new Set<number>();
  const onEvent = (e: EngineEvent) => {
    if (e.event === "hello" && typeof e.pid === "number") pidSet.add(e.pid);
    opts.onEvent?.(e);
  };
  if (!isDistributed(t)) {
    const run = await startEngine(job, { ...opts, onEvent });
    return {
      child: run.child,
      done: run.done,
      stop: () => run.child.kill("SIGTERM"),
      pids: () => [...pidSet],
    };
  }
  return launchTorchrun(job, { ...opts, onEvent }, pidSet);
}

async function launchTorchrun(job: Job, opts: LaunchOptions, pidSet: Set<number>): Promise<Launch> {
  const t = opts.topology;
  const dir = await mkdtemp(join(tmpdir(), "tessera-ev-"));
  const socketPath = join(dir, "events.sock");
  const merged = new PassThrough();
  const leaderRank = new RegExp(`"rank":${t.nodeRank * t.nprocPerNode}[,}]`);
  const sockets = new Set<Socket>();
  const server: Server = createServer((sock) => {
    sockets.add(sock);
    const rl = createInterface({ input: sock });
    rl.on("line", (line) => {
      // Only this node's first rank settles the run (rank 0 on node 0); the others' result
      // and done are bookkeeping.
      if (/"event":"(result|done)"/.test(line) && !leaderRank.test(line)) return;
      merged.write(`${line}\n`);
    });
    sock.on("close", () => sockets.delete(sock));
    sock.on("error", () => sockets.delete(sock));
  });
  await new Promise<void>((res, rej) => {
    server.once("error", rej);
    server.listen(socketPath, res);
  });

  await writeFileAtomic(
    opts.jobPath,
    JSON.stringify({ protocol: PROTOCOL_VERSION, ...job }, null, 2),
  );
  const argv = [
    "-m",
    "torch.distributed.run",
    ...torchrunArgs(t),
    "-m",
    "tessera_engine",
    opts.jobPath,
  ];
  const child = spawn(opts.python, argv, {
    cwd: opts.cwd,
    // Its own process group: a Ctrl-C reaches only us, and we ask the ranks to checkpoint.
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
    env: {
      ...process.env,
      ...opts.env,
      TESSERA_EVENTS: `unix:${socketPath}`,
      PYTHONUNBUFFERED: "1",
      PYTHONPATH: [ENGINE_DIR, process.env.PYTHONPATH].filter(Boolean).join(":"),
    },
  });

  // Each rank's own last lines, from torchrun's `[default<local rank>]:` prefixes.
  const perRank = new Map<number, string[]>();
  const firstError: { rank?: number; message?: string } = {};
  let killTimer: NodeJS.Timeout | undefined;
  const onOutput = (line: string) => {
    const m = /^\[[^\]\d]*(\d+)\]:(.*)$/.exec(line);
    if (m) {
      const rank = t.nodeRank * t.nprocPerNode + Number(m[1]);
      const tail = perRank.get(rank) ?? [];
      tail.push(m[2]);
      if (tail.length > RANK_TAIL) tail.shift();
      perRank.set(rank, tail);
    } else {
      const failed = /failed \(exitcode: (-?\d+)\) local_rank: (\d+)/.exec(line);
      if (failed && firstError.rank === undefined)
        firstError.rank = t.nodeRank * t.nprocPerNode + Number(failed[2]);
    }
    opts.onOutput?.(line);
  };
  const onEvent = (e: EngineEvent) => {
    if (e.event === "error" && firstError.message === undefined) {
      firstError.rank = typeof e.rank === "number" ? e.rank : firstError.rank;
      firstError.message = String(e.message ?? "");
      // torchrun ends the other ranks when one exits; if they hang in a collective, end them.
      killTimer = setTimeout(
        () => killGroup(child, "SIGKILL"),
        (opts.failGraceSeconds ?? 60) * 1000,
      );
    }
    opts.onEvent?.(e);
  };

  child.on("close", () => {
    if (killTimer) clearTimeout(killTimer);
    // Let the ranks' last lines arrive, then end the stream so the supervisor can settle.
    const finish = () => {
      for (const s of sockets) s.destroy();
      server.close();
      merged.end();
      void rm(dir, { recursive: true, force: true });
    };
    if (sockets.size === 0) finish();
    else setTimeout(finish, 500);
  });
  const done = superviseEngine(child, merged, { onEvent, onOutput }).catch((err: unknown) => {
    if (!(err instanceof EngineError)) throw err;
    throw rankError(err, firstError, perRank);
  });
  return {
    child,
    done,
    stop: () => {
      for (const pid of pidSet) {
        try {
          process.kill(pid, "SIGTERM");
        } catch {
          // already gone
        }
      }
    },
    pids: () => [...pidSet],
  };
}

function killGroup(child: ChildProcess, sig: NodeJS.Signals): void {
  try {
    if (child.pid) process.kill(-child.pid, sig);
  } catch {
    child.kill(sig);
  }
}

/** The supervisor's error, told from the failed rank's point of view. */
function rankError(
  err: EngineError,
  first: { rank?: number; message?: string },
  perRank: Map<number, string[]>,
): EngineError {
  const rank = first.rank;
  if (rank === undefined) return err;
  const lines = perRank.get(rank) ?? [];
  const why = first.message
    ? `rank ${rank} failed: ${first.message}`
    : `rank ${rank} failed (exit code ${err.exitCode})`;
  const tail = lines.length
    ? `\nlast output of rank ${rank}:\n${lines.map((l) => `  ${l}`).join("\n")}`
    : "";
  return new EngineError(why + tail, err.exitCode ?? 1, err.signal, lines, err.engineError);
}
