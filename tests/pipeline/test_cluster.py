"""Fault tolerance on a multi-node Ray cluster (`ray.cluster_utils.Cluster`): a head and two workers that
declare one GPU each, so that the GPU-requesting sample actors land on the workers.

Faults come from the chaos family (tests/chaos/family.py), the real tiny Wan model behind the plug-in
family hook. Timing comes from progress (files the workers write, records the driver commits), never sleeps.
"""
from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from pipeline.errors import ClusterError
from pipeline.job import run_job
from pipeline.spec import load_job
from tests.conftest import LOCAL_RAY, job_dict, start_local_ray

pytestmark = [pytest.mark.slow, pytest.mark.chaos, pytest.mark.timeout(420)]
ROOT = Path(__file__).resolve().parents[2]
WORKER = {"num_cpus": 2, "num_gpus": 1, "object_store_memory": 150 * 2**20}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, model_cache):
    import ray
    from ray.cluster_utils import Cluster

    chaos = tmp_path_factory.mktemp("chaos")
    # Set before the nodes start, so that every worker process inherits them.
    os.environ["RUSHES_CHAOS_DIR"] = str(chaos)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "object_store_memory": 150 * 2**20,
                                                      "include_dashboard": False})
    workers = [c.add_node(**WORKER) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield c, workers, chaos
    ray.shutdown()
    c.shutdown()
    if LOCAL_RAY["active"]:
        start_local_ray()


def chaos_job(make_manifest, tmp_path, prompts: list[str], **overrides):
    manifest = make_manifest([{"id": f"r{i:02d}", "prompt": p} for i, p in enumerate(prompts)])
    job = job_dict(manifest, str(tmp_path / "out"), model={"family": "tests.chaos.family:ChaosWan"},
                   expand={"mode": "none"}, filter={"min_motion": 0.0},
                   sample={"batch_size": 2, "resources": {"num_cpus": 1, "num_gpus": 1, "replicas": "1..2"}},
                   ray={"max_row_attempts": 2, "resource_wait_s": 60})
    for key, value in overrides.items():
        job[key] = {**job.get(key, {}), **value}
    return load_job(job)


def records(output: str):
    return pads.dataset(f"{output}/metadata", format="parquet").to_table().to_pylist()


def test_worker_crashes_and_a_failed_setup_do_not_stop_the_job(cluster, make_manifest, tmp_path):
    _, _, chaos = cluster
    (chaos / "fail-setup").touch()  # the first actor to load the model fails once
    prompts = [f"a red kite over the sea {i}" for i in range(6)]
    prompts[1] = "a lighthouse at night crash-once"
    prompts[4] = "a poisoned row crash-always"
    spec = chaos_job(make_manifest, tmp_path, prompts)
    lines = []
    summary = run_job(spec, echo=lines.append)

    assert not (chaos / "fail-setup").exists(), "the injected setup failure was never hit"
    assert any(p.name.startswith("crashed-") for p in chaos.iterdir()), "the crash-once row never crashed"
    recs = records(spec.output)
    by_id = {r["id"]: r for r in recs}
    assert sorted(by_id) == [f"r{i:02d}" for i in range(6)] and len(recs) == 6  # each row once
    poisoned = by_id["r04"]
    assert poisoned["status"] == "failed"
    assert "worker process died 2 times" in poisoned["error"] and "max_row_attempts=2" in poisoned["error"]
    for rid, r in by_id.items():
        if rid != "r04":
            assert r["status"] in ("accepted", "rejected"), (rid, r["error"])
    assert summary.counts["failed"] == 1
    assert any("failed r04/0" in line for line in lines)


def test_node_removed_and_added_mid_run_gives_the_exact_records(cluster, make_manifest, tmp_path):
    c, workers, chaos = cluster
    # Every row holds its sample worker until the test opens the gate: the job cannot finish before the node
    # goes away, and rows are in flight on it when it does. (Holding only some rows let Ray Data queue a held
    # row behind another on the same actor, so the second worker never held one.)
    prompts = [f"a glass city at dawn {i} hold:gate2" for i in range(8)]
    spec = chaos_job(make_manifest, tmp_path, prompts,
                     sample={"batch_size": 1, "resources": {"num_cpus": 1, "num_gpus": 1, "replicas": 2}})
    result, lines = {}, []
    thread = threading.Thread(target=lambda: result.update(summary=run_job(spec, echo=lines.append)))
    thread.start()
    try:
        deadline = time.monotonic() + 180
        while len(list(chaos.glob("holding-gate2-*"))) < 2:  # both sample actors busy with a held row
            assert thread.is_alive() and time.monotonic() < deadline, "held rows never reached both workers"
            time.sleep(0.05)
        c.remove_node(workers.pop(0))
        workers.append(c.add_node(**WORKER))
        c.wait_for_nodes()
    finally:
        (chaos / "gate2").touch()
        thread.join(timeout=300)
    assert not thread.is_alive()
    summary = result["summary"]
    recs = records(spec.output)
    keys = Counter((r["id"], r["variant"]) for r in recs)
    assert sorted(keys) == [(f"r{i:02d}", 0) for i in range(8)]  # no missing row
    assert set(keys.values()) == {1}  # no duplicate record
    assert all(r["status"] in ("accepted", "rejected") for r in recs), [r["error"] for r in recs]
    for r in recs:
        if r["status"] == "accepted":
            assert Path(r["video_uri"].removeprefix("file://")).exists()
    assert summary.generated == 8


def test_no_node_can_host_the_gpu_actors_fails_in_bounded_time(cluster, make_manifest, tmp_path):
    spec = chaos_job(make_manifest, tmp_path, ["a quiet forest"],
                     sample={"resources": {"num_cpus": 1, "num_gpus": 2, "replicas": 1}},
                     ray={"resource_wait_s": 3})
    start = time.monotonic()
    with pytest.raises(ClusterError) as err:
        run_job(spec, echo=lambda _: None)
    assert time.monotonic() - start < 60
    message = str(err.value)
    assert "sample: no node can host one replica" in message and "GPU=2" in message
    assert "missing: GPU" in message and "ray.resource_wait_s" in message


def test_gpu_requests_that_cannot_run_together_are_named(cluster):
    from pipeline.capacity import gpus_crowded
    from stages.contract import Resources

    gpu = lambda n, replicas=1: Resources(num_cpus=1, num_gpus=n, replicas=replicas)  # noqa: E731
    assert gpus_crowded({"sample": gpu(1), "decode": gpu(1)}) is None  # the two workers have a GPU each
    assert gpus_crowded({"sample": gpu(1, "1..4"), "decode": gpu(0.5, 2)}) is None
    warning = gpus_crowded({"sample": gpu(1, "2..4"), "decode": gpu(1)})
    assert warning.startswith("the model stages ask for 3 GPUs together (sample 2, decode 1;")
    assert "the cluster has 2" in warning and "num_gpus: 0.5 each" in warning


def test_the_only_gpu_nodes_lost_and_never_replaced_stops_with_a_diagnosis(cluster, make_manifest, tmp_path):
    """Every GPU node goes away mid-run and none comes back: the sample actors cannot be placed again.
    The watchdog stops the run after ray.stall_timeout_s, keeps what was committed, and says why."""
    from pipeline.errors import JobFailed

    c, workers, chaos = cluster
    prompts = [f"a lantern in the snow {i} hold:gate3" for i in range(6)]  # each worker holds its first row
    spec = chaos_job(make_manifest, tmp_path, prompts, ray={"stall_timeout_s": 45},
                     sample={"batch_size": 1, "resources": {"num_cpus": 1, "num_gpus": 1, "replicas": 2}})
    result = {}

    def run():
        try:
            run_job(spec, echo=lambda _: None)
        except JobFailed as e:
            result["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    try:
        deadline = time.monotonic() + 180
        while len(list(chaos.glob("holding-gate3-*"))) < 2:
            assert thread.is_alive() and time.monotonic() < deadline, "held rows never reached both workers"
            time.sleep(0.05)
        start = time.monotonic()
        while workers:
            c.remove_node(workers.pop())
        thread.join(timeout=120)
        assert not thread.is_alive(), "the run did not stop by itself"
        assert time.monotonic() - start < 120
    finally:
        (chaos / "gate3").touch()
        while len(workers) < 2:  # the module's cluster as it was
            workers.append(c.add_node(**WORKER))
        c.wait_for_nodes()
        thread.join(timeout=180)  # a failed wait above must not leave the job running into the next test
    message = str(result["error"])
    assert "the run stalled" in message and "ray.stall_timeout_s" in message
    assert "actors waiting to be placed" in message and "MapBatches(sample)" in message
    assert "GPU" in message and "was lost" in message
    assert "run the same job again" in message



def test_a_batch_that_hangs_in_a_live_worker_is_ended_by_the_batch_timeout(cluster, make_manifest, tmp_path):
    """A row whose sampling never returns (its worker stays alive and keeps sending heartbeats, so the stall
    watchdog cannot see it): with ray.batch_timeout_s the worker ends itself, Ray restarts it, the row is
    charged like a crash and recorded failed naming the timeout, and every other row is made once."""
    prompts = [f"a paper boat on a pond {i}" for i in range(4)]
    prompts[1] += " hold:never"  # no test ever opens this gate
    spec = chaos_job(make_manifest, tmp_path, prompts, ray={"batch_timeout_s": 4, "max_row_attempts": 2})
    lines = []
    summary = run_job(spec, echo=lines.append)

    recs = records(spec.output)
    by_id = {r["id"]: r for r in recs}
    assert sorted(by_id) == [f"r{i:02d}" for i in range(4)] and len(recs) == 4
    hung = by_id["r01"]
    assert hung["status"] == "failed"
    assert "died 2 times while running this row alone (2 of them past ray.batch_timeout_s=4 s" in hung["error"], \
        hung["error"]
    assert "max_row_attempts=2" in hung["error"]
    assert len(list(cluster[2].glob("holding-never-*"))) == 3  # once in its batch, then twice alone
    for rid in ("r00", "r02", "r03"):
        assert by_id[rid]["status"] in ("accepted", "rejected"), by_id[rid]["error"]
    assert summary.counts["failed"] == 1


def test_a_spent_budget_stops_new_work_keeps_what_finished_and_a_rerun_resumes(cluster, make_manifest, tmp_path):
    """budget.max_gpu_hours: a plan over it is refused before any work; a run that spends it (busy seconds of
    each GPU stage times its share of a GPU; the sampler holds a whole logical GPU here) commits what finished,
    starts nothing new and exits 1; the same job with a larger budget resumes without redoing a variant."""
    from pipeline.errors import BudgetSpent
    from pipeline.spec import JobSpecError

    prompts = [f"a red kite over the sea {i}" for i in range(12)]
    with pytest.raises(JobSpecError, match="more than budget.max_gpu_hours=1e-12"):
        run_job(chaos_job(make_manifest, tmp_path, prompts, budget={"max_gpu_hours": 1e-12}), echo=lambda *_: None)
    assert not (tmp_path / "out" / "metadata").exists() or not records(str(tmp_path / "out"))
    spec = chaos_job(make_manifest, tmp_path, prompts, budget={"max_gpu_hours": 0.0002},  # 0.72 GPU-seconds
                     sample={"batch_size": 1})
    with pytest.raises(BudgetSpent, match="the budget is spent") as stopped:
        run_job(spec, echo=lambda *_: None)
    first = records(spec.output)
    assert 0 < len(first) < 12, str(stopped.value)
    run_id = first[0]["run_id"]
    summary = json.loads((tmp_path / "out" / "runs" / run_id / "summary.json").read_text())
    assert summary["gpu_seconds"] > 0.72 and summary["gpu_hours_planned"] < 0.0002
    again = chaos_job(make_manifest, tmp_path, prompts, budget={"max_gpu_hours": 1.0}, sample={"batch_size": 1})
    summary = run_job(again, echo=lambda *_: None)
    assert summary.work["skipped"] == len(first) and summary.work["new"] == 12 - len(first)
    keys = [(r["id"], r["variant"]) for r in records(spec.output) if r["run_id"] == summary.run_id]
    assert len(keys) == len(set(keys)) == 12 - len(first)
