"""Planning in batches: the compact library state, plan objects, commit batching, and a driver whose
planning memory does not grow with the manifest."""
import gc
import tracemalloc

import pyarrow as pa
import pytest

from pipeline.commit import CommitBuffer, MetadataWriter, record_schema
from pipeline.library import LibraryState, read_all_records, read_records
from pipeline.plan import PlanSpill, Planner, read_plan_object, remove_plans
from pipeline.rows import rows_of
from pipeline.spec import load_job
from tests.conftest import job_dict, write_manifest

NULL = {"family": "null", "path": "builtin:null"}


def null_job(manifest, out, **extra):
    return load_job(job_dict(manifest, out, model=NULL, **extra))


def test_planning_in_small_batches_gives_the_same_variants(tmp_path):
    rows = [{"id": f"r{i}", "prompt": f"clip {i}", "num_variants": 1 + i % 3} for i in range(40)]
    rows[17] = {"id": "r3", "prompt": "a repeat"}
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    spec = null_job(manifest, str(tmp_path / "o"))
    whole = [v for b in Planner(spec).batches() for v in b.todo]
    batches = list(Planner(spec, batch_rows=7).batches())
    assert [b.first_row for b in batches] == list(range(0, 40, 7))
    strip = lambda vs: [{k: x for k, x in v.items() if k not in ("stage_seconds", "expand_seconds")} for v in vs]  # noqa: E731 - timings
    assert strip(v for b in batches for v in b.todo) == strip(whole)
    assert [r["error"] for b in batches for r in b.invalid] == ["id: 'r3' duplicates row 3"]


def commit(out, run_id, records):
    MetadataWriter(out, run_id, record_schema(pa.schema([]))).commit(records)


def test_library_state_keeps_the_latest_record_of_each_key(tmp_path):
    out = str(tmp_path / "lib")
    h = lambda c: c * 64  # noqa: E731 - a params_hash
    commit(out, "r1", [
        {"id": "a", "variant": 0, "row": 0, "status": "failed", "params_hash": h("1"), "error": "boom"},
        {"id": "b", "variant": 0, "row": 1, "status": "accepted", "params_hash": h("2"), "phash": "f" * 64},
        {"id": None, "variant": -1, "row": 5, "status": "invalid", "error": "id: missing"},
    ])
    commit(out, "r2", [
        {"id": "a", "variant": 0, "row": 0, "status": "accepted", "params_hash": h("3"), "phash": "0" * 64},
    ])
    state = LibraryState.load(out)
    assert len(state) == read_records(out).num_rows == 3
    pos = state.find([("a", 0), ("b", 0), ("#row", 5), ("c", 0), ("a", 1)])
    assert list(pos[3:]) == [-1, -1]
    a, b, invalid = pos[:3]
    assert state.status[a] == 1 and state.params[a] == bytes.fromhex(h("3")).rstrip(b"\0")
    assert state.status[b] == 1 and state.status[invalid] == 3
    assert sorted(state.kept_videos()) == [("a/0", "0" * 64), ("b/0", "f" * 64)]
    state.superseded[a] = True
    assert list(state.kept_videos()) == [("b/0", "f" * 64)]
    # A few dozen bytes a record, not a Python dict each.
    arrays = (state.keys, state.status, state.params, state.errors, state.phash, state.superseded)
    assert (sum(x.nbytes for x in arrays) + state.names.nbytes) / len(state) < 200


def test_resume_decisions_come_from_the_compact_state(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", [{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "q"},
                                                      {"id": "c", "prompt": "r"}, {"id": "bad/", "prompt": "s"}])
    out = str(tmp_path / "lib")
    spec = null_job(manifest, out)
    planned = {v["id"]: v for b in Planner(spec).batches() for v in b.todo}
    commit(out, "earlier", [
        {**{k: planned["a"][k] for k in ("id", "variant", "row", "params_hash")}, "status": "accepted"},
        {**{k: planned["b"][k] for k in ("id", "variant", "row", "params_hash")}, "status": "failed"},
        {"id": "c", "variant": 0, "row": 2, "status": "accepted", "params_hash": "9" * 64},
        {"id": "bad/", "variant": -1, "row": 3, "status": "invalid", "error": "an older message"},
    ])
    planner = Planner(spec, LibraryState.load(out))
    batches = list(planner.batches())
    assert dict(planner.work) == {"skipped": 1, "retried": 1, "regenerated": 1}
    assert sorted(v["id"] for b in batches for v in b.todo) == ["b", "c"]
    assert [r["id"] for b in batches for r in b.to_record] == ["bad/"]  # its error changed
    commit(out, "later", [{"id": "bad/", "variant": -1, "row": 3, "status": "invalid",
                           "error": batches[0].invalid[0]["error"]}])
    assert [r for b in Planner(spec, LibraryState.load(out)).batches() for r in b.to_record] == []


def test_plan_objects_hold_a_few_hundred_variants_each_and_are_removed(tmp_path):
    out = str(tmp_path / "lib")
    spill = PlanSpill(out, "run-1", 0, rows_per_object=4)
    rows = [{"id": f"v{i}", "variant": 0, "blob": b"x" * i} for i in range(10)]
    spill.add(rows[:3])
    spill.add(rows[3:])
    uris = spill.close()
    assert spill.count == 10 and len(uris) == 3
    back = [rows_of(read_plan_object(u)) for u in uris]
    assert [len(b) for b in back] == [4, 4, 2] and [r for b in back for r in b] == rows
    assert (tmp_path / "lib/runs/run-1/plan/000").is_dir()
    assert remove_plans(out, run_id="run-1") == 1
    assert not (tmp_path / "lib/runs/run-1/plan").exists()


def test_commit_buffer_writes_objects_of_at_most_max_records(tmp_path):
    out = str(tmp_path / "lib")
    writer = MetadataWriter(out, "r", record_schema(pa.schema([])))
    buffer = CommitBuffer(writer, max_records=4, max_wait_s=3600)
    recs = [{"id": f"x{i}", "variant": 0, "row": i, "status": "accepted"} for i in range(10)]
    buffer.add(recs[:3])
    assert buffer.committed == 0  # waiting for more
    buffer.add(recs[3:9])
    assert buffer.committed == 8
    buffer.flush()
    parts = sorted((tmp_path / "lib/metadata").glob("part-*.parquet"))
    assert [pa.parquet.read_table(p).num_rows for p in parts] == [4, 4, 1]
    assert read_all_records(out).column("id").to_pylist() == [r["id"] for r in recs[:9]]
    eager = CommitBuffer(MetadataWriter(out, "e", record_schema(pa.schema([]))), max_records=4, max_wait_s=0)
    eager.add(recs[9:])
    assert eager.committed == 1  # max_wait_s 0: each block at once


def planning_peak(tmp_path, n: int) -> int:
    manifest = write_manifest(tmp_path / f"m{n}.parquet",
                              [{"id": f"clip-{i:07d}", "prompt": f"a generated clip number {i}"} for i in range(n)])
    spec = null_job(manifest, str(tmp_path / "o"))
    gc.collect()
    tracemalloc.start()
    try:
        planner = Planner(spec, LibraryState.load(spec.output))
        count = sum(len(b.todo) for b in planner.batches())  # each batch dropped once counted
        assert count == n
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_planning_memory_does_not_grow_with_the_manifest(tmp_path):
    small, large = planning_peak(tmp_path, 3_000), planning_peak(tmp_path, 30_000)
    # 10x the rows: only the id digests (16 bytes a row, and their sort) grow. Holding the expanded
    # variants, as planning once did, costs about 5 KB a row.
    assert (large - small) / 27_000 < 100, (small, large)
