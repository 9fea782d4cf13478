import { appendFileSync, mkdtempSync, writeFileSync } from "node:fs";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { type Dashboard, startDashboard } from "../../src/dashboard/server.ts";

let dash: Dashboard | undefined;
afterEach(async () => {
  await dash?.close();
  dash = undefined;
});

/** Read Server-Sent Events until `want` data lines have arrived. */
function readEvents(url: string, want: number, onOpen: () => void): Promise<unknown[]> {
  return new Promise((resolve, reject) => {
    const got: unknown[] = [];
    const req = request(url, (res) => {
      expect(res.headers["content-type"]).toBe("text/event-stream");
      onOpen();
      let buf = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => {
        buf += chunk;
        let i = buf.indexOf("\n\n");
        while (i >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          for (const line of block.split("\n"))
            if (line.startsWith("data: ")) got.push(JSON.parse(line.slice(6)));
          i = buf.indexOf("\n\n");
        }
        if (got.length >= want) {
          req.destroy();
          resolve(got);
        }
      });
    });
    req.on("error", (e) => (got.length >= want ? undefined : reject(e)));
    req.end();
  });
}

describe("dashboard", () => {
  it("serves the page with its chart library", async () => {
    const dir = mkdtempSync(join(tmpdir(), "tessera-dash-"));
    dash = await startDashboard({ workDir: dir });
    const page = await (await fetch(dash.url)).text();
    expect(page).toContain('<script src="/uplot.js">');
    const js = await fetch(`${dash.url}uplot.js`);
    expect(js.status).toBe(200);
    expect((await js.text()).length).toBeGreaterThan(10_000);
    expect((await fetch(`${dash.url}nope`)).status).toBe(404);
  });

  it("replays existing metrics and streams new lines as the run writes them, in order", async () => {
    const dir = mkdtempSync(join(tmpdir(), "tessera-dash-"));
    const metrics = join(dir, "metrics.jsonl");
    writeFileSync(
      metrics,
      `${JSON.stringify({ step: 1, loss: 2.5 })}\n${JSON.stringify({ step: 2, loss: 2.1 })}\n`,
    );
    dash = await startDashboard({ workDir: dir, pollMs: 50 });
    const events = await readEvents(`${dash.url}api/metrics`, 5, () => {
      setTimeout(() => {
        appendFileSync(metrics, `${JSON.stringify({ step: 3, loss: 1.9 })}\n{"step": 4, "lo`);
        setTimeout(
          () => appendFileSync(metrics, `ss": 1.7}\n${JSON.stringify({ step: 5, loss: 1.5 })}\n`),
          100,
        );
      }, 100);
    });
    expect(events.map((e) => (e as { step: number }).step)).toEqual([1, 2, 3, 4, 5]);
    expect((events[3] as { loss: number }).loss).toBe(1.7);
  });

  it("summarises the run's resolved config when present", async () => {
    const dir = mkdtempSync(join(tmpdir(), "tessera-dash-"));
    writeFileSync(join(dir, "config.yaml"), "lr: 0.0001\nseed: 7\n");
    dash = await startDashboard({ workDir: dir });
    const s = await (await fetch(`${dash.url}api/summary`)).json();
    expect(s.config).toEqual({ lr: 1e-4, seed: 7 });
  });
});
