"""Running a job: plan, take the output's lease, decide what to generate, stream it through Ray, commit.

In: a `JobSpec`. Out: a `Summary` (counts by status; how many variants were new, skipped, retried or
regenerated; throughput; where the outputs are).

Resume rule, per variant, against the current committed record of the same (id, variant):
- same `params_hash` and accepted/rejected: skipped, no model is loaded for it;
- `failed` (same parameters): retried;
- different `params_hash` (new weights, steps, prompt, ...): regenerated;
- no record: new.
Invalid rows are recorded once; an unchanged invalid row is not recorded again.
"""
from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field

import yaml

from pipeline.commit import MetadataWriter, invalid_record, record_schema
from pipeline.lease import Lease
from pipeline.library import current_state, record_key
from pipeline.manifest import Validated, read_manifest, validate_rows
from pipeline.spec import JobSpec
from pipeline.storage import filesystem, is_local
from stages.checkpoints import model_identity
from stages.expand import ExpandStage

log = logging.getLogger("rushes")
DONE = ("accepted", "rejected")


@dataclass
class Plan:
    spec: JobSpec
    rows: Validated
    model: dict
    variants: list[dict]


def plan_job(spec: JobSpec) -> Plan:
    """Everything that can be checked without Ray or a GPU: job file, manifest rows, model identity,
    and every variant's expanded prompt and params_hash."""
    spec = spec.resolved()
    rows = validate_rows(read_manifest(spec.manifest, spec.storage_options), spec)
    model = model_identity(spec.model.family, spec.model.path, spec.model.revision, spec.model.dtype)
    enc = spec.encode
    pixel_settings = {"model": model, "encode": {"codec": enc.codec, "crf": enc.crf, "preset": enc.preset},
                      "batch_invariant": spec.sample.batch_invariant}
    variants = ExpandStage(spec.expand, pixel_settings)(rows.valid)
    return Plan(spec, rows, model, variants)


