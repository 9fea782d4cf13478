/**
 * The live dashboard: a local web page that follows a run's work dir. It tails
 * metrics.jsonl (one JSON object per step) and streams each line to the page over
 * Server-Sent Events, so the page shows loss, throughput and packing as they happen, and
 * a finished run replays from the start.
 */
import { createReadStream, existsSync, readFileSync, statSync, watch } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import { join } from "node:path";
import { parse as parseYaml } from "yaml";
import { type LocalServer, listen } from "../util/http.ts";
import { PACKAGE_ROOT } from "../util/paths.ts";
import { DASHBOARD_HTML } from "./page.ts";

export interface DashboardOptions {
  workDir: string;
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
  const out: Record<string, unknown> = { workDir };
  const p = join(workDir, "config.yaml");
  if (existsSync(p)) {
    try {
      out.config = parseYaml(readFileSync(p, "utf8"));
    } catch {
      // a file being rewritten: the next request sees it
    }
  }
  return out;
}

export async function startDashboard(opts: DashboardOptions): Promise<Dashboard> {
  const metrics = join(opts.workDir, "metrics.jsonl");
  const stops = new Set<() => void>();
  const handle = (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? "/", "http://localhost");
    if (url.pathname === "/") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      res.end(DASHBOARD_HTML);
    } else if (url.pathname === "/uplot.js" || url.pathname === "/uplot.css") {
      const file = url.pathname.endsWith(".js") ? "uPlot.iife.min.js" : "uPlot.min.css";
      res.writeHead(200, { "content-type": file.endsWith(".js") ? "text/javascript" : "text/css" });
      createReadStream(join(UPLOT, file)).pipe(res);
    } else if (url.pathname === "/api/summary") {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify(summary(opts.workDir)));
    } else if (url.pathname === "/api/metrics") {
      res.writeHead(200, {
        "content-type": "text/event-stream",
        "cache-control": "no-cache",
        connection: "keep-alive",
      });
      res.write(": tessera metrics\n\n");
      const stop = tailLines(metrics, (line) => res.write(`data: ${line}\n\n`), opts.pollMs);
      stops.add(stop);
      req.on("close", () => {
        stop();
        stops.delete(stop);
      });
    } else {
      res.writeHead(404).end("not found");
    }
  };
  return listen(handle, {
    host: opts.host,
    port: opts.port,
    beforeClose: () => {
      for (const s of stops) s();
    },
  });
}
