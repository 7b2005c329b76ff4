"""How busy a run kept its GPUs, from the spans on its records.

In: the `spans` of a run's records (each model stage's batches: stage, start, end, worker, share of a GPU, stamped
by pipeline/ledger.py), the run's start, and how many GPUs the cluster had. Out: a `GpuTime` with the figures
that bench/fleet.py prints and the report shows, so that both read the same:
- per device (a worker's GPUs; two stages sharing a GPU share a device): busy seconds, the union of its spans;
- per stage: GPU-seconds busy (span x share) and idle (the time the GPUs it held stood idle over the run, in
  proportion to its share of each);
- the busy fraction over the GPU phase (first span start to last span end) and in steady state (from when every
  device has begun to when the first one has ended its last batch), the time until every device is busy, the
  idle tail at the end, and the makespan against the ideal (the busy device-seconds over the devices).
A GPU that ran nothing counts as idle throughout. Without GPU spans (a run on CPUs), the model stages' actors
stand in for devices, so the same figures say how busy the model stages were.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field


def union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def within(intervals: list[tuple[float, float]], lo: float, hi: float) -> float:
    return sum(max(0.0, min(b, hi) - max(a, lo)) for a, b in intervals)


@dataclass
class GpuTime:
    on_gpus: bool  # False: the model stages ran on CPUs (their actors stand in for devices)
    devices: int = 0
    started: float = 0.0  # the run's start (epoch seconds)
    first: float = 0.0  # the first span's start
    last: float = 0.0  # the last span's end
    busy: dict[str, float] = field(default_factory=dict)  # device -> busy seconds (union of its spans)
    stages: dict[str, dict] = field(default_factory=dict)  # stage -> workers, gpus, busy_s, idle_s (GPU-seconds)
    all_busy_at: float | None = None  # when every device had begun a batch (None: some never did)
    first_done_at: float | None = None  # when the first device ended its last batch
    steady_busy: float = 0.0  # busy device-seconds in steady state

    @property
    def makespan_s(self) -> float:
        return self.last - self.first

    @property
    def ideal_s(self) -> float:
        return sum(self.busy.values()) / self.devices if self.devices else 0.0

    @property
    def busy_fraction(self) -> float:
        return self.ideal_s / self.makespan_s if self.makespan_s > 0 else 0.0

    @property
    def steady_s(self) -> float:
        if self.all_busy_at is None or self.first_done_at is None:
            return 0.0
        return max(0.0, self.first_done_at - self.all_busy_at)

    @property
    def steady_fraction(self) -> float | None:
        return self.steady_busy / (self.devices * self.steady_s) if self.steady_s > 0 else None

    @property
    def ramp_s(self) -> float | None:
        """From the first batch until every device is busy."""
        return None if self.all_busy_at is None else self.all_busy_at - self.first

    @property
    def tail_s(self) -> float:
        """From the first device's last batch to the end: GPUs idle while others finish."""
        return 0.0 if self.first_done_at is None else self.last - self.first_done_at

    def lines(self) -> list[str]:
        """The figures, one per line (the report and bench/fleet.py print these)."""
        what = "GPU" if self.on_gpus else "model-stage worker (no GPU)"
        steady = self.steady_fraction
        out = [f"{self.devices} {what}s; GPU phase {self.makespan_s:.1f} s (first batch {self.first - self.started:.1f} s "
               f"after the start), ideal {self.ideal_s:.1f} s: busy {self.busy_fraction:.1%}",
               "steady state: " + (f"busy {steady:.1%} over {self.steady_s:.1f} s" if steady is not None else
                                   "none (no moment when every device was busy)"),
               "every device busy after " + (f"{self.ramp_s:.1f} s" if self.ramp_s is not None else "never")
               + f"; idle tail {self.tail_s:.1f} s"]
        for stage, s in self.stages.items():
            total = s["busy_s"] + s["idle_s"]
            out.append(f"{stage}: {s['workers']} worker(s) x {s['gpus']:g} GPU, busy {s['busy_s']:.1f} GPU-s, idle "
                       f"{s['idle_s']:.1f} GPU-s ({s['busy_s'] / total:.1%} busy)" if total else f"{stage}: no work")
        return out


def distinct(spans: Iterable[dict]) -> list[dict]:
    """Each batch once (every row of a batch carries the same span)."""
    seen = {}
    for s in spans:
        seen.setdefault((s["stage"], s["worker"], s["start"], s["end"]), s)
    return list(seen.values())


def gpu_time(spans: Iterable[dict], started: float | None = None, gpus: int = 0) -> GpuTime:
    """The figures of a run's spans (`started`: the run's start; `gpus`: the cluster's GPUs, so that one that ran
    nothing still counts)."""
    spans = distinct(spans)
    on_gpus = any(s["gpus"] for s in spans)
    spans = [s for s in spans if s["gpus"]] if on_gpus else spans
    t = GpuTime(on_gpus)
    if not spans:
        return t
    by_device = defaultdict(list)
    for s in spans:
        by_device[s["worker"]].append((s["start"], s["end"]))
    t.first, t.last = min(s["start"] for s in spans), max(s["end"] for s in spans)
    t.started = min(started, t.first) if started else t.first
    t.devices = max(len(by_device), int(gpus) if on_gpus else 0)
    merged = {d: union(iv) for d, iv in by_device.items()}
    t.busy = {d: within(iv, t.first, t.last) for d, iv in merged.items()}
    t.busy.update({f"unused-{k}": 0.0 for k in range(t.devices - len(merged))})
    if len(merged) == t.devices:
        t.all_busy_at = max(iv[0][0] for iv in merged.values())
        t.first_done_at = min(iv[-1][1] for iv in merged.values())
        if t.first_done_at > t.all_busy_at:
            t.steady_busy = sum(within(iv, t.all_busy_at, t.first_done_at) for iv in merged.values())
    # A stage's idle time: the time the devices it held stood idle over the run (started to last), in proportion
    # to its share of each (a sampler and a decoder in one actor both held the whole GPU, and see the same idle)
    idle = {d: max(0.0, (t.last - t.started) - within(iv, t.started, t.last)) for d, iv in merged.items()}
    workers = defaultdict(dict)
    for s in spans:
        workers[s["stage"]][s["worker"]] = s["gpus"] or 1.0
    for stage, held in workers.items():
        busy = sum((s["end"] - s["start"]) * (s["gpus"] or 1.0) for s in spans if s["stage"] == stage)
        t.stages[stage] = {"workers": len(held), "gpus": max(held.values()), "busy_s": busy,
                           "idle_s": sum(idle[d] * share for d, share in held.items())}
    return t
