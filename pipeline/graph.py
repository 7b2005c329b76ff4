"""The one place where stages become Ray Data operators, with their resources, retries and failure bounds.

In: the plan objects of the variants to generate (pipeline.plan) and the JobSpec. Out: a Ray Data
`Dataset` of metadata records, produced by
    read plan objects (tasks) -> sample (actor pool) -> decode (actor pool) -> filter + encode + write objects (tasks)
with each stage's CPUs, GPUs, memory and replicas (fixed, or a `min..max` range that Ray Data scales)
taken from the job file. Expansion runs in the driver (`pipeline.job`).

Failures, and what bounds them:
- A worker process that dies (a crash, a lost node) is restarted by Ray and its batch retried; Ray Data
  does that without limit. An `AttemptLedger` actor counts, per row and stage, the starts that never
  ended. A batch with a row that already died once is rerun one row at a time, so only the row at fault
  is charged, and a row charged `ray.max_row_attempts` times is recorded `failed` instead of run again.
- A stage's `setup()` (model load) is tried `ray.setup_attempts` times inside the actor.
- A stage that no node can host fails the job after `ray.resource_wait_s`, naming the resource, instead
  of waiting forever; an autoscaler is asked for one replica's worth meanwhile.

Rows travel between operators as pickled Python dicts in a single binary column (pipeline.plan.table_of),
in blocks of one sample batch each, so that every free sampler can take the next batch.
"""
from __future__ import annotations

import logging
import random
import time

import pyarrow as pa
import ray
import ray.data
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline.commit import ObjectWriter
from pipeline.job import ClusterError
from pipeline.plan import read_plan_object, rows_of, table_of
from pipeline.spec import JobSpec, Resources
from stages.decode import DecodeStage
from stages.encode import EncodeStage
from stages.filter import FilterStage
from stages.sample import SampleStage

log = logging.getLogger("rushes")
__all__ = ["build_dataset", "rows_of", "table_of"]


@ray.remote(num_cpus=0, max_restarts=0)
class AttemptLedger:
    """Per (stage, row): how often it died with its worker. A batch that dies makes its rows suspects;
    only a death while running alone is charged to the row."""

    def __init__(self):
        self.suspects: set[str] = set()
        self.alone: dict[str, int] = {}  # starts alone that never ended

    def begin(self, keys: list[str], alone: bool) -> tuple[dict[str, int], bool]:
        """Deaths so far per key, and whether the keys were started: a batch holding a suspect is not."""
        deaths = {k: self.alone.get(k, 0) for k in keys}
        if alone:
            for k in keys:
                self.alone[k] = deaths[k] + 1
            return deaths, True
        if any(k in self.suspects or k in self.alone for k in keys):
            return deaths, False
        self.suspects.update(keys)
        return deaths, True

    def end(self, keys: list[str]) -> None:
        for k in keys:
            self.suspects.discard(k)
            self.alone.pop(k, None)


def stage_name(stage) -> str:
    return type(stage).__name__.removesuffix("Stage").lower()


class GuardedStages:
    """Runs stages on a batch, charging each worker death to the row that was running."""

    def __init__(self, stages: list, ledger, max_row_attempts: int):
        self.stages, self.ledger, self.max_attempts = stages, ledger, max_row_attempts
        self.name = "+".join(stage_name(s) for s in stages)

    def key(self, r: dict) -> str:
        return f"{self.name}/{r['id']}/{r['variant']}/{r['seed']}"

    def run(self, rows: list[dict]) -> list[dict]:
        for stage in self.stages:
            rows = stage(rows)
        return rows

    def __call__(self, rows: list[dict]) -> list[dict]:
        keys = [self.key(r) for r in rows]
        deaths, started = ray.get(self.ledger.begin.remote(keys, False))
        if started:
            rows = self.run(rows)
            self.ledger.end.remote(keys)
            return rows
        # An earlier try of this batch died with its worker: go one row at a time so that only the row at
        # fault is charged again.
        out = []
        for r, k in zip(rows, keys):
            if deaths[k] >= self.max_attempts and r["status"] == "pending":
                r.update(status="failed", error=(
                    f"{self.name}: the worker process died {deaths[k]} times while running this row alone; "
                    f"not tried again "
                    f"(ray.max_row_attempts={self.max_attempts})"))
                r.pop("latents", None)
                r.pop("frames", None)
                out.append(r)
                continue
            ray.get(self.ledger.begin.remote([k], True))
            out.extend(self.run([r]))
            self.ledger.end.remote([k])
        return out


def run_stages(batch: pa.Table, guarded: GuardedStages) -> pa.Table:
    """Task operators: light stages (no model) applied in turn to one batch."""
    return table_of(guarded(rows_of(batch)))


