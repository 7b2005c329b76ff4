"""The report: built from a library's records, checked in headless Chromium from a file:// URL and from
moto S3 over HTTP; and written by a real run when it ends (slow).

Chromium is Debian's `chromium` package (`make test` installs it); without it the browser tests skip.
Set RUSHES_SCREENSHOT=docs/report.png to keep the real run's screenshot (the README shows it).
"""
from __future__ import annotations

import io
import json
import os
import shutil
from collections import Counter

import pyarrow as pa
import pytest
from PIL import Image

from pipeline.commit import MetadataWriter, record_schema
from pipeline.library import read_records
from pipeline.report import CHUNK, PAGE_SIZE, ReportError, relative_link, write_report
from stages.common.storage import filesystem, join, put_atomic
from tests.browser import Chromium, find_chromium
from tests.synthetic_library import synthetic_library

RUN = "20261125T120000Z-abcdef"


@pytest.fixture(scope="module")
def browser():
    if not find_chromium():
        pytest.skip("Debian's chromium is not installed (`make test` installs it: apt-get install chromium)")
    with Chromium() as b:
        yield b


def webp_preview(width: int = 48, height: int = 32) -> bytes:
    frames = [Image.new("RGB", (width, height), (40 * i, 90, 160)) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="WEBP", save_all=True, append_images=frames[1:], duration=120, loop=0)
    return buf.getvalue()


MATRIX = {"styles": ["anime", "noir"], "aspect_ratios": ["16:9", "9:16", "1:1"], "seeds": 2}
SHAPES = {"16:9": (64, 36), "9:16": (36, 64), "1:1": (48, 48)}  # a cell's preview, width x height


def matrix_records(fs, root: str, preview_of) -> list[dict]:
    """Two rows made by the variant matrix MATRIX, as pipeline/spec.py VariantMatrix.cells() orders the
    cells (variant = cell), of mixed statuses; previews of the accepted ones in their cell's shape."""
    records = []
    for row, id_ in enumerate(["ad-1", "ad-0"]):  # not in id order: the report sorts them
        cells = [(s, r, k) for s in MATRIX["styles"] for r in MATRIX["aspect_ratios"] for k in range(MATRIX["seeds"])]
        for variant, (style, ratio, seed_index) in enumerate(cells):
            status = ["accepted", "accepted", "rejected", "failed", "accepted"][(variant + row) % 5]
            w, h = SHAPES[ratio]
            rec = {"id": id_, "variant": variant, "row": 1000 + row, "status": status, "campaign": "summer",
                   "prompt": f"a bottle of perfume on a rock, {style}", "style": style, "aspect_ratio": ratio,
                   "seed_index": seed_index, "tags": ["ad"], "extra": {"campaign": "summer"},
                   "expanded_prompt": f"a bottle of perfume on a rock, {style} style.", "seed": 10 + seed_index,
                   "resolution": f"{w}x{h}", "duration_s": 1.0, "metrics": {"motion": 0.5},
                   "stage_seconds": {"sample": 0.5}}
            if status == "rejected":
                rec["reasons"] = ["frozen: motion 0.1 < 0.2"]
            if status == "failed":
                rec["error"] = "sample: NaN in latents"
            if status == "accepted":
                key = join(root, "previews", id_, f"{variant}.webp")
                put_atomic(fs, key, preview_of(w, h))
                rec["preview_uri"] = fs.unstrip_protocol(key)
                rec["video_uri"] = fs.unstrip_protocol(join(root, "videos", id_, f"{variant}.mp4"))
            records.append(rec)
    return records


