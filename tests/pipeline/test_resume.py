"""Re-runs against an existing library: skip, append, regenerate, retry; and the output lease."""
import json
import time

import pyarrow as pa
import pytest

from pipeline.commit import MetadataWriter, record_schema
from pipeline.job import run_job
from pipeline.lease import Lease, LeaseHeld
from pipeline.library import read_all_records, read_records
from pipeline.spec import load_job
from tests.conftest import job_dict, write_manifest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROWS = [{"id": "a", "prompt": "a cat on a beach"}, {"id": "b", "prompt": "a red car at night"},
        {"id": "c", "prompt": "a whale", "num_variants": 2}, {"id": "bad/one", "prompt": "invalid id"}]
quiet = dict(echo=lambda *_: None)


def keys(table):
    return sorted((r["id"], r["variant"]) for r in table.select(["id", "variant"]).to_pylist())


@pytest.fixture(scope="module")
def library(ray_local, tmp_path_factory):
    base = tmp_path_factory.mktemp("resume")
    manifest = write_manifest(base / "m1.parquet", ROWS)
    out = str(base / "lib")
    first = run_job(load_job(job_dict(manifest, out)), **quiet)
    assert first.work == {"new": 4}
    return base, out, first


def test_rerun_skips_every_committed_variant_and_loads_no_model(library):
    base, out, _ = library
    before = read_all_records(out).num_rows
    again = run_job(load_job(job_dict(str(base / "m1.parquet"), out)), **quiet)
    assert again.work == {"skipped": 4}
    assert sum(again.counts.values()) == 0  # nothing committed, not even the unchanged invalid row
    assert read_all_records(out).num_rows == before


def test_appended_rows_are_the_only_ones_generated(library):
    base, out, _ = library
    manifest = write_manifest(base / "m2.parquet", ROWS + [{"id": "d", "prompt": "a deer"},
                                                           {"id": "e", "prompt": "an eagle"}])
    run = run_job(load_job(job_dict(manifest, out)), **quiet)
    assert run.work == {"new": 2, "skipped": 4}
    mine = read_all_records(out).filter(pa.compute.equal(pa.compute.field("run_id"), run.run_id))
    assert keys(mine) == [("d", 0), ("e", 0)]
    assert keys(read_records(out)) == sorted([("a", 0), ("b", 0), ("c", 0), ("c", 1), ("bad/one", -1),
                                              ("d", 0), ("e", 0)])


def test_changed_parameter_regenerates_only_that_row(library):
    base, out, _ = library
    old = {r["id"]: r for r in read_records(out).to_pylist() if r["variant"] == 0}
    rows = [dict(r, num_inference_steps=3) if r["id"] == "b" else r for r in ROWS]
    manifest = write_manifest(base / "m3.parquet", rows)
    run = run_job(load_job(job_dict(manifest, out)), **quiet)
    assert run.work == {"regenerated": 1, "skipped": 3}
    current = {r["id"]: r for r in read_records(out).to_pylist() if r["variant"] == 0}
    assert current["b"]["run_id"] == run.run_id and current["b"]["num_inference_steps"] == 3
    assert current["b"]["params_hash"] != old["b"]["params_hash"]
    assert current["a"]["run_id"] == old["a"]["run_id"]
    table = read_records(out)
    assert len(keys(table)) == len(set(keys(table)))  # one current record per key


def test_failed_variant_is_retried(library, tmp_path):
    base, out, _ = library
    manifest = write_manifest(tmp_path / "m.parquet", [{"id": "z", "prompt": "a zebra", "seed": 9}])
    from pipeline.plan import Planner

    variants = [v for b in Planner(load_job(job_dict(manifest, out))).batches() for v in b.todo]
    # The state an earlier run leaves when a worker failed on this variant: a `failed` record.
    failed = dict(variants[0], status="failed", error="sample: CUDA out of memory", variant=0)
    MetadataWriter(out, "earlier", record_schema(pa.schema([]))).commit(
        [{k: failed.get(k) for k in ("id", "variant", "row", "status", "error", "params_hash", "prompt")}])
    run = run_job(load_job(job_dict(manifest, out)), **quiet)
    assert run.work == {"retried": 1}
    assert run.counts["accepted"] + run.counts["rejected"] == 1
    z = [r for r in read_records(out).to_pylist() if r["id"] == "z"]
    assert len(z) == 1 and z[0]["status"] in ("accepted", "rejected") and z[0]["run_id"] == run.run_id


def lease_manifest(base):
    """The library's latest manifest (b at 3 steps), so these runs have little or nothing to generate."""
    rows = [dict(r, num_inference_steps=3) if r["id"] == "b" else r for r in ROWS]
    return write_manifest(base / "m-lease.parquet", rows)


def test_live_lease_refuses_a_second_run_naming_the_holder(library):
    base, out, _ = library
    holder = Lease(out, "nightly-holder", ttl_s=60)
    holder.acquire()
    try:
        with pytest.raises(LeaseHeld, match="held by run nightly-holder"):
            run_job(load_job(job_dict(lease_manifest(base), out)), **quiet)
        forced = run_job(load_job(job_dict(lease_manifest(base), out)), force=True, **quiet)
        assert forced.work["skipped"] >= 3  # ran; b may be regenerated if run alone
    finally:
        holder.release()


def test_expired_lease_of_a_dead_run_is_taken_over(library):
    base, out, _ = library
    with open(f"{out}/_lease.json", "w") as f:
        json.dump({"run_id": "dead-run", "host": "gone", "pid": 1, "expires_at": time.time() - 1}, f)
    lines = []
    run_job(load_job(job_dict(lease_manifest(base), out)), echo=lines.append)
    assert "[rushes] took over the lease of run dead-run: its lease expired" in lines
    assert Lease(out, "x").holder() is None  # released at the end of the run


def test_partial_local_writes_of_a_killed_writer_are_removed(tmp_path):
    from pipeline.job import remove_partial_writes

    (tmp_path / "videos" / "a").mkdir(parents=True)
    (tmp_path / "videos" / "a" / ".tmp-0123").write_bytes(b"half a video")
    (tmp_path / "videos" / "a" / "0.mp4").write_bytes(b"a whole video")
    assert remove_partial_writes(str(tmp_path), {}) == 1
    assert sorted(p.name for p in (tmp_path / "videos" / "a").iterdir()) == ["0.mp4"]