class StageActor:
    """Actor operators: the stage's `setup()` (model loading) runs once per actor, in the actor."""

    def __init__(self, guarded: GuardedStages, setup_attempts: int):
        for attempt in range(1, setup_attempts + 1):
            try:
                for stage in guarded.stages:
                    stage.setup()
                break
            except Exception as e:  # noqa: BLE001 - retried, then raised with the count
                if attempt == setup_attempts:
                    raise RuntimeError(f"{guarded.name}: setup failed {attempt} times; last error: "
                                       f"{type(e).__name__}: {e}") from e
                log.warning("%s: setup failed (try %d of %d), trying again: %s: %s",
                            guarded.name, attempt, setup_attempts, type(e).__name__, e)
                time.sleep(random.uniform(0, min(2.0 ** attempt, 30.0)))
        self.guarded = guarded

    def __call__(self, batch: pa.Table) -> pa.Table:
        return table_of(self.guarded(rows_of(batch)))


def single_machine_without_gpus() -> bool:
    nodes = [n for n in ray.nodes() if n["Alive"]]
    return len(nodes) == 1 and not nodes[0]["Resources"].get("GPU", 0)


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


def actor_args(res: Resources, gpus: bool) -> dict:
    lo, hi = res.replica_range
    args = {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus if gpus else 0,
            "compute": ray.data.ActorPoolStrategy(min_size=lo, max_size=hi)}
    if res.memory_gb:
        args["memory"] = int(res.memory_gb * 2**30)
    return args


def threads(res: Resources) -> int:
    return max(1, round(res.num_cpus))


def read_plan(batch: pa.Table, storage_options: dict) -> pa.Table:
    """Task operator: the variants of the plan objects named in `batch`."""
    return pa.concat_tables([read_plan_object(uri, storage_options) for uri in batch.column("uri").to_pylist()])


def build_dataset(spec: JobSpec, plan_uris: list[str], model_identity: dict) -> tuple[ray.data.Dataset, object]:
    """The dataset of records, and the ledger actor (the caller kills it when the dataset is consumed)."""
    gpus = True
    if single_machine_without_gpus() and (spec.sample.resources.num_gpus or spec.decode.resources.num_gpus
                                          or (spec.filter.clip_model and spec.filter.resources.num_gpus)):
        gpus = False
        log.warning("no GPU on this machine: the model stages run on CPU (their num_gpus requests dropped)")
    actors = {"sample": spec.sample.resources, "decode": spec.decode.resources}
    if spec.filter.clip_model:
        actors["filter"] = spec.filter.resources
    if not gpus:
        actors = {k: r.model_copy(update={"num_gpus": 0.0}) for k, r in actors.items()}
    wait_for_resources({**actors, "encode": Resources(num_cpus=1)}, spec.ray.resource_wait_s)
    crowded = gpus_crowded(actors)
    if crowded:
        log.warning(crowded)

    # The ledger lives on the driver's node: it must outlive any worker node.
    ledger = AttemptLedger.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        ray.get_runtime_context().get_node_id(), soft=False)).remote()
    guard = lambda *stages: GuardedStages(list(stages), ledger, spec.ray.max_row_attempts)  # noqa: E731

    # One task per plan object, its rows then split into blocks of one sample batch: each free sampler
    # takes the next batch, so no replica sits idle while another works through a long block.
    ds = ray.data.from_items([{"uri": u} for u in plan_uris], override_num_blocks=len(plan_uris))
    ds = ds.map_batches(read_plan, fn_kwargs={"storage_options": spec.storage_options}, batch_size=1,
                        batch_format="pyarrow")
    ds = ds.repartition(target_num_rows_per_block=spec.sample.batch_size)
    sample = SampleStage(spec.model, spec.sample, threads(spec.sample.resources))
    ds = ds.map_batches(StageActor, fn_constructor_args=(guard(sample), spec.ray.setup_attempts),
                        batch_size=spec.sample.batch_size, batch_format="pyarrow",
                        **actor_args(actors["sample"], gpus))
    decode = DecodeStage(spec.model, spec.decode, threads(spec.decode.resources))
    ds = ds.map_batches(StageActor, fn_constructor_args=(guard(decode), spec.ray.setup_attempts),
                        batch_size=spec.decode.batch_size, batch_format="pyarrow",
                        **actor_args(actors["decode"], gpus))
    writer = ObjectWriter(spec.output, spec.run_id, model_identity, spec.manifest, spec.storage_options)
    encode = EncodeStage(spec.encode, run_id=spec.run_id, model=model_identity)
    light = dict(batch_size=spec.encode.batch_size, batch_format="pyarrow")
    if spec.filter.clip_model:
        # The CLIP model loads once per actor, not once per task.
        ds = ds.map_batches(StageActor, fn_constructor_args=(guard(FilterStage(spec.filter)), spec.ray.setup_attempts),
                            **light, **actor_args(actors.get("filter", spec.filter.resources), gpus))
        ds = ds.map_batches(run_stages, fn_kwargs={"guarded": guard(encode, writer)}, **light)
    else:
        ds = ds.map_batches(run_stages, fn_kwargs={"guarded": guard(FilterStage(spec.filter), encode, writer)},
                            **light)
    return ds, ledger
