"""Compaction of a library's metadata parts, on a local folder and on S3 (moto): nothing lost or doubled,
refused while a run holds the output, safe against a kill at any step, and a run after it still resumes."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest

from pipeline.cli import main
from pipeline.commit import MetadataWriter, record_schema
from pipeline.compact import compact
from pipeline.job import run_job
from pipeline.lease import Lease, LeaseHeld
from pipeline.library import (COMPACTION_MARKER, LibraryState, metadata_parts, read_all_records, read_in_order,
                              read_records)
from pipeline.spec import load_job
from stages.common.storage import filesystem
from tests.conftest import job_dict, write_manifest

pytestmark = pytest.mark.timeout(300)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(params=["local", "s3"])
def library(request, tmp_path):
    """(output URI, storage options) of an empty library, in a local folder or on moto S3."""
    if request.param == "local":
        return str(tmp_path / "lib"), {}
    _, endpoint = request.getfixturevalue("s3")
    return "s3://rushes-test/lib", {"endpoint_url": endpoint}


def run_id(n: int, later: bool) -> str:
    """A run id as `rushes run` makes them: runs a day ago, or (later) runs after this test's compactions."""
    start = datetime.now(timezone.utc) + (timedelta(hours=1) if later else -timedelta(days=1))
    return f"{start + timedelta(minutes=n):%Y%m%dT%H%M%SZ}-{n:06x}"


def fill(output: str, options: dict, runs: int = 8, parts_per_run: int = 4, first: int = 0,
         later: bool = False) -> None:
    """Parts as nightly runs make them: new keys, keys regenerated with new parameters (history),
    failed ones retried, invalid rows, extra manifest columns that differ between runs, and one part
    with a key twice in one commit (only its position decides which one is current)."""
    rng = random.Random(first)
    for r in range(first, first + runs):
        extra = pa.schema([("shot", pa.string())] if r % 2 else [("weight", pa.int64()), ("shot", pa.string())])
        writer = MetadataWriter(output, run_id(r, later), record_schema(extra), options)
        for p in range(parts_per_run):
            recs = []
            for i in range(rng.randint(1, 6)):
                key = rng.randrange(30)  # 30 keys over all runs: most are regenerated several times
                recs.append({"id": f"clip-{key:02d}", "variant": key % 2, "row": key,
                             "status": rng.choice(["accepted", "rejected", "failed"]),
                             "params_hash": f"{r * 1000 + p * 10 + i:064x}", "prompt": f"prompt {key} run {r}",
                             "metrics": {"motion": float(i)}, "extra": {"shot": f"s{r}", "weight": i}
                             if not r % 2 else {"shot": f"s{r}"}})
            if p == 1:
                recs.append({"id": None, "variant": -1, "row": 100 + r, "status": "invalid", "error": "no id",
                             "extra": {}})
                recs.append(dict(recs[0], params_hash="f" * 64))  # same key, same instant: the later one wins
            writer.commit(recs)


def canonical(table: pa.Table) -> list:
    return sorted(repr(sorted(r.items())) for r in table.to_pylist())


def snapshot(output: str, options: dict) -> dict:
    state = LibraryState.load(output, options)
    return {"current": read_records(output, options).to_pylist(),
            "all": canonical(read_all_records(output, options)),
            "state": [state.keys.tolist(), state.status.tolist(), state.params.tolist(), state.errors.tolist(),
                      state.phash.tolist(), state.names.to_pylist()]}


def part_names(output: str, options: dict) -> list:
    fs, root = filesystem(output, options)
    return sorted(p.rsplit("/", 1)[-1] for p in fs.glob(f"{root}/metadata/part-*.parquet"))


def marker(output: str, options: dict) -> dict | None:
    fs, root = filesystem(output, options)
    path = f"{root}/metadata/{COMPACTION_MARKER}"
    return json.loads(fs.cat_file(path)) if fs.exists(path) else None


