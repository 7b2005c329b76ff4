"""How busy a GPU fleet is kept: a simulated fleet of logical GPUs running a `null` job whose sampler and decoder
hold their GPU as long as a real model would (model.simulate, stages/models/simulation.py), through `rushes run`'s
own code (`pipeline.job.run_job`).

    python bench/fleet.py --gpus 8 --rows 400 [--nodes 2] [--profile wan2.1-1.3b-480p@h100] [--mix long=0.1]
                          [--time-scale 0.005] [--order longest_first] [--kill-node-at 0.5] [--set key=value ...]

One node: a local Ray with `--gpus` logical GPUs and `--cpus` logical CPUs. `--nodes N`: a `ray.cluster_utils.Cluster`,
a head without GPUs (the driver and the ledger) and N nodes sharing the GPUs and CPUs. `--mix long=0.1`: a tenth of
the rows, placed at random, are minute-long videos (as many windows as a minute of the profile's model makes,
each costing one window). `--kill-node-at F`: when a fraction F of the rows is committed (or `--kill-node-after S`:
S seconds after the job starts), one GPU node is removed and a new one added (a node lost and replaced), and the GPU-seconds redone are measured: every batch the ledger saw
begin, end or be lost with its node, against the work that the records needed.

Printed (pipeline/gpu_time.py, the same figures as the run's report): the GPU-busy fraction over the GPU phase and
in steady state, the time until every GPU is busy, the idle tail, each stage's busy and idle GPU-seconds, and the
makespan against the ideal (the GPU work done, divided by the GPUs; and the same from the profile's nominal work).
The last line:

    gpu_busy <fraction> makespan_s <seconds> ideal_s <seconds>
"""
from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import overrides  # bench/overrides.py, next to this file
from machine_info import describe  # bench/machine_info.py, next to this file

ROOT = Path(__file__).resolve().parents[1]
WINDOW, OVERLAP, NEW = 17, 9, 8  # the null family's long rows: a 17-frame window, each next one adds 8 frames


def minute_windows(profile: str | None, fps: int = 16) -> int:
    """Windows of a minute-long video of the profile's model: SkyReels-V2 DF's own plan (overlap 17); a model
    that cannot extend counts as if it could, window after window."""
    from stages.long_video.windows import frames_for, segment_plan
    from stages.models.simulation import parse_profile

    window, fps = (parse_profile(profile)[0].frames, 24 if "skyreels" in profile else 16) if profile else (81, fps)
    return len(segment_plan(frames_for(60, fps), window, 17))


def write_manifest(path: str, rows: int, long_share: float, windows: int) -> int:
    """Rows of prompts; `long_share` of them (at random places) long rows of `windows` windows. Returns how many."""
    rng = random.Random(7)
    long = set(rng.sample(range(rows), round(rows * long_share)))
    frames = [WINDOW + NEW * (windows - 1) if i in long else 9 for i in range(rows)]
    pq.write_table(pa.table({
        "id": [f"r{i:05d}" for i in range(rows)], "prompt": [f"a lighthouse in a storm, take {i}" for i in range(rows)],
        "num_frames": frames, "base_num_frames": [WINDOW if i in long else None for i in range(rows)],
        "overlap_history": [OVERLAP if i in long else None for i in range(rows)]}), path)
    return len(long)


