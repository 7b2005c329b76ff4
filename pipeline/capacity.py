"""Fitting the stages' resource asks to the Ray cluster a run starts on, before any operator is built.

- `replicas: auto` resolved against the cluster (`auto_replicas`);
- on one machine without a GPU, the stages' GPU asks dropped (they run on CPU);
- a stage that no node can host fails the job after `ray.resource_wait_s`, naming the resource, instead of
  waiting forever; an autoscaler is asked for one replica's worth meanwhile (`wait_for_resources`);
- model stages that cannot hold their GPUs at once are warned about (`gpus_crowded`);
- the whole pipeline fitted to the cluster's CPUs so that every stage can run at once (`fit_pipeline`);
- on a cluster of two GPUs or more, the sampler and the decoder that ask for `num_gpus: auto` run together, one
  actor per GPU (`run_together`).
"""
from __future__ import annotations

import logging
import time

import ray

from pipeline.errors import ClusterError
from pipeline.spec import JobSpec
from stages.contract import Resources, Stage

log = logging.getLogger("rushes")


def demand(res: Resources) -> dict[str, float]:
    need = {"CPU": res.num_cpus, "GPU": res.num_gpus, "memory": (res.memory_gb or 0) * 2**30}
    return {k: v for k, v in need.items() if v}


def unhostable(stages: dict[str, Resources]) -> list[str]:
    """Why each stage that no alive node can host one replica of cannot be placed."""
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    problems = []
    for name, res in stages.items():
        need = demand(res)
        if any(all(node.get(k, 0) >= v for k, v in need.items()) for node in nodes):
            continue
        short = sorted({k for k, v in need.items() for node in nodes if node.get(k, 0) < v}) or sorted(need)
        best = {k: max((node.get(k, 0) for node in nodes), default=0) for k in short}
        fmt = lambda d: ", ".join(f"{k}={v / 2**30:g}GiB" if k == "memory" else f"{k}={v:g}" for k, v in d.items())
        problems.append(f"{name}: no node can host one replica, which needs {fmt(need)}; the most any of the "
                        f"{len(nodes)} alive nodes offers is {fmt(best)} (missing: {', '.join(short)})")
    return problems


def wait_for_resources(stages: dict[str, Resources], wait_s: float) -> None:
    """Fail in bounded time, naming the resource, when no node can host a stage; ask an autoscaler meanwhile."""
    problems = unhostable(stages)
    if not problems:
        return
    try:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[demand(r) for r in stages.values()])
    except Exception:  # noqa: BLE001 - no autoscaler: nothing to ask
        pass
    log.warning("waiting up to %.0f s for nodes: %s", wait_s, "; ".join(problems))
    deadline = time.monotonic() + wait_s
    while problems and time.monotonic() < deadline:
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        problems = unhostable(stages)
    if problems:
        raise ClusterError("the Ray cluster cannot run this job: " + "; ".join(problems) +
                           f" (waited {wait_s:g} s, ray.resource_wait_s). Add such a node, or lower the stage's "
                           "resources in the job file.")


def gpus_crowded(actors: dict[str, Resources]) -> str | None:
    """A warning when the model stages' smallest pools cannot hold their GPUs at the same time: Ray Data
    then starts decoding only when sampling has ended, and every latent of the job waits in the object
    store meanwhile (on a one-GPU machine with 1 GPU asked for each stage, for one)."""
    need = {name: r.num_gpus * r.replica_range[0] for name, r in actors.items() if r.num_gpus}
    have = sum(n["Resources"].get("GPU", 0) for n in ray.nodes() if n["Alive"])
    if len(need) < 2 or sum(need.values()) <= have:
        return None
    asks = ", ".join(f"{name} {g:g}" for name, g in need.items())
    return (f"the model stages ask for {sum(need.values()):g} GPUs together ({asks}; num_gpus x the fewest "
            f"replicas) but the cluster has {have:g}: they cannot run at the same time, so decoding waits for "
            f"sampling to finish and holds every latent until then. Give them fractions that fit together "
            f"(e.g. num_gpus: 0.5 each on one GPU) or add GPUs.")


PLAN_READ = "read"  # the task operator that reads plan objects, ahead of the stages


def task_chains(stages: list[Stage], asks: dict[str, Resources]) -> list[list[str]]:
    """The task operators: consecutive stages without a model that ask for the same resources and batch size are one
    operator, one task running the whole chain on a batch (as Ray Data would fuse them)."""
    chains: list[list[str]] = []
    previous = None
    for s in stages:
        if s.holds_model:
            previous = None
            continue
        if previous is not None and (asks[s.name], s.options.batch_size) == (asks[previous.name],
                                                                              previous.options.batch_size):
            chains[-1].append(s.name)
        else:
            chains.append([s.name])
        previous = s
    return chains


