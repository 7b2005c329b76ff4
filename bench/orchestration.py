"""Orchestration capacity and memory: how many rows per second the pipeline itself pushes through every
stage and commits, with the `null` model family (sampling and decoding cost nothing; filter, encode,
object writes and commits are real), the CPU each kind of process spends per row, and the peak resident
memory of the driver and the Ray workers.

    python bench/orchestration.py [--rows 1000 10000] [--height 64 --width 64 --frames 9]
                                  [--sample-batch 16 --decode-batch 16 --encode-batch 16] [--replicas 1]
                                  [--no-dedup] [--keep DIR]

Ray starts once, first, and its start-up is timed on its own; each manifest size then runs as one job
(`pipeline.job.run_job`, what `rushes run` calls) into a fresh output folder. First, the stages are run
in this process without Ray on 200 rows: their CPU per row is the work any pipeline must do; a job's CPU
per row above it is the orchestration's own. Printed per size: wall seconds and rows/s; CPU ms per row by
kind of process (driver; ledger actor; Ray Data's coordinating actors; stage actors; task workers; Ray's
GCS and raylet); the driver's peak RSS, and for the Ray workers (descendants of this process, polled
every 0.5 s) the largest RSS and the largest and summed heaps (RSS less shared pages: object-store pages
a worker reads and shared libraries count as shared). Figures, not assertions.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from machine_info import describe  # bench/machine_info.py, next to this file


def write_manifest(path: str, n: int) -> None:
    pq.write_table(pa.table({"id": [f"r{i:07d}" for i in range(n)],
                             "prompt": [f"a robot arm moves box number {i} across a warehouse" for i in range(n)],
                             "seed": list(range(n))}), path)


ACTOR_KINDS = ("stage actors", "ledger", "ray data actors")


class ProcessPoller:
    """Polls this process and its descendants (Ray's raylet, GCS and workers) every `every_s`: peak RSS
    of the driver and of the `ray::` worker processes, and CPU seconds used by each kind of process."""

    def __init__(self, every_s: float = 0.5):
        self.every_s, self.me = every_s, psutil.Process()
        self.driver = self.driver_private = self.worker = self.workers_total = 0
        self.worker_private = (0, "")  # largest heap (RSS less shared pages) of one worker, and its kind
        self.workers_seen: set[int] = set()
        self.cpu_start: dict[int, float] = {}  # pid -> CPU seconds when first seen (0 for processes born later)
        self.cpu_last: dict[int, tuple[str, float]] = {}  # pid -> (kind, CPU seconds at the last poll)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "ProcessPoller":
        self.poll(first=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()

    @staticmethod
    def kind(cmdline: str) -> str:
        """Stage actors and task workers scale out with nodes; the driver, the ledger, Ray Data's own
        coordinating actors and Ray's system processes (GCS, raylet) are one per job or per node."""
        if cmdline.startswith("ray::MapWorker"):
            return "stage actors"
        if cmdline.startswith("ray::AttemptLedger"):
            return "ledger"
        if cmdline.startswith("ray::") and cmdline.split(".")[0].endswith(("Actor", "Tracker")):
            return "ray data actors"
        if cmdline.startswith("ray::") or "default_worker.py" in cmdline:
            return "task workers"
        return "ray system" if "/ray/" in cmdline else "other"

    def poll(self, first: bool = False) -> None:
        mine = self.me.memory_info()
        self.driver = max(self.driver, mine.rss)
        self.driver_private = max(self.driver_private, mine.rss - mine.shared)
        t = self.me.cpu_times()
        self.cpu_start.setdefault(self.me.pid, t.user + t.system if first else 0.0)
        self.cpu_last[self.me.pid] = ("driver", t.user + t.system)
        total = 0
        for p in self.me.children(recursive=True):
            try:
                with p.oneshot():
                    cmdline = " ".join(p.cmdline())
                    kind = self.kind(cmdline)
                    mem, t = p.memory_info(), p.cpu_times()
            except psutil.Error:
                continue  # exited between listing and reading
            self.cpu_start.setdefault(p.pid, t.user + t.system if first else 0.0)
            # A task worker's title follows the task it runs; an actor's stays once set. A new worker
            # shows its default_worker.py command line until its first task or actor sets the title.
            previous = self.cpu_last.get(p.pid, (kind,))[0]
            kind = previous if previous in ACTOR_KINDS else kind
            self.cpu_last[p.pid] = (kind, t.user + t.system)
            if kind not in ("ray system", "other"):
                self.workers_seen.add(p.pid)
                # Pages of Ray's shared-memory object store that a worker reads count in its RSS and in
                # `shared` (with its libraries); its own heap is the difference.
                self.worker = max(self.worker, mem.rss)
                if mem.rss - mem.shared > self.worker_private[0]:
                    self.worker_private = (mem.rss - mem.shared, kind)
                total += mem.rss - mem.shared
        self.workers_total = max(self.workers_total, total)

    def cpu_seconds(self) -> Counter:
        """CPU seconds used during the run, by kind of process (driver, workers, ray system)."""
        used = Counter()
        for pid, (kind, cpu) in self.cpu_last.items():
            used[kind] += cpu - self.cpu_start[pid]
        return used

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.poll()


def stage_work(a, base: str, n: int = 200) -> dict[str, float]:
    """CPU seconds per row of each stage called directly in this process, without Ray: the work the
    pipeline must do anyway. What a job costs above this is the orchestration's own cost."""
    from stages.contract import ModelSpec, RunContext
    from stages.decode import DecodeOptions, DecodeStage
    from stages.encode import EncodeOptions, EncodeStage
    from stages.expand import ExpandOptions, ExpandStage
    from stages.filter import FilterOptions, FilterStage
    from stages.sample import SampleOptions, SampleStage
    from stages.common.variant import params_hash, variants_of
    from stages.write import WriteStage

    identity = {"family": "null", "path": "builtin:null", "revision": None, "dtype": "float32", "weights_hash": "x"}
    rows = [{"row": i, "id": f"w{i}", "prompt": f"a robot arm moves box number {i}", "negative_prompt": "",
             "seed": i, "num_variants": 1, "height": a.height, "width": a.width, "num_frames": a.frames, "fps": 8,
             "num_inference_steps": 4, "guidance_scale": 5.0, "style": None, "tags": [], "extra": {}}
            for i in range(n)]
    ctx = RunContext(run_id="bench", output=f"{base}/stage-work", manifest="m",
                     model=ModelSpec(family="null", path="builtin:null"), identity=identity)
    stages = [("expand", ExpandStage(ExpandOptions())),
              ("sample", SampleStage(SampleOptions(batch_size=a.sample_batch), ctx)),
              ("decode", DecodeStage(DecodeOptions(), ctx)),
              ("filter", FilterStage(FilterOptions(), ctx)),
              ("encode", EncodeStage(EncodeOptions(preset="ultrafast"), ctx)),
              ("write", WriteStage(None, ctx))]
    cost = {}
    for name, stage in stages:
        stage.setup()
        start = time.process_time()
        if name == "expand":  # the planner's part, as a run does it
            planned = []
            for r in rows:
                planned += variants_of(r, None)
                stage.plan(r, planned[-1:])
            rows = planned
            for v in rows:
                v["params_hash"] = params_hash({"model": identity}, v)
        else:
            rows = stage(rows)
        cost[name] = (time.process_time() - start) / n
    return cost


def mib(n: int) -> str:
    return f"{n / 2**20:7.0f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--sample-batch", type=int, default=16)
    ap.add_argument("--decode-batch", type=int, default=16)
    ap.add_argument("--encode-batch", type=int, default=16)
    ap.add_argument("--replicas", default="1", help="sample and decode replicas: a number or 'min..max'")
    ap.add_argument("--keep", help="write outputs under this folder and keep them (default: a temp folder)")
    ap.add_argument("--no-dedup", action="store_true",
                    help="filter.max_duplicate_distance: null (no near-duplicate check in the driver)")
    a = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # figures appear as they come, also through a pipe

    import ray
    import ray.data

    from pipeline.job import ensure_ray, run_job
    from pipeline.spec import load_job

    base = a.keep or tempfile.mkdtemp(prefix="rushes-orch-")
    resources = {"num_cpus": 1, "num_gpus": 0, "replicas": a.replicas}

    def job(n: int) -> dict:
        return {"name": f"orch-{n}", "manifest": f"{base}/m-{n}.parquet", "output": f"{base}/out-{n}",
                "model": {"family": "null", "path": "builtin:null"},
                "sampling": {"height": a.height, "width": a.width, "num_frames": a.frames, "fps": 8},
                "sample": {"batch_size": a.sample_batch, "resources": resources},
                "decode": {"batch_size": a.decode_batch, "resources": resources},
                "encode": {"batch_size": a.encode_batch, "preset": "ultrafast"},
                "filter": {"max_duplicate_distance": None} if a.no_dedup else {}}

    print(describe(with_torch=False))  # the driver's memory is measured: no torch here
    print(f"null model, {a.width}x{a.height}, {a.frames} frames, h264 ultrafast; batches sample {a.sample_batch}, "
          f"decode {a.decode_batch}, encode {a.encode_batch}; sample/decode replicas {a.replicas}; near-duplicate "
          f"check {'off' if a.no_dedup else 'on'}")
    work = stage_work(a, base)
    print(f"  stage work without Ray: {sum(work.values()) * 1000:.1f} CPU-ms/row ("
          + ", ".join(f"{k} {v * 1000:.1f}" for k, v in work.items()) + f"); {os.cpu_count()} cores can do at most "
          f"{os.cpu_count() / sum(work.values()):.0f} rows/s of it")
    start = time.perf_counter()
    write_manifest(f"{base}/m-warmup.parquet", 1)
    ensure_ray(load_job({**job(0), "manifest": f"{base}/m-warmup.parquet"}))
    ray_start = time.perf_counter() - start
    ray.data.DataContext.get_current().enable_progress_bars = False
    print(f"  ray start-up {ray_start:.1f} s ({int(ray.cluster_resources()['CPU'])} logical CPUs)")

    # Warm-up: the first job pays for importing the stages in fresh workers; not counted below.
    start = time.perf_counter()
    run_job(load_job({**job(0), "manifest": f"{base}/m-warmup.parquet", "output": f"{base}/out-warmup"}),
            echo=lambda *_: None)
    print(f"  warm-up job (1 row, workers start, stages import) {time.perf_counter() - start:.1f} s")

    for n in a.rows:
        write_manifest(f"{base}/m-{n}.parquet", n)
        commits = Counter()
        echo = lambda line: commits.update(["committed"] if line.startswith("[rushes] committed") else [])  # noqa: E731
        with ProcessPoller() as procs:
            start = time.perf_counter()
            summary = run_job(load_job(job(n)), echo=echo)
            wall = time.perf_counter() - start
        done = sum(summary.counts.values())
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(summary.counts.items()))
        cpu = procs.cpu_seconds()
        print(f"  {n:>7} rows: {wall:7.1f} s  {done / wall:7.1f} rows/s  ({statuses}; {commits['committed']} commits; "
              f"load average {os.getloadavg()[0]:.2f} at the end)")
        print(f"           CPU {sum(cpu.values()) / done * 1000:5.1f} ms/row: "
              + ", ".join(f"{k} {v / done * 1000:.1f}" for k, v in cpu.most_common()))
        print(f"           peak RSS: driver {mib(procs.driver)} (heap {mib(procs.driver_private).strip()}), largest worker {mib(procs.worker)}; worker heaps "
              f"(RSS less shared): largest {mib(procs.worker_private[0])} ({procs.worker_private[1]}), all "
              f"{mib(procs.workers_total)} together ({len(procs.workers_seen)} worker processes)")
        if not a.keep:
            shutil.rmtree(f"{base}/out-{n}", ignore_errors=True)
    print(f"  driver ru_maxrss over the whole bench {mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}")
    ray.shutdown()
    if not a.keep:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
