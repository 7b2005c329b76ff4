"""Live metrics of a run, for Prometheus, through Ray's metrics API (`ray.util.metrics`).

The driver records them; the metrics agent of its Ray node exports them on the node's metrics port, the
endpoint that Ray's Prometheus and Grafana set-up already scrapes. Ray prefixes the names with `ray_`:

    ray_rushes_videos_total{job, status}       this run's records, by status (invalid rows included)
    ray_rushes_stage_seconds{job, stage}       histogram: seconds each variant spent in each stage
    ray_rushes_rows_planned{job}               variants this run generates
    ray_rushes_rows_committed{job}             of them, committed so far
    ray_rushes_rows_in_flight{job}             planned and not committed yet
    ray_rushes_lease_renewals_total{job}       renewals of the output's lease
    ray_rushes_gpu_busy_seconds_total{job, stage}  GPU-seconds each model stage's batches held (span x GPU share)
    ray_rushes_gpu_idle_seconds{job, stage}    GPU-seconds its workers held idle since the run began (the same
                                               figures as the report's GPU time: pipeline/gpu_time.py)

A run with nothing to generate never starts Ray, and so records none.
"""
from __future__ import annotations

import time

STAGE_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800]


class RunMetrics:
    """Made once Ray is up (ray.util.metrics needs it)."""

    def __init__(self, job: str, started: float | None = None):
        from ray.util.metrics import Counter, Gauge, Histogram

        self.tags = {"job": job}
        self.videos = Counter("rushes_videos_total", "records of this run, by status", tag_keys=("job", "status"))
        self.stage_seconds = Histogram("rushes_stage_seconds", "seconds a variant spent in a stage",
                                       boundaries=STAGE_BUCKETS, tag_keys=("job", "stage"))
        self.planned = Gauge("rushes_rows_planned", "variants this run generates", tag_keys=("job",))
        self.committed = Gauge("rushes_rows_committed", "variants this run has committed", tag_keys=("job",))
        self.in_flight = Gauge("rushes_rows_in_flight", "variants planned and not committed yet", tag_keys=("job",))
        self.renewals = Counter("rushes_lease_renewals_total", "renewals of the output's lease", tag_keys=("job",))
        self.renewals_seen = 0
        self.gpu_busy = Counter("rushes_gpu_busy_seconds_total", "GPU-seconds each model stage's batches held",
                                tag_keys=("job", "stage"))
        self.gpu_idle = Gauge("rushes_gpu_idle_seconds", "GPU-seconds a model stage's workers held idle so far",
                              tag_keys=("job", "stage"))
        self.started = started or time.time()
        self.batches: dict[tuple, dict] = {}  # each model-stage batch once (its rows carry the same span)
        self.busy: dict[str, float] = {}  # stage -> GPU-seconds busy
        self.held: dict[str, dict[str, float]] = {}  # stage -> worker (its GPUs) -> its share of them
        self.device_busy: dict[str, float] = {}  # worker (its GPUs) -> seconds some stage ran a batch on them

    def records(self, records: list[dict]) -> None:
        for rec in records:
            self.videos.inc(1, tags={**self.tags, "status": rec["status"]})
            for stage, seconds in dict(rec.get("stage_seconds") or {}).items():
                self.stage_seconds.observe(seconds, tags={**self.tags, "stage": stage})
            for s in rec.get("spans") or []:
                key = (s["stage"], s["worker"], s["start"], s["end"])
                if key in self.batches:
                    continue
                self.batches[key] = s
                if not s["gpus"]:  # a model stage on CPUs
                    continue
                busy = (s["end"] - s["start"]) * s["gpus"]
                self.busy[s["stage"]] = self.busy.get(s["stage"], 0.0) + busy
                self.held.setdefault(s["stage"], {})[s["worker"]] = s["gpus"]
                self.device_busy[s["worker"]] = self.device_busy.get(s["worker"], 0.0) + s["end"] - s["start"]
                self.gpu_busy.inc(busy, tags={**self.tags, "stage": s["stage"]})

    def idle(self, now: float | None = None) -> None:
        """Each GPU stage's idle GPU-seconds so far: the time the GPUs it holds stood idle since the run began, in
        proportion to its share of them (pipeline/gpu_time.py)."""
        elapsed = (now or time.time()) - self.started
        for stage, workers in self.held.items():
            idle = sum(share * max(0.0, elapsed - self.device_busy[w]) for w, share in workers.items())
            self.gpu_idle.set(idle, tags={**self.tags, "stage": stage})

    def invalid(self, count: int) -> None:
        if count:
            self.videos.inc(count, tags={**self.tags, "status": "invalid"})

    def rows(self, planned: int, committed: int) -> None:
        self.planned.set(planned, tags=self.tags)
        self.committed.set(committed, tags=self.tags)
        self.in_flight.set(max(0, planned - committed), tags=self.tags)

    def lease(self, renewals: int) -> None:
        """`renewals`: the lease's count so far; the counter goes up by what is new."""
        if renewals > self.renewals_seen:
            self.renewals.inc(renewals - self.renewals_seen, tags=self.tags)
            self.renewals_seen = renewals
