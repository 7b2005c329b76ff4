"""Running a job: take the output's lease, plan, stream the work through Ray, commit.

In: a `JobSpec`. Out: a `Summary` (counts by status; how many variants were new, skipped, retried or
regenerated; throughput; where the outputs are). Planning and the resume rule: pipeline.plan.
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
from pipeline.library import LibraryState
from pipeline.plan import PLAN_OBJECT_ROWS, PlanSpill, Planner, remove_plans
from pipeline.spec import JobSpec
from pipeline.storage import filesystem, is_local

log = logging.getLogger("rushes")
SHOWN_INVALID = 20  # invalid rows echoed one by one; the rest are counted (each has its record)


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


class CommitBuffer:
    """Records wait here until `commit.max_records` are ready or the oldest has waited `commit.max_wait_s`:
    one metadata object per few hundred records instead of one per Ray Data block (a block is one
    sample batch, a few variants), which keeps the library's object count and its read-back time down."""

    def __init__(self, writer: MetadataWriter, max_records: int, max_wait_s: float):
        self.writer, self.max_records, self.max_wait_s = writer, max_records, max_wait_s
        self.records: list[dict] = []
        self.since = 0.0
        self.committed = 0

    def add(self, records: list[dict]) -> None:
        if records and not self.records:
            self.since = time.monotonic()
        self.records += records
        if self.records and time.monotonic() - self.since >= self.max_wait_s:
            self.flush()
        while len(self.records) >= self.max_records:
            self._commit(self.max_records)
        if not self.records:
            self.since = 0.0

    def flush(self) -> None:
        while self.records:
            self._commit(self.max_records)

    def _commit(self, n: int) -> None:
        self.writer.commit(self.records[:n])
        self.committed += len(self.records[:n])
        self.records = self.records[n:]
        self.since = time.monotonic()


