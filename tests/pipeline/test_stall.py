"""A job on a starved cluster: the model actors at their fewest replicas ask for every CPU of a real
2-CPU Ray head (`ray.cluster_utils.Cluster`), which once left the read, filter, encode and write tasks
unscheduled forever. The pre-flight fit now gives the tasks a share, says so, and the job finishes."""
from __future__ import annotations

import logging

import pytest

from pipeline.job import run_job
from pipeline.library import read_records
from pipeline.spec import load_job
from tests.conftest import LOCAL_RAY, job_dict, start_local_ray

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def two_cpu_head(model_cache):
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "object_store_memory": 150 * 2**20,
                                                      "include_dashboard": False})
    ray.init(address=c.address, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()
    if LOCAL_RAY["active"]:
        start_local_ray()


def test_actors_holding_every_cpu_leave_room_for_the_tasks(two_cpu_head, make_manifest, tmp_path, caplog):
    manifest = make_manifest([{"id": f"r{i}", "prompt": f"a paper boat on a pond {i}"} for i in range(6)])
    out = str(tmp_path / "out")
    # sample and decode ask for 1 CPU each: both CPUs of the head.
    spec = load_job(job_dict(manifest, out, model={"family": "null", "path": "builtin:null"},
                             filter={"min_motion": 0.0}, ray={"stall_timeout_s": 60}))
    with caplog.at_level(logging.INFO, logger="rushes"):
        summary = run_job(spec, echo=lambda _: None)
    assert summary.generated == 6
    assert sorted(read_records(out).column("id").to_pylist()) == [f"r{i}" for i in range(6)]
    fitted = [r.getMessage() for r in caplog.records if "so that every stage can run at once" in r.getMessage()]
    assert fitted, [r.getMessage() for r in caplog.records]
    # the plan read 1, sample 1, decode 1, and the filter+encode+write chain once (one task runs the three)
    assert "ask for 4 CPUs together" in fitted[0] and "the cluster has 2" in fitted[0]
    assert "sample 0.38" in fitted[0] and "decode 0.38" in fitted[0] and "filter+encode+write 0.25" in fitted[0]