def make_library(output: str, storage_options: dict | None = None, n: int = 130, matrix: bool = False) -> list[dict]:
    """A library of `n` records of every status, committed through the real writer, with previews of the
    accepted videos and of the rejected ones kept (every tenth) at their deterministic keys; with `matrix`,
    and the 24 records of two rows made by a variant matrix (matrix_records)."""
    fs, root = filesystem(output, storage_options)
    preview = webp_preview()
    statuses = ["accepted"] * 7 + ["rejected"] * 3 + ["failed", "invalid"]
    records = []
    for i in range(n):
        status = statuses[i % len(statuses)]
        rec = {"id": f"clip-{i:04d}", "variant": -1 if status == "invalid" else i % 2, "row": i, "status": status,
               "prompt": f"a fox <b>number</b> {i} in the snow", "campaign": ["spring", "autumn"][i % 2],
               "style": ["anime", "documentary", None][i % 3], "tags": [["ad"], ["sim", "night"], []][i % 3],
               "extra": {"campaign": ["spring", "autumn"][i % 2]}}
        if status != "invalid":
            rec.update(expanded_prompt=f"a fox number {i} in the snow, wide shot", seed=i, resolution="48x32",
                       metrics={"motion": 0.1 * (i % 9), "brightness": 100.0 + i}, duration_s=1.0,
                       stage_seconds={"sample": 0.5, "decode": 1.5, "encode": 0.25})
        if status == "rejected":
            rec["reasons"] = [["frozen: motion 0.1 < 0.2"], ["too dark: brightness 9 < 16", "blurry: 3"],
                              ["near-duplicate: 3 of 256 hash bits from clip-0000/0"]][i % 3]
        if status in ("failed", "invalid"):
            rec["error"] = "sample: NaN in latents" if status == "failed" else "prompt: empty"
        if status == "accepted" or (status == "rejected" and i % 10 == 7):
            key = join(root, "previews", rec["id"], f"{rec['variant']}.webp")
            put_atomic(fs, key, preview)
            rec["preview_uri"] = fs.unstrip_protocol(key)
            rec["video_uri"] = fs.unstrip_protocol(join(root, "videos", rec["id"], f"{rec['variant']}.mp4"))
        records.append(rec)
    if matrix:
        records += matrix_records(fs, root, webp_preview)
    n = len(records)
    writer = MetadataWriter(output, RUN, record_schema(pa.schema([("campaign", pa.string())])), storage_options)
    for i in range(0, n, 50):
        writer.commit([{k: v for k, v in r.items() if k != "campaign"} for r in records[i:i + 50]])
    writer.save_text(f"runs/{RUN}/job.yaml", "name: test\n")
    counts = Counter(r["status"] for r in records)
    writer.save_text(f"runs/{RUN}/summary.json", json.dumps(
        {"run_id": RUN, "manifest_rows": n, "counts": counts, "seconds": 12.5, "generated": 0,
         "work": {"new": n - counts["invalid"], "skipped": 0, "retried": 0, "regenerated": 0}}))
    return records


def every_card(browser, url: str) -> tuple[list[tuple], list[int]]:
    """Open the report and page through it: ((id, variant, status) of every card, each preview's width)."""
    browser.open(url)
    browser.wait_for("document.body.dataset.ready === '1'")
    pages = browser.evaluate("Math.ceil(INDEX.n / INDEX.pageSize)")
    cards, widths = [], []
    for page in range(1, pages + 1):
        browser.evaluate(f"document.body.dataset.ready = ''; location.hash = 'page={page}'")
        browser.wait_for("document.body.dataset.ready === '1'")
        cards += [tuple(c) for c in browser.evaluate(
            "[...document.querySelectorAll('.card')].map(c => [c.dataset.id, +c.dataset.variant, c.dataset.status])")]
        widths += browser.evaluate(
            "Promise.all([...document.images].map(i => i.complete ? 0 : new Promise(r => i.onload = i.onerror = r)))"
            ".then(() => [...document.querySelectorAll('img.preview')].map(i => i.naturalWidth))")
    return cards, widths


