/**
 * The TypeScript side of the engine protocol (docs/protocol.md): write a job file, start
 * `python -m tessera_engine JOB`, read JSON-line events from a dedicated pipe (fd 3), and
 * settle on the engine's `done` and a clean exit, or fail with its last words.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import type { Readable } from "node:stream";
import { ENGINE_DIR } from "../util/paths.ts";

export const PROTOCOL_VERSION = 1;

export interface EngineEvent {
  event: "hello" | "log" | "progress" | "metric" | "result" | "error" | "done" | string;
  rank?: number;
  time?: number;
  [key: string]: unknown;
}

export interface Job {
  kind: string;
  [key: string]: unknown;
}

export interface RunEngineOptions {
  python: string;
  onEvent?: (e: EngineEvent) => void;
  /** Lines the engine prints on stdout/stderr (logs, tracebacks). */
  onOutput?: (line: string) => void;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Where to write the job file; a temporary folder by default. */
  jobPath?: string;
  signal?: AbortSignal;
  /** Command to run instead of `python -m tessera_engine` (e.g. torchrun); JOB path appended. */
  command?: string[];
  /** Give the engine a stdin pipe (`child.stdin`) for requests to a serving job. */
  stdin?: boolean;
}

export class EngineError extends Error {
  constructor(
    message: string,
    readonly exitCode: number | null,
    readonly signal: NodeJS.Signals | null,
    readonly lastLines: string[],
    readonly engineError?: EngineEvent,
  ) {
    super(message);
    this.name = "EngineError";
  }
}

export interface EngineRun {
  child: ChildProcess;
  /** Resolves with the `result` event's fields; rejects with EngineError. */
  done: Promise<Record<string, unknown>>;
}

const TAIL = 40;

export async function startEngine(job: Job, opts: RunEngineOptions): Promise<EngineRun> {
  let jobPath = opts.jobPath;
  let tmp: string | undefined;
  if (!jobPath) {
    tmp = await mkdtemp(join(tmpdir(), "tessera-job-"));
    jobPath = join(tmp, "job.json");
  }
  await writeFile(jobPath, JSON.stringify({ protocol: PROTOCOL_VERSION, ...job }, null, 2));
  const argv = opts.command
    ? [...opts.command, jobPath]
    : [opts.python, "-m", "tessera_engine", jobPath];
  const child = spawn(argv[0], argv.slice(1), {
    cwd: opts.cwd,
    stdio: [opts.stdin ? "pipe" : "ignore", "pipe", "pipe", "pipe"],
    env: {
      ...process.env,
      ...opts.env,
      TESSERA_EVENTS: "fd:3",
      PYTHONUNBUFFERED: "1",
      PYTHONPATH: [ENGINE_DIR, process.env.PYTHONPATH].filter(Boolean).join(":"),
    },
    signal: opts.signal,
  });
  const done = superviseEngine(child, child.stdio[3] as Readable, opts).finally(() =>
    tmp ? rm(tmp, { recursive: true, force: true }) : undefined,
  );
  return { child, done };
}

/** Start the engine on a job and wait for its result. */
export async function runEngine(
  job: Job,
  opts: RunEngineOptions,
): Promise<Record<string, unknown>> {
  return (await startEngine(job, opts)).done;
}

/** Follow one engine process: its events, its output, its exit. */
export function superviseEngine(
  child: ChildProcess,
  events: Readable,
  opts: Pick<RunEngineOptions, "onEvent" | "onOutput">,
): Promise<Record<string, unknown>> {
  const lastLines: string[] = [];
  const keep = (line: string) => {
    lastLines.push(line);
    if (lastLines.length > TAIL) lastLines.shift();
    opts.onOutput?.(line);
  };
  for (const s of [child.stdout, child.stderr])
    if (s) createInterface({ input: s }).on("line", keep);

  let result: Record<string, unknown> | undefined;
  let sawDone = false;
  let engineError: EngineEvent | undefined;
  let badLine: string | undefined;
  const eventsClosed = new Promise<void>((res) => {
    const rl = createInterface({ input: events });
    rl.on("line", (line) => {
      if (!line.trim()) return;
      let e: EngineEvent;
      try {
        e = JSON.parse(line);
      } catch {
        badLine ??= line;
        return;
      }
      if (e.event === "result") {
        const { event: _e, rank: _r, time: _t, ...fields } = e;
        result = fields;
      } else if (e.event === "done") sawDone = true;
      else if (e.event === "error") engineError = e;
      opts.onEvent?.(e);
    });
    rl.on("close", res);
  });

  return new Promise((resolvePromise, reject) => {
    child.on("error", (err) =>
      reject(new EngineError(`could not start the engine: ${err.message}`, null, null, lastLines)),
    );
    child.on("close", async (code, signal) => {
      await eventsClosed;
      const tail = lastLines.length
        ? `\nlast engine output:\n${lastLines.map((l) => `  ${l}`).join("\n")}`
        : "";
      if (code === 0 && sawDone) return resolvePromise(result ?? {});
      let why: string;
      // An error about the user's files names the file: shown alone, without the traceback.
      if (engineError?.user === true)
        return reject(
          new EngineError(String(engineError.message), code, signal, lastLines, engineError),
        );
      if (engineError) why = `the engine failed: ${engineError.message}`;
      else if (signal) why = `the engine was killed by ${signal}`;
      else if (code === 0) why = "the engine exited without reporting done";
      else why = `the engine exited with code ${code}`;
      if (badLine)
        why += ` (it also wrote a line that is not JSON on the event pipe: ${badLine.slice(0, 200)})`;
      reject(new EngineError(why + tail, code, signal, lastLines, engineError));
    });
  });
}
