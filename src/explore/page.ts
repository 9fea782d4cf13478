/** The explorer's page: plain HTML, CSS and JavaScript, no build step. */
export const EXPLORER_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>tessera explorer</title>
<style>
  body { font: 14px/1.45 system-ui, sans-serif; margin: 0; color: #1d2430; background: #f6f7f9; }
  header { display: flex; gap: 12px; align-items: center; padding: 10px 16px; background: #1d2430; color: #fff; flex-wrap: wrap; }
  header h1 { font-size: 16px; margin: 0 12px 0 0; }
  header select, header input, header button { font: inherit; padding: 3px 8px; }
  header input { width: 7em; }
  header .where { color: #b8c2d3; }
  main { padding: 16px; max-width: 1200px; }
  .counts { margin: 0 0 12px; color: #3b4658; }
  .counts b { color: #1d2430; }
  .images { display: flex; flex-wrap: wrap; gap: 16px; margin-bottom: 16px; }
  figure { margin: 0; background: #fff; padding: 8px; border-radius: 6px; box-shadow: 0 1px 3px #0002; }
  figcaption { font-size: 12px; color: #3b4658; margin-top: 6px; max-width: 360px; }
  .tiled { position: relative; display: inline-block; }
  .tiled img, figure video { display: block; max-width: 360px; max-height: 300px; }
  .grid { position: absolute; inset: 0; display: grid; pointer-events: none; }
  .grid div { border: 1px solid #ff3b6bcc; box-shadow: inset 0 0 0 1px #fff6; }
  .text { white-space: pre-wrap; font: 13px/1.5 ui-monospace, monospace; background: #fff; padding: 12px; border-radius: 6px; box-shadow: 0 1px 3px #0002; }
  .text:empty { display: none; }
  .learned { background: #c9f2cf; color: #0b5d1e; }
  .image { background: #d7ecfb; color: #0b4a78; border-radius: 3px; padding: 0 2px; }
  .issues { background: #fff1f0; border: 1px solid #f3b5b0; padding: 8px 12px; border-radius: 6px; margin-bottom: 12px; }
  .issues .warning { color: #8a5a00; }
  .issues code { font-weight: 600; }
  .legend { font-size: 12px; color: #3b4658; margin-top: 8px; }
</style>
</head>
<body>
<header>
  <h1>tessera explorer</h1>
  <select id="dataset"></select>
  <button id="prev" title="previous (←)">◀</button>
  <input id="index" type="number" min="0" value="0">
  <button id="next" title="next (→)">▶</button>
  <span class="where" id="where"></span>
</header>
<main>
  <div id="issues"></div>
  <p class="counts" id="counts"></p>
  <div class="images" id="images"></div>
  <div class="text" id="text"></div>
  <p class="legend"><span class="learned">learned</span> · <span class="image">image tokens</span> · the rest is context (labels −100)</p>
</main>
<script>
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
let state = { dataset: "", index: 0, of: 0 };

async function init() {
  const info = await (await fetch("/api/datasets")).json();
  for (const d of info.datasets) $("dataset").add(new Option(d.name + "  (" + d.annotation + ")", d.name));
  const q = new URLSearchParams(location.hash.slice(1));
  state.dataset = q.get("dataset") || info.datasets[0]?.name || "";
  state.index = Number(q.get("index") || 0);
  $("dataset").value = state.dataset;
  $("dataset").onchange = () => show($("dataset").value, 0);
  $("prev").onclick = () => show(state.dataset, Math.max(0, state.index - 1));
  $("next").onclick = () => show(state.dataset, Math.min(state.of - 1, state.index + 1));
  $("index").onchange = () => show(state.dataset, Number($("index").value));
  document.onkeydown = (e) => {
    if (e.target.tagName === "INPUT") return;
    if (e.key === "ArrowLeft") $("prev").click();
    if (e.key === "ArrowRight") $("next").click();
  };
  document.title = "tessera explorer: " + info.meta;
  // A link or an edited address (#dataset=…&index=…) opens that record.
  window.onhashchange = () => {
    const h = new URLSearchParams(location.hash.slice(1));
    const d = h.get("dataset") || state.dataset;
    const i = Number(h.get("index") || 0);
    if (d !== state.dataset || i !== state.index) {
      $("dataset").value = d;
      show(d, i);
    }
  };
  show(state.dataset, state.index);
}

function media(path) {
  return "/media?dataset=" + encodeURIComponent(state.dataset) + "&path=" + encodeURIComponent(path);
}

function figures(p) {
  const out = [];
  const videos = new Map();
  for (const im of p.images) {
    if (im.frame !== undefined) {
      videos.set(im.path, (videos.get(im.path) || 0) + 1);
      continue;
    }
    const cells = Array.from({ length: im.cols * im.rows }, () => "<div></div>").join("");
    const tokens = im.tiles * p.tokensPerTile;
    out.push('<figure><div class="tiled"><img src="' + media(im.path) + '" alt="">' +
      '<div class="grid" style="grid-template-columns: repeat(' + im.cols + ', 1fr); grid-template-rows: repeat(' + im.rows + ', 1fr)">' + cells + '</div></div>' +
      '<figcaption>' + esc(im.path.split("/").pop()) + " · " + im.wh[0] + "×" + im.wh[1] + " · " + im.cols + "×" + im.rows +
      (im.thumbnail ? " + thumbnail" : "") + " = " + im.tiles + " tile" + (im.tiles === 1 ? "" : "s") + " · " + tokens.toLocaleString() + " tokens</figcaption></figure>");
  }
  for (const [path, n] of videos)
    out.push('<figure><video controls muted src="' + media(path) + '"></video><figcaption>' + esc(path.split("/").pop()) +
      " · " + n + " frames, one tile each · " + (n * p.tokensPerTile).toLocaleString() + " tokens</figcaption></figure>");
  return out.join("");
}

async function show(dataset, index) {
  const r = await fetch("/api/sample?dataset=" + encodeURIComponent(dataset) + "&index=" + index);
  const s = await r.json();
  if (!r.ok) { $("issues").innerHTML = '<div class="issues">' + esc(s.error) + "</div>"; return; }
  state = { dataset, index, of: s.of };
  location.hash = "dataset=" + encodeURIComponent(dataset) + "&index=" + index;
  $("index").value = index;
  $("index").max = s.of - 1;
  $("where").textContent = s.file + ":" + s.line + "  (" + (index + 1) + " of " + s.of + ")";
  $("issues").innerHTML = s.issues.length || s.dropped
    ? '<div class="issues">' + s.issues.map((i) => '<div class="' + i.severity + '">' + i.severity + ": <code>" + esc(i.field) + "</code> " + esc(i.message) + "</div>").join("") +
      (s.dropped ? "<div>dropped: " + esc(s.dropped) + "</div>" : "") + "</div>"
    : "";
  const p = s.preview;
  if (!p) { $("counts").textContent = ""; $("images").innerHTML = ""; $("text").innerHTML = ""; return; }
  const tiles = p.images.reduce((a, im) => a + im.tiles, 0);
  const frames = p.images.filter((im) => im.frame !== undefined).length;
  const stills = p.images.length - frames;
  const what = [stills ? stills + " image" + (stills === 1 ? "" : "s") : "", frames ? frames + " video frame" + (frames === 1 ? "" : "s") : ""].filter(Boolean).join(", ");
  $("counts").innerHTML = "<b>" + p.length.toLocaleString() + "</b> tokens · <b>" + p.imageContextTokens.toLocaleString() + "</b> image context tokens (" +
    (what || "no image") + ", " + tiles + " tile" + (tiles === 1 ? "" : "s") + ") · <b>" + p.learned.toLocaleString() + "</b> learned · template " + esc(p.template) +
    (p.truncated ? " · truncated from " + p.truncated.originalLength + " tokens (" + p.truncated.droppedTurns + " turns dropped)" : "");
  $("images").innerHTML = figures(p);
  const segs = (ss) => ss.map((g) => g.image ? '<span class="image">' + esc(g.text) + "</span>" : g.learned ? '<span class="learned">' + esc(g.text) + "</span>" : esc(g.text)).join("");
  // A preference pair: both sequences, each with its learned span.
  $("text").innerHTML = p.rejected
    ? "<b>chosen</b> (" + p.learned + " learned)\\n" + segs(p.segments) + "\\n\\n<b>rejected</b> (" + p.rejected.learned + " learned)\\n" + segs(p.rejected.segments)
    : segs(p.segments);
}

init();
</script>
</body>
</html>
`;
