"""Running a job: plan (read + validate), start Ray, stream rows through the graph, commit, summarise.

In: a `JobSpec`. Out: a `Summary` (counts by status, throughput, where the outputs are). Every manifest
row ends in exactly one committed record: invalid rows are committed first, straight from validation;
every variant of a valid row is committed when it comes out of the graph.
"""
from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field

import yaml

from pipeline.commit import MetadataWriter, invalid_record, record_schema
from pipeline.manifest import Validated, read_manifest, validate_rows
from pipeline.spec import JobSpec
from stages.checkpoints import model_identity

log = logging.getLogger("rushes")


@dataclass
class Plan:
    spec: JobSpec
    rows: Validated
    model: dict
    pixel_settings: dict

    @property
    def num_variants(self) -> int:
        return sum(r["num_variants"] for r in self.rows.valid)


def plan_job(spec: JobSpec) -> Plan:
    """Everything that can be checked without Ray or a GPU: job file, manifest rows, model identity."""
    spec = spec.resolved()
    rows = validate_rows(read_manifest(spec.manifest), spec)
    model = model_identity(spec.model.family, spec.model.path, spec.model.revision, spec.model.dtype)
    enc = spec.encode
    pixel_settings = {"model": model, "encode": {"codec": enc.codec, "crf": enc.crf, "preset": enc.preset},
                      "batch_invariant": spec.sample.batch_invariant}
    return Plan(spec, rows, model, pixel_settings)


@dataclass
class Summary:
    run_id: str
    output: str
    manifest_rows: int
    counts: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    spec_uri: str = ""

    @property
    def generated(self) -> int:
        return self.counts["accepted"] + self.counts["rejected"]

    def render(self) -> str:
        per_min = self.generated / self.seconds * 60 if self.seconds else 0.0
        by_status = ", ".join(f"{s} {self.counts[s]}" for s in ("accepted", "rejected", "invalid", "failed"))
        return "\n".join([
            f"run {self.run_id}: {self.manifest_rows} manifest rows -> {sum(self.counts.values())} records",
            f"  {by_status}",
            f"  {self.generated} videos generated in {self.seconds:.1f} s ({per_min:.1f} videos/min)",
            f"  videos:   {self.output.rstrip('/')}/videos/",
            f"  metadata: {self.output.rstrip('/')}/metadata/  (pyarrow.dataset.dataset(...))",
            f"  job spec: {self.spec_uri}",
        ])


def ensure_ray(spec: JobSpec) -> None:
    import ray

    if ray.is_initialized():
        return
    address = spec.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        # Logical CPUs are scheduling tokens: with at least 4, the sample and decode actors leave room
        # for the encode tasks even on a 2-core machine.
        ray.init(num_cpus=spec.ray.num_cpus or max(4, os.cpu_count() or 1), include_dashboard=False,
                 log_to_driver=True)


def run_job(spec: JobSpec, echo=print) -> Summary:
    start = time.perf_counter()
    plan = plan_job(spec)
    spec = plan.spec
    writer = MetadataWriter(spec.output, spec.run_id, record_schema(plan.rows.extra_schema))
    summary = Summary(spec.run_id, spec.output, len(plan.rows.valid) + len(plan.rows.invalid))
    summary.spec_uri = writer.save_text(f"runs/{spec.run_id}/job.yaml",
                                        yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    for rec in plan.rows.invalid:
        echo(f"[rushes] invalid row {rec['row']} (id {rec['id']!r}): {rec['error']}")
    writer.commit([invalid_record(r) for r in plan.rows.invalid])
    summary.counts.update(invalid=len(plan.rows.invalid))
    total = plan.num_variants
    echo(f"[rushes] run {spec.run_id}: {len(plan.rows.valid)} valid rows, {len(plan.rows.invalid)} invalid, "
         f"{total} variants to generate with {spec.model.family}:{spec.model.path}")
    if plan.rows.valid:
        from pipeline.graph import build_dataset, rows_of

        ensure_ray(spec)
        ds = build_dataset(spec, plan.rows.valid, plan.pixel_settings, plan.model)
        done = 0
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            records = rows_of(batch)
            writer.commit(records)
            for rec in records:
                summary.counts[rec["status"]] += 1
                if rec["status"] == "failed":
                    echo(f"[rushes] failed {rec['id']}/{rec['variant']}: {rec['error']}")
            done += len(records)
            elapsed = time.perf_counter() - start
            echo(f"[rushes] committed {done}/{total} variants ({summary.generated} videos, "
                 f"{summary.counts['failed']} failed) in {elapsed:.0f} s")
    summary.seconds = time.perf_counter() - start
    writer.save_text(f"runs/{spec.run_id}/summary.txt", summary.render() + "\n")
    return summary
