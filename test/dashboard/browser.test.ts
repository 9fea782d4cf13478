/**
 * The dashboard in a real browser: headless Chromium (Debian's package; .ci/run installs it)
 * driven by playwright-core. Screenshots go to test-artifacts/.
 */
import { execFileSync } from "node:child_process";
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Browser, chromium, type Page } from "playwright-core";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { type Dashboard, startDashboard } from "../../src/dashboard/server.ts";
import { PACKAGE_ROOT } from "../../src/util/paths.ts";

const ARTIFACTS = join(PACKAGE_ROOT, "test-artifacts");

/** Chromium from the system (CHROMIUM_PATH, or the usual names on PATH); a clear error otherwise. */
function findChromium(): string {
  if (process.env.CHROMIUM_PATH) return process.env.CHROMIUM_PATH;
  for (const name of ["chromium", "chromium-browser", "google-chrome"]) {
    try {
      return execFileSync("sh", ["-c", `command -v ${name}`], { encoding: "utf8" }).trim();
    } catch {
      // next name
    }
  }
  throw new Error(
    "the dashboard's browser tests need Chromium: install it (apt-get install -y chromium), or set CHROMIUM_PATH to its executable",
  );
}

let browser: Browser;
let dash: Dashboard | undefined;
beforeAll(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  browser = await chromium.launch({ executablePath: findChromium(), args: ["--no-sandbox"] });
}, 60_000);
afterAll(async () => {
  await browser?.close();
});
afterEach(async () => {
  await dash?.close();
  dash = undefined;
});

function line(step: number, loss: number, extra: Record<string, unknown> = {}): string {
  return `${JSON.stringify({
    step,
    total: 20,
    loss,
    lr: 1e-3,
    tokens_per_s_per_gpu: 1234.5,
    pack_fill: 0.5957,
    time: 1000 + step * 2,
    ...extra,
  })}\n`;
}

function runDir(lines: string[]): string {
  const dir = mkdtempSync(join(tmpdir(), "tessera-dash-browser-"));
  writeFileSync(join(dir, "metrics.jsonl"), lines.join(""));
  return dir;
}

async function open(dirs: string[]): Promise<Page> {
  dash = await startDashboard({ workDirs: dirs, pollMs: 50 });
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(dash.url);
  await page.waitForFunction(() => document.querySelector('[data-chart="loss"] canvas') !== null);
  expect(errors).toEqual([]);
  return page;
}

/** Points of the loss chart's series (its x values), and the canvas as drawn. */
const lossPoints = (page: Page) =>
  page.evaluate(
    () =>
      (
        window as unknown as { __tessera: { charts: Map<string, { plot: { data: number[][] } }> } }
      ).__tessera.charts.get("loss")?.plot.data[0].length ?? 0,
  );
const lossCanvas = (page: Page) =>
  page.$eval('[data-chart="loss"] canvas', (c) => (c as HTMLCanvasElement).toDataURL());

/** The page's text outside its script: controls, runs and charts. */
const shownText = (page: Page) =>
  page.$$eval("#controls, #runs, #charts", (els) => els.map((e) => e.textContent).join("\n"));

async function setSmoothingZero(page: Page): Promise<void> {
  await page.$eval("#smoothing", (e) => {
    const input = e as HTMLInputElement;
    input.value = "0";
    input.dispatchEvent(new Event("input"));
  });
  await page.waitForFunction(
    () => document.getElementById("smoothing-value")?.textContent === "0.00",
  );
  await page.waitForTimeout(100);
}

