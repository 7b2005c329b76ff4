"""The pipeline's own cost on one job: the `null` model (sampling and decoding cost nothing; filter, encode, object
writes and commits are real) over a manifest of 946 prompts at 64x64, 9 frames, through `pipeline.job.run_job`
(what `rushes run` calls), Ray started by the job as `rushes run` starts it.

    python bench/pipeline_overhead.py [--rows 946] [--height 64 --width 64 --frames 9] [--set sample.batch_size=4 ...]
    PYTHONPATH=<an older tree> python bench/pipeline_overhead.py    # the same job on older code, to compare

Printed: the machine (bench/machine_info.py), the wall time, the time to the first commit, the steady rows/s (from
the first commit to the last), the Ray worker processes started (one log each in the session's log folder) and the
CPU-seconds every process of the job used (this process and its descendants, by kind: bench/orchestration.py's
poller), which moves far less with the machine's load than the wall time. A regression of the pipeline's own cost
shows in all of them; compare runs interleaved on one machine. The last line:

    overhead wall_s <s> first_commit_s <s> rows_per_s <r> workers <n> cpu_s <s>
"""
from __future__ import annotations

import argparse
import glob
import itertools
import random
import re
import shutil
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq
import overrides  # bench/overrides.py, next to this file
from machine_info import describe  # bench/machine_info.py, next to this file
from orchestration import ProcessPoller  # bench/orchestration.py

SUBJECTS = ["a red fox", "an old fisherman", "a golden retriever", "a hot air balloon", "a street musician",
            "a paper boat", "a hummingbird", "a freight train", "a ballet dancer", "a vintage car", "a snow leopard",
            "two children", "a lighthouse keeper", "a swarm of fireflies", "a chef"]
ACTIONS = ["walks slowly through", "drifts across", "runs along", "spins gracefully in", "waits quietly at",
           "glides over", "climbs up", "dances in"]
PLACES = ["a misty pine forest at dawn", "a crowded night market", "a frozen lake under northern lights",
          "a sunlit wheat field", "a rainy neon-lit alley", "a desert canyon at sunset", "a busy harbour",
          "a quiet library"]
STYLES = ["cinematic, shallow depth of field", "handheld documentary footage", "aerial drone shot",
          "slow motion, golden hour", "35mm film grain", "time-lapse"]


def write_manifest(path: str, n: int) -> None:
    """`n` distinct prompts (subject, action, place, style), in a fixed shuffled order."""
    combos = list(itertools.product(SUBJECTS, ACTIONS, PLACES, STYLES))
    random.Random(7).shuffle(combos)
    prompts = [f"{s} {a} {p}, {st}" for s, a, p, st in combos[:n]]
    pq.write_table(pa.table({"id": [f"p{i:04d}" for i in range(n)], "prompt": prompts}), path)


def job(manifest: str, output: str, a) -> dict:
    out = {"name": "overhead", "manifest": manifest, "output": output, "model": {"family": "null", "path": "builtin:null"},
           "sampling": {"height": a.height, "width": a.width, "num_frames": a.frames}}
    return overrides.apply(out, a.set)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=946)
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--set", nargs="*", default=[], help="job-file overrides, key.path=value (YAML)")
    ap.add_argument("--keep", help="write the output here and keep it (default: a temp folder)")
    a = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    start = time.perf_counter()

    import ray

    from pipeline.job import run_job
    from pipeline.spec import load_job

    base = a.keep or tempfile.mkdtemp(prefix="rushes-overhead-")
    write_manifest(f"{base}/manifest.parquet", a.rows)
    print(describe(with_torch=False))
    print(f"null model, {a.rows} rows at {a.width}x{a.height}, {a.frames} frames; overrides: {a.set or 'none'}")
    commits: list[tuple[float, int]] = []

    def echo(message) -> None:
        m = re.search(r"committed (\d+)/(\d+)", str(message))
        if m:
            commits.append((time.perf_counter() - start, int(m.group(1))))

    with ProcessPoller() as procs:
        summary = run_job(load_job(job(f"{base}/manifest.parquet", f"{base}/out", a)), echo=echo)
        workers = len(glob.glob(f"{ray._private.worker._global_node.get_logs_dir_path()}/python-core-worker-*.log"))
    ray.shutdown()
    wall = time.perf_counter() - start
    cpu = procs.cpu_seconds()
    first = commits[0][0] if commits else float("nan")
    rate = ((commits[-1][1] - commits[0][1]) / (commits[-1][0] - commits[0][0])
            if len(commits) > 1 and commits[-1][0] > commits[0][0] else float("nan"))
    print(f"  {dict(summary.counts)} in {wall:.1f} s (Ray's start included); first commit at {first:.1f} s, "
          f"{rate:.1f} rows/s from it to the last ({len(commits)} commits)")
    print(f"  {workers} Ray worker processes started; CPU {sum(cpu.values()):.1f} s: "
          + ", ".join(f"{k} {v:.1f}" for k, v in cpu.most_common()))
    if not a.keep:
        shutil.rmtree(base, ignore_errors=True)
    print(f"overhead wall_s {wall:.2f} first_commit_s {first:.2f} rows_per_s {rate:.2f} workers {workers} "
          f"cpu_s {sum(cpu.values()):.1f}")


if __name__ == "__main__":
    main()
