/**
 * The dashboard page's own script, run against a small stand-in for the browser's DOM: what a
 * metric line can make the page do.
 */
import { runInNewContext } from "node:vm";
import { describe, expect, it } from "vitest";
import { DASHBOARD_HTML } from "../../src/dashboard/page.ts";

/** A stand-in element: records markup writes, keeps text and children. */
class El {
  children: El[] = [];
  className = "";
  style: Record<string, string> = {};
  clientWidth = 600;
  text = "";
  constructor(
    readonly tag: string,
    readonly markup: string[],
  ) {}
  set innerHTML(v: string) {
    this.markup.push(v);
    this.children = [];
    this.text = "";
    // The only markup the page may write itself is an empty heading to fill as text.
    if (v === "<h2></h2>") this.children.push(new El("h2", this.markup));
  }
  set textContent(v: string) {
    this.text = v;
    this.children = [];
  }
  get textContent(): string {
    return this.text + this.children.map((c) => c.textContent).join("");
  }
  querySelector(tag: string): El | undefined {
    return this.children.find((c) => c.tag === tag);
  }
  appendChild(c: El): El {
    this.children.push(c);
    return c;
  }
  append(...cs: (El | string)[]): void {
    for (const c of cs) {
      if (typeof c === "string") {
        const t = new El("#text", this.markup);
        t.text = c;
        this.children.push(t);
      } else this.children.push(c);
    }
  }
  replaceChildren(...cs: El[]): void {
    this.children = [];
    this.text = "";
    this.append(...cs);
  }
  after(): void {}
  remove(): void {}
}

function loadPage() {
  const markup: string[] = [];
  const byId = new Map<string, El>();
  const plots: { data: number[][] }[] = [];
  let source: { onmessage?: (m: { data: string }) => void } = {};
  const script = [...DASHBOARD_HTML.matchAll(/<script>([\s\S]*?)<\/script>/g)].map((m) => m[1]);
  const sandbox = {
    document: {
      title: "",
      getElementById(id: string) {
        if (!byId.has(id)) byId.set(id, new El("div", markup));
        return byId.get(id);
      },
      createElement: (tag: string) => new El(tag, markup),
    },
    uPlot: class {
      constructor(_o: unknown, data: number[][]) {
        plots.push({ data });
      }
      setData(data: number[][]) {
        plots.push({ data });
      }
    },
    EventSource: class {
      constructor() {
        // biome-ignore lint/suspicious/noExplicitAny: the page sets its handlers on it
        source = this as any;
      }
    },
    requestAnimationFrame: (f: () => void) => f(),
    fetch: () => new Promise(() => {}),
  };
  runInNewContext(script.join("\n"), sandbox);
  return {
    markup,
    byId,
    plots,
    send: (r: unknown) => source.onmessage?.({ data: JSON.stringify(r) }),
  };
}

describe("dashboard page", () => {
  it("shows a metric value with markup as text, never as markup", () => {
    const page = loadPage();
    const hostile = '<img src=x onerror="globalThis.pwned=1">';
    page.send({ step: 1, loss: hostile, lr: 0.001 });
    expect(page.markup.some((m) => m.includes("<img"))).toBe(false);
    expect(page.byId.get("cards")?.textContent).toContain(hostile);
  });

  it("plots each step once when a resumed run logs steps again", () => {
    const page = loadPage();
    for (const step of [1, 2, 3, 4]) page.send({ step, loss: 10 - step });
    // resumed from the checkpoint at step 2: steps 3 and 4 come again with new values
    for (const step of [3, 4, 5]) page.send({ step, loss: 20 - step });
    const last = page.plots[page.plots.length - 1].data;
    expect(last[0]).toEqual([1, 2, 3, 4, 5]);
    expect(last[1]).toEqual([9, 8, 17, 16, 15]);
  });
});