def test_compaction_keeps_every_record_history_included(library):
    out, opts = library
    fill(out, opts)
    before = snapshot(out, opts)
    assert len(part_names(out, opts)) == 32
    assert len(before["all"]) > len(before["current"])  # there is history to keep

    result = compact(out, opts, target_records=40)
    names = part_names(out, opts)
    assert result.parts_before == 32 and result.parts_after == len(names) == -(-len(before["all"]) // 40)
    assert result.records == len(before["all"])
    assert all("-compact-" in n for n in names)
    assert snapshot(out, opts) == before
    assert marker(out, opts) is None
    assert Lease(out, "-", storage_options=opts).holder() is None  # released

    # A later run's parts sort after the compacted ones: commit order is still name order.
    fill(out, opts, runs=2, first=40, later=True)
    later = part_names(out, opts)
    assert later[:len(names)] == names and all("-compact-" not in n for n in later[len(names):])
    before = snapshot(out, opts)
    again = compact(out, opts, target_records=40)
    assert again.rewritten < len(later)  # the full compacted parts are kept as they are
    assert snapshot(out, opts) == before


def test_reads_in_one_worker_and_in_many_agree(library):
    out, opts = library
    fill(out, opts, runs=4)
    assert read_records(out, opts, workers=1).to_pylist() == read_records(out, opts, workers=16).to_pylist()
    one, many = LibraryState.load(out, opts, workers=1), LibraryState.load(out, opts, workers=16)
    assert one.keys.tolist() == many.keys.tolist() and one.params.tolist() == many.params.tolist()
    fs, files = metadata_parts(out, opts)
    assert files == sorted(files) and len(files) == 16


def test_reads_run_ahead_of_their_consumer_by_at_most_the_worker_count():
    started, consumed, ahead = [], [], []
    rng = random.Random(3)

    def read(i):
        started.append(i)
        time.sleep(rng.uniform(0, 0.002))  # finish out of order
        return i

    for i in read_in_order(read, list(range(200)), workers=4):
        ahead.append(len(started) - len(consumed) - 1)  # read or being read, besides the one consumed now
        consumed.append(i)
    assert consumed == list(range(200)) and max(ahead) <= 4


def test_nothing_to_compact_changes_nothing(tmp_path):
    out = str(tmp_path / "lib")
    assert compact(out).parts_after == 0
    fill(out, {}, runs=1, parts_per_run=1)
    names = part_names(out, {})
    result = compact(out)
    assert (result.parts_before, result.parts_after, result.rewritten) == (1, 1, 0)
    assert part_names(out, {}) == names


def test_refused_while_a_run_holds_the_lease(library, capsys):
    out, opts = library
    fill(out, opts, runs=2)
    names = part_names(out, opts)
    lease = Lease(out, "20261125T130000Z-abcdef", storage_options=opts)
    lease.acquire()
    try:
        with pytest.raises(LeaseHeld, match="20261125T130000Z-abcdef"):
            compact(out, opts)
        argv = ["compact", out] + [f"--storage-option={k}={v}" for k, v in opts.items()]
        assert main(argv) == 3
        assert "held by run 20261125T130000Z-abcdef" in capsys.readouterr().err
        assert part_names(out, opts) == names
    finally:
        lease.release()
    assert main(argv + ["--target-records", "1000"]) == 0
    assert f"library {out}: 8 metadata parts -> 1" in capsys.readouterr().out


# A child process compacts and dies (os._exit, no clean-up: as SIGKILL) at a chosen step.
KILLED_AT = {
    # after the commit marker, before any replaced part is removed
    "before_deletes": "compaction.remove_all = lambda *a: os._exit(9)",
    # after the first new part is written, before the second
    "while_writing": textwrap.dedent("""
        real_put = compaction.put_atomic
        def put_atomic(fs, path, data):
            if "-compact-" in path and path.endswith("000001.parquet"):
                os._exit(9)
            real_put(fs, path, data)
        compaction.put_atomic = put_atomic"""),
    # half the replaced parts removed
    "mid_deletes": textwrap.dedent("""
        real_remove = compaction.remove
        removed = []
        def remove(fs, path):
            if len(removed) == 10:
                os._exit(9)
            real_remove(fs, path)
            removed.append(path)
        compaction.remove = remove"""),
}


def compact_in_child(out, opts, kill_at=None, target_records=40):
    code = "\n".join(["import os, json, sys", "import pipeline.compact as compaction",
                      KILLED_AT.get(kill_at, ""),
                      f"compaction.compact({out!r}, {opts!r}, {target_records}, workers=1)"])
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)


