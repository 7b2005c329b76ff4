"""The library's report: a static page, `<output>/report/index.html`, that works opened from disk or
served from the bucket (no server, no CDN, nothing fetched but its own files and the library's media).

In: the library's current records (`pipeline.library.read_records`) and one run's summary
(`runs/<run_id>/summary.json`, written by pipeline/job.py when a run ends). Out:
- `report/index.html`: the run's summary, seconds per stage, how busy the model stages kept their GPUs
  (pipeline/gpu_time.py, from the run's records' spans: busy and idle GPU-seconds per stage), reject reasons and each metric's
  distribution (drawn here, as inline HTML and SVG), the variants of the job's variant matrix counted by
  cell (style, aspect ratio) and status, the filters, and a compact index of every card (status, campaign,
  style, tags, aspect ratio; and the cards' order by cell, for the gallery grouped by cell) that the page
  filters and pages through in the browser;
- `report/cards/<n>.js`: the cards themselves, CHUNK at a time, loaded with <script> tags as a page
  needs them (browsers refuse fetch() of file:// URLs, not scripts), so 100,000 videos stay fast.
Links to videos and previews are relative (`../previews/<id>/<variant>.webp`), so the library can be
moved or synced; the report copies no media, and its size is a few hundred bytes per record.
"""
from __future__ import annotations

import html
import json
import math
from array import array
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.gpu_time import gpu_time
from pipeline.library import read_records
from pipeline.report_page import fill
from stages.common.storage import filesystem, is_local, join, protocols, put_atomic, remove, with_retries
from stages.common.variant import REPORT_COLUMNS as COLUMNS
from stages.common.variant import STATUSES, WORK

CHUNK = 200  # cards per script file: a page of PAGE_SIZE cards loads a few hundred KB at most
PAGE_SIZE = 48
WRITERS = 16  # chunk files written at once: on S3 each is a round trip
MEDIA_FOLDERS = ("videos", "posters", "previews", "inputs")
INPUTS = (("image", "first frame"), ("last_image", "last frame"), ("video", "clip continued (its last frame)"))
MIME = {"html": "text/html; charset=utf-8", "js": "text/javascript; charset=utf-8"}


class ReportError(Exception):
    """The report cannot be written for what was asked (no such library, no such run)."""


def relative_link(uri: str | None, root_uri: str) -> str | None:
    """A media URI as a link from `report/index.html`: `../previews/<id>/<variant>.webp`.

    Taken from the key under the library root, or, for a library that was moved since the record was
    written, from the media folder in the URI (keys are deterministic: `<folder>/<id>/<file>`)."""
    if not uri:
        return None
    prefix = root_uri.rstrip("/") + "/"
    if uri.startswith(prefix):
        key = uri[len(prefix):]
    else:
        parts = uri.split("/")
        tail = [i for i, p in enumerate(parts[:-2]) if p in MEDIA_FOLDERS]
        if not tail:
            return None
        key = "/".join(parts[tail[-1]:])
    return "../" + quote(key, safe="/")


def short(value: float) -> float:
    return float(f"{value:.4g}")


def reason_word(reason: str) -> str:
    """The verdict a reason starts with: 'near-duplicate: 3 of 256 bits...' -> 'near-duplicate'."""
    return reason.split(":", 1)[0].strip() or reason


def campaign_column(names: list[str]) -> str | None:
    return next((c for c in ("campaign", "manifest_campaign") if c in names), None)


