"""The one place where stages become Ray Data operators.

In: expanded variant rows that still need generating, and the JobSpec. Out: a Ray Data `Dataset` of
metadata records, produced by
    sample (actor pool) -> decode (actor pool) -> filter + encode + write objects (tasks)
with each stage's CPUs, GPUs, memory and replicas taken from the job file. Expansion runs in the driver
(`pipeline.job`): its output decides which variants a re-run may skip, before any model is loaded.

Rows travel between operators as pickled Python dicts in a single binary column: a row's fields change
from stage to stage (latents, then frames, then bytes) and Arrow schemas would only get in the way.
"""
from __future__ import annotations

import logging
import pickle

import pyarrow as pa
import ray
import ray.data

from pipeline.commit import ObjectWriter
from pipeline.spec import JobSpec, Resources
from stages.decode import DecodeStage
from stages.encode import EncodeStage
from stages.filter import FilterStage
from stages.sample import SampleStage

log = logging.getLogger("rushes")
COLUMN = "row"


def rows_of(batch: pa.Table) -> list[dict]:
    return [pickle.loads(b) for b in batch.column(COLUMN).to_pylist()]


def table_of(rows: list[dict]) -> pa.Table:
    return pa.table({COLUMN: pa.array([pickle.dumps(r, protocol=5) for r in rows], pa.large_binary())})


def run_stages(batch: pa.Table, stages) -> pa.Table:
    """Task operators: light stages (no model) applied in turn to one batch."""
    rows = rows_of(batch)
    for stage in stages:
        rows = stage(rows)
    return table_of(rows)


class StageActor:
    """Actor operators: the stage's `setup()` (model loading) runs once per actor, in the actor."""

    def __init__(self, stage):
        self.stage = stage
        self.stage.setup()

    def __call__(self, batch: pa.Table) -> pa.Table:
        return table_of(self.stage(rows_of(batch)))


def cluster_has_gpus() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0


def actor_args(res: Resources, gpus: bool) -> dict:
    args = {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus if gpus else 0,
            "compute": ray.data.ActorPoolStrategy(size=res.replicas)}
    if res.memory_gb:
        args["memory"] = int(res.memory_gb * 2**30)
    return args


def threads(res: Resources) -> int:
    return max(1, round(res.num_cpus))


def build_dataset(spec: JobSpec, variants: list[dict], model_identity: dict) -> ray.data.Dataset:
    gpus = cluster_has_gpus()
    if not gpus and (spec.sample.resources.num_gpus or spec.decode.resources.num_gpus):
        log.warning("no GPUs in the Ray cluster: sample and decode run on CPU (their num_gpus requests dropped)")
    # Small blocks keep rows streaming through the stages instead of waiting for a big first block.
    ds = ray.data.from_arrow(table_of(variants)).repartition(max(1, min(len(variants), 256)))
    ds = ds.map_batches(StageActor, fn_constructor_args=(SampleStage(spec.model, spec.sample,
                                                                      threads(spec.sample.resources)),),
                        batch_size=spec.sample.batch_size, batch_format="pyarrow",
                        **actor_args(spec.sample.resources, gpus))
    ds = ds.map_batches(StageActor, fn_constructor_args=(DecodeStage(spec.model, spec.decode,
                                                                      threads(spec.decode.resources)),),
                        batch_size=spec.decode.batch_size, batch_format="pyarrow",
                        **actor_args(spec.decode.resources, gpus))
    writer = ObjectWriter(spec.output, spec.run_id, model_identity, spec.manifest, spec.storage_options)
    ds = ds.map_batches(run_stages, fn_kwargs={"stages": [FilterStage(spec.filter), EncodeStage(spec.encode),
                                                          writer]},
                        batch_size=spec.encode.batch_size, batch_format="pyarrow")
    return ds