def check_report(browser, url: str, records: list[dict], screenshot: str) -> None:
    cards, widths = every_card(browser, url)
    assert sorted(cards) == sorted((r["id"], r["variant"], r["status"]) for r in records)
    assert Counter(s for _, _, s in cards) == Counter(r["status"] for r in records)
    # every preview loaded, through its relative link
    assert sorted(widths) == sorted(int(r["resolution"].split("x")[0]) for r in records if r.get("preview_uri"))
    browser.evaluate("document.body.dataset.ready = ''; location.hash = 'status=rejected&campaign=autumn'")
    browser.wait_for("document.body.dataset.ready === '1'")
    shown = browser.evaluate("[...document.querySelectorAll('.card')].map(c => c.dataset.status + '/' + "
                             "(+c.dataset.id.slice(5) % 2))")
    wanted = [r for r in records if r["status"] == "rejected" and r["campaign"] == "autumn"]
    assert len(shown) == min(len(wanted), PAGE_SIZE) and set(shown) == {"rejected/1"}
    assert browser.evaluate("document.getElementById('page-info').textContent").startswith(f"{len(wanted)} cards")
    browser.evaluate("location.hash = ''")
    browser.screenshot(screenshot)
    with open(screenshot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def cards_by_cell(browser, url_hash: str) -> list[list]:
    """Grouped by cell, every page of the view `url_hash`: per page, its groups as [has a cell, style,
    aspect ratio, heading, [[id, seed index, variant], ...]]."""
    browser.evaluate(f"document.body.dataset.ready = ''; location.hash = '{url_hash}'")
    browser.wait_for("document.body.dataset.ready === '1'")
    pages = int(browser.evaluate("document.getElementById('page-info').textContent").split(" of ")[1])
    out = []
    for page in range(1, pages + 1):
        browser.evaluate(f"document.body.dataset.ready = ''; location.hash = '{url_hash}&page={page}'")
        browser.wait_for("document.body.dataset.ready === '1'")
        out.append(browser.evaluate(
            "[...document.querySelectorAll('#gallery > .cell-group')].map(g => [g.dataset.cell === '1', "
            "g.dataset.style, g.dataset.ratio, g.querySelector('h3').textContent, [...g.querySelectorAll('.card')]"
            ".map(c => [c.dataset.id, c.dataset.seedIndex === '' ? null : +c.dataset.seedIndex, "
            "+c.dataset.variant])])"))
    return out


def check_cells(browser, url: str, records: list[dict]) -> None:
    """The variant matrix's cells: on the cards, in the ratio filter, grouped, and counted in the table."""
    in_matrix = [r for r in records if r.get("seed_index") is not None]
    cells = Counter((r["style"], r["aspect_ratio"]) for r in in_matrix)
    assert len(in_matrix) == 24 and len(cells) == 6
    browser.open(url)
    browser.wait_for("document.body.dataset.ready === '1'")
    assert browser.evaluate("document.getElementById('l-ratio').hidden") is False

    # the ratio filter: its counts, and what it shows
    ratios = Counter(r["aspect_ratio"] for r in in_matrix)
    options = browser.evaluate("[...document.querySelectorAll('#f-ratio option')].map(o => o.textContent)")
    assert options == ["all"] + [f"{r} ({ratios[r]})" for r in sorted(ratios)]
    browser.evaluate("document.body.dataset.ready = ''; location.hash = 'ratio=9:16'")
    browser.wait_for("document.body.dataset.ready === '1'")
    assert browser.evaluate("document.getElementById('page-info').textContent").startswith(f"{ratios['9:16']} cards")
    shown = browser.evaluate("[...document.querySelectorAll('.card')].map(c => [c.dataset.id, +c.dataset.variant, "
                             "c.querySelector('.cell').textContent])")
    assert sorted(map(tuple, shown)) == sorted(
        (r["id"], r["variant"], f"{r['style']} · 9:16 · seed index {r['seed_index']}")
        for r in in_matrix if r["aspect_ratio"] == "9:16")
    # a 9:16 preview is tall, a 16:9 one wide
    browser.evaluate("document.body.dataset.ready = ''; location.hash = 'ratio=9:16&status=accepted'")
    browser.wait_for("document.body.dataset.ready === '1'")
    sizes = browser.evaluate(
        "Promise.all([...document.images].map(i => i.complete || new Promise(r => i.onload = i.onerror = r)))"
        ".then(() => [...document.querySelectorAll('img.preview')].map(i => [i.clientWidth, i.clientHeight]))")
    assert sizes and all(h > 1.5 * w for w, h in sizes), sizes
    browser.evaluate("document.body.dataset.ready = ''; location.hash = 'ratio=16:9&status=accepted'")
    browser.wait_for("document.body.dataset.ready === '1'")
    sizes = browser.evaluate(
        "Promise.all([...document.images].map(i => i.complete || new Promise(r => i.onload = i.onerror = r)))"
        ".then(() => [...document.querySelectorAll('img.preview')].map(i => [i.clientWidth, i.clientHeight]))")
    assert sizes and all(w > 1.5 * h for w, h in sizes), sizes

    # grouped by cell: the matrix's cells first, by style and aspect ratio, each its cards by id, seed index;
    # one heading per cell on a page (a cell that runs over a page is headed again on the next)
    pages = cards_by_cell(browser, "group=cell")
    assert browser.evaluate("document.getElementById('f-group').value") == "cell"
    groups = [g for page in pages for g in page]
    assert all(len({tuple(g[:3]) for g in page}) == len(page) for page in pages)
    assert sum(len(g[4]) for g in groups) == len(records)
    order = sorted(cells, key=lambda c: (c[0], c[1]))
    got = [(style, ratio) for has_cell, style, ratio, _, _ in groups if has_cell]
    assert got == order  # all 24 matrix cards fit on the first page: each cell once
    for has_cell, style, ratio, heading, cards in groups:
        if has_cell:
            assert heading == f"{style} · {ratio}" and len(cards) == cells[style, ratio]
            assert cards == sorted([r["id"], r["seed_index"], r["variant"]] for r in in_matrix
                                   if (r["style"], r["aspect_ratio"]) == (style, ratio))
        else:
            assert heading == "no variant matrix" and all(c[1] is None for c in cards)
    assert sum(len(g[4]) for g in groups if not g[0]) == len(records) - len(in_matrix)
    # grouped and filtered
    pages = cards_by_cell(browser, "group=cell&ratio=1:1&status=accepted")
    wanted = Counter((r["style"], r["aspect_ratio"]) for r in in_matrix
                     if r["aspect_ratio"] == "1:1" and r["status"] == "accepted")
    assert len(pages) == 1 and {(g[1], g[2]): len(g[4]) for g in pages[0]} == wanted

    # the table of variants by cell and status
    rows = browser.evaluate("[...document.querySelectorAll('#cells-table tbody tr')]"
                            ".map(tr => [...tr.children].map(td => td.textContent))")
    by_status = Counter((r["style"], r["aspect_ratio"], r["status"]) for r in in_matrix)
    statuses = ("accepted", "rejected", "invalid", "failed")
    assert rows == [[s, a, *(str(by_status[s, a, x]) for x in statuses), str(cells[s, a])] for s, a in order]
    browser.evaluate("location.hash = ''")


def test_relative_links_survive_a_moved_library():
    assert relative_link("file:///lib/previews/a/0.webp", "file:///lib") == "../previews/a/0.webp"
    assert relative_link("s3://b/lib/videos/a b/1.mp4", "s3://b/lib") == "../videos/a%20b/1.mp4"
    # written when the library lived elsewhere: the key is taken from the media folder in the URI
    assert relative_link("file:///old/place/previews/x/videos/0.webp", "file:///new") == "../previews/x/videos/0.webp"
    assert relative_link("s3://b/lib/posters/a/0.jpg", "file:///copy") == "../posters/a/0.jpg"
    assert relative_link(None, "file:///lib") is None


def test_report_in_chromium_from_a_file_url(browser, tmp_path):
    records = make_library(str(tmp_path / "lib"), n=130, matrix=True)  # four pages of cards, several chunks
    uri = write_report(str(tmp_path / "lib"))
    assert uri == (tmp_path / "lib" / "report" / "index.html").as_uri()
    page = (tmp_path / "lib" / "report" / "index.html").read_text()
    assert "http://" not in page and "https://" not in page  # no CDN, nothing remote
    assert "<b>number</b>" not in page  # prompts reach the page as data, drawn as text
    assert f"<code>{RUN}</code>" in page and "frozen" in page and "brightness" in page
    check_report(browser, uri, records, str(tmp_path / "report.png"))
    check_cells(browser, uri, records)

    # the library moved (or synced elsewhere): the report still finds its previews
    shutil.move(tmp_path / "lib", tmp_path / "moved")
    cards, widths = every_card(browser, (tmp_path / "moved" / "report" / "index.html").as_uri())
    assert len(cards) == len(records) and all(w > 0 for w in widths)


def test_report_holds_no_media_and_drops_stale_chunks(tmp_path):
    out = str(tmp_path / "lib")
    make_library(out, n=CHUNK + 10)
    write_report(out)
    report = tmp_path / "lib" / "report"
    files = sorted(p.relative_to(report).as_posix() for p in report.rglob("*") if p.is_file())
    assert files == ["cards/000000.js", "cards/000001.js", "index.html"]
    assert sum((report / f).stat().st_size for f in files) < 1500 * (CHUNK + 10)
    shutil.rmtree(tmp_path / "lib" / "metadata")
    make_library(out, n=5)
    write_report(out)
    assert sorted(p.name for p in (report / "cards").iterdir()) == ["000000.js"]


def test_report_of_a_run_and_of_nothing(tmp_path):
    out = str(tmp_path / "lib")
    make_library(out, n=12)
    write_report(out, run_id=RUN)
    page = (tmp_path / "lib" / "report" / "index.html").read_text()
    assert '<div class="stat stat-new"><b>11</b>' in page and "12.5" in page
    with pytest.raises(ReportError, match="no run 'nope'"):
        write_report(out, run_id="nope")
    with pytest.raises(ReportError, match="no Rushes library"):
        write_report(str(tmp_path / "empty"))


def test_report_on_s3_served_from_the_bucket(browser, s3, tmp_path):
    import boto3

    fs, endpoint = s3
    out, options = "s3://rushes-test/lib", {"endpoint_url": endpoint}
    # Served from the bucket as a static site would be: anyone may read its objects (moto checks auth).
    boto3.client("s3", endpoint_url=endpoint).put_bucket_policy(Bucket="rushes-test", Policy=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                                                "Resource": "arn:aws:s3:::rushes-test/*"}]}))
    records = make_library(out, options, n=60)
    assert write_report(out, options) == "s3://rushes-test/lib/report/index.html"
    assert fs.info("rushes-test/lib/report/index.html")["ContentType"].startswith("text/html")
    check_report(browser, f"{endpoint}/rushes-test/lib/report/index.html", records, str(tmp_path / "s3.png"))
    # no variant matrix in this library: no ratio filter, no grouping, no table of cells
    assert browser.evaluate("[document.getElementById('l-ratio').hidden, document.getElementById('l-group').hidden,"
                            " !document.getElementById('cells')]") == [True, True, True]
    assert len(read_records(out, options)) == 60


