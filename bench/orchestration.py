"""Orchestration capacity and memory: how many rows per second the pipeline itself pushes through every
stage and commits, with the `null` model family (sampling and decoding cost nothing; filter, encode,
object writes and commits are real), and the peak resident memory of the driver and the Ray workers.

    python bench/orchestration.py [--rows 1000 10000] [--height 64 --width 64 --frames 9]
                                  [--sample-batch 16 --decode-batch 16 --encode-batch 16] [--replicas 1]

Ray starts once, first, and its start-up is timed on its own; each manifest size then runs as one job
(`pipeline.job.run_job`, what `rushes run` calls) into a fresh output folder. Printed per size: wall
seconds, rows/s, the driver's peak RSS during the job, and the largest RSS of any Ray worker process
(`ray::*` descendants of this process, polled every 0.5 s) and of all of them together. Figures, not
assertions: compare sizes within one run.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import threading
import time
from collections import Counter

import psutil
import pyarrow as pa
import pyarrow.parquet as pq


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{platform.node()} | {model} | {os.cpu_count()} cores | load average {load}"


def write_manifest(path: str, n: int) -> None:
    pq.write_table(pa.table({"id": [f"r{i:07d}" for i in range(n)],
                             "prompt": [f"a robot arm moves box number {i} across a warehouse" for i in range(n)],
                             "seed": list(range(n))}), path)


class MemoryPoller:
    """Peak RSS of this process and of its `ray::` descendant processes (the Ray workers), polled."""

    def __init__(self, every_s: float = 0.5):
        self.every_s, self.me = every_s, psutil.Process()
        self.driver = self.worker = self.workers_total = 0
        self.workers_seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "MemoryPoller":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()

    def poll(self) -> None:
        self.driver = max(self.driver, self.me.memory_info().rss)
        total = 0
        for p in self.me.children(recursive=True):
            try:
                if not " ".join(p.cmdline()).startswith("ray::"):
                    continue
                rss = p.memory_info().rss
            except psutil.Error:
                continue  # exited between listing and reading
            self.workers_seen.add(p.pid)
            self.worker = max(self.worker, rss)
            total += rss
        self.workers_total = max(self.workers_total, total)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.poll()


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
    a = ap.parse_args()

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
                "encode": {"batch_size": a.encode_batch, "preset": "ultrafast"}}

    print(machine())
    print(f"null model, {a.width}x{a.height}, {a.frames} frames, h264 ultrafast; batches sample {a.sample_batch}, "
          f"decode {a.decode_batch}, encode {a.encode_batch}; sample/decode replicas {a.replicas}")
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
        with MemoryPoller() as mem:
            start = time.perf_counter()
            summary = run_job(load_job(job(n)), echo=echo)
            wall = time.perf_counter() - start
        done = sum(summary.counts.values())
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(summary.counts.items()))
        print(f"  {n:>7} rows: {wall:7.1f} s  {done / wall:7.1f} rows/s  ({statuses}; {commits['committed']} "
              f"commits)  driver peak {mib(mem.driver)}  worker peak {mib(mem.worker)}  all workers "
              f"{mib(mem.workers_total)} ({len(mem.workers_seen)} worker processes)  load "
              f"{os.getloadavg()[0]:.2f}")
    print(f"  driver ru_maxrss over the whole bench {mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}")
    ray.shutdown()
    if not a.keep:
        import shutil

        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
