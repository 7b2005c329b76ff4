"""Per-row failure accounting on Ray: what bounds the cost of a row that keeps killing its worker.

- A worker process that dies (a crash, a lost node) is restarted by Ray and its batch retried; Ray Data
  does that without limit. An `AttemptLedger` actor counts, per row and stage, the starts that never
  ended. A batch with a row that already died once is rerun one row at a time (`GuardedStage`), so only
  the row at fault is charged, and a row charged `ray.max_row_attempts` times is recorded `failed`
  instead of run again.
- A batch that runs past `ray.batch_timeout_s` (when set) ends its worker process from the heartbeat
  thread; it is then charged like a crash, and a failed row's error names the timeout.
- The ledger also keeps each stage's last sign of life, which the driver's watchdog reads
  (pipeline/watchdog.py).
- A model stage's batch is stamped on its rows as a span (stage, start, end, worker, share of a GPU: the record's
  `spans`, which pipeline/gpu_time.py turns into GPU-busy figures); the ledger keeps the spans begun and not
  ended, which are the batches lost with their workers, and the GPU-seconds of those that ended (`accounts`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid

import ray

from pipeline.spec import RaySpec
from stages.contract import Stage

log = logging.getLogger("rushes")


HEARTBEAT_S = 10.0  # a working stage tells the ledger it is alive this often (pipeline/watchdog.py)
TIMEOUT_EXIT = 75  # the exit status of a worker that ended itself for ray.batch_timeout_s


@ray.remote(num_cpus=0, max_restarts=0)
class AttemptLedger:
    """Per (stage, row): how often it died with its worker. A batch that dies makes its rows suspects;
    only a death while running alone is charged to the row.

    Also each stage's last sign of life (a batch begun or ended, a heartbeat while a batch or a model load
    runs), which the driver's watchdog reads to tell a slow stage from a stalled run."""

    def __init__(self):
        self.suspects: set[str] = set()
        self.alone: dict[str, int] = {}  # starts alone that never ended
        self.timeouts: dict[str, int] = {}  # of those, the ones its worker ended for running too long
        self.seen: dict[str, float] = {}  # stage -> time.time() of its last sign of life
        self.open: dict[str, dict] = {}  # span id -> a model stage's batch begun and not ended yet
        self.worker_seen: dict[str, float] = {}  # worker -> time.time() of its last sign of life
        self.ended_gpu_s = 0.0  # GPU-seconds of every model-stage batch that ended (its output may be lost later)

    def beat(self, stage: str, worker: str | None = None) -> None:
        self.seen[stage] = time.time()
        if worker:
            self.worker_seen[worker] = self.seen[stage]

    def saw(self, keys: list[str]) -> None:
        """A batch begun or ended: a sign of life of its stage (keys are '<stage>/<id>/<variant>/<seed>')."""
        if keys:
            self.beat(keys[0].split("/", 1)[0])

    def activity(self) -> dict[str, float]:
        return dict(self.seen)

    def begin(self, keys: list[str], alone: bool, span: dict | None = None) -> tuple[dict[str, int], bool]:
        """Deaths so far per key, and whether the keys were started: a batch holding a suspect is not. `span`: a
        model stage's batch (id, stage, start, worker, gpus), kept until it ends."""
        self.saw(keys)
        deaths = {k: self.alone.get(k, 0) for k in keys}
        if not alone and any(k in self.suspects or k in self.alone for k in keys):
            return deaths, False
        if alone:
            for k in keys:
                self.alone[k] = deaths[k] + 1
        else:
            self.suspects.update(keys)
        if span is not None:
            self.open[span["id"]] = {**span, "keys": keys}
            self.worker_seen[span["worker"]] = span["start"]
        return deaths, True

    def end(self, keys: list[str], span_id: str | None = None) -> None:
        self.saw(keys)
        span = self.open.pop(span_id, None)
        if span is not None:
            self.worker_seen[span["worker"]] = now = time.time()
            self.ended_gpu_s += (now - span["start"]) * span["gpus"]
        for k in keys:
            self.suspects.discard(k)
            self.alone.pop(k, None)
            self.timeouts.pop(k, None)

    def timed_out(self, keys: list[str]) -> None:
        """The worker running these keys is about to end itself: they ran past `ray.batch_timeout_s`
        (counted for rows running alone, as deaths are)."""
        for k in keys:
            if k in self.alone:
                self.timeouts[k] = self.timeouts.get(k, 0) + 1

    def timeouts_of(self, keys: list[str]) -> dict[str, int]:
        return {k: self.timeouts.get(k, 0) for k in keys}

    def accounts(self) -> dict:
        """`lost`: the model stages' batches begun and never ended (their worker died, or the run stopped with them
        in flight), each with `until`, its worker's last sign of life (it ran at least that long); `ended_gpu_s`:
        the GPU-seconds of those that ended, including any whose output was lost after."""
        lost = [{**s, "until": max(s["start"], self.worker_seen.get(s["worker"], s["start"]))}
                for s in self.open.values()]
        return {"lost": lost, "ended_gpu_s": self.ended_gpu_s}


def worker_name() -> str:
    """This worker in a span: its node and the GPUs Ray gave it (two stages sharing a GPU name the same one), or
    its node and process without a GPU."""
    context = ray.get_runtime_context()
    gpus = [str(g) for g in context.get_accelerator_ids().get("GPU", [])]
    node = context.get_node_id()[:12]
    return f"{node}/gpu{','.join(gpus)}" if gpus else f"{node}/pid{os.getpid()}"