def test_cli_report(tmp_path, capsys):
    from pipeline.cli import main

    make_library(str(tmp_path / "lib"), n=3)
    assert main(["report", str(tmp_path / "lib"), "--run", RUN]) == 0
    assert "report/index.html" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "lib"), "--run", "nope"]) == 2


@pytest.fixture(scope="module")
def demo_run(ray_local, tmp_path_factory):
    """The demo's manifest, run small: what `make demo` writes, in a few seconds per clip."""
    from pipeline.job import run_job
    from pipeline.spec import load_job
    from tests.conftest import job_dict

    out = str(tmp_path_factory.mktemp("report-run") / "demo")
    demo = os.path.join(os.path.dirname(__file__), "..", "..", "manifests", "demo.parquet")
    job = job_dict(demo, out, sampling={"height": 96, "width": 160, "num_frames": 9,
                                                            "fps": 8, "num_inference_steps": 2})
    return out, run_job(load_job(job), echo=lambda *_: None)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_run_ends_by_writing_its_report(demo_run, browser, tmp_path):
    out, summary = demo_run
    index = os.path.join(out, "report", "index.html")
    assert summary.report_uri == f"file://{index}" and f"report:   file://{index}" in summary.render()
    saved = json.loads(open(os.path.join(out, "runs", summary.run_id, "summary.json")).read())
    assert saved["counts"] == dict(summary.counts) and saved["work"]["new"] == summary.work["new"]
    records = read_records(out).to_pylist()
    assert Counter(r["status"] for r in records) == summary.counts and summary.generated >= 10
    shot = os.environ.get("RUSHES_SCREENSHOT") or str(tmp_path / "report.png")
    cards, widths = every_card(browser, f"file://{index}")
    assert sorted(cards) == sorted((r["id"], r["variant"], r["status"]) for r in records)
    assert len(widths) == sum(1 for r in records if r["preview_uri"]) >= 10 and all(w > 0 for w in widths)
    browser.evaluate("location.hash = ''")
    browser.wait_for("document.body.dataset.ready === '1'")
    browser.evaluate("Promise.all([...document.images].map(i => i.complete || new Promise(r => i.onload = r)))")
    browser.screenshot(shot, height=1900)  # the summary, the charts and the first two rows of clips
    assert os.path.getsize(shot) > 10_000


