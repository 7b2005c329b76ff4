"""Image- and video-conditioned jobs on a real local Ray: every conditioned path with its built-in model, whose MP4s
decode back with PyAV; a changed image regenerates exactly its row; every kind of bad input gives its row an
invalid record naming the column and the URI while the other rows complete."""
import io
import os

import av
import fsspec
import numpy as np
import pytest
from PIL import Image

from pipeline.job import run_job
from pipeline.library import read_records
from pipeline.spec import load_job
from tests.conftest import job_dict, write_manifest
from tests.pipeline.test_conditioning_plan import picture
from tests.stages.test_conditioning import huge_png_header, jpeg, mp4, png

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def frames_of(uri):
    with fsspec.open(uri, "rb") as f, av.open(io.BytesIO(f.read())) as c:
        return np.stack([fr.to_ndarray(format="rgb24") for fr in c.decode(c.streams.video[0])])


def records(output):
    return {r["id"]: r for r in read_records(output).to_pylist()}


def run(tmp_path, rows, **job):
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    spec = load_job(job_dict(manifest, str(tmp_path / "out"), expand={"mode": "none"},
                             encode={"preset": "ultrafast", "keep_rejected": True}, **job))
    return run_job(spec, echo=lambda *_: None), records(spec.output)


PATHS = {
    "tiny-wan-i2v": ("wan", [{"image": "a.png"}, {"image": "b.png"}]),
    "tiny-wan-flf2v": ("wan", [{"image": "a.png", "last_image": "b.png"}]),
    "tiny-wan22-i2v": ("wan", [{"image": "a.png", "last_image": "b.png"}, {"image": "b.png"}]),
    "tiny-wan22-ti2v": ("wan", [{"image": "a.png"}, {}]),  # the same checkpoint makes text rows too
    "tiny-ltx": ("ltx", [{"image": "a.png"}, {"image": "a.png", "last_image": "b.png"}, {"video": "clip.mp4"}]),
    "tiny-cogvideox-i2v": ("cogvideox", [{"image": "a.png"}]),
    "tiny-skyreels-i2v": ("skyreels", [{"image": "b.png"}]),
}


@pytest.mark.parametrize("name", sorted(PATHS))
def test_each_conditioned_path_runs_end_to_end(ray_local, tmp_path, name):
    family, conditioned = PATHS[name]
    picture(tmp_path / "a.png", (220, 40, 40), size=(120, 80))
    picture(tmp_path / "b.png", (40, 40, 220), size=(64, 96))
    (tmp_path / "clip.mp4").write_bytes(mp4(13))
    rows = [{"id": f"r{i}", "prompt": "a product turns slowly, the camera pushes in", "seed": i, **c}
            for i, c in enumerate(conditioned)]
    frames = 17 if family == "ltx" else 9  # LTX continues the clip's last 9 frames: a 17-frame video
    summary, recs = run(tmp_path, rows, model={"family": family, "path": f"builtin:{name}"},
                        sampling={"num_frames": frames})
    assert summary.counts["accepted"] + summary.counts["rejected"] == len(rows), [r["error"] for r in recs.values()]
    for r, given in zip((recs[x["id"]] for x in rows), conditioned):
        assert r["status"] in ("accepted", "rejected"), r["error"]
        assert frames_of(r["video_uri"]).shape == (frames, 64, 64, 3)
        for column in ("image", "last_image", "video"):
            if column in given:
                assert r[column] == str(tmp_path / given[column]) and len(r[f"{column}_sha256"]) == 64
            else:
                assert r[column] is None and r[f"{column}_sha256"] is None
        assert r["conditioning_resize"] == ("crop" if given else None)


def test_diffusion_forcing_long_rows_start_from_an_image_or_continue_a_clip(ray_local, tmp_path):
    picture(tmp_path / "a.png", (220, 40, 40), size=(120, 80))
    (tmp_path / "clip.mp4").write_bytes(mp4(13))
    rows = [{"id": "from-image", "prompt": "a lighthouse in a storm", "seed": 1, "image": "a.png", "num_frames": 33},
            {"id": "from-clip", "prompt": "the waves rise", "seed": 2, "video": "clip.mp4", "num_frames": 33},
            {"id": "board", "prompt": "Ada, a sailor", "seed": 3, "image": "a.png",
             "shots": [{"prompt": "Ada mends a net", "duration_s": 1.0}, {"prompt": "Ada rows out", "duration_s": 2.0}]}]
    summary, recs = run(tmp_path, rows, model={"family": "skyreels_df", "path": "builtin:tiny-skyreels-df"},
                        sampling={"height": 32, "width": 32, "num_frames": None}, sample={"batch_size": 1})
    for rid in ("from-image", "from-clip", "board"):
        r = recs[rid]
        assert r["status"] in ("accepted", "rejected"), r["error"]
        assert frames_of(r["video_uri"]).shape == (r["num_frames"], 32, 32, 3)
        assert "segment_1/motion" in dict(r["metrics"])  # made window by window
    assert recs["from-clip"]["video_frames"] == 13 and recs["from-clip"]["video_sha256"]
    assert not list((tmp_path / "out" / "segments" / "from-image" / "0").iterdir())  # removed once written