def fit_pipeline(stages: list[Stage], asks: dict[str, Resources], cpus: float, together: list[list[str]] = ()
                 ) -> tuple[dict[str, Resources], str | None]:
    """The whole pipeline against the cluster's CPUs: every actor pool at its fewest replicas plus one
    task of each task operator (the plan read included) must fit at once, or nothing flows (the actors
    hold every CPU and no task is ever scheduled). Returns the CPU asks to use, and what was changed.

    The plan read keeps one whole CPU (Ray Data's block repartition after it runs as a task of 1 CPU
    that cannot be asked for less). A chain of task stages that Ray Data fuses into one operator
    (`task_chains`: filter, encode and write) counts once, as the one task that runs it; the chains share
    what the actor pools leave; when the actor pools alone fill the rest, they are scaled to three quarters
    of it. Counting each stage of a chain apart gave each a third of the share: Ray then ran three times
    as many of the chain's tasks at once, each in a worker process of its own, on the same cores
    (bench/RESULTS.md, "The pipeline's own cost"). (CPUs are scheduling tokens here: a stage's torch
    threads still follow its own `num_cpus`.) GPUs are not adapted: pools that cannot hold their GPUs
    together still progress, one after the other (see `gpus_crowded`)."""
    chains = task_chains(stages, asks)
    asks = {PLAN_READ: Resources(num_cpus=1), **asks}
    pools = {s.name for s in stages if s.holds_model}
    count = {name: (res.replica_range[0] if name in pools else 1) for name, res in asks.items()}
    # stages that run together in one actor hold the CPUs of the one that asks for most
    joint = [g for g in together if len(g) > 1 and g[0] in pools]  # a chain of tasks is counted below, once
    alone = [n for n in pools if not any(n in g for g in joint)]
    pool_cpu = (sum(count[n] * asks[n].num_cpus for n in alone)
                + sum(count[g[0]] * max(asks[m].num_cpus for m in g) for g in joint))
    task_cpu = sum(asks[chain[0]].num_cpus for chain in chains)
    if 1 + pool_cpu + task_cpu <= cpus + 1e-9:
        return asks, None
    rest = cpus - 1
    if rest <= 0:
        raise ClusterError(f"the Ray cluster has {cpus:g} CPUs: the pipeline needs more than one (one reads "
                           "the plan, the rest run the stages)")
    pool_scale = 1.0 if pool_cpu < rest else 0.75 * rest / pool_cpu
    task_scale = (rest - pool_cpu * pool_scale) / task_cpu if task_cpu else 1.0
    fitted = {n: r if n == PLAN_READ else r.model_copy(update={
              "num_cpus": r.num_cpus * (pool_scale if n in pools else task_scale)}) for n, r in asks.items()}
    operators = [[PLAN_READ], *[g for g in (together or [[n] for n in asks]) if g[0] in pools], *chains]
    label = lambda names: "+".join(names)  # noqa: E731
    ask = ", ".join(f"{label(o)} {count[o[0]] * asks[o[0]].num_cpus:g}" +
                    (f" ({count[o[0]]} replicas)" if count[o[0]] > 1 else "") for o in operators if asks[o[0]].num_cpus)
    now = ", ".join(f"{label(o)} {fitted[o[0]].num_cpus:.2f}" for o in operators if fitted[o[0]].num_cpus)
    return fitted, (f"the stages ask for {1 + pool_cpu + task_cpu:g} CPUs together ({ask}) but the cluster has "
                    f"{cpus:g}; so that every stage can run at once, CPUs per replica (per task of a chain) are now: "
                    f"{now}")


AUTO_CPU_REPLICAS = (1, 4)  # bounds of an 'auto' pool on a cluster without GPUs