@pytest.mark.slow
def test_a_library_of_100000_videos_pages_from_chunks(browser, tmp_path):
    """The page holds a small index and loads card chunks as it pages (its speed: bench/report.py)."""
    out, n = str(tmp_path / "big"), 100_000
    synthetic_library(out, RUN, n, preview_root=f"{tmp_path.as_uri()}/big/previews")
    write_report(out)
    report = tmp_path / "big" / "report"
    assert (report / "index.html").stat().st_size < 20 * n + 100_000  # the index: a few bytes per card
    assert len(list((report / "cards").iterdir())) == n // CHUNK
    browser.open((report / "index.html").as_uri())
    browser.wait_for("document.body.dataset.ready === '1'")
    assert browser.evaluate("document.querySelectorAll('.card').length") == PAGE_SIZE
    browser.evaluate("document.body.dataset.ready = ''; location.hash = 'status=rejected&tag=night&page=700'")
    browser.wait_for("document.body.dataset.ready === '1'")
    assert browser.evaluate("document.getElementById('page-info').textContent") == "50000 cards, page 700 of 1042"
    assert set(browser.evaluate("[...document.querySelectorAll('.card')].map(c => c.dataset.status)")) == {"rejected"}
    # grouped by cell, a page deep in the library: its cards in cell order, under their cell's heading
    browser.evaluate("document.body.dataset.ready = ''; location.hash = 'status=rejected&group=cell&page=700'")
    browser.wait_for("document.body.dataset.ready === '1'")
    shown = browser.evaluate("[...document.querySelectorAll('.cell-group')].flatMap(g => "
                             "[...g.querySelectorAll('.card')].map(c => [g.dataset.ratio, c.dataset.id]))")
    rejected = sorted((["16:9", "9:16", "1:1"][i % 3], f"v-{i:06d}") for i in range(1, n, 2))
    assert shown == [list(c) for c in rejected[699 * PAGE_SIZE:700 * PAGE_SIZE]]