def test_a_changed_image_regenerates_exactly_its_row(ray_local, tmp_path):
    for name, colour in (("a", (200, 30, 30)), ("b", (30, 200, 30)), ("c", (30, 30, 200))):
        picture(tmp_path / f"{name}.png", colour)
    rows = [{"id": n, "prompt": "a bottle on a table", "seed": 1, "image": f"{n}.png"} for n in "abc"]
    model = {"family": "wan", "path": "builtin:tiny-wan-i2v"}
    first, recs = run(tmp_path, rows, model=model)
    assert first.work["new"] == 3 and first.counts["accepted"] + first.counts["rejected"] == 3
    same, _ = run(tmp_path, rows, model=model)
    assert same.work["skipped"] == 3 and sum(same.counts.values()) == 0  # decided without loading a model
    picture(tmp_path / "b.png", (30, 201, 30))
    os.utime(tmp_path / "a.png")  # touched, same bytes: still skipped
    again, after = run(tmp_path, rows, model=model)
    assert (again.work["regenerated"], again.work["skipped"]) == (1, 2)
    assert after["b"]["image_sha256"] != recs["b"]["image_sha256"]
    assert after["b"]["run_id"] != recs["b"]["run_id"]
    assert after["a"]["run_id"] == recs["a"]["run_id"] and after["c"]["run_id"] == recs["c"]["run_id"]


def test_every_bad_input_is_an_invalid_row_and_the_rest_of_the_job_completes(ray_local, tmp_path):
    rng = np.random.default_rng(0)
    good = Image.fromarray(rng.integers(0, 255, (48, 64, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    palette = Image.new("P", (40, 40), 0)
    palette.putpalette([0, 0, 255] + [255, 0, 0] * 255)
    files = {
        "good.png": png(good), "cmyk.jpg": jpeg(Image.new("CMYK", (64, 48), (0, 200, 200, 0))),
        "gray16.png": png(Image.fromarray((rng.integers(0, 65535, (48, 64))).astype(np.uint16))),
        "palette.png": png(palette, transparency=0), "rotated.jpg": jpeg(good, exif=exif.tobytes()),
        "alpha.png": png(Image.new("RGBA", (64, 48), (0, 0, 0, 100))),
        "empty.png": b"", "words.png": b"no pixels here\n" * 8, "truncated.png": png(good)[:300],
        "huge.png": huge_png_header(9000, 6000), "short.mp4": mp4(5), "cut.mp4": mp4(13)[:400],
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "folder.png").mkdir()
    handled = ["good.png", "cmyk.jpg", "gray16.png", "palette.png", "rotated.jpg", "alpha.png"]
    bad = {"missing": ("image", "missing.png", "no such file"), "folder": ("image", "folder.png", "is a folder"),
           "empty": ("image", "empty.png", "the file is empty"), "words": ("image", "words.png", "not an image"),
           "truncated": ("last_image", "truncated.png", "truncated"),
           "huge": ("image", "huge.png", "54,000,000 pixels, over the limit of 50,000,000"),
           "still": ("video", "good.png", "not a video clip"), "cut": ("video", "cut.mp4", "not a readable video"),
           "short": ("video", "short.mp4", "the clip has 5 frames; family 'ltx' continues from its last 9")}
    rows = [{"id": name.split(".")[0], "prompt": "a product on a table", "image": name} for name in handled]
    rows += [{"id": rid, "prompt": "a product on a table", column: file} for rid, (column, file, _) in bad.items()]
    summary, recs = run(tmp_path, rows, model={"family": "ltx", "path": "builtin:tiny-ltx"},
                        sampling={"num_frames": 17})
    for rid, (column, file, words) in bad.items():
        r = recs[rid]
        assert r["status"] == "invalid", (rid, r["status"], r["error"])
        assert r["error"].startswith(f"{column}: {tmp_path / file}") and words in r["error"], r["error"]
    for name in handled:
        r = recs[name.split(".")[0]]
        assert r["status"] in ("accepted", "rejected"), (name, r["error"])
        assert frames_of(r["video_uri"]).shape == (17, 64, 64, 3)
    assert summary.counts["invalid"] == len(bad)
