"""Near-duplicates across the library and re-sampling of rejected variants, on real jobs.

Two rows with the same prompt and seed make the same video with the tiny model (a true duplicate), which
gives both checks a rejection that does not depend on thresholds.
"""
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from pipeline.job import run_job
from pipeline.plan import Planner
from pipeline.library import read_records
from pipeline.spec import load_job
from tests.conftest import job_dict

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
FOX = {"prompt": "a fox crossing a snowy road", "seed": 7}


def test_a_near_duplicate_of_an_earlier_run_is_rejected_naming_it(ray_local, make_manifest, tmp_path):
    out = str(tmp_path / "lib")
    first = make_manifest([{"id": "fox", **FOX}], name="first.parquet")
    run_job(load_job(job_dict(first, out)), echo=lambda *_: None)
    second = make_manifest([{"id": "fox", **FOX}, {"id": "fox-again", **FOX}, {"id": "owl", "prompt": "an owl",
                                                                                 "seed": 8}], name="second.parquet")
    summary = run_job(load_job(job_dict(second, out)), echo=lambda *_: None)

    assert summary.work["skipped"] == 1
    recs = {r["id"]: r for r in read_records(out).to_pylist()}
    dup = recs["fox-again"]
    assert dup["status"] == "rejected"
    assert len(dup["reasons"]) == 1 and dup["reasons"][0].startswith("near-duplicate: 0 of 256 hash bits from fox/0")
    assert dup["video_uri"] is None and not list(Path(out, "videos").glob("fox-again/*"))
    assert dup["phash"] == recs["fox"]["phash"] and dict(dup["metrics"])["duplicate_bits"] == 0
    # recorded only when within twice the threshold (48 bits); never within the threshold
    assert dict(recs["owl"]["metrics"]).get("duplicate_bits", 49) > 24
    assert recs["owl"]["status"] == "accepted"


def test_a_rejected_variant_is_sampled_again_with_a_new_seed(ray_local, make_manifest, tmp_path):
    out = str(tmp_path / "lib")
    manifest = make_manifest([{"id": "fox", **FOX}, {"id": "fox-twin", **FOX}])
    spec = load_job(job_dict(manifest, out, filter={"retries_on_reject": 2}))
    lines = []
    summary = run_job(spec, echo=lines.append)

    recs = {r["id"]: r for r in read_records(out).to_pylist()}
    assert {r["status"] for r in recs.values()} == {"accepted"}
    # Whichever of the twins came back second was the duplicate, and went round again.
    retried = [r for r in recs.values() if r["attempt"]]
    assert len(retried) == 1
    again, other = retried[0], recs[({"fox", "fox-twin"} - {retried[0]["id"]}).pop()]
    assert again["attempt"] == 1 and again["seed"] != 7 and other["seed"] == 7
    assert len(again["attempts"]) == 1
    assert again["attempts"][0].startswith(f"seed 7: near-duplicate: 0 of 256 hash bits from {other['id']}/0")
    assert again["phash"] != other["phash"] and Path(again["video_uri"].removeprefix("file://")).exists()
    planned = {(v["id"], v["variant"]): v["params_hash"] for b in Planner(spec).batches() for v in b.todo}
    assert again["params_hash"] == planned[(again["id"], 0)]  # the variant as asked for: a re-run skips it
    assert summary.work["resampled"] == 1
    assert any("sampling 1 rejected variants again" in line for line in lines)
    # Exactly one record per variant: the rejected try was never committed.
    all_recs = pads.dataset(f"{out}/metadata", format="parquet").to_table().to_pylist()
    assert sorted(r["id"] for r in all_recs) == ["fox", "fox-twin"]

    rerun = run_job(spec.model_copy(update={"run_id": None}), echo=lambda *_: None)
    assert rerun.work["skipped"] == 2 and rerun.generated == 0