@dataclass
class Summary:
    run_id: str
    output: str
    manifest_rows: int
    counts: Counter = field(default_factory=Counter)  # records committed by this run, by status
    work: Counter = field(default_factory=Counter)  # variants: new, skipped, retried, regenerated
    seconds: float = 0.0
    spec_uri: str = ""

    @property
    def generated(self) -> int:
        return self.counts["accepted"] + self.counts["rejected"]

    def render(self) -> str:
        per_min = self.generated / self.seconds * 60 if self.seconds else 0.0
        by_status = ", ".join(f"{s} {self.counts[s]}" for s in ("accepted", "rejected", "invalid", "failed"))
        work = ", ".join(f"{k} {self.work[k]}" for k in ("new", "skipped", "retried", "regenerated"))
        if self.work["resampled"]:
            work += f"; {self.work['resampled']} rejected tries sampled again with new seeds"
        return "\n".join([
            f"run {self.run_id}: {self.manifest_rows} manifest rows -> {sum(self.counts.values())} records",
            f"  {by_status}",
            f"  variants: {work}",
            f"  {self.generated} videos generated in {self.seconds:.1f} s ({per_min:.1f} videos/min)",
            f"  videos:   {self.output.rstrip('/')}/videos/",
            f"  metadata: {self.output.rstrip('/')}/metadata/  (pipeline.library.read_records)",
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
        # address="local": a new Ray of this job's own, even if a cluster was started on this machine.
        ray.init(address="local", num_cpus=spec.ray.num_cpus or max(4, os.cpu_count() or 1),
                 include_dashboard=False, log_to_driver=True)


def remove_partial_writes(output: str, storage_options: dict) -> int:
    """Temp files of a local writer killed mid-write (object stores have none: a PUT is atomic)."""
    fs, root = filesystem(output, storage_options)
    if not is_local(fs):
        return 0
    stale = fs.glob(f"{root.rstrip('/')}/**/.tmp-*")
    for path in stale:
        fs.rm_file(path)
    return len(stale)


def select_work(plan: Plan, state: dict[tuple, dict], summary: Summary) -> tuple[list[dict], list[dict]]:
    """(variants to generate, invalid rows to record), counting each decision in `summary.work`."""
    todo = []
    for v in plan.variants:
        prev = state.get((v["id"], v["variant"]))
        if prev is None:
            summary.work["new"] += 1
        elif prev["params_hash"] != v["params_hash"]:
            summary.work["regenerated"] += 1
        elif prev["status"] in DONE:
            summary.work["skipped"] += 1
            continue
        else:
            summary.work["retried"] += 1
        todo.append(v)
    invalid = [r for r in plan.rows.invalid
               if (state.get(record_key({**r, "variant": -1})) or {}).get("error") != r["error"]]
    return todo, invalid


def run_job(spec: JobSpec, echo=print, force: bool = False) -> Summary:
    start = time.perf_counter()
    plan = plan_job(spec)
    spec = plan.spec
    lease = Lease(spec.output, spec.run_id, spec.lease_ttl_s, spec.storage_options)
    taken_from = lease.acquire(force=force)  # also the first write: a bad bucket fails here, before any GPU work
    try:
        if taken_from:
            echo(f"[rushes] took over the lease of run {taken_from}")
        removed = remove_partial_writes(spec.output, spec.storage_options)
        if removed:
            echo(f"[rushes] removed {removed} partial writes left by an interrupted run")
        summary = Summary(spec.run_id, spec.output, len(plan.rows.valid) + len(plan.rows.invalid))
        state = current_state(spec.output, spec.storage_options)
        todo, invalid = select_work(plan, state, summary)
        writer = MetadataWriter(spec.output, spec.run_id, record_schema(plan.rows.extra_schema),
                                spec.storage_options)
        summary.spec_uri = writer.save_text(f"runs/{spec.run_id}/job.yaml",
                                            yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
        for rec in invalid:
            echo(f"[rushes] invalid row {rec['row']} (id {rec['id']!r}): {rec['error']}")
        writer.commit([invalid_record(r) for r in invalid])
        summary.counts.update(invalid=len(invalid))
        w = summary.work
        echo(f"[rushes] run {spec.run_id}: {len(plan.rows.valid)} valid rows, {len(plan.rows.invalid)} invalid; "
             f"{len(todo)} variants to generate ({w['new']} new, {w['retried']} retried, "
             f"{w['regenerated']} regenerated), {w['skipped']} already done")
        if todo:
            _generate(spec, plan, todo, state, writer, lease, summary, echo, start)
        summary.seconds = time.perf_counter() - start
        writer.save_text(f"runs/{spec.run_id}/summary.txt", summary.render() + "\n")
        return summary
    finally:
        lease.release()


class ClusterError(RuntimeError):
    """The Ray cluster cannot run the job as declared (a stage no node can host)."""


class JobFailed(RuntimeError):
    """The Ray pipeline stopped; every record committed before it is kept, and a re-run resumes."""


def _generate(spec, plan, todo, state, writer, lease, summary, echo, start) -> None:
    """Stream `todo` through the pipeline and commit each batch; with `filter.retries_on_reject`, rejected
    variants go round again with new seeds (one more pass of the pipeline per try)."""
    import ray

    from pipeline.curate import Curator
    from pipeline.graph import build_dataset, rows_of

    ensure_ray(spec)
    variants = {(v["id"], v["variant"]): v for v in todo}
    curator = Curator(spec, state, regenerating=set(variants))
    rows, done, attempt = todo, 0, 0
    while rows:
        ds, ledger = build_dataset(spec, rows, plan.model)
        again = []
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                lease.check()
                records, retry = curator.review(rows_of(batch), variants)
                again += retry
                writer.commit(records)
                for rec in records:
                    summary.counts[rec["status"]] += 1
                    if rec["status"] == "failed":
                        echo(f"[rushes] failed {rec['id']}/{rec['variant']}: {rec['error']}")
                done += len(records)
                echo(f"[rushes] committed {done}/{len(todo)} variants ({summary.generated} videos, "
                     f"{summary.counts['failed']} failed"
                     + (f", {len(again)} to sample again" if again else "")
                     + f") in {time.perf_counter() - start:.0f} s")
        except (ray.exceptions.RayError, ClusterError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise JobFailed(f"the pipeline stopped after committing {done} of {len(todo)} variants: "
                            f"{type(e).__name__}: {first}. Committed records are kept; run again to resume.") from e
        finally:
            ray.kill(ledger)
        attempt += 1
        if again:
            summary.work["resampled"] += len(again)
            echo(f"[rushes] sampling {len(again)} rejected variants again with new seeds "
                 f"(try {attempt} of filter.retries_on_reject={spec.filter.retries_on_reject})")
        rows = again
