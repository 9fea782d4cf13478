/** The dashboard's single page: charts built from whatever numeric fields the metrics carry. */
export const DASHBOARD_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>tessera</title>
<link rel="stylesheet" href="/uplot.css">
<script src="/uplot.js"></script>
<style>
  body { font: 14px system-ui, sans-serif; margin: 20px; background: #fafafa; color: #222; }
  h1 { font-size: 20px; margin: 0 0 4px; }
  #status { color: #666; margin-bottom: 16px; }
  #cards { display: flex; gap: 12px; flex-wrap: wrap; margin-bottom: 16px; }
  .card { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 8px 14px; min-width: 120px; }
  .card b { display: block; font-size: 20px; }
  #charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); gap: 12px; }
  .chart { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 8px; }
  .chart h2 { font-size: 14px; margin: 0 0 4px; }
</style>
</head>
<body>
<h1>tessera</h1>
<div id="status">waiting for metrics…</div>
<div id="cards"></div>
<div id="charts"></div>
<script>
// Charts grouped by meaning; any other numeric field gets a chart of its own.
const GROUPS = [
  ["loss", ["loss", "eval_loss"]],
  ["learning rate", ["lr"]],
  ["throughput (tokens/s per GPU)", ["tokens_per_s_per_gpu", "tokens_per_s"]],
  ["packing fill", ["pack_fill"]],
  ["time per step (s)", ["step_time", "data_wait"]],
  ["gradient norm", ["grad_norm"]],
  ["peak memory (GiB)", ["peak_memory_gib"]],
  ["samples/s", ["samples_per_s"]],
  ["tokens per step", ["tokens"]],
  // preference runs (--method dpo|mpo)
  ["rewards", ["rewards_chosen", "rewards_rejected", "reward_margin"]],
  ["reward accuracy", ["reward_accuracy"]],
  ["preference loss terms", ["loss_sigmoid", "loss_bco_pair", "loss_ipo", "loss_hinge", "nll_loss"]],
];
const SKIP = new Set(["step", "total", "time", "rank", "epoch", "event", "peak_memory"]);
const CARDS = ["step", "loss", "lr", "tokens_per_s_per_gpu", "pack_fill"];
const rows = [];
const charts = new Map();

function seriesFor(keys) {
  const groups = [];
  const used = new Set();
  for (const [title, names] of GROUPS) {
    const present = names.filter((n) => keys.has(n));
    present.forEach((n) => used.add(n));
    if (present.length) groups.push([title, present]);
  }
  for (const k of keys) if (!used.has(k)) groups.push([k, [k]]);
  return groups;
}

// Small values (learning rates) in exponent form, the rest with 3-4 significant digits.
function fmt(v) {
  if (v == null) return "--";
  return v !== 0 && Math.abs(v) < 0.01 ? v.toExponential(1) : String(+v.toPrecision(4));
}
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];
function render() {
  const keys = new Set();
  for (const r of rows) for (const [k, v] of Object.entries(r)) if (typeof v === "number" && !SKIP.has(k)) keys.add(k);
  const xs = rows.map((r, i) => r.step ?? i + 1);
  for (const [title, names] of seriesFor(keys)) {
    const data = [xs, ...names.map((n) => rows.map((r) => (typeof r[n] === "number" ? r[n] : null)))];
    let c = charts.get(title);
    if (!c || c.names.join() !== names.join()) {
      if (c) c.el.remove();
      const el = document.createElement("div");
      el.className = "chart";
      el.innerHTML = "<h2></h2>";
      el.querySelector("h2").textContent = title;
      document.getElementById("charts").appendChild(el);
      const plot = new uPlot({ width: Math.max(300, el.clientWidth - 16), height: 220, scales: { x: { time: false } },
        axes: [{}, { size: 60, values: (u, vals) => vals.map(fmt) }],
        series: [{ label: "step" }, ...names.map((n, i) => ({ label: n, stroke: COLORS[i % COLORS.length], width: 1.5, value: (u, v) => fmt(v) }))] }, data, el);
      c = { el, plot, names };
      charts.set(title, c);
    } else c.plot.setData(data);
  }
  const last = rows[rows.length - 1] || {};
  // Values are set as text, never as markup: a metric value cannot inject a script.
  const cards = document.getElementById("cards");
  cards.replaceChildren(...CARDS.filter((k) => last[k] !== undefined).map((k) => {
    const card = document.createElement("div");
    card.className = "card";
    const b = document.createElement("b");
    b.textContent = typeof last[k] === "number" ? String(+last[k].toPrecision(4)) : String(last[k]);
    card.append(k, b);
    return card;
  }));
}

let scheduled = false;
const es = new EventSource("/api/metrics");
es.onmessage = (m) => {
  let r;
  try { r = JSON.parse(m.data); } catch { return; }
  if (typeof r.peak_memory === "number") r.peak_memory_gib = r.peak_memory / 2 ** 30; // bytes on the wire
  // A resumed run logs again from its checkpoint's step: the new line replaces the old ones.
  if (typeof r.step === "number") while (rows.length && rows[rows.length - 1].step >= r.step) rows.pop();
  rows.push(r);
  document.getElementById("status").textContent = rows.length + " steps logged";
  if (!scheduled) { scheduled = true; requestAnimationFrame(() => { scheduled = false; render(); }); }
};
es.onerror = () => { document.getElementById("status").textContent = "disconnected (the run may have ended); " + rows.length + " steps logged"; };
fetch("/api/summary").then((r) => r.json()).then((s) => {
  if (s.workDir) document.title = "tessera: " + s.workDir;
  const c = s.config;
  if (c) {
    const parts = [["model", c.model], ["packing", c.packing], ["pack_max_length", c.pack_max_length],
      ["sampler", c.sampler], ["global batch", c.global_batch_size], ["lr", c.lr]].filter(([, v]) => v !== undefined);
    const el = document.createElement("div");
    el.id = "config";
    el.style.cssText = "color:#444;margin:-8px 0 14px";
    el.textContent = parts.map(([k, v]) => k + " " + v).join(" · ");
    document.getElementById("status").after(el);
  }
});
</script>
</body>
</html>
`;
