"""Running a job, in the driver: take the output's lease, plan, stream the work through Ray, commit.

In: a `JobSpec`. Out: a `Summary` (counts by status; how many variants were new, skipped, retried or
regenerated; throughput; where the outputs are). A `Run` holds what one run needs (spec, library state,
writers, lease, summary), so no step takes more than a few arguments. Planning and the resume rule:
pipeline/plan.py; the Ray Data graph: pipeline/graph.py; committing: pipeline/commit.py.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field

import yaml

from pipeline.commit import CommitBuffer, MetadataWriter, invalid_record, record_schema
from pipeline.errors import BudgetSpent, ClusterError, JobFailed
from pipeline.lease import Lease
from pipeline.library import LibraryState
from pipeline.plan import PLAN_OBJECT_ROWS, PlanSpill, Planner, remove_plans, sampling_cost
from pipeline.progress import ProgressLine, on_terminal
from pipeline.spec import JobSpec, JobSpecError
from stages.contract import RunContext
from stages.common.storage import filesystem, is_local
from stages.common.variant import DONE, STATUSES, WORK

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
    report_uri: str = ""
    gpu_seconds: float = 0.0  # busy seconds of each GPU stage times its share of a GPU
    gpu_hours_planned: float | None = None  # pipeline/gpu_plan.py, when the run was planned
    started_at: float = field(default_factory=time.time)  # epoch seconds: where the GPU-busy figures start
    lost: list[dict] = field(default_factory=list)  # model stages' batches lost with their workers (ledger.accounts)
    ended_gpu_s: float = 0.0  # GPU-seconds of the model stages' batches that ended (ledger.accounts)
    gpus: float = 0.0  # the cluster's GPUs when the run began
    gpu_lines: list[str] = field(default_factory=list)  # how busy they were kept (pipeline/gpu_time.py)
    stopped: str | None = None  # why a run that did not finish stopped (its counts: what it committed)

    @property
    def generated(self) -> int:
        return self.counts["accepted"] + self.counts["rejected"]

    def render(self) -> str:
        per_min = self.generated / self.seconds * 60 if self.seconds else 0.0
        by_status = ", ".join(f"{s} {self.counts[s]}" for s in STATUSES)
        work = ", ".join(f"{k} {self.work[k]}" for k in WORK)
        if self.work["resampled"]:
            work += f"; {self.work['resampled']} rejected tries sampled again with new seeds"
        return "\n".join([
            f"run {self.run_id}: {self.manifest_rows} manifest rows -> {sum(self.counts.values())} records",
            f"  {by_status}",
            f"  variants: {work}",
            f"  {self.generated} videos generated in {self.seconds:.1f} s ({per_min:.1f} videos/min)",
        ] + [f"  {line}" for line in self.gpu_lines] + ([f"  GPU-hours: {self.gpu_seconds / 3600:.3f} spent" + (
            f", {self.gpu_hours_planned:.3f} planned" if self.gpu_hours_planned is not None else "")]
             if self.gpu_seconds or self.gpu_hours_planned is not None else []) + [
            f"  videos:   {self.output.rstrip('/')}/videos/",
            f"  metadata: {self.output.rstrip('/')}/metadata/  (pipeline.library.read_records)",
            f"  job spec: {self.spec_uri}",
        ] + ([f"  report:   {self.report_uri}"] if self.report_uri else []))

    def to_json(self) -> str:
        """`runs/<run_id>/summary.json`, which the report reads."""
        return json.dumps({"run_id": self.run_id, "output": self.output, "manifest_rows": self.manifest_rows,
                           "counts": dict(self.counts), "work": dict(self.work), "seconds": self.seconds,
                           "gpu_seconds": self.gpu_seconds, "gpu_hours_planned": self.gpu_hours_planned,
                           "generated": self.generated, "started_at": self.started_at, "lost": self.lost,
                           "gpus": self.gpus, "ended_gpu_s": self.ended_gpu_s, "stopped": self.stopped},
                          indent=1)


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


def run_job(spec: JobSpec, echo=print, force: bool = False) -> Summary:
    return Run(spec, echo).run(force)


def ledger_accounts(ledger, received: dict) -> dict:
    """The model stages' batches that the ledger saw begin and never end, and the GPU-seconds of those that ended
    (ledger.AttemptLedger.accounts). A batch's end reaches the ledger without being waited for, so the driver may
    have its rows (`received`: RunMetrics.batches) before the ledger hears of its end: such a batch ended."""
    import ray

    try:
        accounts = ray.get(ledger.accounts.remote(), timeout=30)
    except Exception as e:  # noqa: BLE001 - a figure for the summary; never what fails a run
        log.warning("could not read the GPU accounts from the ledger: %s: %s", type(e).__name__, e)
        return {"lost": [], "ended_gpu_s": 0.0}
    ended = {key[:3]: s for key, s in received.items()}  # (stage, worker, start)
    late = [s for s in accounts["lost"] if (s["stage"], s["worker"], s["start"]) in ended]
    accounts["ended_gpu_s"] += sum((ended[s["stage"], s["worker"], s["start"]]["end"] - s["start"]) * s["gpus"]
                                   for s in late)
    accounts["lost"] = lost = [s for s in accounts["lost"] if s not in late]
    if lost:
        seconds = sum((s["until"] - s["start"]) * s["gpus"] for s in lost)
        log.warning("%d model-stage batch(es) began and never ended (lost with their workers); at least %.1f "
                    "GPU-seconds of work to redo", len(lost), seconds)
    return accounts


def simulated(spec: JobSpec) -> JobSpec:
    """The job with a simulated GPU's profile resolved into seconds per window (stages/models/simulation.py),
    once, in the driver; the saved job file shows them."""
    sim = spec.model.simulate
    if sim is None:
        return spec
    return spec.model_copy(update={"model": spec.model.model_copy(update={"simulate": sim.resolved()})})


def plan_object_rows(spec: JobSpec) -> int:
    return min(PLAN_OBJECT_ROWS, spec.ray.max_rows_per_dataset)


class Run:
    def __init__(self, spec: JobSpec, echo=print):
        self.start = time.perf_counter()
        self.spec = spec = simulated(spec.resolved())
        self.echo = echo
        self.planner = Planner(spec)  # opens the manifest: one that cannot be used is refused before any write
        self.lease = Lease(spec.output, spec.run_id, spec.lease_ttl_s, spec.storage_options)
        self.summary = Summary(spec.run_id, spec.output, self.planner.manifest.num_rows)
        self.ctx = RunContext(run_id=spec.run_id, output=spec.output, storage_options=spec.storage_options,
                              manifest=spec.manifest, model=spec.model, identity=self.planner.model)
        self.state: LibraryState | None = None
        self.writer: MetadataWriter | None = None
        self.metrics = None  # RunMetrics, once Ray is up
        # On a terminal: one progress line, the messages above it (off a terminal: a line per commit).
        self.line = ProgressLine() if on_terminal(echo) else None
        if self.line:
            self.echo = self.line.echo

    def run(self, force: bool = False) -> Summary:
        with self.line or nullcontext():  # on a terminal, the progress line; it ends on its last state
            return self._run(force)

    def _run(self, force: bool) -> Summary:
        spec, echo = self.spec, self.echo
        for warning in self.planner.warnings:
            echo(f"[rushes] warning: {warning}")
        taken_from = self.lease.acquire(force=force)  # the first write: a bad bucket fails here, before any GPU work
        try:
            if taken_from:
                echo(f"[rushes] took over the lease of run {taken_from}: {self.lease.takeover_reason}")
            removed = remove_partial_writes(spec.output, spec.storage_options)
            if removed:
                echo(f"[rushes] removed {removed} partial writes left by an interrupted run")
            remove_plans(spec.output, spec.storage_options)  # left by killed runs; this run holds the lease
            self.state = LibraryState.load(spec.output, spec.storage_options,
                                           with_phash=spec.filter.max_duplicate_distance is not None)
            self.planner.state = self.state
            self.writer = MetadataWriter(spec.output, spec.run_id,
                                         record_schema(self.planner.manifest.extra_schema), spec.storage_options)
            self.summary.spec_uri = self.writer.save_text(
                f"runs/{spec.run_id}/job.yaml", yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
            plan_uris, total = self.plan()
            if plan_uris:
                self.generate(plan_uris, total)
            self.summary.seconds = time.perf_counter() - self.start
            self.writer.save_text(f"runs/{spec.run_id}/summary.json", self.summary.to_json() + "\n")
            self.write_report()
            self.writer.save_text(f"runs/{spec.run_id}/summary.txt", self.summary.render() + "\n")
            return self.summary
        except Exception as e:
            if self.writer is not None and not self.lease.lost.is_set():
                self.summary.stopped = f"{type(e).__name__}: {e}"
                self.summary.seconds = time.perf_counter() - self.start
                self.writer.save_text(f"runs/{spec.run_id}/summary.json", self.summary.to_json() + "\n")
                self.write_report()  # a run that stopped: what it committed is kept, and shown
            raise
        finally:
            try:
                remove_plans(spec.output, spec.storage_options, spec.run_id)
            finally:
                self.lease.release()

    def write_report(self) -> None:
        """`<output>/report/index.html`, for this run; a report that cannot be written never fails the run."""
        from pipeline.report import write_report

        try:
            self.summary.report_uri = write_report(self.spec.output, self.spec.storage_options, self.spec.run_id)
        except Exception as e:  # noqa: BLE001 - the records are committed; `rushes report` can write it later
            log.warning("could not write the report (rushes report %s writes it): %s: %s",
                        self.spec.output, type(e).__name__, e)

    def plan(self) -> tuple[list[str], int]:
        """Record the invalid rows and spill the variants to generate; (plan object URIs, variants)."""
        spec, echo, counts = self.spec, self.echo, self.summary.counts
        commits = CommitBuffer(self.writer, spec.commit.max_records, float("inf"))
        spill = self.spill(0)
        valid = invalid = 0
        for batch in self.planner.batches():
            valid += batch.valid
            invalid += len(batch.invalid)
            for rec in batch.to_record:
                if counts["invalid"] < SHOWN_INVALID:
                    echo(f"[rushes] invalid row {rec['row']} (id {rec['id']!r}): {rec['error']}")
                counts["invalid"] += 1
            commits.add([invalid_record(r) for r in batch.to_record])
            spill.add(batch.todo)
        commits.flush()
        plan_uris = spill.close()
        if counts["invalid"] > SHOWN_INVALID:
            echo(f"[rushes] ... and {counts['invalid'] - SHOWN_INVALID} more invalid rows, each recorded "
                 "with its error (rushes validate lists them all)")
        w = self.summary.work
        w.update(self.planner.work)
        echo(f"[rushes] run {spec.run_id}: {valid} valid rows, {invalid} invalid; "
             f"{spill.count} variants to generate ({w['new']} new, {w['retried']} retried, "
             f"{w['regenerated']} regenerated), {w['skipped']} already done")
        return plan_uris, spill.count

    def spill(self, round_: int) -> PlanSpill:
        """Where a round's variants wait (pipeline/plan.py), in the job's `order`."""
        spec = self.spec
        cost = functools.partial(sampling_cost, family=spec.family) if spec.order == "longest_first" else None
        return PlanSpill(spec.output, spec.run_id, round_, spec.storage_options, plan_object_rows(spec), cost)

    def generate(self, plan_uris: list[str], total: int) -> None:
        """Stream the planned variants through the pipeline and commit their records; with
        `filter.retries_on_reject`, rejected variants go round again with new seeds (one more pass of the
        pipeline per try, planned like the first)."""
        import ray

        from pipeline.curate import Curator
        from pipeline.metrics import RunMetrics

        spec = self.spec
        ensure_ray(spec)
        self.check_plan()
        if self.line:
            from pipeline.graph import show_ray_data_progress

            show_ray_data_progress(False)  # the progress line replaces Ray Data's bars on a terminal
        self.summary.gpus = ray.cluster_resources().get("GPU", 0.0)
        self.metrics = RunMetrics(spec.name, self.summary.started_at)
        self.metrics.invalid(self.summary.counts["invalid"])
        self.total = total
        self.curator = Curator(spec, self.state)
        self.commits = CommitBuffer(self.writer, spec.commit.max_records, spec.commit.max_wait_s,
                                    on_commit=self.forget_segments)
        per_wave = max(1, spec.ray.max_rows_per_dataset // plan_object_rows(spec))  # plan objects per dataset
        round_ = 0
        while plan_uris:
            self.again = self.spill(round_ + 1)
            waves = [plan_uris[i:i + per_wave] for i in range(0, len(plan_uris), per_wave)]
            for number, wave in enumerate(waves, 1):
                if len(waves) > 1:
                    self.echo(f"[rushes] wave {number} of {len(waves)}: up to {len(wave) * plan_object_rows(spec)} "
                              f"variants (ray.max_rows_per_dataset={spec.ray.max_rows_per_dataset})")
                self.run_wave(wave)
            round_ += 1
            self.gpu_figures()
            plan_uris = self.again.close()
            if plan_uris:
                self.summary.work["resampled"] += self.again.count
                self.echo(f"[rushes] sampling {self.again.count} rejected variants again with new seeds "
                          f"(try {round_} of filter.retries_on_reject={spec.filter.retries_on_reject})")

    def gpu_figures(self) -> None:
        """The summary's lines on how busy the GPUs were kept, from the spans committed so far."""
        from pipeline.gpu_time import gpu_time

        figures = gpu_time(self.metrics.batches.values(), self.summary.started_at, self.summary.gpus)
        self.summary.gpu_lines = figures.lines() if figures.devices and figures.on_gpus else []

    def check_plan(self) -> None:
        """Before any work, on a cluster with GPUs or with a budget: the plan of pipeline/gpu_plan.py, printed; a
        job whose model cannot fit the cluster's GPUs, or whose planned GPU-hours exceed budget.max_gpu_hours, is
        refused (exit 2), with nothing generated."""
        from pipeline.gpu_plan import plan_job, running_cluster_gpu

        import ray

        spec, budget = self.spec, self.spec.budget
        gpu = running_cluster_gpu(spec.ray.resource_wait_s) if spec.family.transformer_class else None
        if gpu is None and budget.max_gpu_hours is None:
            return
        plan = plan_job(spec, gpu or budget.gpu, max(1, int(ray.cluster_resources().get("GPU", 1))), budget.mfu,
                        self.state)
        self.echo(plan.render())
        self.summary.gpu_hours_planned = plan.gpu_hours
        if gpu is not None and not plan.fits:
            raise JobSpecError(f"the job's model does not fit the cluster's GPUs ({gpu}); nothing was generated. "
                               "Change what the plan above says, or run `rushes plan` to try settings.")
        if budget.max_gpu_hours is not None and (plan.gpu_hours or 0) > budget.max_gpu_hours:
            raise JobSpecError(f"the plan needs {plan.gpu_hours:.3f} GPU-hours, more than budget.max_gpu_hours="
                               f"{budget.max_gpu_hours:g}; nothing was generated")

    def run_wave(self, plan_uris: list[str]) -> None:
        """One Ray Data dataset over `plan_uris`: its records committed, its rejects spilled to `self.again`."""
        import ray

        from pipeline.graph import build_dataset
        from pipeline.rows import rows_of
        from pipeline.watchdog import Stalled, watched_batches

        commits, counts = self.commits, self.summary.counts
        ds, ledger, shares = build_dataset(self.spec, plan_uris, self.ctx)
        budget = self.spec.budget.max_gpu_hours
        try:
            shown = commits.committed
            def idle():  # a finished variant waits at most about commit.max_wait_s, even while no batch arrives
                commits.add([])
                self.tick()
            for batch in watched_batches(ds, ledger, self.spec.ray.stall_timeout_s, on_idle=idle):
                self.lease.check()
                rows = rows_of(batch)
                self.summary.gpu_seconds += sum(r["stage_seconds"].get(name, 0.0) * share for r in rows
                                                for name, share in shares.items() if share)
                records, retry = self.curator.review(rows)
                self.again.add(retry)
                commits.add(records)
                self.metrics.records(records)
                self.tick()
                for rec in records:
                    counts[rec["status"]] += 1
                    if rec["status"] == "failed":
                        self.echo(f"[rushes] failed {rec['id']}/{rec['variant']}: {rec['error']}")
                if commits.committed != shown:
                    shown = commits.committed
                    self.progress()
                if budget is not None and self.summary.gpu_seconds > budget * 3600:
                    commits.flush()  # what finished is kept; no new variant starts
                    raise BudgetSpent(
                        f"the budget is spent: {self.summary.gpu_seconds / 3600:.3f} GPU-hours of "
                        f"budget.max_gpu_hours={budget:g}, after committing {commits.committed} of {self.total} "
                        "variants; they are kept. Run again (with a larger budget) to resume.")
            commits.flush()
            if commits.committed != shown:
                self.progress()
        except Stalled as e:
            commits.flush()  # what finished is kept
            raise JobFailed(f"{e}\nStopped after committing {commits.committed} of {self.total} variants; they are "
                            "kept. Fix the cause, then run the same job again (rushes run) to resume.") from None
        except (ray.exceptions.RayError, ClusterError) as e:
            commits.flush()  # what finished is kept
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise JobFailed(f"the pipeline stopped after committing {commits.committed} of {self.total} variants: "
                            f"{type(e).__name__}: {first}. Committed records are kept; run again to resume.") from e
        finally:
            self.tick()  # the gauges end on what was committed
            accounts = ledger_accounts(ledger, self.metrics.batches)
            self.summary.lost += accounts["lost"]
            self.summary.ended_gpu_s += accounts["ended_gpu_s"]
            ray.kill(ledger)

    def forget_segments(self, records: list[dict]) -> None:
        """A finished long video's saved segments go once its record is committed, not when its objects are
        written: a driver killed in between then resumes every segment instead of sampling the video again.
        A removal that fails only leaves the folder behind (it never fails the run)."""
        from stages.long_video.segments import forget_segments

        for r in records:
            if r.get("status") in DONE:
                try:
                    forget_segments(self.ctx, r)
                except Exception as e:  # noqa: BLE001 - committed already; the folder is only left over
                    log.warning("could not remove the saved segments of %s/%s: %s", r["id"], r["variant"], e)

    def tick(self) -> None:
        """The live metrics, and the progress line on a terminal."""
        self.metrics.rows(self.total, self.commits.committed)
        self.metrics.lease(self.lease.renewals)
        self.metrics.idle()
        if self.line:
            self.line.update(self.commits.committed + len(self.commits.records), self.total)

    def progress(self) -> None:
        if self.line:
            return self.line.update(self.commits.committed + len(self.commits.records), self.total, force=True)
        s = self.summary
        again = self.again.count
        self.echo(f"[rushes] committed {self.commits.committed}/{self.total} variants ({s.generated} videos, "
                  f"{s.counts['failed']} failed" + (f", {again} to sample again" if again else "")
                  + f") in {time.perf_counter() - self.start:.0f} s")
