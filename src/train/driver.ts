/**
 * The `train` driver: config → prepared cache → plan → engine (one process or torchrun) →
 * checkpoints and export. The engine emits metric events; this side owns metrics.jsonl
 * (one line per logged step, written by the process that hears rank 0) and the progress bar.
 */
import { appendFileSync, existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import cliProgress from "cli-progress";
import { stringify as toYaml } from "yaml";
import { type Dashboard, startDashboard } from "../dashboard/server.ts";
import { isDistributed, launchEngine, slurmTopology, type Topology } from "../engine/launch.ts";
import type { EngineEvent } from "../engine/protocol.ts";
import { ensureEngine } from "../engine/setup.ts";
import { planDir, prepareAndPlan, prepareAndPlanEval } from "../plan/from-config.ts";
import { writePlan } from "../plan/plan.ts";
import { writeFileAtomic, writeFileAtomicSync } from "../util/atomic.ts";
import { namedWriteError, UserError } from "../util/errors.ts";
import { LOCK_FILE, lockFolder } from "../util/lock.ts";
import type { TrainConfig } from "./config.ts";

export interface TrainOptions {
  /** The engine's python (default: set up on first use). */
  python?: string;
  venv?: string;
  /** Continue from the work dir's latest checkpoint. */
  resume?: boolean;
  /** Show a progress bar (default: when stderr is a terminal). */
  progress?: boolean;
  log?: (line: string) => void;
  onEvent?: (e: EngineEvent) => void;
  /** Lines the engine prints (default: kept, shown only when it fails). */
  onOutput?: (line: string) => void;
  /** Worker threads for preparing the cache (0: this thread). */
  prepareWorkers?: number;
  /** Extra environment for the engine processes. */
  env?: NodeJS.ProcessEnv;
  /** Aborting it asks the engine to checkpoint at the end of its step and stop. */
  stopSignal?: AbortSignal;
  /** Install SIGINT/SIGTERM handlers that ask the engine to checkpoint and stop (the CLI does). */
  handleSignals?: boolean;
  /** Serve the live dashboard on this port while training (0: any free port). */
  dashboardPort?: number;
  /** The command that started the run, for messages that suggest another one. */
  command?: string;
  /**
   * Hash every checkpoint and cache file against its manifest before use (default: only files
   * whose size or modification time changed, and small files).
   */
  verify?: boolean;
}

export interface TrainResult {
  workDir: string;
  /** Steps already done when this run started (non-zero when resuming). */
  startStep: number;
  stepsDone: number;
  totalSteps: number;
  losses: number[];
  checkpoint: string | null;
  export: { dir: string; format: string; adapter?: string } | null;
  stopped: boolean;
  metricsPath: string;
  trainableParameters: number | null;
  /** Samples in the skip list (WORK_DIR/skipped.jsonl) at the end of the run. */
  skipped: number;
  skipListPath: string;
  /** The last evaluation's figures (eval_loss, ...), when eval_meta is set. */
  eval: Record<string, number> | null;
  /** The best checkpoint by save_best. */
  best: { metric: string; value: number; path: string } | null;
}

/** The fields of a metric event that go to metrics.jsonl. */
export const METRIC_FIELDS = [
  "step",
  "total",
  "epoch",
  "loss",
  "lr",
  "grad_norm",
  "tokens",
  "tokens_per_s_per_gpu",
  "samples_per_s",
  "step_time",
  "data_wait",
  "peak_memory",
  "pack_fill",
  "loss_by_dataset",
  "time",
  // preference runs (docs/preference.md)
  "rewards_chosen",
  "rewards_rejected",
  "reward_margin",
  "reward_accuracy",
  "loss_sigmoid",
  "loss_bco_pair",
  "loss_ipo",
  "loss_hinge",
  "nll_loss",
  "bco_baseline",
] as const;

/** The fields of an eval event that go to metrics.jsonl (its line is marked "event": "eval"). */
export const EVAL_FIELDS = [
  "step",
  "total",
  "eval_loss",
  "eval_loss_by_dataset",
  "eval_exact_match",
  "eval_tokens",
  "eval_time",
  "time",
] as const;

export function metricLine(e: EngineEvent): string {
  const out: Record<string, unknown> = {};
  if (e.event === "eval") {
    out.event = "eval";
    for (const k of EVAL_FIELDS) if (e[k] !== undefined) out[k] = e[k];
  } else for (const k of METRIC_FIELDS) if (e[k] !== undefined) out[k] = e[k];
  return JSON.stringify(out);
}

/** A run's state for the dashboard and scripts: WORK_DIR/status.json, rewritten atomically. */
export interface RunStatus {
  status: "running" | "finished" | "stopped" | "failed";
  started: number;
  ended?: number;
  step?: number;
  total?: number;
  loss?: number | null;
  eval?: Record<string, unknown> | null;
  best?: Record<string, unknown> | null;
  checkpoint?: string | null;
  export?: string | null;
  error?: string;
}

/** "1:02:03" or "4:05". */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "-";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

/**
 * Progress lines for logs without a terminal (CI, nohup, Slurm): one every `intervalS` seconds
 * of wall time, plus the first and the last step, with the ETA from this run's pace so far.
 */
export function progressLines(intervalS: number, now: () => number = Date.now) {
  let first: { step: number; at: number } | undefined;
  let lastPrint = -Infinity;
  return (e: EngineEvent): string | undefined => {
    const step = Number(e.step);
    const total = Number(e.total);
    const at = now();
    first ??= { step, at };
    if (step !== total && step !== first.step && at - lastPrint < intervalS * 1000)
      return undefined;
    lastPrint = at;
    const done = step - first.step;
    const eta = done > 0 ? ((at - first.at) / 1000 / done) * (total - step) : Number.NaN;
    return (
      `step ${step}/${total} · loss ${fmt(e.loss)} · ${Math.round(Number(e.tokens_per_s_per_gpu ?? 0))} tok/s/gpu` +
      ` · lr ${fmt(e.lr, 3)} · eta ${step === total ? "0:00" : formatDuration(eta)}`
    );
  };
}

/** The processes and nodes of a run: the config's, or Slurm's when it describes several nodes. */
export function topologyOf(c: TrainConfig, env: NodeJS.ProcessEnv = process.env): Topology {
  const t: Topology = {
    nprocPerNode: c.nproc_per_node,
    nnodes: c.nnodes,
    nodeRank: c.node_rank,
    masterAddr: c.master_addr,
    masterPort: c.master_port,
  };
  const slurm = c.nnodes === 1 ? slurmTopology(env) : undefined;
  if (slurm)
    Object.assign(t, slurm, c.nproc_per_node > 1 ? { nprocPerNode: c.nproc_per_node } : {});
  return t;
}

/**
 * Keep the lines of metrics.jsonl up to `step` (a resume logs the later ones again): one line
 * per step. A partial last line (a killed run) goes too.
 */
export function cutMetrics(path: string, step: number): void {
  if (!existsSync(path)) return;
  const kept = readFileSync(path, "utf8")
    .split("\n")
    .filter((line) => {
      try {
        const s = (JSON.parse(line) as { step?: unknown }).step;
        return typeof s === "number" && s <= step;
      } catch {
        return false;
      }
    });
  writeFileAtomicSync(path, kept.map((l) => `${l}\n`).join(""));
}

function hasCheckpoints(workDir: string): boolean {
  const dir = join(workDir, "checkpoints");
  return existsSync(dir) && readdirSync(dir).some((n) => /^step-\d{8}$/.test(n));
}

/** The latest complete checkpoint of a work dir (one with its meta.json), or null. */
export function latestCheckpoint(workDir: string): string | null {
  const dir = join(workDir, "checkpoints");
  if (!existsSync(dir)) return null;
  const names = readdirSync(dir)
    .filter((n) => /^step-\d{8}$/.test(n) && existsSync(join(dir, n, "meta.json")))
    .sort();
  return names.length ? join(dir, names[names.length - 1]) : null;
}

function checkpointMeta(path: string): { plan_fingerprint?: string; steps_done?: number } {
  try {
    return JSON.parse(readFileSync(join(path, "meta.json"), "utf8"));
  } catch (e) {
    throw new UserError(`${path}/meta.json: cannot read it: ${(e as Error).message}`);
  }
}

/**
 * The checkpoint that `init_from` names: a checkpoint folder, or a run's work dir (its latest
 * checkpoint). An exported model folder is a model: it goes in as --model.
 */
export function initCheckpoint(initFrom: string): string {
  if (existsSync(join(initFrom, "meta.json")) && existsSync(join(initFrom, ".metadata")))
    return initFrom;
  const latest = latestCheckpoint(initFrom);
  if (latest) return latest;
  if (existsSync(join(initFrom, "config.json")))
    throw new UserError(
      `init_from ${initFrom} is a model folder: give it as --model (init_from takes a checkpoint or a run's work dir)`,
    );
  throw new UserError(
    `init_from ${initFrom}: neither a checkpoint (step-N folder with meta.json) nor a work dir holding checkpoints`,
  );
}

const fmt = (x: unknown, digits = 4) =>
  typeof x === "number" && Number.isFinite(x) ? x.toPrecision(digits) : "-";

/** Train a model as the config says; resolves when the engine has finished (or stopped on a signal). */
export async function train(c: TrainConfig, opts: TrainOptions = {}): Promise<TrainResult> {
  // One run per work dir: a second one is refused before it reads or writes anything there.
  // Each node of a multi-node run (one `tessera train` per node) holds its own lock file.
  const node = topologyOf(c).nodeRank;
  const lock = lockFolder(
    c.work_dir,
    "work dir",
    "tessera train",
    node === 0 ? LOCK_FILE : `${LOCK_FILE}.node-${node}`,
  );
  try {
    return await trainLocked(c, opts);
  } finally {
    lock.release();
  }
}

async function trainLocked(c: TrainConfig, opts: TrainOptions): Promise<TrainResult> {
  const log = opts.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const workDir = c.work_dir;
  if (!opts.resume && hasCheckpoints(workDir)) {
    throw new UserError(
      `${workDir} already holds checkpoints: continue with --resume, or choose another --work-dir`,
    );
  }
  if (opts.resume && !hasCheckpoints(workDir)) {
    throw new UserError(
      `--resume: ${join(workDir, "checkpoints")} holds no checkpoint to continue from`,
    );
  }
  let topology = topologyOf(c);
  if (topology.nprocPerNode * topology.nnodes !== c.nproc_per_node * c.nnodes) {
    // Slurm changed the world size: the plan's shards and accumulation follow it.
    c = {
      ...c,
      nproc_per_node: topology.nprocPerNode,
      nnodes: topology.nnodes,
      node_rank: topology.nodeRank,
      master_addr: topology.masterAddr,
    };
    topology = topologyOf(c);
    const per = c.micro_batch_size * c.nproc_per_node * c.nnodes;
    if (c.global_batch_size % per !== 0)
      throw new UserError(
        `Slurm gives ${c.nnodes} node(s) × ${c.nproc_per_node} process(es): global_batch_size ${c.global_batch_size} must be a multiple of ${per}`,
      );
  }
  const initFrom = c.init_from && !opts.resume ? initCheckpoint(c.init_from) : undefined;
  // status.json is written once the run is accepted (after the resume check); a failure
  // from then on is recorded there.
  const status: { write?: (s: Partial<RunStatus>) => Promise<void> } = {};
  try {
    return await trainRun(c, opts, log, topology, initFrom, status);
  } catch (e) {
    await status.write?.({
      status: "failed",
      ended: Date.now() / 1000,
      error: (e as Error).message ?? String(e),
    });
    throw e;
  }
}

async function trainRun(
  c: TrainConfig,
  opts: TrainOptions,
  log: (line: string) => void,
  topology: Topology,
  initFrom: string | undefined,
  statusOut: { write?: (s: Partial<RunStatus>) => Promise<void> },
): Promise<TrainResult> {
  const workDir = c.work_dir;
  const loggers = c.report_to.filter((n) => n !== "none");
  const { plan } = await prepareAndPlan(c, {
    ...(opts.prepareWorkers !== undefined ? { workers: opts.prepareWorkers } : {}),
    // the nodes of one run share the cache: one prepares it, the others wait for it
    ...(topology.nnodes > 1 ? { waitForLock: true } : {}),
  });
  if (opts.resume) {
    // A checkpoint continues only the plan it was written for: refused here, before the model
    // loads and before this run's config or plan replace the ones on disk.
    const last = latestCheckpoint(workDir);
    const was = last ? checkpointMeta(last).plan_fingerprint : undefined;
    if (last && was !== undefined && was !== plan.fingerprint) {
      const again = (opts.command ?? "tessera train ...")
        .replace(/\s--resume\b/, "")
        .replace(/\s--work[-_]dir(=|\s+)\S+/, "");
      throw new UserError(
        `--resume: the plan changed since ${last} was written (its plan ${was}, this config's plan ${plan.fingerprint}); ` +
          "a checkpoint resumes only the plan it was made for. To go on from its weights with the new plan, start a new run:\n" +
          `  ${again} --init-from ${last} --work-dir ${workDir}-continued`,
      );
    }
  }
  let status: RunStatus = { status: "running", started: Date.now() / 1000 };
  const writeStatus = (more: Partial<RunStatus>) => {
    status = { ...status, ...more };
    return writeFileAtomic(join(workDir, "status.json"), `${JSON.stringify(status)}\n`);
  };
  await writeStatus({});
  statusOut.write = writeStatus;
  await writeFileAtomic(join(workDir, "config.yaml"), toYaml(c));
  const dir = planDir(c);
  await writePlan(plan, dir);
  const python = opts.python ?? (await ensureEngine({ venv: opts.venv, log, with: loggers }));
  const s = plan.stats;
  log(
    `plan ${plan.fingerprint.slice(0, 12)}: ${s.steps} steps · ${s.samples} samples · ` +
      (c.packing === "none"
        ? "no packing"
        : `packs of ≤ ${c.pack_max_length} tokens, fill ${(s.fill_ratio * 100).toFixed(1)}%`) +
      ` · world ${topology.nprocPerNode * topology.nnodes}`,
  );

  const evalPlan = await prepareAndPlanEval(c, {
    ...(opts.prepareWorkers !== undefined ? { workers: opts.prepareWorkers } : {}),
    ...(topology.nnodes > 1 ? { waitForLock: true } : {}),
  });
  if (evalPlan)
    log(
      `eval plan: ${evalPlan.plan.stats.samples} held-out samples in ${evalPlan.plan.totalSteps} step(s)` +
        (evalPlan.questions.length
          ? `, exact match on ${evalPlan.questions.length} question(s)`
          : "") +
        ` · every ${c.eval_interval || "-"} steps, at the start and the end`,
    );

  const metricsPath = join(workDir, "metrics.jsonl");
  // The skip list: samples whose media could not be loaded. A resumed run passes it back to
  // the engine, which masks them without loading them: the same pieces as the unbroken run.
  const skipPath = join(workDir, SKIP_LIST);
  const skips = new SkipList(skipPath, plan.fingerprint, Boolean(opts.resume));
  if (skips.size)
    log(`skip list: ${skips.size} sample(s) of earlier runs are masked (${skipPath})`);
  let dashboard: Dashboard | undefined;
  if (opts.dashboardPort !== undefined) {
    dashboard = await startDashboard({ workDir, port: opts.dashboardPort }).catch(() =>
      // the port is taken (another run's dashboard): any free port will do
      startDashboard({ workDir, port: 0 }),
    );
    log(`dashboard: ${dashboard.url}`);
  }
  const useBar = opts.progress ?? process.stderr.isTTY === true;
  const bar = useBar
    ? new cliProgress.SingleBar(
        {
          format:
            "train {bar} {value}/{total} · loss {loss} · lr {lr} · {tps} tok/s/gpu · eta {eta_formatted}",
          hideCursor: true,
          clearOnComplete: false,
          stream: process.stderr,
          etaBuffer: 20,
        },
        cliProgress.Presets.shades_classic,
      )
    : undefined;
  let barStarted = false;
  let metricsError: unknown;
  const lines = progressLines(c.print_interval);
  let last: EngineEvent | undefined;
  let lastEval: Record<string, unknown> | null = null;
  const append = (e: EngineEvent) => {
    try {
      appendFileSync(metricsPath, `${metricLine(e)}\n`);
    } catch (err) {
      // Reported when the run ends (this handler cannot throw into the event stream).
      if (!metricsError) log(`tessera: ${(namedWriteError(err, metricsPath) as Error).message}`);
      metricsError ??= namedWriteError(err, metricsPath);
    }
  };
  const onEvent = (e: EngineEvent) => {
    if (e.event === "metric" && (e.rank ?? 0) === 0) {
      append(e);
      last = e;
      if (bar) {
        const values = {
          loss: fmt(e.loss),
          lr: fmt(e.lr, 3),
          tps: Math.round(Number(e.tokens_per_s_per_gpu ?? 0)),
        };
        if (!barStarted) {
          bar.start(Number(e.total), Number(e.step), values);
          barStarted = true;
        } else bar.update(Number(e.step), values);
      } else {
        const line = lines(e);
        if (line) log(line);
      }
    } else if (e.event === "bad_sample") {
      const where = `dataset ${e.dataset}, ${e.file ? `${e.file}:${e.line}` : `line ${e.line}`}, ${e.path}: ${e.reason}`;
      if (c.bad_sample_policy === "skip" && skips.add(e)) {
        if (bar && barStarted) bar.stop();
        log(`skipped a sample at step ${e.step} (${skips.size} so far): ${where}`);
        barStarted = false;
      }
    } else if (e.event === "resume" && (e.rank ?? 0) === 0) {
      cutMetrics(metricsPath, Number(e.step));
    } else if (e.event === "eval" && (e.rank ?? 0) === 0) {
      append(e);
      lastEval = JSON.parse(metricLine(e));
      if (bar && barStarted) {
        bar.stop();
        barStarted = false;
      }
      const em =
        typeof e.eval_exact_match === "number"
          ? ` · exact match ${(e.eval_exact_match * 100).toFixed(1)}%`
          : "";
      log(`eval at step ${e.step}/${e.total}: held-out loss ${fmt(e.eval_loss)}${em}`);
    } else if (e.event === "log" && (e.rank ?? 0) === 0) {
      if (bar && barStarted) bar.stop();
      log(String(e.message));
      if (bar && barStarted) {
        barStarted = false;
      }
    }
    opts.onEvent?.(e);
  };

  const launch = await launchEngine(
    {
      kind: "train",
      model: c.model,
      cache_dir: c.cache_dir,
      plan_dir: dir,
      work_dir: workDir,
      config: c,
      resume: Boolean(opts.resume),
      init_from: initFrom ?? null,
      verify: Boolean(opts.verify),
      max_dynamic_patch: c.max_dynamic_patch,
      skip_samples: skips.entries(),
      ...(evalPlan ? { eval_cache_dir: evalPlan.cacheDir, eval_plan_dir: evalPlan.planDir } : {}),
    },
    {
      python,
      topology,
      jobPath: join(workDir, "job.json"),
      onEvent,
      onOutput: opts.onOutput,
      env: { ...opts.env },
    },
  );
  if (isDistributed(topology))
    log(
      `launched torchrun: ${topology.nprocPerNode} process(es) per node × ${topology.nnodes} node(s)`,
    );

  // Ctrl-C: the ranks checkpoint at the end of the step and stop; a second Ctrl-C ends them at once.
  let asked = 0;
  const onSignal = () => {
    asked++;
    if (asked === 1) {
      log(
        "\nstopping: a checkpoint is written at the end of this step (Ctrl-C again to abort without it)",
      );
      launch.stop();
    } else {
      for (const pid of [launch.child.pid, ...launch.pids()]) {
        try {
          if (pid) process.kill(pid, "SIGKILL");
        } catch {
          // gone
        }
      }
    }
  };
  const onAbort = () => launch.stop();
  if (opts.stopSignal?.aborted) onAbort();
  opts.stopSignal?.addEventListener("abort", onAbort, { once: true });
  if (opts.handleSignals) {
    process.on("SIGINT", onSignal);
    process.on("SIGTERM", onSignal);
  }
  let res: Record<string, unknown>;
  try {
    res = await launch.done;
  } catch (e) {
    // The status first: the dashboard sends it to its pages as it closes.
    await writeStatus({ status: "failed", ended: Date.now() / 1000, error: (e as Error).message });
    await dashboard?.close();
    throw e;
  } finally {
    if (bar && barStarted) bar.stop();
    opts.stopSignal?.removeEventListener("abort", onAbort);
    if (opts.handleSignals) {
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
    }
  }
  if (metricsError) {
    await writeStatus({
      status: "failed",
      ended: Date.now() / 1000,
      error: (metricsError as Error).message,
    });
    await dashboard?.close();
    throw metricsError;
  }
  const exported = (res.export as TrainResult["export"]) ?? null;
  await writeStatus({
    status: res.stopped ? "stopped" : "finished",
    ended: Date.now() / 1000,
    step: Number(res.steps_done),
    total: Number(res.total_steps),
    loss: typeof last?.loss === "number" ? last.loss : null,
    eval: lastEval,
    best: (res.best as Record<string, unknown>) ?? null,
    checkpoint: typeof res.checkpoint === "string" ? res.checkpoint : null,
    export: exported?.dir ?? null,
  });
  await dashboard?.close();
  return {
    workDir,
    startStep: Number(res.start_step ?? 0),
    stepsDone: Number(res.steps_done),
    totalSteps: Number(res.total_steps),
    losses: (res.losses as number[]) ?? [],
    checkpoint: typeof res.checkpoint === "string" ? res.checkpoint : null,
    export: exported,
    eval: (res.eval as Record<string, number> | null) ?? null,
    best: (res.best as TrainResult["best"]) ?? null,
    stopped: Boolean(res.stopped),
    metricsPath,
    trainableParameters:
      typeof res.trainable_parameters === "number" ? res.trainable_parameters : null,
    skipped: skips.size,
    skipListPath: skipPath,
  };
}

/** The skip list's file in the work dir. */
export const SKIP_LIST = "skipped.jsonl";

/**
 * WORK_DIR/skipped.jsonl: one line per (sample, media path) that could not be loaded, with its
 * dataset, file, line and reason, and the plan it belongs to. A fresh run starts it over; a
 * resumed one keeps the lines of its plan.
 */
export class SkipList {
  private readonly seen = new Map<string, { sample: number; path: string }>();
  constructor(
    private readonly path: string,
    private readonly plan: string,
    resume: boolean,
  ) {
    if (!resume) {
      if (existsSync(path)) writeFileAtomicSync(path, "");
      return;
    }
    if (!existsSync(path)) return;
    const lines = readFileSync(path, "utf8").split("\n");
    for (let i = 0; i < lines.length; i++) {
      if (!lines[i].trim()) continue;
      let x: { plan?: unknown; sample?: unknown; path?: unknown };
      try {
        x = JSON.parse(lines[i]);
      } catch (e) {
        throw new UserError(`${path}:${i + 1}: not a JSON line (${(e as Error).message})`);
      }
      if (typeof x.sample !== "number" || typeof x.path !== "string")
        throw new UserError(`${path}:${i + 1}: a skip needs "sample" (a number) and "path"`);
      if (x.plan === plan)
        this.seen.set(`${x.sample}\0${x.path}`, { sample: x.sample, path: x.path });
    }
  }
  get size(): number {
    return this.seen.size;
  }
  /** Records a bad_sample event; false when it was listed already. */
  add(e: EngineEvent): boolean {
    const sample = Number(e.sample);
    const path = String(e.path);
    const key = `${sample}\0${path}`;
    if (this.seen.has(key)) return false;
    this.seen.set(key, { sample, path });
    const line = {
      plan: this.plan,
      sample,
      path,
      dataset: e.dataset,
      file: e.file,
      line: e.line,
      step: e.step,
      reason: e.reason,
    };
    appendFileSync(this.path, `${JSON.stringify(line)}\n`);
    return true;
  }
  entries(): { sample: number; path: string }[] {
    return [...this.seen.values()];
  }
}