def card(rec: dict, campaign: str | None, root_uri: str) -> dict:
    """What one gallery card shows (keys left out when empty, to keep the chunks small)."""
    metrics = [(k, v) for k, v in (rec["metrics"] or []) if v is not None and math.isfinite(v)]
    c = {"id": rec["id"], "variant": rec["variant"], "status": rec["status"], "prompt": rec["prompt"],
         "expanded": rec["expanded_prompt"], "style": rec["style"], "tags": rec["tags"],
         "campaign": None if campaign is None or rec.get(campaign) is None else str(rec[campaign]),
         # a long video's card shows the whole video's metrics; its per-segment ones stay in the record
         "metrics": {k: short(v) for k, v in metrics if "/" not in k},
         "segments": len({k.split("/", 1)[0] for k, _ in metrics if "/" in k}) or None,
         # a storyboard: each shot's frames, prompt and expanded prompt
         "shots": [{"frames": [s["first_frame"], s["end_frame"]], "prompt": s["prompt"],
                    "expanded": s.get("expanded_prompt")} for s in rec.get("shots") or []],
         # what a reviewer should know about the prompt the model read (older libraries lack the columns)
         "notes": [n for n in (
             f"rewriter: {rec['expand_model']}" if (rec.get("expand_model") or "").split(":")[0]
             not in ("", "template", "none") else None,
             f"expansion: {rec['expand_error']}" if rec.get("expand_error") else None,
             f"the image and the rewriter: {rec['expand_image']}" if rec.get("expand_image") else None,
             f"prompt cut to the text encoder's budget ({rec['prompt_tokens']} tokens given)"
             if rec.get("truncated") else None) if n],
         "reasons": rec["reasons"], "error": rec["error"], "seed": rec["seed"],
         "resolution": rec["resolution"], "duration": rec["duration_s"] and round(rec["duration_s"], 2),
         # the cell of the job's variant matrix (libraries older than the matrix have no such columns)
         "ratio": rec.get("aspect_ratio"), "seedIndex": rec.get("seed_index"),
         "video": relative_link(rec["video_uri"], root_uri),
         "preview": relative_link(rec["preview_uri"], root_uri) or relative_link(rec["poster_uri"], root_uri),
         # the conditioning inputs, each as the video saw it, beside the video (older libraries lack the columns)
         "inputs": [{k: v for k, v in (("what", what), ("uri", rec[column]),
                                       ("src", relative_link(rec.get(f"{column}_preview_uri"), root_uri))) if v}
                    for column, what in INPUTS if rec.get(column)]}
    return {k: v for k, v in c.items() if v not in (None, [], {}, "")}


def script_json(value) -> str:
    """JSON that is safe inside a <script> element."""
    return json.dumps(value, separators=(",", ":")).replace("<", "\\u003c")


def load_summary(fs, root: str, run_id: str | None) -> dict | None:
    if not run_id:
        return None
    path = join(root, "runs", run_id, "summary.json")
    try:
        return json.loads(with_retries("read", fs.unstrip_protocol(path), lambda: fs.cat_file(path)))
    except Exception:  # noqa: BLE001 - a run that was killed has none; the page says so
        return None


# --- charts: plain HTML bars and inline SVG -------------------------------------------------------------

def bars(items: list[tuple[str, float, str]]) -> str:
    """Horizontal bars: (label, value, shown text)."""
    if not items:
        return '<p class="muted">none</p>'
    top = max(v for _, v, _ in items) or 1
    rows = "".join(f'<div class="bar-row"><span class="bar-label">{html.escape(label)}</span>'
                   f'<span class="bar" style="width:{100 * v / top:.1f}%"></span>'
                   f'<span class="bar-value">{html.escape(text)}</span></div>' for label, v, text in items)
    return f'<div class="bars">{rows}</div>'


def histogram_svg(name: str, values: np.ndarray, bins: int = 20) -> str:
    lo, hi = float(values.min()), float(values.max())
    counts, _ = np.histogram(values, bins=bins, range=(lo, hi if hi > lo else lo + 1))
    top = counts.max() or 1
    w, h = 200, 48
    rects = "".join(f'<rect x="{i * w / bins:.1f}" y="{h - h * c / top:.1f}" width="{w / bins - 1:.1f}" '
                    f'height="{h * c / top:.1f}"><title>{c}</title></rect>' for i, c in enumerate(counts))
    return (f'<figure class="hist"><figcaption>{html.escape(name)} <span class="muted">n={len(values)}, '
            f'median {short(float(np.median(values)))}</span></figcaption>'
            f'<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img">{rects}</svg>'
            f'<div class="axis"><span>{short(lo)}</span><span>{short(hi)}</span></div></figure>')


def summary_html(run_id: str | None, summary: dict | None, run_counts: Counter) -> str:
    if not run_id:
        return '<p class="muted">no run has committed records yet</p>'
    if summary is None:
        counts, work = run_counts, {}
        note = ('<p class="muted">this run has no summary (it did not finish): its counts are those of its '
                'records that are still current</p>')
    else:
        counts, work, note = summary["counts"], summary["work"], ""
        if summary.get("stopped"):
            note = (f'<p class="muted">this run stopped before it finished ({html.escape(summary["stopped"])}): its '
                    'counts are what it committed; running the job again resumes it</p>')
    cells = [(s, counts.get(s, 0)) for s in STATUSES]
    cells += [(k, work.get(k, 0)) for k in WORK if summary]
    if summary:
        cells += [("seconds", round(summary["seconds"], 1)), ("manifest rows", summary["manifest_rows"])]
        if summary.get("gpu_hours_planned") is not None:
            cells.append(("GPU-hours planned", round(summary["gpu_hours_planned"], 3)))
        if summary.get("gpu_seconds"):
            cells.append(("GPU-hours spent", round(summary["gpu_seconds"] / 3600, 3)))
    stats = "".join(f'<div class="stat stat-{html.escape(k)}"><b>{v}</b><span>{html.escape(k)}</span></div>'
                    for k, v in cells)
    return f'<p>run <code>{html.escape(run_id)}</code></p><div class="stats">{stats}</div>{note}'