def auto_replicas(res: Resources, cpus: float, gpus: float, grows_on_cpu: bool = True) -> Resources:
    """`replicas: auto`, resolved against the cluster when the run starts.

    - A stage that asks for GPUs: a pool that Ray Data scales from 1 up to as many replicas as the
      cluster's GPUs hold, so it grows when its input queues up and the GPUs are free.
    - On CPUs alone: a fixed pool of one replica per two logical CPUs (1 to 4). A model stage on CPU
      runs each replica with `num_cpus` threads; for the small convolutions of a VAE, two one-thread
      replicas do more than one two-thread replica, and a fixed pool starts them all at once, where an
      autoscaling one would add them only after its queue had built up (bench/RESULTS.md, vs_loop). A stage
      whose options say it does not grow on CPUs (the sampler: `cpu_pool_grows`) keeps one replica."""
    if res.replicas != "auto":
        return res
    if res.num_gpus:
        return res.model_copy(update={"replicas": f"1..{max(1, int(gpus // res.num_gpus))}"})
    if not grows_on_cpu:
        return res.model_copy(update={"replicas": 1})
    lo, hi = AUTO_CPU_REPLICAS
    return res.model_copy(update={"replicas": min(hi, max(lo, int(cpus // 2)))})


def run_together(stages: list[Stage], asks: dict[str, Resources], gpus: float) -> list[list[str]]:
    """The operators of the stages, in order: each stage alone, except a chain of task stages (`task_chains`: one
    task runs the chain), and consecutive stages that run the job's
    model (sample, decode) and leave both `num_gpus` and `replicas` to `auto`, on a cluster of 2 GPUs or more:
    those run in one actor per GPU, taking turns on each batch, so that every GPU samples and decodes. Two pools of
    half a GPU each would not share GPUs pairwise: Ray places fractional actors by packing them, two samplers on
    one GPU and two decoders on another, and the decoders' GPUs then sit mostly idle (bench/RESULTS.md, "GPUs kept
    busy"). On one GPU the two pools share it, half each (`share_gpus`)."""
    groups: list[list[str]] = []
    joins = lambda s: (gpus >= 2 and s.holds_model and s.options.loads_model  # noqa: E731
                       and asks[s.name].num_gpus == "auto" and asks[s.name].replicas == "auto")
    chains = {name: chain for chain in task_chains(stages, asks) for name in chain}
    for i, s in enumerate(stages):
        if groups and joins(s) and joins(stages[i - 1]):
            groups[-1].append(s.name)
        elif s.name in chains and chains[s.name][0] != s.name:
            continue  # a task chain is one operator (task_chains)
        else:
            groups.append(chains.get(s.name, [s.name]))
    return groups


def share_gpus(asks: dict[str, Resources], gpus: float, together: list[list[str]] = ()) -> dict[str, Resources]:
    """`num_gpus: auto` against the cluster's GPUs: a whole GPU per replica when the GPUs left by the stages that
    ask a fixed number hold one for each stage asking auto; else an equal share of them, so that the model
    stages run at once (on one GPU, 0.5 each for sample and decode, each capping its memory at its share:
    stages/models/devices.py) instead of decoding waiting for all sampling to end; none without GPUs."""
    joint = [g for g in together if len(g) > 1 and all(asks[n].num_gpus == "auto" for n in g)]  # not a task chain
    if joint:  # one actor per GPU runs them all: a whole GPU each, as many as there are GPUs left
        fixed = sum(r.num_gpus * r.replica_range[0] for name, r in asks.items()
                    if r.num_gpus != "auto" and r.replicas != "auto")
        others = sum(1 for name, r in asks.items() if r.num_gpus == "auto" and not any(name in g for g in joint))
        each = {"num_gpus": 1.0, "replicas": max(1, int(gpus - fixed) - others)}
        asks = {name: r.model_copy(update=each) if any(name in g for g in joint) else r for name, r in asks.items()}
    auto = [name for name, r in asks.items() if r.num_gpus == "auto"]
    if not auto:
        return asks
    fixed = sum(r.num_gpus * (r.replica_range[0] if r.replicas != "auto" else 1)
                for name, r in asks.items() if name not in auto)
    left = gpus - fixed if gpus > fixed else gpus
    share = 0.0 if not gpus else 1.0 if left >= len(auto) else int(100 * left / len(auto)) / 100
    if 0 < share < 1:
        log.info("num_gpus auto: %s share the cluster's %g GPUs, %g each", ", ".join(auto), gpus, share)
    return {name: r.model_copy(update={"num_gpus": share}) if name in auto else r for name, r in asks.items()}


def fit_to_cluster(spec: JobSpec, stages: list[Stage]) -> tuple[dict[str, Resources], list[list[str]]]:
    """Each stage's resources for this run on this cluster (and the plan read's, under PLAN_READ), and the stages'
    operators (`run_together`)."""
    asks = {s.name: s.options.resources for s in stages}
    alive = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    cpus, gpus = sum(n.get("CPU", 0) for n in alive), sum(n.get("GPU", 0) for n in alive)
    if len(alive) == 1 and not gpus and any(r.wants_gpu for r in asks.values()):  # one machine, no GPU
        asks = {name: r.model_copy(update={"num_gpus": 0.0}) for name, r in asks.items()}
        log.warning("no GPU on this machine: the stages run on CPU (their num_gpus requests dropped)")
    together = run_together(stages, asks, gpus)
    asks = share_gpus(asks, gpus, together)
    grows = {s.name: s.options.cpu_pool_grows for s in stages}
    asks = {name: auto_replicas(r, cpus, gpus, grows[name]) for name, r in asks.items()}
    wait_for_resources(asks, spec.ray.resource_wait_s)
    first = {g[0] for g in together}  # stages that run together hold one GPU between them
    crowded = gpus_crowded({s.name: asks[s.name] for s in stages if s.holds_model and s.name in first})
    if crowded:
        log.warning(crowded)
    asks, change = fit_pipeline(stages, asks, cpus, together)
    if change:  # routine on one machine (a local Ray has max(4, cores) CPUs): said, not warned
        log.info(change)
    return asks, together
