"""The report shows each conditioned video's inputs (first image, last image, the clip it continues) beside its
preview: the small JPEGs the write stage put under `inputs/`, linked relatively, each titled with the input's URI."""
from __future__ import annotations

import io
import json

import pyarrow as pa
from PIL import Image

from pipeline.commit import MetadataWriter, record_schema
from pipeline.report import write_report
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
