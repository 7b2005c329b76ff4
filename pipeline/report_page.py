"""The report's page: its HTML, CSS and JavaScript, with no external file (pipeline/report.py fills it in).

The gallery is drawn in the browser from `INDEX` (inline: each card's status, campaign, style, aspect
ratio and tags, as small integers, and `byCell`, the cards' order by variant-matrix cell) and the card
chunks (`cards/<n>.js`, each calling `rushesCards(n, [...])`). A page of cards loads only the chunks it
shows; grouped by cell, it pages through the cards in `byCell` order and heads each cell's run of cards on
the page. The filters, the grouping and the page number live in the URL's fragment
(`#status=rejected&tag=ad&group=cell&page=2`), so a view can be linked to.
"""
from __future__ import annotations

import re


def fill(**parts: str) -> str:
    """PAGE with each `%%name%%` replaced by parts[name], in one pass (a part's text is never re-read)."""
    return re.sub(r"%%(\w+)%%", lambda m: str(parts[m.group(1)]), PAGE)


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Rushes report</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 24px 24px; color: #1d1d1f; background: #f6f6f7; }
h1 { font-size: 20px; margin: 16px 0 4px; } h2 { font-size: 16px; margin: 20px 0 8px; }
code { font-size: 12px; } .muted { color: #6e6e73; }
section.panel { background: #fff; border-radius: 8px; padding: 8px 16px 12px; margin-top: 12px; }
.row { display: flex; flex-wrap: wrap; gap: 12px; } .row > section.panel { flex: 1 1 360px; }
.stats { display: flex; flex-wrap: wrap; gap: 8px; }
.stat { background: #f0f0f2; border-radius: 6px; padding: 6px 12px; min-width: 64px; text-align: center; }
.stat b { display: block; font-size: 18px; } .stat span { font-size: 12px; color: #6e6e73; }
.stat-accepted b { color: #1a7f37; } .stat-rejected b { color: #b35900; } .stat-failed b { color: #c62828; }
.bar-row { display: grid; grid-template-columns: 130px 1fr 190px; align-items: center; gap: 8px; margin: 3px 0; }
.bar-label { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.bar { height: 12px; background: #4c7bd9; border-radius: 3px; min-width: 2px; }
.bar-value { font-size: 12px; color: #6e6e73; }
.hists { display: flex; flex-wrap: wrap; gap: 16px; }
.hist { margin: 0; } .hist figcaption { font-size: 12px; } .hist rect { fill: #4c7bd9; }
.axis { display: flex; justify-content: space-between; font-size: 11px; color: #6e6e73; width: 200px; }
.filters { display: flex; flex-wrap: wrap; gap: 12px; align-items: center; margin: 8px 0; }
.pager button { margin: 0 4px; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(280px, 1fr)); gap: 12px; }
.card { background: #fff; border-radius: 8px; padding: 8px; border-top: 4px solid #999; overflow: hidden; }
.card[data-status=accepted] { border-color: #1a7f37; } .card[data-status=rejected] { border-color: #b35900; }
.card[data-status=failed] { border-color: #c62828; } .card[data-status=invalid] { border-color: #777; }
.card .media img { width: 100%; height: auto; aspect-ratio: auto 16 / 9; max-height: 420px; object-fit: contain;
  display: block; border-radius: 4px; background: #222; }
.card .cell { font-size: 12px; }
.media.with-inputs { display: grid; grid-template-columns: 3fr 1fr; gap: 6px; align-items: start; }
.media.with-inputs > a, .media.with-inputs > img, .media.with-inputs > div.none { grid-row: span 3; }
.media figure.input { margin: 0; font-size: 11px; color: #6e6e73; overflow-wrap: anywhere; }
.media figure.input img { width: 100%; height: auto; display: block; border-radius: 4px; background: #222; }
.cell-group h3 { font-size: 14px; margin: 16px 0 8px; }
table.cells { border-collapse: collapse; font-size: 13px; }
table.cells th, table.cells td { padding: 2px 10px; border-bottom: 1px solid #f0f0f2; text-align: right; }
table.cells th:nth-child(-n+2), table.cells td:nth-child(-n+2) { text-align: left; }
.card .none { height: 80px; display: flex; align-items: center; justify-content: center; background: #eee;
  color: #6e6e73; border-radius: 4px; }
.card .head { display: flex; justify-content: space-between; gap: 8px; margin: 6px 0 2px; font-weight: 600; }
.badge { font-size: 11px; font-weight: 400; padding: 1px 6px; border-radius: 8px; background: #eee; }
.prompts { display: grid; grid-template-columns: 1fr 1fr; gap: 8px; font-size: 12px; }
.prompts h4 { margin: 4px 0 2px; font-size: 11px; color: #6e6e73; font-weight: 400; }
.prompts p { margin: 0; word-break: break-word; }
.metrics { font-size: 11px; border-collapse: collapse; margin-top: 6px; width: 100%; }
.metrics td { padding: 0 4px; border-bottom: 1px solid #f0f0f2; } .metrics td:nth-child(even) { text-align: right; }
.reasons { font-size: 12px; color: #b35900; margin: 6px 0 0; padding-left: 16px; }
.error { font-size: 12px; color: #c62828; margin: 6px 0 0; word-break: break-word; }
.foot { font-size: 12px; margin-top: 6px; color: #6e6e73; }
.shots { font-size: 12px; margin: 6px 0 0; padding-left: 18px; } .shots li { margin-bottom: 4px; }
.shots .frames { color: #6e6e73; } .shots .expanded { display: block; color: #6e6e73; }
.notes { font-size: 12px; color: #6e6e73; margin: 6px 0 0; padding-left: 16px; }
</style>
</head>
<body>
<h1>Rushes report</h1>
<div class="row">
<section class="panel" id="summary"><h2>Run summary</h2>%%summary%%</section>
<section class="panel" id="stages"><h2>Seconds per stage</h2>%%stages%%</section>
<section class="panel" id="reasons"><h2>Reject reasons</h2>%%reasons%%</section>
</div>
<section class="panel" id="gpu-time"><h2>GPU time</h2>%%gpu%%</section>
<section class="panel" id="metrics"><h2>Filter metrics</h2><div class="hists">%%metrics%%</div></section>
%%cells%%
<section class="panel" id="library">
<h2>Library: %%total%% current records <span class="muted">(%%library%%)</span></h2>
<div class="filters">
<label>status <select id="f-status"></select></label>
<label>campaign <select id="f-campaign"></select></label>
<label>tag <select id="f-tag"></select></label>
<label>style <select id="f-style"></select></label>
<label id="l-ratio">aspect ratio <select id="f-ratio"></select></label>
<label id="l-group">group by <select id="f-group"><option value="">none</option><option value="cell">cell</option>
</select></label>
<span class="pager"><button id="prev">&larr;</button><span id="page-info"></span><button id="next">&rarr;</button></span>
</div>
<div class="gallery" id="gallery"></div>
</section>
<script>
const INDEX = %%index%%;
const chunks = {}, waiting = {};
function rushesCards(n, cards) { chunks[n] = cards; (waiting[n] || []).forEach(f => f()); }

function loadChunk(n) {
  if (chunks[n]) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const first = !waiting[n];
    (waiting[n] = waiting[n] || []).push(resolve);
    if (!first) return;
    const s = document.createElement("script");
    s.src = "cards/" + String(n).padStart(6, "0") + ".js";
    s.onerror = () => reject(new Error("cannot load " + s.src));
    document.head.appendChild(s);
  });
}

const FILTERS = [["status", "statuses"], ["campaign", "campaigns"], ["tag", "tagNames"], ["style", "styles"],
                 ["ratio", "ratios"]];
const CONTROLS = [...FILTERS.map(([key]) => key), "group"];  // each a <select id="f-<key>">, kept in the URL
function counts(key) {
  const c = {};
  if (key === "tag") INDEX.tags.forEach(ts => ts.forEach(t => c[t] = (c[t] || 0) + 1));
  else (INDEX[key] || []).forEach(v => { if (v >= 0) c[v] = (c[v] || 0) + 1; });
  return c;
}
let byCell = null;  // the cards' positions in cell order, from the differences in INDEX.byCell
function setUpFilters() {
  document.getElementById("l-ratio").hidden = !INDEX.ratios.length;
  document.getElementById("l-group").hidden = !INDEX.byCell;
  document.getElementById("f-group").onchange = () => show({page: 1});
  if (INDEX.byCell) { let p = 0; byCell = Int32Array.from(INDEX.byCell, d => p += d); }
  for (const [key, names] of FILTERS) {
    const sel = document.getElementById("f-" + key), c = counts(key);
    sel.add(new Option("all", ""));
    INDEX[names].map((name, i) => [name, i]).sort()
      .forEach(([name, i]) => sel.add(new Option(name + " (" + (c[i] || 0) + ")", name)));
    sel.onchange = () => show({page: 1});
  }
}
function state() {
  const p = new URLSearchParams(location.hash.slice(1)), s = {page: Math.max(1, parseInt(p.get("page")) || 1)};
  for (const key of CONTROLS) s[key] = p.get(key) || "";
  if (!byCell) s.group = "";  // a link made for another library
  if (!INDEX.ratio) s.ratio = "";
  return s;
}
function show(change) {
  const s = state();
  for (const key of CONTROLS) s[key] = document.getElementById("f-" + key).value;
  Object.assign(s, change);
  const p = new URLSearchParams();
  for (const k in s) if (s[k] && !(k === "page" && s[k] === 1)) p.set(k, s[k]);
  location.hash = p.toString();
  draw();  // hashchange draws it again when the fragment changed: the later draw wins, nothing doubles
}
function matching(s) {
  const want = {};
  for (const [key, names] of FILTERS) want[key] = s[key] ? INDEX[names].indexOf(s[key]) : null;
  const out = [], grouped = s.group === "cell";
  for (let k = 0; k < INDEX.n; k++) {
    const i = grouped ? byCell[k] : k;
    if (want.status !== null && INDEX.status[i] !== want.status) continue;
    if (want.campaign !== null && INDEX.campaign[i] !== want.campaign) continue;
    if (want.style !== null && INDEX.style[i] !== want.style) continue;
    if (want.ratio !== null && INDEX.ratio[i] !== want.ratio) continue;
    if (want.tag !== null && !INDEX.tags[i].includes(want.tag)) continue;
    out.push(i);
  }
  return out;
}
let drawing = 0;
function draw() {
  const s = state(), ticket = ++drawing;
  for (const key of CONTROLS) document.getElementById("f-" + key).value = s[key];
  const found = matching(s), pages = Math.max(1, Math.ceil(found.length / INDEX.pageSize));
  const page = Math.min(s.page, pages), shown = found.slice((page - 1) * INDEX.pageSize, page * INDEX.pageSize);
  document.getElementById("page-info").textContent =
    found.length + " cards, page " + page + " of " + pages;
  document.getElementById("prev").disabled = page <= 1;
  document.getElementById("next").disabled = page >= pages;
  document.getElementById("prev").onclick = () => show({page: page - 1});
  document.getElementById("next").onclick = () => show({page: page + 1});
  const need = [...new Set(shown.map(i => Math.floor(i / INDEX.chunk)))];
  Promise.all(need.map(loadChunk)).then(() => {
    if (ticket !== drawing) return;
    const cards = shown.map(i => chunks[Math.floor(i / INDEX.chunk)][i % INDEX.chunk]);
    const gallery = document.getElementById("gallery");
    gallery.className = s.group === "cell" ? "" : "gallery";
    gallery.replaceChildren(...(s.group === "cell" ? cellGroups(cards) : cards.map(cardElement)));
    document.body.dataset.ready = "1";
  }, err => { document.getElementById("gallery").textContent = String(err); });
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}
function inCell(c) { return c.seedIndex !== undefined; }  // made by a variant matrix
function cellGroups(cards) {
  // the page's cards come in cell order: each run of one (style, aspect ratio) gets a heading
  const groups = [];
  for (const c of cards) {
    const key = inCell(c) ? JSON.stringify([c.style ?? null, c.ratio ?? null]) : "";
    if (!groups.length || groups[groups.length - 1].key !== key) groups.push({key, c, cards: []});
    groups[groups.length - 1].cards.push(c);
  }
  return groups.map(({key, c, cards}) => el("section",
    {class: "cell-group", "data-style": inCell(c) ? c.style ?? "" : "", "data-ratio": inCell(c) ? c.ratio ?? "" : "",
     "data-cell": key ? "1" : "0"},
    el("h3", {}, key ? (c.style ?? "no style") + " · " + (c.ratio ?? "no aspect ratio") : "no variant matrix"),
    el("div", {class: "gallery"}, ...cards.map(cardElement))));
}
function cardElement(c) {
  const shape = c.ratio ? c.ratio.replace(":", " / ") : (c.resolution || "").replace("x", " / ");
  const media = c.preview
    ? el("img", {class: "preview", src: c.preview, alt: "preview of " + c.id + "/" + c.variant,
                 style: shape ? "aspect-ratio: auto " + shape : ""})
    : el("div", {class: "none"}, c.status === "accepted" ? "no preview" : "no video (" + c.status + ")");
  const cell = inCell(c) ? [c.style, c.ratio, "seed index " + c.seedIndex].filter(v => v != null).join(" · ") : "";
  const meta = [c.campaign, cell ? null : c.style, ...(c.tags || [])].filter(Boolean).join(" · ");
  const metrics = el("table", {class: "metrics"});
  const names = Object.keys(c.metrics || {}).sort();
  for (let i = 0; i < names.length; i += 2) {
    const tr = el("tr");
    for (const m of names.slice(i, i + 2)) tr.append(el("td", {}, m), el("td", {}, String(c.metrics[m])));
    metrics.append(tr);
  }
  const foot = [c.seed !== undefined ? "seed " + c.seed : null, c.resolution, c.duration ? c.duration + " s" : null,
                c.segments ? c.segments + " segments (metrics per segment in the record)" : null]
    .filter(Boolean).join(" · ");
  return el("article", {class: "card", "data-id": c.id ?? "", "data-variant": String(c.variant),
                        "data-status": c.status, "data-seed-index": inCell(c) ? String(c.seedIndex) : ""},
    el("div", {class: c.inputs ? "media with-inputs" : "media"}, c.video ? el("a", {href: c.video}, media) : media,
      ...(c.inputs || []).map(i => el("figure", {class: "input", title: i.uri},
        i.src ? el("img", {src: i.src, alt: i.what + " of " + c.id + "/" + c.variant}) : el("div", {class: "none"}, "—"),
        el("figcaption", {}, i.what)))),
    el("div", {class: "head"}, el("span", {}, (c.id ?? "(no id)") + (c.variant >= 0 ? "/" + c.variant : "")),
      el("span", {class: "badge"}, c.status)),
    cell ? el("div", {class: "cell"}, cell) : null,
    meta ? el("div", {class: "muted"}, meta) : null,
    el("div", {class: "prompts"},
      el("div", {}, el("h4", {}, "prompt"), el("p", {}, c.prompt || "")),
      el("div", {}, el("h4", {}, "expanded prompt"), el("p", {}, c.expanded || "—"))),
    c.notes ? el("ul", {class: "notes"}, ...c.notes.map(n => el("li", {}, n))) : null,
    c.shots ? el("ol", {class: "shots"}, ...c.shots.map(s => el("li", {},
      el("span", {class: "frames"}, "frames " + s.frames[0] + "–" + s.frames[1] + ": "), s.prompt,
      s.expanded && s.expanded !== s.prompt ? el("span", {class: "expanded"}, s.expanded) : null))) : null,
    names.length ? metrics : null,
    c.reasons ? el("ul", {class: "reasons"}, ...c.reasons.map(r => el("li", {}, r))) : null,
    c.error ? el("p", {class: "error"}, c.error) : null,
    el("div", {class: "foot"}, c.video ? el("a", {href: c.video}, "video") : null, c.video && foot ? " · " : "", foot));
}

setUpFilters();
window.addEventListener("hashchange", draw);
draw();
</script>
</body>
</html>
"""
