"""A whole job with the `null` model family: every stage but the model is real, so many rows run fast."""
import io

import av
import fsspec
import pyarrow.dataset as pads
import pytest

from pipeline.job import run_job
from pipeline.spec import load_job
from tests.conftest import job_dict, write_manifest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_twenty_null_rows_each_committed_once_with_videos_of_the_right_length(ray_local, tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet",
                              [{"id": f"n{i:02d}", "prompt": f"a null clip {i}", "seed": i} for i in range(20)])
    out = str(tmp_path / "out")
    stale = tmp_path / "out/runs/killed-run/plan/000/000000.parquet"  # left by a run whose driver was killed
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"plan")
    job = job_dict(manifest, out, model={"family": "null", "path": "builtin:null"},
                   sampling={"num_frames": 13}, decode={"batch_size": 4}, encode={"batch_size": 4})
    summary = run_job(load_job(job), echo=lambda *_: None)
    assert not list((tmp_path / "out/runs").glob("*/plan")), "plan objects are removed once read"

    recs = pads.dataset(f"{out}/metadata", format="parquet").to_table().to_pylist()
    assert sorted((r["id"], r["variant"]) for r in recs) == [(f"n{i:02d}", 0) for i in range(20)]
    assert {r["status"] for r in recs} <= {"accepted", "rejected"}
    assert summary.counts["accepted"] + summary.counts["rejected"] == 20
    assert {r["model_family"] for r in recs} == {"null"}
    assert {r["model_weights_hash"] for r in recs} == {"null-v1"}
    accepted = [r for r in recs if r["status"] == "accepted"]
    assert accepted, [r["reasons"] for r in recs]
    for r in accepted:
        with fsspec.open(r["video_uri"], "rb") as f, av.open(io.BytesIO(f.read())) as c:
            assert sum(1 for _ in c.decode(c.streams.video[0])) == 13


def test_a_run_longer_than_max_rows_per_dataset_goes_in_waves(ray_local, tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet",
                              [{"id": f"w{i:02d}", "prompt": f"a null clip {i}", "seed": 100 + i} for i in range(20)])
    out = str(tmp_path / "out")
    job = job_dict(manifest, out, model={"family": "null", "path": "builtin:null"}, sampling={"num_frames": 5},
                   ray={"max_rows_per_dataset": 8}, filter={"max_duplicate_distance": None})
    lines = []
    summary = run_job(load_job(job), echo=lines.append)
    waves = [line for line in lines if line.startswith("[rushes] wave")]
    assert waves == [f"[rushes] wave {i} of 3: up to 8 variants (ray.max_rows_per_dataset=8)" for i in (1, 2, 3)]
    recs = pads.dataset(f"{out}/metadata", format="parquet").to_table().to_pylist()
    assert sorted(r["id"] for r in recs) == [f"w{i:02d}" for i in range(20)]  # each once, across the waves
    assert summary.generated == 20
