"""A whole job per model family on a real local Ray instance: each tiny model is built, saved, loaded with
`from_pretrained` in the actors, and every MP4 it makes decodes back with PyAV to the requested shape."""
import io

import av
import fsspec
import numpy as np
import pyarrow.dataset as pads
import pytest

from pipeline.job import run_job
from pipeline.spec import load_job
from tests.conftest import job_dict, write_manifest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROWS = [
    {"id": "cat", "prompt": "a cat walking on a beach", "seed": 1},
    {"id": "car", "prompt": "a red car at night", "seed": 2},
    {"id": "odd", "prompt": "frames against the family's rule", "seed": 3, "num_frames": 11},
]
MODELS = [
    pytest.param("wan", "builtin:tiny-wan22", id="tiny-wan22"),
    pytest.param("wan", "builtin:tiny-wan22-ti2v", id="tiny-wan22-ti2v"),
    pytest.param("ltx", "builtin:tiny-ltx", id="tiny-ltx"),
    pytest.param("cogvideox", "builtin:tiny-cogvideox", id="tiny-cogvideox"),
    pytest.param("hunyuan", "builtin:tiny-hunyuan", id="tiny-hunyuan"),
    pytest.param("skyreels", "builtin:tiny-skyreels", id="tiny-skyreels"),
]


def decode(uri):
    with fsspec.open(uri, "rb") as f, av.open(io.BytesIO(f.read())) as c:
        return np.stack([fr.to_ndarray(format="rgb24") for fr in c.decode(c.streams.video[0])])


@pytest.mark.parametrize("family,path", MODELS)
def test_a_job_runs_with_the_familys_tiny_model(ray_local, tmp_path, family, path):
    manifest = write_manifest(tmp_path / "m.parquet", ROWS)
    # keep_rejected: the tiny random models paint noise that the quality filter may reject; every video
    # is written anyway so that each one can be decoded back here.
    job = job_dict(manifest, str(tmp_path / "out"), model={"family": family, "path": path},
                   encode={"preset": "ultrafast", "keep_rejected": True})
    summary = run_job(load_job(job), echo=lambda *_: None)
    recs = {r["id"]: r for r in pads.dataset(f"{tmp_path}/out/metadata", format="parquet").to_table().to_pylist()}
    assert sorted(recs) == ["car", "cat", "odd"]
    assert recs["odd"]["status"] == "invalid"
    assert f"for family '{family}', got 11" in recs["odd"]["error"]
    assert summary.counts["accepted"] + summary.counts["rejected"] == 2
    for rid in ("cat", "car"):
        r = recs[rid]
        assert r["status"] in ("accepted", "rejected"), r["error"]
        assert r["model_family"] == family and r["model_path"] == path and r["model_weights_hash"]
        frames = decode(r["video_uri"])
        assert frames.shape == (9, 64, 64, 3)
        # the settings the job file left unset are the family's, and the record says which were used
        assert (r["fps"], r["guidance_scale"]) == (8, 4.0 if path == "builtin:tiny-wan22" else 5.0)
        assert r["guidance_scale_2"] == (3.0 if path == "builtin:tiny-wan22" else None)
    assert not np.array_equal(decode(recs["cat"]["video_uri"]), decode(recs["car"]["video_uri"]))


def test_a_job_with_a_lora_runs_on_both_wan22_experts_and_a_new_scale_regenerates(ray_local, tmp_path):
    pytest.importorskip("peft")
    from tests.stages.test_lora import make_lora

    lora = make_lora(tmp_path, path="builtin:tiny-wan22")
    manifest = write_manifest(tmp_path / "m.parquet", ROWS[:2])
    job = job_dict(manifest, str(tmp_path / "out"), model={"family": "wan", "path": "builtin:tiny-wan22",
                                                           "loras": [{"path": lora, "scale": 0.8}]},
                   encode={"preset": "ultrafast", "keep_rejected": True})
    first = run_job(load_job(job), echo=lambda *_: None)
    assert first.counts["accepted"] + first.counts["rejected"] == 2
    same = run_job(load_job(job), echo=lambda *_: None)
    assert same.counts.get("accepted", 0) + same.counts.get("rejected", 0) == 0  # skipped: nothing changed
    job["model"]["loras"][0]["scale"] = 0.4
    again = run_job(load_job(job), echo=lambda *_: None)
    assert again.counts["accepted"] + again.counts["rejected"] == 2  # the scale is in params_hash


def test_a_job_with_speed_options_runs_on_ray_and_they_are_in_params_hash(ray_local, tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", ROWS[:2])
    plain = job_dict(manifest, str(tmp_path / "out"), encode={"preset": "ultrafast", "keep_rejected": True})
    first = run_job(load_job(plain), echo=lambda *_: None)
    assert first.counts["accepted"] + first.counts["rejected"] == 2
    fast = dict(plain, sample={**plain["sample"], "batch_size": 2,
                               "cache": {"kind": "taylorseer", "cache_interval": 2, "disable_cache_before_step": 1},
                               "fp8_storage": True})
    summary = run_job(load_job(fast), echo=lambda *_: None)
    assert summary.counts["accepted"] + summary.counts["rejected"] == 2  # regenerated: new params_hash
    recs = pads.dataset(f"{tmp_path}/out/metadata", format="parquet").to_table().to_pylist()
    latest = {}
    for r in sorted(recs, key=lambda r: r["committed_at"]):
        latest[r["id"]] = r
    for r in latest.values():
        assert decode(r["video_uri"]).shape == (9, 64, 64, 3)