def test_a_run_that_stops_still_writes_its_report_and_a_report_never_fails_a_run(tmp_path, monkeypatch, caplog):
    import pipeline.report
    from pipeline.errors import JobFailed
    from pipeline.job import Run, run_job
    from pipeline.spec import load_job
    from tests.conftest import job_dict, write_manifest

    manifest = write_manifest(tmp_path / "m.parquet", [{"id": "a", "prompt": "a fox"}, {"id": "b c", "prompt": "x"}])
    job = load_job(job_dict(manifest, str(tmp_path / "out")))

    def stop(self, plan_uris, total):
        raise JobFailed("the pipeline stopped")
    monkeypatch.setattr(Run, "generate", stop)
    with pytest.raises(JobFailed):
        run_job(job, echo=lambda *_: None)
    page = (tmp_path / "out" / "report" / "index.html").read_text()
    # what it committed (the invalid row), and why it stopped
    assert "this run stopped before it finished (JobFailed: the pipeline stopped)" in page
    assert 'class="stat stat-invalid"><b>1</b>' in page

    monkeypatch.setattr(Run, "generate", lambda self, plan_uris, total: None)
    monkeypatch.setattr(pipeline.report, "write_report", lambda *a, **k: 1 / 0)
    summary = run_job(load_job(job_dict(manifest, str(tmp_path / "out"))), echo=lambda *_: None)
    assert summary.report_uri == "" and "report:" not in summary.render()
    assert "could not write the report (rushes report" in caplog.text


