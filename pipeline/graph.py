"""The one place where stages become Ray Data operators.

In: the plan objects of the variants to generate (pipeline/plan.py), the JobSpec and the run context.
Out: a Ray Data `Dataset` of metadata records. The graph is a read of the plan objects (tasks), then one
operator per stage of `pipeline.spec.STAGES` that has work on Ray, in order, made from what the stage
declares (stages/contract.py): a stage that holds a model becomes an actor pool (its `setup()` once per
actor), any other becomes tasks; each with its own CPUs, GPUs, memory, batch size and replicas (fixed, or a
`min..max` range that Ray Data scales); a stage whose language model runs in Ray Data's LLM processor gets
that processor (pipeline/llm_processor.py). The row keys the stages read and write are checked along the
chain before anything runs. Resources are fitted to the cluster in pipeline/capacity.py (where the sampler and
the decoder of a multi-GPU cluster become one actor per GPU); each batch runs under the failure ledger of
pipeline/ledger.py.

Rows travel between operators in the wire format of pipeline/rows.py, in blocks of one sample batch
each, so that every free sampler can take the next batch (when sampling costs nothing, the null model's,
in blocks of several: stages/sample.py block_rows).
"""
from __future__ import annotations

import logging
import random
import time

import pyarrow as pa
import ray
import ray.data
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline import llm_processor
from pipeline.capacity import PLAN_READ, fit_to_cluster
from pipeline.ledger import AttemptLedger, GuardedStage
from pipeline.plan import read_plan_object
from pipeline.rows import rows_of, table_of
from pipeline.spec import JobSpec
from stages.common.variant import PLANNED_KEYS
from stages.contract import Resources, RunContext, Stage, check_chain, payload_keys

log = logging.getLogger("rushes")


class StageChain:
    """Consecutive stages without a model that Ray Data would fuse into one task anyway (filter, encode, write), as
    one stage: one task and one ledger entry per batch for the whole chain, instead of one per stage."""

    holds_model = False

    def __init__(self, stages: list[Stage]):
        self.stages = stages
        self.name = "+".join(s.name for s in stages)
        self.options = stages[0].options

    def setup(self) -> None:
        for s in self.stages:
            s.setup()

    def __call__(self, rows: list[dict]) -> list[dict]:
        for s in self.stages:
            rows = s(rows)
        return rows


def task_function(name: str):
    """Task operators: a stage without a model, on one batch; named after the stage, so that Ray Data's
    progress lines and the watchdog's diagnosis say MapBatches(filter), not a generic name."""
    def run(batch: pa.Table, guarded: GuardedStage) -> pa.Table:
        return table_of(guarded(rows_of(batch)))

    run.__name__ = run.__qualname__ = name
    return run


def actor_class(name: str) -> type:
    return type(name, (StageActor,), {"__doc__": StageActor.__doc__})


class StageActor:
    """Actor operators: each stage's `setup()` (model loading) runs once per actor, in the actor. Stages that run
    together (pipeline/capacity.py run_together: the sampler and the decoder on one GPU) run one after the other
    on each batch."""

    def __init__(self, guarded: list[GuardedStage], setup_attempts: int):
        for g in guarded:
            self.set_up(g, setup_attempts)
        self.guarded = guarded

    @staticmethod
    def set_up(guarded: GuardedStage, setup_attempts: int) -> None:
        name = guarded.stage.name
        for attempt in range(1, setup_attempts + 1):
            try:
                guarded.setup()
                return
            except Exception as e:  # noqa: BLE001 - retried, then raised with the count
                if attempt == setup_attempts:
                    raise RuntimeError(f"{name}: setup failed {attempt} times; last error: "
                                       f"{type(e).__name__}: {e}") from e
                log.warning("%s: setup failed (try %d of %d), trying again: %s: %s",
                            name, attempt, setup_attempts, type(e).__name__, e)
                time.sleep(random.uniform(0, min(2.0 ** attempt, 30.0)))

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = rows_of(batch)
        for g in self.guarded:
            rows = g(rows)
        return table_of(rows)