describe("dashboard in a browser", () => {
  it("draws more points as lines are appended, with plain names and units", async () => {
    const dir = runDir([line(1, 3.0), line(2, 2.6), line(3, 2.4)]);
    const page = await open([dir]);
    await page.waitForFunction(() => document.body.textContent?.includes("step 3 of 20"));
    expect(await lossPoints(page)).toBe(3);
    const before = await lossCanvas(page);
    appendFileSync(join(dir, "metrics.jsonl"), line(4, 2.2) + line(5, 2.0));
    await page.waitForFunction(() => document.body.textContent?.includes("step 5 of 20"));
    await page.waitForFunction(
      () =>
        (
          window as unknown as {
            __tessera: { charts: Map<string, { plot: { data: number[][] } }> };
          }
        ).__tessera.charts.get("loss")?.plot.data[0].length === 5,
    );
    expect(await lossCanvas(page)).not.toBe(before);
    const text = await shownText(page);
    // Plain names with units; no raw keys; the fill as a percent; the ETA from the pace.
    expect(text).toContain("Throughput");
    expect(text).toContain("tokens/s per GPU");
    expect(text).toContain("59.6 %");
    expect(text).not.toContain("tokens_per_s_per_gpu");
    expect(text).not.toContain("pack_fill");
    expect(text).toMatch(/ETA 0:30/); // 2 s per step, 15 steps left
    // The legend shows the latest values without hovering.
    expect(await page.textContent('[data-chart="loss"] .legend')).toMatch(
      /Training loss\s*2 \(smoothed 2\.\d+\)/,
    );
    await page.screenshot({ path: join(ARTIFACTS, "dashboard-live.png"), fullPage: true });
  });

  it("smoothing and log scale change the drawn path", async () => {
    const losses = [5, 1, 4, 0.5, 3, 0.3, 2, 0.2, 1.5, 0.1];
    const page = await open([runDir(losses.map((l, i) => line(i + 1, l)))]);
    await page.waitForFunction(() => document.body.textContent?.includes("step 10 of 20"));
    const drawn = () =>
      page.evaluate(() =>
        (
          window as unknown as {
            __tessera: { charts: Map<string, { plot: { data: number[][] } }> };
          }
        ).__tessera.charts
          .get("loss")
          ?.plot.data[1].map((v) => +v.toFixed(4)),
      );
    const setSmoothing = (v: number) =>
      page.$eval(
        "#smoothing",
        (e, value) => {
          const input = e as HTMLInputElement;
          input.value = String(value);
          input.dispatchEvent(new Event("input"));
        },
        v,
      );
    await setSmoothing(0);
    await page.waitForFunction(
      () => document.getElementById("smoothing-value")?.textContent === "0.00",
    );
    await page.waitForTimeout(100);
    expect(await drawn()).toEqual(losses);
    const raw = await lossCanvas(page);
    await setSmoothing(0.9);
    await page.waitForTimeout(100);
    const smoothed = (await drawn()) ?? [];
    expect(smoothed[0]).toBe(5);
    // Smoothing flattens the zigzag: neighbours differ far less than in the raw values.
    expect(Math.abs(smoothed[9] - smoothed[8])).toBeLessThan(0.5);
    const smoothCanvas = await lossCanvas(page);
    expect(smoothCanvas).not.toBe(raw);
    await page.screenshot({ path: join(ARTIFACTS, "dashboard-smoothed.png"), fullPage: true });

    await page.check("#logscale");
    await page.waitForFunction(
      () =>
        (
          window as unknown as {
            __tessera: { charts: Map<string, { plot: { scales: { y: { distr: number } } } }> };
          }
        ).__tessera.charts.get("loss")?.plot.scales.y.distr === 3,
    );
    expect(await lossCanvas(page)).not.toBe(smoothCanvas);
    await page.screenshot({ path: join(ARTIFACTS, "dashboard-log.png"), fullPage: true });
  });

  it("overlays two runs, with evaluation curves, as two series each named by its run", async () => {
    const a = runDir([
      line(1, 3.0),
      `${JSON.stringify({ event: "eval", step: 0, total: 20, eval_loss: 3.2 })}\n`,
      line(2, 2.5),
      `${JSON.stringify({ event: "eval", step: 2, total: 20, eval_loss: 2.8 })}\n`,
    ]);
    const b = runDir([line(1, 2.0), line(2, 1.5), line(3, 1.2)]);
    const page = await open([a, b]);
    await page.waitForFunction(() => document.querySelectorAll(".run").length === 2);
    await page.waitForFunction(
      () => document.querySelector('[data-chart="loss"] .legend')?.children.length === 3,
    );
    const legend = (await page.textContent('[data-chart="loss"] .legend')) ?? "";
    const nameA = a.split("/").pop();
    const nameB = b.split("/").pop();
    expect(legend).toContain(`${nameA}: Training loss`);
    expect(legend).toContain(`${nameA}: Held-out loss`);
    expect(legend).toContain(`${nameB}: Training loss`);
    // x: the union of both runs' steps, the evaluation at step 0 included
    expect(
      await page.evaluate(
        () =>
          (
            window as unknown as {
              __tessera: { charts: Map<string, { plot: { data: number[][] } }> };
            }
          ).__tessera.charts.get("loss")?.plot.data[0],
      ),
    ).toEqual([0, 1, 2, 3]);
    await page.screenshot({ path: join(ARTIFACTS, "dashboard-two-runs.png"), fullPage: true });
  });

  it("a finished run reads 'finished' with its final loss; a failed one shows its error", async () => {
    const done = runDir([line(1, 3.0), line(2, 2.0), line(3, 1.2346)]);
    writeFileSync(
      join(done, "status.json"),
      JSON.stringify({
        status: "finished",
        started: 1000,
        ended: 1070,
        step: 3,
        total: 3,
        loss: 1.2346,
      }),
    );
    const failed = runDir([line(1, 3.0)]);
    writeFileSync(
      join(failed, "status.json"),
      JSON.stringify({
        status: "failed",
        started: 1000,
        ended: 1010,
        error: "<b>CUDA out of memory</b>",
      }),
    );
    const page = await open([done, failed]);
    await page.waitForFunction(() => document.querySelectorAll(".badge.finished").length === 1);
    const first = (await page.textContent(".run:nth-child(1)")) ?? "";
    expect(first).toContain("finished");
    expect(first).toContain("Final training loss");
    expect(first).toContain("1.235");
    expect(first).toContain("took 1:10");
    await page.waitForFunction(() => document.querySelector(".run .error") !== null);
    // The error is text: its markup is shown, not interpreted.
    expect(await page.textContent(".run .error")).toBe("<b>CUDA out of memory</b>");
    expect(await page.$(".run .error b")).toBeNull();

    // The server stops (the run ended): the page keeps the figures and the status.
    await dash?.close();
    dash = undefined;
    await page.waitForTimeout(300);
    expect(await page.textContent(".run:nth-child(1) .badge")).toBe("finished");
    expect(await shownText(page)).not.toContain("disconnected");
    await page.screenshot({ path: join(ARTIFACTS, "dashboard-finished.png"), fullPage: true });
  });

  it("shows names and values with markup as text, and plots each step once after a resume", async () => {
    // A work dir whose name is markup: shown as text, never run.
    const hostile = mkdtempSync(join(tmpdir(), "<img src=x onerror=window.pwned=1>"));
    writeFileSync(
      join(hostile, "metrics.jsonl"),
      [1, 2, 3, 4].map((s) => line(s, 10 - s)).join("") +
        // resumed from the checkpoint at step 2: steps 3 and 4 come again with new values
        [3, 4, 5].map((s) => line(s, 20 - s)).join(""),
    );
    const page = await open([hostile]);
    await page.waitForFunction(() => document.body.textContent?.includes("step 5 of 20"));
    expect(await page.textContent(".run-name")).toContain("<img src=x");
    expect(await page.$(".run img")).toBeNull();
    expect(
      await page.evaluate(() => (window as unknown as { pwned?: number }).pwned),
    ).toBeUndefined();
    await setSmoothingZero(page);
    const data = await page.evaluate(
      () =>
        (
          window as unknown as {
            __tessera: { charts: Map<string, { plot: { data: number[][] } }> };
          }
        ).__tessera.charts.get("loss")?.plot.data,
    );
    expect(data?.[0]).toEqual([1, 2, 3, 4, 5]);
    expect(data?.[1]).toEqual([9, 8, 17, 16, 15]);
  });

  it("follows a run's status as it changes from running to finished", async () => {
    const dir = runDir([line(1, 3.0)]);
    writeFileSync(join(dir, "status.json"), JSON.stringify({ status: "running", started: 1000 }));
    const page = await open([dir]);
    await page.waitForFunction(() => document.querySelector(".badge.running") !== null);
    appendFileSync(join(dir, "metrics.jsonl"), line(2, 0.75));
    writeFileSync(
      join(dir, "status.json"),
      JSON.stringify({
        status: "finished",
        started: 1000,
        ended: 1004,
        step: 2,
        total: 2,
        loss: 0.75,
      }),
    );
    await page.waitForFunction(() => document.querySelector(".badge.finished") !== null);
    expect((await page.textContent(".run")) ?? "").toContain("0.75");
    expect(existsSync(ARTIFACTS)).toBe(true);
  });
});