@pytest.mark.parametrize("kill_at", sorted(KILLED_AT))
def test_a_killed_compaction_loses_nothing_and_the_next_one_finishes_it(library, kill_at):
    out, opts = library
    fill(out, opts)
    before = snapshot(out, opts)
    old = part_names(out, opts)
    assert compact_in_child(out, opts, kill_at).wait(timeout=120) == 9

    left = marker(out, opts)
    assert left is not None and left["replaces"] == old
    assert (left["parts"] is None) == (kill_at == "while_writing")
    assert any("-compact-" in n for n in part_names(out, opts))  # new parts were written...
    assert snapshot(out, opts) == before  # ...and yet reading is unchanged: nothing lost, nothing doubled
    result = compact(out, opts, target_records=40, force=True)  # its lease lives on until it expires
    assert result.finished.startswith("undid" if kill_at == "while_writing" else "finished")
    assert marker(out, opts) is None
    assert all("-compact-" in n for n in part_names(out, opts))
    assert snapshot(out, opts) == before


@pytest.mark.chaos
def test_a_compaction_killed_at_random_moments_never_changes_what_is_read(tmp_path):
    out = str(tmp_path / "lib")
    fill(out, {}, runs=12)
    before = snapshot(out, {})

    def start(lib):
        """A compacting child, once its work has begun (its marker is there)."""
        child = compact_in_child(lib, {}, target_records=10)
        while marker(lib, {}) is None and child.poll() is None:
            time.sleep(0.001)
        return child, time.monotonic()

    shutil.copytree(out, tmp_path / "copy")  # how long the work takes here, from its marker to its end
    child, began = start(str(tmp_path / "copy"))
    child.wait(timeout=60)
    span = time.monotonic() - began
    rng = random.Random(7)
    states = []
    for round_ in range(8):
        child, _ = start(out)
        time.sleep(rng.uniform(0, span))  # somewhere in writing the new parts or removing the old ones
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        left = marker(out, {})
        states.append("done" if left is None else "writing" if left["parts"] is None else "committed")
        assert snapshot(out, {}) == before
        compact(out, {}, target_records=10, force=True)
        assert snapshot(out, {}) == before and marker(out, {}) is None
        fill(out, {}, runs=1, first=100 + round_, later=True)  # more parts for the next round
        before = snapshot(out, {})
    # Kills mostly land while it writes: its deletes are quick here (the tests above kill it there).
    assert "writing" in states, states


def test_readers_during_a_compaction_see_the_same_records(library):
    out, opts = library
    fill(out, opts, runs=12)
    before = snapshot(out, opts)
    seen, done = [], threading.Event()

    def read_while_compacting():
        while not done.is_set():
            seen.append(read_records(out, opts).to_pylist())

    reader = threading.Thread(target=read_while_compacting)
    reader.start()
    try:
        compact(out, opts, target_records=10)
    finally:
        done.set()
        reader.join()
    assert seen and all(s == before["current"] for s in seen)
    assert snapshot(out, opts) == before


@pytest.mark.slow
def test_a_run_after_compaction_skips_everything_done(ray_local, tmp_path):
    rows = [{"id": f"n{i}", "prompt": f"a null clip {i}", "seed": i} for i in range(6)]
    out = str(tmp_path / "out")
    job = lambda m: job_dict(m, out, model={"family": "null", "path": "builtin:null"},  # noqa: E731
                             sampling={"num_frames": 5}, commit={"max_records": 2})
    run_job(load_job(job(write_manifest(tmp_path / "m1.parquet", rows))), echo=lambda *_: None)
    rows[0]["seed"] = 100  # regenerated: history
    second = run_job(load_job(job(write_manifest(tmp_path / "m2.parquet", rows))), echo=lambda *_: None)
    assert second.work["regenerated"] == 1
    before = snapshot(out, {})
    assert len(part_names(out, {})) > 2

    result = compact(out, {})
    assert result.parts_after == 1 and snapshot(out, {}) == before
    third = run_job(load_job(job(write_manifest(tmp_path / "m2.parquet", rows))), echo=lambda *_: None)
    assert third.work["skipped"] == 6 and third.generated == 0
    assert snapshot(out, {}) == before