def run_job(spec: JobSpec, echo=print, force: bool = False) -> Summary:
    start = time.perf_counter()
    spec = spec.resolved()
    planner = Planner(spec)  # opens the manifest: one that cannot be used is refused before any write
    lease = Lease(spec.output, spec.run_id, spec.lease_ttl_s, spec.storage_options)
    taken_from = lease.acquire(force=force)  # also the first write: a bad bucket fails here, before any GPU work
    try:
        if taken_from:
            echo(f"[rushes] took over the lease of run {taken_from}")
        removed = remove_partial_writes(spec.output, spec.storage_options)
        if removed:
            echo(f"[rushes] removed {removed} partial writes left by an interrupted run")
        remove_plans(spec.output, spec.storage_options)  # left by runs that were killed; this run holds the lease
        state = LibraryState.load(spec.output, spec.storage_options,
                                  with_phash=spec.filter.max_duplicate_distance is not None)
        planner.state = state
        summary = Summary(spec.run_id, spec.output, planner.manifest.num_rows)
        writer = MetadataWriter(spec.output, spec.run_id, record_schema(planner.manifest.extra_schema),
                                spec.storage_options)
        summary.spec_uri = writer.save_text(f"runs/{spec.run_id}/job.yaml",
                                            yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
        commits = CommitBuffer(writer, spec.commit.max_records, float("inf"))
        spill = PlanSpill(spec.output, spec.run_id, 0, spec.storage_options, plan_object_rows(spec))
        valid = invalid = 0
        for batch in planner.batches():
            valid += batch.valid
            invalid += len(batch.invalid)
            for rec in batch.to_record:
                if summary.counts["invalid"] < SHOWN_INVALID:
                    echo(f"[rushes] invalid row {rec['row']} (id {rec['id']!r}): {rec['error']}")
                summary.counts["invalid"] += 1
            commits.add([invalid_record(r) for r in batch.to_record])
            spill.add(batch.todo)
        commits.flush()
        plan_uris = spill.close()
        if summary.counts["invalid"] > SHOWN_INVALID:
            echo(f"[rushes] ... and {summary.counts['invalid'] - SHOWN_INVALID} more invalid rows, each recorded "
                 "with its error (rushes validate lists them all)")
        summary.work.update(planner.work)
        w = summary.work
        echo(f"[rushes] run {spec.run_id}: {valid} valid rows, {invalid} invalid; "
             f"{spill.count} variants to generate ({w['new']} new, {w['retried']} retried, "
             f"{w['regenerated']} regenerated), {w['skipped']} already done")
        if plan_uris:
            _generate(spec, plan_uris, spill.count, planner.model, state, writer, lease, summary, echo, start)
        summary.seconds = time.perf_counter() - start
        writer.save_text(f"runs/{spec.run_id}/summary.txt", summary.render() + "\n")
        return summary
    finally:
        try:
            remove_plans(spec.output, spec.storage_options, spec.run_id)
        finally:
            lease.release()


class ClusterError(RuntimeError):
    """The Ray cluster cannot run the job as declared (a stage no node can host)."""


class JobFailed(RuntimeError):
    """The Ray pipeline stopped; every record committed before it is kept, and a re-run resumes."""


def _generate(spec, plan_uris, total, model, state, writer, lease, summary, echo, start) -> None:
    """Stream the planned variants through the pipeline and commit their records; with
    `filter.retries_on_reject`, rejected variants go round again with new seeds (one more pass of the
    pipeline per try, planned like the first)."""
    from pipeline.curate import Curator

    ensure_ray(spec)
    curator = Curator(spec, state)
    commits = CommitBuffer(writer, spec.commit.max_records, spec.commit.max_wait_s)
    per_wave = max(1, spec.ray.max_rows_per_dataset // plan_object_rows(spec))  # plan objects per dataset
    round_ = 0
    while plan_uris:
        again = PlanSpill(spec.output, spec.run_id, round_ + 1, spec.storage_options, plan_object_rows(spec))
        waves = [plan_uris[i:i + per_wave] for i in range(0, len(plan_uris), per_wave)]
        for number, wave in enumerate(waves, 1):
            if len(waves) > 1:
                echo(f"[rushes] wave {number} of {len(waves)}: up to {len(wave) * plan_object_rows(spec)} variants "
                     f"(ray.max_rows_per_dataset={spec.ray.max_rows_per_dataset})")
            _run_wave(spec, wave, model, curator, commits, again, lease, summary, echo, start, total)
        round_ += 1
        plan_uris = again.close()
        if plan_uris:
            summary.work["resampled"] += again.count
            echo(f"[rushes] sampling {again.count} rejected variants again with new seeds "
                 f"(try {round_} of filter.retries_on_reject={spec.filter.retries_on_reject})")


def plan_object_rows(spec: JobSpec) -> int:
    return min(PLAN_OBJECT_ROWS, spec.ray.max_rows_per_dataset)


def _run_wave(spec, plan_uris, model, curator, commits, again, lease, summary, echo, start, total) -> None:
    """One Ray Data dataset over `plan_uris`: its records committed, its rejects spilled to `again`."""
    import ray

    from pipeline.graph import build_dataset, rows_of

    ds, ledger = build_dataset(spec, plan_uris, model)
    try:
        shown = commits.committed
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            lease.check()
            records, retry = curator.review(rows_of(batch))
            again.add(retry)
            commits.add(records)
            for rec in records:
                summary.counts[rec["status"]] += 1
                if rec["status"] == "failed":
                    echo(f"[rushes] failed {rec['id']}/{rec['variant']}: {rec['error']}")
            if commits.committed != shown:
                shown = commits.committed
                _progress(echo, shown, total, summary, again.count, start)
        commits.flush()
        if commits.committed != shown:
            _progress(echo, commits.committed, total, summary, again.count, start)
    except (ray.exceptions.RayError, ClusterError) as e:
        commits.flush()  # what finished is kept
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise JobFailed(f"the pipeline stopped after committing {commits.committed} of {total} variants: "
                        f"{type(e).__name__}: {first}. Committed records are kept; run again to resume.") from e
    finally:
        ray.kill(ledger)


def _progress(echo, done, total, summary, again, start) -> None:
    echo(f"[rushes] committed {done}/{total} variants ({summary.generated} videos, "
         f"{summary.counts['failed']} failed" + (f", {again} to sample again" if again else "")
         + f") in {time.perf_counter() - start:.0f} s")
