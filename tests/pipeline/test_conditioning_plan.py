"""Conditioned rows while planning (no Ray): each input's URI and hash join the variant, the hash and the resize
policy join params_hash (a changed image changes exactly its row's), a text row keeps its old params_hash, and a
conditioning the family or checkpoint cannot take, a missing one, or a clip too short is an invalid row naming
them."""
import numpy as np
import pytest
from PIL import Image

from pipeline.plan import Planner
from pipeline.spec import JobSpecError, load_job
from tests.conftest import job_dict, write_manifest
from tests.stages.test_conditioning import mp4

I2V = {"family": "wan", "path": "builtin:tiny-wan-i2v"}


def picture(path, colour, size=(48, 32)):
    img = Image.new("RGB", size, colour)
    img.paste(tuple(255 - c for c in colour), (4, 4, 20, 20))
    img.save(path)
    return path.name


def plan(tmp_path, rows, **job):
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    spec = load_job(job_dict(manifest, str(tmp_path / "out"), **job))
    batches = list(Planner(spec).batches())
    return {v["id"]: v for b in batches for v in b.todo}, {r["id"]: r["error"] for b in batches for r in b.invalid}


def test_inputs_join_the_variant_and_params_hash(tmp_path):
    a, b = picture(tmp_path / "a.png", (200, 30, 30)), picture(tmp_path / "b.png", (30, 30, 200))
    rows = [{"id": "a", "prompt": "a bottle turns", "image": a}, {"id": "b", "prompt": "a shoe", "image": b}]
    todo, invalid = plan(tmp_path, rows, model=I2V)
    assert not invalid
    v = todo["a"]
    assert v["image"] == str(tmp_path / "a.png")  # relative to the manifest's folder, recorded as read
    assert len(v["image_sha256"]) == 64 and v["conditioning_resize"] == "crop"
    assert v.get("conditioning_strength") is None and v.get("last_image") is None
    before = {k: x["params_hash"] for k, x in todo.items()}

    picture(tmp_path / "a.png", (200, 30, 31))  # one pixel value changed
    after = {k: x["params_hash"] for k, x in plan(tmp_path, rows, model=I2V)[0].items()}
    assert after["a"] != before["a"] and after["b"] == before["b"]
    (tmp_path / "moved").mkdir()
    (tmp_path / "b.png").rename(tmp_path / "moved" / "b.png")  # the bytes decide, not the path
    rows[1]["image"] = "moved/b.png"
    moved = plan(tmp_path, rows, model=I2V)[0]
    assert moved["b"]["params_hash"] == before["b"] and moved["b"]["image"] == str(tmp_path / "moved" / "b.png")
    pad = plan(tmp_path, rows, model=I2V, conditioning={"resize": "pad"})[0]
    assert pad["b"]["params_hash"] != before["b"]


def test_a_text_row_keeps_its_params_hash_beside_conditioned_rows(tmp_path):
    text = {"id": "t", "prompt": "a harbour at dawn"}
    plain = plan(tmp_path, [text])[0]["t"]["params_hash"]
    ti2v = {"family": "wan", "path": "builtin:tiny-wan22-ti2v"}
    mixed, invalid = plan(tmp_path, [text, {"id": "i", "prompt": "a bottle", "image": picture(tmp_path / "i.png", (9, 9, 9))}],
                          conditioning={"resize": "stretch"}, sampling={"height": 64, "width": 64})
    assert invalid == {"i": invalid["i"]} and "family 'wan' with model builtin:tiny-wan (WanPipeline) cannot take a " \
        "first image" in invalid["i"]
    assert mixed["t"]["params_hash"] == plain
    both, invalid = plan(tmp_path, [text, {"id": "i", "prompt": "a bottle", "image": "i.png"}], model=ti2v,
                         sampling={"height": 64, "width": 64})
    assert not invalid and both["i"]["image_sha256"] and both["t"].get("image_sha256") is None


