"""The report shows each conditioned video's inputs (first image, last image, the clip it continues) beside its
preview: the small JPEGs the write stage put under `inputs/`, linked relatively, each titled with the input's URI."""
from __future__ import annotations

import io
import json

import av
import fsspec
import pyarrow as pa
import pytest
from PIL import Image

from pipeline.commit import MetadataWriter, record_schema
from pipeline.job import run_job
from pipeline.library import read_records
from pipeline.report import write_report
from pipeline.spec import load_job
from tests.conftest import job_dict, write_manifest
from stages.common.storage import filesystem, join, put_atomic
from tests.pipeline.test_report import RUN, browser, webp_preview  # noqa: F401 - browser is a fixture

__all__ = ["browser"]


def jpeg(colour, size=(32, 18)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG")
    return buf.getvalue()


def conditioned_library(out: str) -> None:
    fs, root = filesystem(out)
    recs = []
    for i, given in enumerate([{"image": "s3://shots/bottle.png"},
                               {"image": "s3://shots/bottle.png", "last_image": "/data/cap.webp"},
                               {"video": "clips/intro.mp4"}, {}]):
        rid = f"ad-{i}"
        rec = {"id": rid, "variant": 0, "row": i, "status": "accepted", "prompt": "a bottle turns",
               "expanded_prompt": "a bottle turns", "resolution": "32x18", **given}
        for column in given:
            key = join(root, "inputs", rid, f"0-{column}.jpg")
            put_atomic(fs, key, jpeg((200, 40 * i, 40)))
            rec[f"{column}_preview_uri"] = fs.unstrip_protocol(key)
        key = join(root, "previews", rid, "0.webp")
        put_atomic(fs, key, webp_preview(32, 18))
        rec["preview_uri"] = fs.unstrip_protocol(key)
        recs.append(rec)
    recs.append({"id": "bad", "variant": -1, "row": 4, "status": "invalid", "prompt": "a bottle",
                 "image": "missing.png", "error": "image: /lib/missing.png: no such file"})
    writer = MetadataWriter(out, RUN, record_schema(pa.schema([])))
    writer.commit(recs)
    writer.save_text(f"runs/{RUN}/job.yaml", "name: i2v\n")


def cards_of(out: str) -> dict:
    text = open(f"{out}/report/cards/000000.js").read()
    cards = json.loads(text[text.index(",") + 1:text.rindex(")")])
    return {c["id"]: c for c in cards}


def test_a_card_carries_its_inputs_with_relative_links(tmp_path):
    out = str(tmp_path / "lib")
    conditioned_library(out)
    write_report(out)
    cards = cards_of(out)
    assert cards["ad-0"]["inputs"] == [{"what": "first frame", "uri": "s3://shots/bottle.png",
                                        "src": "../inputs/ad-0/0-image.jpg"}]
    assert [i["what"] for i in cards["ad-1"]["inputs"]] == ["first frame", "last frame"]
    assert cards["ad-2"]["inputs"][0]["src"] == "../inputs/ad-2/0-video.jpg"
    assert "inputs" not in cards["ad-3"]  # a text row
    assert cards["bad"]["inputs"] == [{"what": "first frame", "uri": "missing.png"}]  # no file: its URI only
    for c in cards.values():
        for i in c.get("inputs", []):
            if "src" in i:
                assert (tmp_path / "lib" / "report" / i["src"]).resolve().is_file()


def test_the_inputs_show_beside_the_preview_in_chromium(browser, tmp_path):  # noqa: F811
    out = str(tmp_path / "lib")
    conditioned_library(out)
    browser.open(write_report(out))
    browser.wait_for("document.body.dataset.ready === '1'")
    shown = dict(browser.evaluate(
        "Promise.all([...document.images].map(i => i.complete ? 0 : new Promise(r => i.onload = i.onerror = r)))"
        ".then(() => [...document.querySelectorAll('.card')].map(c => [c.dataset.id, "
        "[...c.querySelectorAll('.media figure.input')].map(f => [f.querySelector('figcaption').textContent, "
        "f.title, f.querySelector('img') ? f.querySelector('img').naturalWidth : 0])]))"))
    assert shown["ad-1"] == [["first frame", "s3://shots/bottle.png", 32], ["last frame", "/data/cap.webp", 32]]
    assert shown["ad-2"] == [["clip continued (its last frame)", "clips/intro.mp4", 32]]
    assert shown["ad-3"] == [] and shown["bad"] == [["first frame", "missing.png", 0]]
    # the preview and its inputs sit side by side: the inputs' column is right of the preview
    left = browser.evaluate("(() => { const c = document.querySelector('.card[data-id=\"ad-1\"]');"
                            " return [c.querySelector('img.preview').getBoundingClientRect().right,"
                            " c.querySelector('figure.input').getBoundingClientRect().left]; })()")
    assert left[0] <= left[1]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_run_rewrites_with_the_image_and_its_report_shows_the_inputs(ray_local, tmp_path):
    """On Ray: builtin:tiny-llava rewrites each image row shown its picture (the text row without), the video starts
    from the picture, the write stage puts the picture as the video saw it under inputs/, and the report shows it."""
    Image.new("RGB", (120, 60), (200, 40, 40)).save(tmp_path / "wide.png")
    Image.new("RGBA", (40, 90), (40, 40, 200, 128)).save(tmp_path / "tall.png")
    rows = [{"id": "wide", "prompt": "a bottle turns", "seed": 1, "image": "wide.png"},
            {"id": "tall", "prompt": "a can spins", "seed": 2, "image": "tall.png", "last_image": "wide.png"},
            {"id": "text", "prompt": "a red car at night", "seed": 3}]
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    spec = load_job(job_dict(manifest, str(tmp_path / "out"), model={"family": "ltx", "path": "builtin:tiny-ltx"},
                             sampling={"height": 64, "width": 96, "num_frames": 9},
                             expand={"mode": "llm", "backend": "local", "model": "builtin:tiny-llava",
                                     "max_new_tokens": 24, "resources": {"num_gpus": 0}},
                             encode={"keep_rejected": True}, conditioning={"resize": "pad"}))
    run_job(spec, echo=lambda *_: None)
    recs = {r["id"]: r for r in read_records(spec.output).to_pylist()}
    assert all(r["status"] in ("accepted", "rejected") for r in recs.values()), [r["error"] for r in recs.values()]
    assert recs["wide"]["expand_image"] == recs["tall"]["expand_image"] == "shown"
    assert recs["text"]["expand_image"] is None and recs["text"]["image_preview_uri"] is None
    for rid, columns in (("wide", ["image"]), ("tall", ["image", "last_image"])):
        for column in columns:
            with fsspec.open(recs[rid][f"{column}_preview_uri"], "rb") as f, Image.open(f) as shown:  # padded to the video's 96x64
                assert abs(shown.width / shown.height - 1.5) < 0.05
        with av.open(recs[rid]["video_uri"]) as c:
            assert sum(1 for _ in c.decode(c.streams.video[0])) == 9
    cards = cards_of(spec.output)
    assert [i["what"] for i in cards["tall"]["inputs"]] == ["first frame", "last frame"]
    assert "the image and the rewriter: shown" in cards["wide"]["notes"]