def cells_html(cells: dict[tuple, Counter]) -> str:
    """The variants of the job's variant matrix, by cell (style, aspect ratio) and status."""
    order = sorted(cells, key=lambda cell: tuple((v is None, v or "") for v in cell))
    head = "".join(f"<th>{s}</th>" for s in ("style", "aspect ratio", *STATUSES, "all"))
    rows = "".join(
        f'<tr><td>{html.escape(style or "—")}</td><td>{html.escape(ratio or "—")}</td>'
        + "".join(f"<td>{cells[style, ratio][s]}</td>" for s in STATUSES)
        + f"<td>{cells[style, ratio].total()}</td></tr>" for style, ratio in order)
    return f'<table class="cells" id="cells-table"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def cell_order(table: pa.Table) -> list[int] | None:
    """The cards' positions ordered for the gallery grouped by cell: the variants of a variant matrix by
    style, aspect ratio, id and seed index (the variant breaks ties), then the records of no matrix as they
    are; None when no record has a cell. Sent as differences from the previous position: in a library made
    by matrix jobs most are small numbers, so the index stays a few bytes per card."""
    if "seed_index" not in table.column_names or table.column("seed_index").null_count == table.num_rows:
        return None
    keys = pa.table({"outside": pc.is_null(table.column("seed_index")), "position": pa.array(range(table.num_rows)),
                     **{c: table.column(c) for c in ("style", "aspect_ratio", "id", "seed_index", "variant")}})
    order = pc.sort_indices(keys, sort_keys=[("outside", "ascending"), ("style", "ascending"),
                                             ("aspect_ratio", "ascending"), ("id", "ascending"),
                                             ("seed_index", "ascending"), ("variant", "ascending"),
                                             ("position", "ascending")])  # nulls last
    return np.diff(order.to_numpy().astype(np.int64), prepend=0).tolist()


class ReportBuilder:
    """Takes the library's current records CHUNK at a time, newest first, and turns each batch into a card
    chunk at once; it keeps only the index (a few small integers per card) and the charts' sums and values,
    so a large library is never held as Python objects all at once."""

    def __init__(self, campaign: str | None, root_uri: str, run_id: str | None):
        self.campaign, self.root_uri, self.run_id = campaign, root_uri, run_id
        self.n = 0
        self.codes: dict[str, dict] = {"status": {}, "campaign": {}, "style": {}, "ratio": {}, "tags": {}}
        self.columns: dict[str, list] = {"status": [], "campaign": [], "style": [], "ratio": [], "tags": []}
        self.cells: dict[tuple, Counter] = {}  # (style, aspect ratio) of a matrix's variants -> by status
        self.library: Counter = Counter()
        self.run: Counter = Counter()  # the run's records, by status
        self.stage_totals: Counter = Counter()
        self.timed = 0  # the run's records with stage seconds
        self.spans: dict[tuple, dict] = {}  # the run's model-stage batches, each once
        self.reasons: Counter = Counter()
        self.values: dict[str, array] = {}

    def code(self, key: str, value) -> int:
        """A value as a small integer, numbered in order of first appearance (-1: none)."""
        return -1 if value is None else self.codes[key].setdefault(value, len(self.codes[key]))

    def add(self, records: list[dict]) -> str:
        """One chunk's records; returns its script."""
        cards = [card(r, self.campaign, self.root_uri) for r in records]
        for r, c in zip(records, cards):
            self.library[r["status"]] += 1
            for key in ("status", "campaign", "style", "ratio"):
                self.columns[key].append(self.code(key, c.get(key)))
            if r.get("seed_index") is not None:
                self.cells.setdefault((r["style"], r.get("aspect_ratio")), Counter())[r["status"]] += 1
            self.columns["tags"].append([self.code("tags", t) for t in c.get("tags", [])])
            if r["run_id"] == self.run_id:
                self.run[r["status"]] += 1
                self.timed += bool(r["stage_seconds"])
                for stage, seconds in r["stage_seconds"] or []:
                    self.stage_totals[stage] += seconds
                for s in r.get("spans") or []:
                    self.spans.setdefault((s["stage"], s["worker"], s["start"], s["end"]), s)
            if r["status"] == "rejected":
                self.reasons.update(reason_word(x) for x in r["reasons"] or [])
            for k, v in r["metrics"] or []:
                if v is not None and math.isfinite(v):
                    self.values.setdefault(k, array("d")).append(v)
        text = f"rushesCards({self.n // CHUNK},{script_json(cards)});\n"
        self.n += len(cards)
        return text

    def page(self, summary: dict | None, by_cell: list[int] | None = None) -> str:
        """The page; `by_cell`: cell_order() of the cards, for the gallery grouped by cell."""
        names = {key: list(codes) for key, codes in self.codes.items()}
        columns = dict(self.columns)
        if not names["ratio"]:  # a library without aspect ratios: no column of -1s
            del columns["ratio"]
        index = {"n": self.n, "chunk": CHUNK, "pageSize": PAGE_SIZE, **columns, "statuses": names["status"],
                 "campaigns": names["campaign"], "styles": names["style"], "ratios": names["ratio"],
                 "tagNames": names["tags"], "byCell": by_cell}
        stage_chart = bars([(s, v, f"{v:.1f} s ({v / self.timed:.2f} s per variant)")
                            for s, v in self.stage_totals.items()])
        reasons_chart = bars([(k, v, str(v)) for k, v in self.reasons.most_common()])
        gpu = gpu_time(self.spans.values(), (summary or {}).get("started_at"), (summary or {}).get("gpus", 0))
        gpu_panel = ("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in gpu.lines()) + "</ul>"
                     if gpu.devices else '<p class="muted">no model-stage batches recorded in this run</p>')
        metric_charts = "".join(histogram_svg(k, np.frombuffer(v)) for k, v in sorted(self.values.items()))
        return fill(
            summary=summary_html(self.run_id, summary, self.run),
            library=html.escape(", ".join(f"{s} {self.library[s]}" for s in STATUSES)),
            total=self.n, stages=stage_chart, reasons=reasons_chart, gpu=gpu_panel,
            metrics=metric_charts or '<p class="muted">none</p>', index=script_json(index),
            cells=(f'<section class="panel" id="cells"><h2>Variants by cell</h2>{cells_html(self.cells)}</section>'
                   if self.cells else ""))