@pytest.mark.parametrize("model,row,words", [
    (I2V, {"prompt": "no image"}, "image: family 'wan' with model builtin:tiny-wan-i2v (WanImageToVideoPipeline) "
                                  "needs a first image in every row"),
    (I2V, {"prompt": "two frames", "image": "a.png", "last_image": "a.png"},
     "last_image: family 'wan' with model builtin:tiny-wan-i2v (WanImageToVideoPipeline) cannot take a last image"),
    ({"family": "wan", "path": "builtin:tiny-wan-flf2v"}, {"prompt": "one frame", "image": "a.png"},
     "last_image: family 'wan' with model builtin:tiny-wan-flf2v (WanImageToVideoPipeline) needs a last image"),
    ({"family": "wan", "path": "builtin:tiny-wan22-ti2v"}, {"prompt": "x", "image": "a.png", "last_image": "a.png"},
     "cannot take a last image; it takes image"),
    ({"family": "cogvideox", "path": "builtin:tiny-cogvideox"}, {"prompt": "x", "video": "clip.mp4"},
     "video: family 'cogvideox' with model builtin:tiny-cogvideox (CogVideoXPipeline) cannot take a clip"),
    ({"family": "skyreels_df", "path": "builtin:tiny-skyreels-df"}, {"prompt": "x", "video": "clip.mp4"},
     "video: {clip}: the clip has 5 frames; family 'skyreels_df' continues from its last 9"),
    ({"family": "skyreels_df", "path": "builtin:tiny-skyreels-df"}, {"prompt": "x", "video": "a.png"},
     "video: {a}: an image (png), not a video clip"),
    ({"family": "skyreels_df", "path": "builtin:tiny-skyreels-df"}, {"prompt": "x", "video": "clip.mp4", "image": "a.png"},
     "image and video: a row starts from an image or continues a clip, not both"),
])
def test_a_conditioning_the_model_cannot_take_is_an_invalid_row_naming_both(tmp_path, model, row, words):
    picture(tmp_path / "a.png", (1, 2, 3))
    (tmp_path / "clip.mp4").write_bytes(mp4(5))
    sampling = {"height": 64, "width": 64, "num_frames": 9}
    if model["family"] == "skyreels_df":
        sampling = {"height": 32, "width": 32, "num_frames": 25}
    todo, invalid = plan(tmp_path, [{"id": "r", **row}], model=model, sampling=sampling)
    assert not todo
    assert words.format(clip=tmp_path / "clip.mp4", a=tmp_path / "a.png") in invalid["r"], invalid["r"]


def test_strength_only_for_a_family_that_has_it(tmp_path):
    with pytest.raises(JobSpecError, match="conditioning.strength: family 'wan' has no conditioning strength"):
        load_job({"manifest": "m", "output": "o", "model": I2V, "conditioning": {"strength": 0.8}})
    with pytest.raises(JobSpecError, match="conditioning.resize"):
        load_job({"manifest": "m", "output": "o", "conditioning": {"resize": "squash"}})
    picture(tmp_path / "a.png", (1, 2, 3))
    todo, _ = plan(tmp_path, [{"id": "r", "prompt": "x", "image": "a.png"}],
                   model={"family": "ltx", "path": "builtin:tiny-ltx"}, conditioning={"strength": 0.8})
    assert todo["r"]["conditioning_strength"] == 0.8


def test_each_matrix_cell_fits_the_image_to_its_own_shape(tmp_path):
    picture(tmp_path / "a.png", (200, 100, 50), size=(96, 64))
    todo = [v for b in Planner(load_job(job_dict(
        write_manifest(tmp_path / "m.parquet", [{"id": "a", "prompt": "a bottle", "image": "a.png"}]),
        str(tmp_path / "o"), model=I2V, variants={"aspect_ratios": ["16:9", "9:16"]},
        sampling={"height": 64, "width": 64}))).batches() for v in b.todo]
    assert [(v["aspect_ratio"], v["height"], v["width"]) for v in todo] == [("16:9", 48, 80), ("9:16", 80, 48)]
    assert len({v["image_sha256"] for v in todo}) == 1 and len({v["params_hash"] for v in todo}) == 2
    from stages.media.conditioning import Target, load

    shapes = [load("image", v["image"], v["image_sha256"], Target(v["width"], v["height"])).size for v in todo]
    assert shapes == [(80, 48), (48, 80)]
    assert np.asarray(Image.open(tmp_path / "a.png")).shape == (64, 96, 3)


def test_inputs_in_object_storage_are_read_with_the_jobs_storage_options(s3, tmp_path):
    """A manifest in a bucket names its pictures relative to itself; planning and the worker read them with the
    job's storage_options (a moto S3 endpoint here); a missing one is an invalid row naming its s3:// URI."""
    import io

    from stages.media.conditioning import Target, load

    fs, endpoint = s3
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, "PNG")
    fs.pipe_file("rushes-test/jobs/shots/a.png", buf.getvalue())
    local = write_manifest(tmp_path / "m.parquet", [{"id": "a", "prompt": "a red box", "image": "shots/a.png"},
                                                    {"id": "gone", "prompt": "a box", "image": "shots/gone.png"}])
    fs.put_file(local, "rushes-test/jobs/m.parquet")
    options = {"endpoint_url": endpoint}
    spec = load_job(job_dict("s3://rushes-test/jobs/m.parquet", str(tmp_path / "out"), model=I2V,
                             storage_options=options))
    batches = list(Planner(spec).batches())
    v = batches[0].todo[0]
    assert v["image"] == "s3://rushes-test/jobs/shots/a.png"
    assert batches[0].invalid[0]["error"] == "image: s3://rushes-test/jobs/shots/gone.png: no such file"
    img = load("image", v["image"], v["image_sha256"], Target(64, 64), storage_options=options)
    assert img.size == (64, 64) and img.getpixel((32, 32)) == (200, 10, 10)