class GuardedStage:
    """Runs a stage on a batch, charging each worker death to the row that was running. With a
    `batch_timeout_s`, a batch that runs longer ends its own worker process (a hang inside a live worker
    would otherwise keep sending heartbeats forever); Ray restarts it, and the rows are charged as for a
    crash, with the timeout named in a failed row's error."""

    def __init__(self, stage: Stage, ledger, limits: RaySpec, payload: tuple[str, ...] = ()):
        self.stage, self.ledger, self.max_attempts = stage, ledger, limits.max_row_attempts
        self.batch_timeout_s = limits.batch_timeout_s
        self.payload = payload  # row keys that only travel between stages (stages.contract.payload_keys)
        self.running: list[str] = []  # the keys of the batch (or row) the stage is running now
        self.started = 0.0  # and since when (time.monotonic())
        self.ready = False
        self.worker: str | None = None  # worker_name(), in the worker

    def setup(self) -> None:
        with self.alive(limit=False):
            self.stage.setup()
        self.ready = True

    def overdue(self) -> None:
        """Called from the heartbeat thread when the batch has run past `batch_timeout_s`: say so to the
        ledger and end this worker process (the only way to stop a thread stuck in native code)."""
        keys = list(self.running)
        log.error("%s: a batch of %d row(s) (%s) has run for more than %g s (ray.batch_timeout_s); ending this "
                  "worker so that Ray restarts it", self.stage.name, len(keys), ", ".join(keys[:3]),
                  self.batch_timeout_s)
        with contextlib.suppress(Exception):
            ray.get(self.ledger.timed_out.remote(keys), timeout=30)
        os._exit(TIMEOUT_EXIT)

    @contextlib.contextmanager
    def alive(self, limit: bool = True):
        """Heartbeats to the ledger while a batch or a model load runs: a slow stage is not a stalled one.
        With `limit`, the batch timeout is checked on the same thread."""
        done = threading.Event()
        timeout = self.batch_timeout_s if limit else None
        self.started = time.monotonic()

        def beat():
            tick = min(HEARTBEAT_S, max(0.2, timeout / 10)) if timeout else HEARTBEAT_S
            last = time.monotonic()
            while not done.wait(tick):
                now = time.monotonic()
                if timeout and now - self.started > timeout and not done.is_set():
                    self.overdue()
                if now - last >= HEARTBEAT_S - 1e-3 or not timeout:
                    self.ledger.beat.remote(self.stage.name, self.worker)
                    last = now

        thread = threading.Thread(target=beat, name=f"rushes-{self.stage.name}-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()

    def key(self, r: dict) -> str:
        return f"{self.stage.name}/{r['id']}/{r['variant']}/{r['seed']}"

    def __call__(self, rows: list[dict]) -> list[dict]:
        if not self.ready:  # a task's copy of the stage: set up once per worker process
            self.setup()
        with self.alive():
            return self.run(rows)

    def span(self) -> dict | None:
        """A model stage's batch beginning now (None for other stages)."""
        if not self.stage.holds_model:
            return None
        if self.worker is None:
            self.worker = worker_name()
        return {"id": uuid.uuid4().hex, "stage": self.stage.name, "start": time.time(), "worker": self.worker,
                "gpus": float(self.stage.options.resources.num_gpus or 0.0)}

    def finish(self, keys: list[str], rows: list[dict], span: dict | None) -> None:
        """The batch ended: its span stamped on its rows, and the ledger told."""
        if span is not None:
            stamp = {k: span[k] for k in ("stage", "start", "worker", "gpus")} | {"end": time.time()}
            for r in rows:
                r["spans"] = [*(r.get("spans") or []), stamp]
        self.ledger.end.remote(keys, span and span["id"])

    def run(self, rows: list[dict]) -> list[dict]:
        keys = [self.key(r) for r in rows]
        span = self.span()
        deaths, started = ray.get(self.ledger.begin.remote(keys, False, span))
        if started:
            self.running = keys
            rows = self.stage(rows)
            self.finish(keys, rows, span)
            return rows
        # An earlier try of this batch died with its worker: go one row at a time so that only the row at
        # fault is charged again.
        out = []
        timeouts = None
        for r, k in zip(rows, keys):
            if deaths[k] >= self.max_attempts and r["status"] == "pending":
                if timeouts is None:
                    timeouts = ray.get(self.ledger.timeouts_of.remote(keys))
                why = (f"{timeouts[k]} of them past ray.batch_timeout_s={self.batch_timeout_s:g} s, when the "
                       "worker ended itself; ") if timeouts[k] else ""
                r.update(status="failed", error=(
                    f"{self.stage.name}: the worker process died {deaths[k]} times while running this row "
                    f"alone ({why}not tried again, ray.max_row_attempts={self.max_attempts})"))
                for key in self.payload:  # what the row carried between stages is of no use any more
                    r.pop(key, None)
                out.append(r)
                continue
            span = self.span()
            ray.get(self.ledger.begin.remote([k], True, span))
            self.running, self.started = [k], time.monotonic()
            done = self.stage([r])
            self.finish([k], done, span)
            out.extend(done)
        return out