def operator_args(stage: Stage, res: Resources) -> dict:
    """Ray Data's arguments for a stage's operator: an actor pool for a stage that holds a model, else tasks. (Stages
    that run together take the first one's, with the most CPUs any of them asks for.)"""
    args = {"num_cpus": res.num_cpus, "batch_size": stage.options.batch_size, "batch_format": "pyarrow"}
    if res.num_gpus:
        args["num_gpus"] = res.num_gpus
    if res.memory_gb:
        args["memory"] = int(res.memory_gb * 2**30)
    if stage.holds_model:
        lo, hi = res.replica_range
        args["compute"] = ray.data.ActorPoolStrategy(min_size=lo, max_size=hi)
    return args


def read_plan(batch: pa.Table, storage_options: dict) -> pa.Table:
    """Task operator: the variants of the plan objects named in `batch`."""
    return pa.concat_tables([read_plan_object(uri, storage_options) for uri in batch.column("uri").to_pylist()])


def stages_on_ray(spec: JobSpec, ctx: RunContext) -> list[Stage]:
    """The stages that get an operator in this job, in pipeline order (the template expander, for one,
    did its work while planning)."""
    return [s for s in (cls(getattr(spec, cls.name), ctx) for cls in spec.stages) if s.on_ray]


def build_dataset(spec: JobSpec, plan_uris: list[str], ctx: RunContext) -> tuple[ray.data.Dataset, object, dict]:
    """The dataset of records, the ledger actor (the caller kills it when the dataset is consumed), and each
    stage's share of a GPU per replica as it runs on this cluster (what a second of its work costs in GPU time)."""
    stages = stages_on_ray(spec, ctx)
    check_chain(stages, PLANNED_KEYS)
    asks, together = fit_to_cluster(spec, stages)
    payload = payload_keys(stages, PLANNED_KEYS)

    # The ledger lives on the driver's node: it must outlive any worker node.
    ledger = AttemptLedger.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        ray.get_runtime_context().get_node_id(), soft=False)).remote()

    # One task per plan object, its rows then split into blocks of one sample batch: each free sampler
    # takes the next batch, so no replica sits idle while another works through a long block (block_rows).
    ds = ray.data.from_items([{"uri": u} for u in plan_uris], override_num_blocks=len(plan_uris))
    ds = ds.map_batches(read_plan, fn_kwargs={"storage_options": spec.storage_options}, batch_size=1,
                        batch_format="pyarrow", num_cpus=asks[PLAN_READ].num_cpus)
    block = next((s.block_rows() for s in stages if s.paces_blocks), 1)
    ds = ds.repartition(target_num_rows_per_block=block)
    by_name = {s.name: s for s in stages}
    for names in together:
        group = [by_name[n] for n in names]
        for stage in group:
            # the worker's copy learns what `auto` became (its device, its GPU memory share); its torch threads keep
            # following the CPUs it asked for, not the scheduling share fit_pipeline gave it
            fitted = {k: getattr(asks[stage.name], k) for k in ("num_gpus", "replicas")}
            stage.options = stage.options.model_copy(
                update={"resources": stage.options.resources.model_copy(update=fitted)})
        stage = group[0]
        processor = stage.llm_processor(asks[stage.name])
        if processor is not None:
            ds = llm_processor.apply(ds, processor)
            continue
        guarded = [GuardedStage(s, ledger, spec.ray, payload) for s in group]
        args = operator_args(stage, asks[stage.name].model_copy(
            update={"num_cpus": max(asks[n].num_cpus for n in names)}))
        if stage.holds_model:
            ds = ds.map_batches(actor_class("+".join(names)), fn_constructor_args=(guarded, spec.ray.setup_attempts),
                                **args)
        else:
            chain = StageChain(group) if len(group) > 1 else stage
            ds = ds.map_batches(task_function(chain.name),
                                fn_kwargs={"guarded": GuardedStage(chain, ledger, spec.ray, payload)}, **args)
    return ds, ledger, {name: float(r.num_gpus) for name, r in asks.items() if name != PLAN_READ}


def show_ray_data_progress(show: bool) -> None:
    """Ray Data's own progress output: bars on a terminal, a log line per operator every few seconds
    otherwise. Off while the job draws its own progress line on a terminal (pipeline/progress.py)."""
    ray.data.DataContext.get_current().enable_progress_bars = show
    if not show:  # else it warns once that the bars are off
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
