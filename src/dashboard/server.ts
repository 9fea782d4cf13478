/**
 * The live dashboard: a local web page that follows one or several runs' work dirs. For each
 * it tails metrics.jsonl (one JSON object per logged step, and one per evaluation) and streams
 * each line to the page over Server-Sent Events, with the run's status.json (running,
 * finished, stopped, failed and why) as `status` events, so the page shows loss, evaluation,
 * throughput and packing as they happen, and a finished run replays from the start.
 */
import { createReadStream, existsSync, readFileSync, statSync, watch } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import { basename, join } from "node:path";
import { parse as parseYaml } from "yaml";
import { type LocalServer, listen } from "../util/http.ts";
import { PACKAGE_ROOT } from "../util/paths.ts";
import { DASHBOARD_HTML } from "./page.ts";

export interface DashboardOptions {
  /** One run's work dir; or give workDirs to overlay several. */
  workDir?: string;
  workDirs?: string[];
  host?: string;
  port?: number;
  /** How often to look for new lines when file watching misses a change. */
  pollMs?: number;
}

export type Dashboard = LocalServer;

const UPLOT = join(PACKAGE_ROOT, "node_modules", "uplot", "dist");

/** Follow a growing JSONL file from its start; calls onLine for each complete line. */
export function tailLines(path: string, onLine: (line: string) => void, pollMs = 500): () => void {
  let offset = 0;
  let pending = "";
  let reading = false;
  let again = false;
  const readMore = () => {
    if (reading) {
      again = true;
      return;
    }
    if (!existsSync(path)) return;
    const size = statSync(path).size;
    if (size < offset) offset = 0; // the file was replaced: start over
    if (size === offset) return;
    reading = true;
    const s = createReadStream(path, { start: offset, end: size - 1, encoding: "utf8" });
    s.on("data", (chunk) => {
      pending += chunk;
      const parts = pending.split("\n");
      pending = parts.pop() ?? "";
      for (const p of parts) if (p.trim()) onLine(p);
    });
    s.on("close", () => {
      offset = size;
      reading = false;
      if (again) {
        again = false;
        readMore();
      }
    });
  };
  readMore();
  const timer = setInterval(readMore, pollMs);
  let watcher: ReturnType<typeof watch> | undefined;
  try {
    watcher = watch(join(path, ".."), () => readMore());
  } catch {
    // the folder may not exist yet: polling covers it
  }
  return () => {
    clearInterval(timer);
    watcher?.close();
  };
}

/** The run's resolved config (written by `tessera train` as config.yaml), when present. */
function summary(workDir: string): Record<string, unknown> {
  const out: Record<string, unknown> = { workDir, name: basename(workDir) };
  const p = join(workDir, "config.yaml");
  if (existsSync(p)) {
    try {
      out.config = parseYaml(readFileSync(p, "utf8"));
    } catch {
      // a file being rewritten: the next request sees it
    }
  }
  const status = readStatus(workDir);
  if (status) out.status = JSON.parse(status);
  return out;
}

/** status.json as written (atomically) by `tessera train`, or undefined. */
function readStatus(workDir: string): string | undefined {
  try {
    const text = readFileSync(join(workDir, "status.json"), "utf8").trim();
    JSON.parse(text);
    return text;
  } catch {
    return undefined;
  }
}

export async function startDashboard(opts: DashboardOptions): Promise<Dashboard> {
  const dirs = opts.workDirs ?? (opts.workDir !== undefined ? [opts.workDir] : []);
  if (!dirs.length) throw new Error("startDashboard: no work dir");
  const stops = new Set<() => void>();
  /** Each open stream's "send the status if it changed", run once more just before closing. */
  const flushes = new Set<() => void>();
  const runOf = (url: URL): string | undefined => dirs[Number(url.searchParams.get("run") ?? 0)];
  const handle = (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? "/", "http://localhost");
    if (url.pathname === "/") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      res.end(DASHBOARD_HTML);
    } else if (url.pathname === "/uplot.js" || url.pathname === "/uplot.css") {
      const file = url.pathname.endsWith(".js") ? "uPlot.iife.min.js" : "uPlot.min.css";
      res.writeHead(200, { "content-type": file.endsWith(".js") ? "text/javascript" : "text/css" });
      createReadStream(join(UPLOT, file)).pipe(res);
    } else if (url.pathname === "/api/runs") {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify(dirs.map((d, i) => ({ run: i, workDir: d, name: basename(d) }))));
    } else if (url.pathname === "/api/summary" && runOf(url) !== undefined) {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify(summary(runOf(url)!)));
    } else if (url.pathname === "/api/metrics" && runOf(url) !== undefined) {
      const dir = runOf(url)!;
      res.writeHead(200, {
        "content-type": "text/event-stream",
        "cache-control": "no-cache",
        connection: "keep-alive",
      });
      res.write(": tessera metrics\n\n");
      const stopTail = tailLines(
        join(dir, "metrics.jsonl"),
        (line) => res.write(`data: ${line}\n\n`),
        opts.pollMs,
      );
      let sent: string | undefined;
      const flush = () => {
        const s = readStatus(dir);
        if (s !== undefined && s !== sent) {
          sent = s;
          res.write(`event: status\ndata: ${s}\n\n`);
        }
      };
      flush();
      const timer = setInterval(flush, opts.pollMs ?? 500);
      const stop = () => {
        clearInterval(timer);
        stopTail();
      };
      stops.add(stop);
      flushes.add(flush);
      req.on("close", () => {
        stop();
        stops.delete(stop);
        flushes.delete(flush);
      });
    } else {
      res.writeHead(404).end("not found");
    }
  };
  return listen(handle, {
    host: opts.host,
    port: opts.port,
    beforeClose: () => {
      // The page learns how the run ended (status.json is written before the server stops).
      for (const f of flushes) f();
      for (const s of stops) s();
    },
  });
}
