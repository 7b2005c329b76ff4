"""The graph's pre-flight fit of the whole pipeline against a cluster's CPUs (no Ray needed)."""
import pytest

from pipeline.errors import ClusterError
from pipeline.capacity import PLAN_READ, fit_pipeline
from pipeline.graph import stages_on_ray
from pipeline.spec import load_job
from stages.contract import RunContext


def stages_and_asks(**job):
    spec = load_job({"manifest": "m", "output": "o", "sample": {"resources": {"replicas": 1}},
                     "decode": {"resources": {"replicas": 1}}, **job})
    stages = stages_on_ray(spec, RunContext())
    return stages, {s.name: s.options.resources for s in stages}


def test_a_pipeline_that_fits_is_left_as_asked():
    stages, asks = stages_and_asks()
    fitted, change = fit_pipeline(stages, asks, 8)
    assert change is None and fitted["sample"] == asks["sample"] and fitted[PLAN_READ].num_cpus == 1


def test_model_actors_that_hold_every_cpu_leave_a_share_for_the_tasks():
    """The starved case: sample and decode actors hold both CPUs of a 2-CPU cluster."""
    stages, asks = stages_and_asks()
    fitted, change = fit_pipeline(stages, asks, 2)
    assert fitted[PLAN_READ].num_cpus == 1  # whole: Ray Data's repartition after it asks for 1
    assert fitted["sample"].num_cpus == fitted["decode"].num_cpus == pytest.approx(0.375)
    # filter, encode and write run as one fused task operator: each task of the chain asks the share left
    assert [fitted[n].num_cpus for n in ("filter", "encode", "write")] == [pytest.approx(0.25)] * 3
    assert 1 + 0.375 * 2 + fitted["encode"].num_cpus <= 2 + 1e-9
    assert "ask for 4 CPUs together" in change and "the cluster has 2" in change
    assert "sample 0.38" in change and "filter+encode+write 0.25" in change


def test_a_chain_of_task_stages_counts_once_unless_its_asks_differ():
    from pipeline.capacity import task_chains

    stages, asks = stages_and_asks()
    assert task_chains(stages, asks) == [["filter", "encode", "write"]]
    stages, asks = stages_and_asks(encode={"resources": {"num_cpus": 2}})
    assert task_chains(stages, asks) == [["filter"], ["encode"], ["write"]]
    fitted, _ = fit_pipeline(stages, asks, 4)  # read 1, pools 2, tasks 1 + 2 + 1 = 4: scaled to the 1 left
    assert fitted["encode"].num_cpus == pytest.approx(2 * fitted["filter"].num_cpus)


def test_tasks_share_what_the_pools_leave_and_replicas_count():
    stages, asks = stages_and_asks(sample={"resources": {"num_cpus": 1, "replicas": "2..4"}})
    fitted, change = fit_pipeline(stages, asks, 4.5)  # read 1, pools 2 x 1 + 1 = 3, the task chain 1
    assert fitted["sample"].num_cpus == 1 and fitted["decode"].num_cpus == 1
    assert fitted["encode"].num_cpus == pytest.approx(0.5)
    assert "sample 2 (2 replicas)" in change


def test_no_cpus_is_refused():
    stages, asks = stages_and_asks()
    with pytest.raises(ClusterError, match="needs more than one"):
        fit_pipeline(stages, asks, 1)


def test_auto_replicas_follow_the_cluster():
    from pipeline.capacity import auto_replicas
    from stages.contract import Resources

    gpu = Resources(num_gpus=1, replicas="auto")
    assert auto_replicas(gpu, cpus=64, gpus=8).replica_range == (1, 8)
    assert auto_replicas(gpu.model_copy(update={"num_gpus": 0.5}), cpus=64, gpus=1).replica_range == (1, 2)
    cpu = Resources(replicas="auto")
    assert auto_replicas(cpu, cpus=4, gpus=0).replica_range == (2, 2)
    assert auto_replicas(cpu, cpus=1, gpus=0).replica_range == (1, 1)
    assert auto_replicas(cpu, cpus=96, gpus=0).replica_range == (4, 4)
    assert auto_replicas(Resources(replicas="1..3"), cpus=4, gpus=0).replica_range == (1, 3)
    with pytest.raises(ValueError, match="resolved against the cluster"):
        cpu.replica_range


def test_on_two_gpus_or_more_the_sampler_and_the_decoder_run_together_one_actor_per_gpu():
    """Ray packs fractional GPU actors (two samplers on one GPU, two decoders on another), so on a multi-GPU
    cluster the default `auto` sampler and decoder are one actor per GPU; on one GPU, half a GPU each."""
    from pipeline.capacity import run_together, share_gpus

    spec = load_job({"manifest": "m", "output": "o"})
    stages = stages_on_ray(spec, RunContext())
    asks = {s.name: s.options.resources for s in stages}
    together = run_together(stages, asks, 8)
    assert together == [["sample", "decode"], ["filter", "encode", "write"]]
    shared = share_gpus(asks, 8, together)
    assert shared["sample"].num_gpus == shared["decode"].num_gpus == 1.0
    assert shared["encode"].num_gpus == 0 and shared["encode"].replicas == 1  # the task chain asks no GPU
    assert shared["sample"].replicas == shared["decode"].replicas == 8
    assert run_together(stages, asks, 1)[:2] == [["sample"], ["decode"]]
    assert share_gpus(asks, 1, run_together(stages, asks, 1))["decode"].num_gpus == 0.5
    # a GPU count or a replica count of its own keeps a stage in a pool of its own
    own = {**asks, "decode": asks["decode"].model_copy(update={"num_gpus": 1.0, "replicas": 1})}
    assert run_together(stages, own, 8)[:2] == [["sample"], ["decode"]]
    assert share_gpus(own, 8, run_together(stages, own, 8))["sample"].num_gpus == 1.0