def put_report_file(fs, path: str, text: str) -> None:
    """One report file, atomically; on S3 with its content type, so the bucket serves it as a page."""
    data = text.encode()
    if not is_local(fs) and "s3" in protocols(fs):
        mime = MIME[path.rsplit(".", 1)[-1]]
        with_retries("write", fs.unstrip_protocol(path), lambda: fs.pipe_file(path, data, ContentType=mime))
    else:
        put_atomic(fs, path, data)


def latest_run(table: pa.Table) -> str | None:
    """The run that committed last."""
    if not table.num_rows:
        return None
    return table.column("run_id")[pc.index(table.column("committed_at"), pc.max(table.column("committed_at")))
                                  .as_py()].as_py()


def write_report(output: str, storage_options: dict | None = None, run_id: str | None = None) -> str:
    """Write `<output>/report/` for the library's current records and run `run_id` (default: the run
    that committed last); returns the URI of its index.html."""
    fs, root = filesystem(output, storage_options)
    table = read_records(output, storage_options, columns=[*COLUMNS, "spans", "campaign", "manifest_campaign"])
    if not table.num_rows and not fs.exists(join(root, "runs")):
        raise ReportError(f"{output}: no Rushes library there (no records, no runs/)")
    if run_id and not fs.exists(join(root, "runs", run_id, "job.yaml")):
        raise ReportError(f"{output}: no run {run_id!r} (no runs/{run_id}/job.yaml)")
    run_id = run_id or latest_run(table)
    campaign = campaign_column(table.column_names)
    table = table.select([c for c in COLUMNS + ("spans", campaign) if c in table.column_names])
    if table.num_rows:  # newest first
        table = table.sort_by([("committed_at", "descending"), ("id", "ascending"), ("variant", "ascending")])
    builder = ReportBuilder(campaign, fs.unstrip_protocol(root), run_id)
    report = join(root, "report")
    chunks = []
    with ThreadPoolExecutor(WRITERS, thread_name_prefix="rushes-report") as pool:
        pending: deque = deque()
        for start in range(0, table.num_rows, CHUNK):  # the cards first: the page that refers to them is last
            path = join(report, "cards", f"{len(chunks):06d}.js")
            chunks.append(path)
            pending.append(pool.submit(put_report_file, fs, path, builder.add(table.slice(start, CHUNK).to_pylist())))
            while len(pending) > WRITERS:  # a bounded number of chunks wait to be written
                pending.popleft().result()
        for future in pending:
            future.result()
    index = join(report, "index.html")
    put_report_file(fs, index, builder.page(load_summary(fs, root, run_id), cell_order(table)))
    fs.invalidate_cache(join(report, "cards"))
    wanted = set(chunks)
    for path in fs.glob(join(report, "cards", "*.js")):  # left by an earlier report of a larger library
        if path not in wanted:
            remove(fs, path)
    return fs.unstrip_protocol(index)
