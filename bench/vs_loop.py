"""Rushes against the plain loop a user would otherwise write, on the same manifest and the same model.

    python bench/vs_loop.py [--rows 8] [--height 240 --width 416 --frames 33 --steps 10]
                            [--set KEY=VALUE ...] [--skip-loop | --skip-rushes] [--loop-threads N]

1. The loop: `WanPipeline.from_pretrained` on the builtin tiny Wan, then for each manifest row one
   `pipe(prompt, ..., output_type="np")` call and an H.264 MP4 written with PyAV (libx264, yuv420p, the
   same CRF and preset as Rushes' default encode), one row after another, in this process.
2. `rushes run` on the same manifest, as a subprocess (the real CLI: Ray start-up, actor model loads,
   filter, poster, preview, decode-back check and metadata commits all included). Prompt expansion is
   off so both sample the same prompts, and `encode.keep_rejected` is on so both write every video.
   The job streams one row at a time (`sample.batch_size: 1`) into two decode replicas, the best
   setting found on a 2-core machine, where the tiny model's VAE decode is most of the work;
   `--set KEY=VALUE` (a YAML value) changes any job key. `--defaults` leaves every stage setting
   (resources, replicas, batch sizes) and the commit settings at the job file's defaults, as a new
   user's job would have them. Rushes' decode uses its CPU kernels (stages/models/cpu_kernels.py,
   `decode.fast_cpu_kernels`); `--loop-fast-kernels` gives them to the loop as well, which separates
   what the kernels gain from what the pipeline's scheduling gains.

Prints the machine and, for each, videos/s end to end (the loop's pipeline load, Rushes' Ray start-up
and actor model loads included) and after the first video (once each runs full), their ratios, and
the CPU seconds spent per video (for Rushes its whole process tree: CLI driver, Ray's GCS and raylet,
workers). Rushes' per-stage seconds come from its records.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from fractions import Fraction

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml

import overrides  # bench/overrides.py, next to this file
from machine_info import describe  # bench/machine_info.py, next to this file
from orchestration import ProcessPoller  # bench/orchestration.py, next to this file
from stages.models.checkpoints import resolve_model_path

PROMPTS = ["a cat walking on a beach at sunset", "a red car drives through a city street at night",
           "a robot arm moves boxes in a warehouse", "a drone shot over a mountain valley in fog",
           "a dancer spins in a studio with neon light", "a whale swims in a blue ocean",
           "a train crosses a bridge over a river", "a chef cooks in a warm kitchen"]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load() -> str:
    return f"load average {os.getloadavg()[0]:.2f}"


def write_mp4(path: str, frames: np.ndarray, fps: int, crf: int = 20, preset: str = "medium") -> None:
    """uint8 (T, H, W, 3) frames to an H.264 MP4, as a user script would."""
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": str(crf), "preset": preset}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def plain_loop(rows: list[dict], a, out: str) -> tuple[float, float, float]:
    """(seconds to load the pipeline, seconds for all rows, seconds for the first row)."""
    from diffusers import WanPipeline

    from stages.models.devices import quiet_loading

    quiet_loading()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    start = time.perf_counter()
    pipe = WanPipeline.from_pretrained(resolve_model_path("builtin:tiny-wan"), torch_dtype=torch.float32).to(device)
    pipe.set_progress_bar_config(disable=True)
    if a.loop_fast_kernels:
        from stages.models.cpu_kernels import speed_up_cpu_decode

        speed_up_cpu_decode(pipe.vae)
    loaded = time.perf_counter() - start
    os.makedirs(out, exist_ok=True)
    start = time.perf_counter()
    first = 0.0
    for r in rows:
        video = pipe(prompt=r["prompt"], negative_prompt="", height=a.height, width=a.width,
                     num_frames=a.frames, num_inference_steps=a.steps, guidance_scale=5.0,
                     generator=torch.Generator(device="cpu").manual_seed(r["seed"]), output_type="np").frames[0]
        write_mp4(f"{out}/{r['id']}.mp4", (video * 255).round().astype(np.uint8), fps=8)
        first = first or time.perf_counter() - start
    return loaded, time.perf_counter() - start, first


def stage_seconds(output: str) -> dict[str, float]:
    from pipeline.library import read_records

    records = read_records(output).to_pylist()
    names = dict.fromkeys(k for r in records for k, _ in r["stage_seconds"] or [])
    return {k: sum(dict(r["stage_seconds"]).get(k, 0.0) for r in records) / len(records) for k in names}


def rushes_run(job_path: str) -> tuple[float, list[tuple[float, int]], float | None, int]:
    """Runs `rushes run` and timestamps its output: (wall s, [(seconds, variants committed so far)],
    seconds when Ray was up, videos generated)."""
    cmd = [sys.executable, "-c", "import sys; from pipeline.cli import main; sys.exit(main())", "run", job_path]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    commits, ray_started, videos, tail = [], None, 0, []
    for line in proc.stdout:
        now = time.perf_counter() - start
        tail = (tail + [line])[-20:]
        if "Started a local Ray instance" in line:
            ray_started = now
        if line.startswith("[rushes] committed"):
            commits.append((now, int(line.split()[2].split("/")[0])))  # "[rushes] committed 3/8 variants"
        if "videos generated in" in line:
            videos = int(line.split()[0])
    if proc.wait():
        sys.exit(f"rushes run failed (exit {proc.returncode}):\n{''.join(tail)}")
    return time.perf_counter() - start, commits, ray_started, videos


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--width", type=int, default=416)
    ap.add_argument("--frames", type=int, default=33)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="Rushes job-file override")
    ap.add_argument("--skip-loop", action="store_true", help="run only Rushes (to compare job settings)")
    ap.add_argument("--skip-rushes", action="store_true", help="run only the loop")
    ap.add_argument("--defaults", action="store_true",
                    help="Rushes with the job file's defaults as they are: no stage resources, replicas, batch "
                         "sizes or commit settings set (only the model, the sampling shape, expansion off and "
                         "keep_rejected, so both sides make the same videos)")
    ap.add_argument("--loop-threads", type=int, help="torch threads of the loop (default: torch's, one per core)")
    ap.add_argument("--loop-fast-kernels", action="store_true",
                    help="give the loop's VAE Rushes' CPU decode kernels (stages/models/cpu_kernels.py), to separate "
                         "what the kernels gain from what the pipeline's scheduling gains")
    a = ap.parse_args()
    if a.loop_threads:
        torch.set_num_threads(a.loop_threads)

    tmp = tempfile.mkdtemp(prefix="rushes-vs-loop-")
    rows = [{"id": f"clip{i:03d}", "prompt": PROMPTS[i % len(PROMPTS)], "seed": i} for i in range(a.rows)]
    pq.write_table(pa.Table.from_pylist(rows), f"{tmp}/manifest.parquet")
    gpus = 0.3 if torch.cuda.is_available() else 0  # one GPU shared by the sampler and both decoders
    job = {"name": "vs-loop", "manifest": f"{tmp}/manifest.parquet", "output": f"{tmp}/rushes",
           "model": {"family": "wan", "path": "builtin:tiny-wan"},
           "sampling": {"height": a.height, "width": a.width, "num_frames": a.frames, "fps": 8,
                        "num_inference_steps": a.steps, "guidance_scale": 5.0},
           "expand": {"mode": "none"},
           "sample": {"batch_size": 1, "resources": {"num_cpus": 1, "num_gpus": gpus}},
           "decode": {"resources": {"num_cpus": 1, "num_gpus": gpus, "replicas": 2}},
           "encode": {"keep_rejected": True},
           "commit": {"max_wait_s": 0}}  # every block committed as it comes: the commit times are the videos'
    if a.defaults:
        for key in ("sample", "decode", "commit"):
            del job[key]
    overrides.apply(job, a.set)
    with open(f"{tmp}/job.yaml", "w") as f:
        yaml.safe_dump(job, f, sort_keys=False)
    resolve_model_path("builtin:tiny-wan")  # built once into the cache, outside both timings

    print(describe())
    print(f"{a.rows} rows, tiny Wan, {a.width}x{a.height}, {a.frames} frames, {a.steps} steps, CFG 5.0; "
          f"Rushes settings: {', '.join(a.set) or 'as in the job below'}"
          + ("; the loop's VAE has Rushes' CPU kernels" if a.loop_fast_kernels else ""))
    print("  job: " + yaml.safe_dump({k: job[k] for k in ("sample", "decode", "encode") if k in job},
                                     default_flow_style=True, width=200).strip())
    loop_rate = None
    if not a.skip_loop:
        print(f"  plain loop starts ({load()})")
        cpu = cpu_seconds()
        loaded, seconds, first = plain_loop(rows, a, f"{tmp}/loop")
        cpu = cpu_seconds() - cpu
        loop_rate = a.rows / (loaded + seconds)
        loop_steady = (a.rows - 1) / (seconds - first) if a.rows > 1 else None
        print(f"  plain loop: {loaded + seconds:.1f} s for {a.rows} videos (pipeline load {loaded:.1f} s, first video "
              f"at {loaded + first:.1f} s) -> {loop_rate:.4f} videos/s"
              + (f", {loop_steady:.4f} after the first" if loop_steady else "")
              + f"; {cpu / a.rows:.1f} CPU-s/video ({load()})")
    if a.skip_rushes:
        shutil.rmtree(tmp, ignore_errors=True)
        return
    print(f"  rushes run starts ({load()})")
    with ProcessPoller() as tree:  # the CLI's process tree: its driver, Ray's GCS and raylet, the workers
        wall, commits, ray_started, videos = rushes_run(f"{tmp}/job.yaml")
    used = tree.cpu_seconds()
    cpu = sum(used.values()) - used["driver"]  # "driver" is this process, waiting
    rate = videos / wall
    started = f"Ray up at {ray_started:.1f} s, " if ray_started else ""
    # After the first commit: what the pipeline does once it is full, as the loop after its first video
    # (only when the commits spread over a good part of the run, else it is a ratio of two tiny numbers).
    steady = None
    if len(commits) > 2 and commits[-1][0] - commits[0][0] > wall / 4:
        steady = (commits[-1][1] - commits[0][1]) / (commits[-1][0] - commits[0][0])
    print(f"  rushes run: {wall:.1f} s for {videos} videos ({started}commits at "
          f"{', '.join(f'{t:.0f}' for t, _ in commits)} s) -> {rate:.4f} videos/s"
          + (f", {videos / (wall - ray_started):.4f} without Ray start-up" if ray_started else "")
          + (f", {steady:.4f} after the first commit" if steady else "")
          + f"; {cpu / videos:.1f} CPU-s/video ({load()})")
    stages = stage_seconds(f"{tmp}/rushes")
    print("  rushes stage seconds per video (from the records): "
          + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    if loop_rate:
        print(f"  rushes / loop: {rate / loop_rate:.2f}x end to end"
              + (f", {steady / loop_steady:.2f}x after the first video" if steady and loop_steady else ""))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