def start_ray(a) -> tuple[object, list]:
    """A local Ray, or a Cluster of a head and `a.nodes` GPU nodes. Returns (cluster or None, its GPU nodes)."""
    import ray

    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    if a.nodes <= 1:
        ray.init(address="local", num_cpus=a.cpus, num_gpus=a.gpus, include_dashboard=False, log_to_driver=False)
        return None, []
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    nodes = [cluster.add_node(**node_args(a)) for _ in range(a.nodes)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    return cluster, nodes


def node_args(a) -> dict:
    return {"num_cpus": max(1, a.cpus // a.nodes), "num_gpus": a.gpus // a.nodes}


def job(a, base: str) -> dict:
    simulate = {"time_scale": a.time_scale}
    simulate.update({"profile": a.profile} if a.profile else {"sample_s": a.sample_s, "decode_s": a.decode_s})
    out = {"name": "fleet", "manifest": f"{base}/manifest.parquet", "output": f"{base}/out", "order": a.order,
           "model": {"family": "null", "simulate": simulate}, "sampling": {"height": 64, "width": 64},
           "filter": {"max_duplicate_distance": None}}
    return overrides.apply(out, a.set)


def windows_of(r: dict) -> int:
    return 1 if not r.get("base_num_frames") else (r["num_frames"] - WINDOW) // NEW + 1


def node_loss(records: list[dict], summary, killed: tuple[str, float], window: float) -> list[str]:
    """What the lost node cost, in GPU-seconds redone: the batches in flight on it when it went (each until the
    kill), plus batches that ended but whose output the records do not keep (lost after), less the windows that
    long videos did not sample again because their segments were saved; and per lost long video, in windows."""
    from pipeline.gpu_time import distinct

    node, at = killed
    by_id = {r["id"]: r for r in records}
    kept = sum((s["end"] - s["start"]) * s["gpus"] for s in distinct(s for r in records for s in r["spans"] or []))
    lost = [s for s in summary.lost if s["worker"].startswith(node)]
    lost_s = sum((at - s["start"]) * s["gpus"] for s in lost)
    per_video, resumed_s = [], 0.0
    for s in lost:
        for key in s["keys"] if s["stage"] == "sample" else []:
            r = by_id.get(key.split("/")[1])
            if r is None or windows_of(r) == 1:
                continue
            final = [x for x in r["spans"] or [] if x["stage"] == "sample"][-1]
            resumed = max(0, round(windows_of(r) - (final["end"] - final["start"]) / window))
            resumed_s += resumed * window * s["gpus"]
            per_video.append((at - s["start"]) / window - resumed)
    redone = lost_s + (summary.ended_gpu_s - kept) - resumed_s
    stages = ", ".join(f"{st} {sum(1 for s in lost if s['stage'] == st)}" for st in sorted({s["stage"] for s in lost}))
    return [f"node {node} lost {at - summary.started_at:.1f} s after the start, with {len(lost)} batches in flight "
            f"({stages or 'none'}): {lost_s:.2f} GPU-s of work at that moment",
            f"GPU-seconds redone: {redone:.2f} ({redone / window:.2f} sampling windows of {window:.3f} s): in flight "
            f"{lost_s:.2f}, ended but not kept {summary.ended_gpu_s - kept:.2f}, less {resumed_s:.2f} resumed from "
            "saved segments",
            "per long video lost in sampling: " + (", ".join(f"{w:.2f}" for w in per_video) + " windows redone"
                                                   if per_video else "none was sampling on the node")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--cpus", type=int, default=8, help="logical CPUs of the fleet (scheduling tokens)")
    ap.add_argument("--rows", type=int, default=400)
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--profile", default="wan2.1-1.3b-480p@h100")
    ap.add_argument("--sample-s", type=float, help="seconds per window instead of a profile")
    ap.add_argument("--decode-s", type=float, help="seconds per window instead of a profile")
    ap.add_argument("--mix", default="", help="long=<share>: that share of the rows are minute-long videos")
    ap.add_argument("--long-windows", type=int, help="windows of a long row (default: a minute of the profile)")
    ap.add_argument("--time-scale", type=float, default=0.005)
    ap.add_argument("--order", default="longest_first", choices=["longest_first", "manifest"])
    ap.add_argument("--kill-node-at", type=float, help="remove (and replace) a GPU node at this share committed")
    ap.add_argument("--kill-node-after", type=float, help="remove (and replace) a GPU node this many seconds after "
                    "the job starts (commits lag the GPU phase on a small machine: this can hit it mid-sampling)")
    ap.add_argument("--set", nargs="*", default=[], help="job-file overrides, key.path=value (YAML)")
    a = ap.parse_args()
    if a.sample_s is not None or a.decode_s is not None:
        a.profile = None
    sys.stdout.reconfigure(line_buffering=True)
    import ray

    from pipeline.gpu_time import gpu_time
    from pipeline.job import run_job, simulated
    from pipeline.library import read_records
    from pipeline.spec import load_job

    base = tempfile.mkdtemp(prefix="rushes-fleet-")
    share = float(dict(kv.split("=") for kv in a.mix.split(",") if kv).get("long", 0))
    windows = a.long_windows or minute_windows(a.profile)
    n_long = write_manifest(f"{base}/manifest.parquet", a.rows, share, windows)
    spec = simulated(load_job(job(a, base)))
    sim = spec.model.simulate
    held = {"sample": sim.held("sample"), "decode": sim.held("decode")}
    work = (n_long * windows + a.rows - n_long) * (held["sample"] + held["decode"])  # GPU-seconds, whole GPUs
    print(describe(with_torch=False))
    print(f"{a.gpus} GPUs on {a.nodes} node(s), {a.cpus} logical CPUs; {a.rows} rows ({n_long} long: {windows} windows "
          f"each); {a.profile or 'seconds given'}: a window holds the sampler {held['sample']:.3f} s and the decoder "
          f"{held['decode']:.3f} s (time scale {a.time_scale:g}); order {a.order}; overrides {a.set or 'none'}")
    cluster, nodes = start_ray(a)
    killed: list[tuple[str, float]] = []
    once = threading.Lock()

    def echo(message) -> None:
        m = re.search(r"committed (\d+)/(\d+)", str(message))
        if a.kill_node_at and m and int(m.group(1)) >= a.kill_node_at * int(m.group(2)):
            threading.Thread(target=kill_and_replace, daemon=True).start()

    def kill_and_replace() -> None:
        """One GPU node removed and a fresh one added, once per run."""
        with once:
            if not nodes or killed:
                return
            victim = nodes.pop()
            killed.append((victim.node_id[:12], time.time()))
        cluster.remove_node(victim)
        # off the main thread a node cannot register its SIGTERM handler; the cluster's shutdown ends it anyway
        cluster._shutdown_at_exit = False
        nodes.append(cluster.add_node(**node_args(a)))

    if a.kill_node_after:
        timer = threading.Timer(a.kill_node_after, kill_and_replace)
        timer.daemon = True
        timer.start()

    start = time.perf_counter()
    summary = run_job(spec, echo=echo)
    wall = time.perf_counter() - start
    records = read_records(spec.output).to_pylist()
    figures = gpu_time((s for r in records for s in r["spans"] or []), summary.started_at, a.gpus)
    print(f"  {dict(summary.counts)} in {wall:.1f} s (Ray started before)")
    for line in figures.lines():
        print(f"  {line}")
    print(f"  nominal GPU work {work:.1f} s (rows x windows x held seconds): ideal {work / a.gpus:.1f} s on {a.gpus} "
          f"GPUs; makespan / nominal ideal {figures.makespan_s / (work / a.gpus):.3f}; makespan / ideal "
          f"{figures.makespan_s / figures.ideal_s:.3f}")
    if killed:
        for line in node_loss(records, summary, killed[0], held["sample"]):
            print(f"  {line}")
    ray.shutdown()
    if cluster is not None:
        cluster.shutdown()
    shutil.rmtree(base, ignore_errors=True)
    print(f"gpu_busy {figures.busy_fraction:.4f} makespan_s {figures.makespan_s:.2f} ideal_s {figures.ideal_s:.2f}")


if __name__ == "__main__":
    main()