def test_a_storyboard_card_lists_its_shots_and_the_whole_videos_metrics(browser, tmp_path):
    """A long video's card: each shot with its frames and prompts, the whole video's metrics only (the
    per-segment ones stay in the record), and how many segments it had."""
    out = str(tmp_path / "lib")
    shots = [{"prompt": "Mara opens the door", "duration_s": 1.0, "expanded_prompt": "Mara, in a red coat, opens",
              "first_frame": 0, "end_frame": 9},
             {"prompt": "Tom waves", "duration_s": 2.0, "expanded_prompt": "Tom, in a blue cap, waves",
              "first_frame": 9, "end_frame": 25}]
    metrics = {"motion": 3.5, "scene_cuts": 0.0, **{f"segment_{k}/motion": 3.0 + k for k in range(3)}}
    writer = MetadataWriter(out, RUN, record_schema(pa.schema([])))
    writer.commit([{"id": "story", "variant": 0, "row": 0, "status": "accepted", "prompt": "two friends meet",
                    "expanded_prompt": "two friends meet", "shots": shots, "metrics": metrics}])
    writer.save_text(f"runs/{RUN}/job.yaml", "name: story\n")
    uri = write_report(out)
    browser.open(uri)
    browser.wait_for("document.body.dataset.ready === '1'")
    items = browser.evaluate("[...document.querySelectorAll('.card .shots li')].map(li => li.textContent)")
    assert items == ["frames 0–9: Mara opens the doorMara, in a red coat, opens",
                     "frames 9–25: Tom wavesTom, in a blue cap, waves"]
    table = browser.evaluate("document.querySelector('.card .metrics').textContent")
    assert "motion" in table and "scene_cuts" in table and "segment_" not in table
    assert "3 segments" in browser.evaluate("document.querySelector('.card .foot').textContent")


def test_a_card_says_who_rewrote_its_prompt_and_whether_it_was_cut_or_fell_back(browser, tmp_path):
    out = str(tmp_path / "lib")
    base = {"variant": 0, "status": "accepted", "prompt": "a kite", "expanded_prompt": "a red kite"}
    writer = MetadataWriter(out, RUN, record_schema(pa.schema([])))
    writer.commit([
        {**base, "id": "llm", "row": 0, "expand_model": "local:builtin:tiny-qwen", "prompt_tokens": 40},
        {**base, "id": "fell-back", "row": 1, "expand_model": "openai:qwen", "expanded_prompt": "a kite",
         "expand_error": "endpoint http://127.0.0.1:9: cannot connect"},
        {**base, "id": "cut", "row": 2, "expand_model": "template", "prompt_tokens": 900, "truncated": True},
        {**base, "id": "plain", "row": 3, "expand_model": "template", "prompt_tokens": 12, "truncated": False}])
    writer.save_text(f"runs/{RUN}/job.yaml", "name: notes\n")
    browser.open(write_report(out))
    browser.wait_for("document.body.dataset.ready === '1'")
    notes = dict(browser.evaluate(
        "[...document.querySelectorAll('.card')].map(c => [c.dataset.id, "
        "[...c.querySelectorAll('.notes li')].map(li => li.textContent)])"))
    assert notes == {
        "llm": ["rewriter: local:builtin:tiny-qwen"],
        "fell-back": ["rewriter: openai:qwen", "expansion: endpoint http://127.0.0.1:9: cannot connect"],
        "cut": ["prompt cut to the text encoder's budget (900 tokens given)"],
        "plain": []}
