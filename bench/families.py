"""Seconds per video by stage for every model family, each with its builtin tiny model, stages called
directly (no Ray), one torch thread per stage as inside Rushes.

    python bench/families.py [--videos 4] [--height 96 --width 160 --frames 17 --steps 4]

Per family: the load of the sampler and of the VAE (once per actor in a run), then sample, decode, filter
and encode seconds per video, after one warm-up video whose first-call costs are not counted. Figures, not
assertions: the tiny models' shapes are each real model's compression ratios with tiny widths, so they
compare the families' pipelines and VAEs on a CPU, not the real models' speeds.
"""
from __future__ import annotations

import argparse
import time

from stages.contract import ModelSpec, RunContext
from stages.models.checkpoints import resolve_model_path
from stages.decode import DecodeOptions, DecodeStage
from stages.encode import EncodeOptions, EncodeStage
from stages.filter import FilterOptions, FilterStage
from stages.sample import SampleOptions, SampleStage

from machine_info import describe  # noqa: E402 - bench/ is the script's folder

MODELS = [("wan", "builtin:tiny-wan"), ("wan", "builtin:tiny-wan22"), ("wan", "builtin:tiny-wan22-ti2v"),
          ("ltx", "builtin:tiny-ltx"), ("cogvideox", "builtin:tiny-cogvideox"), ("hunyuan", "builtin:tiny-hunyuan"),
          ("skyreels", "builtin:tiny-skyreels")]


def rows(n: int, a, start: int = 0) -> list[dict]:
    return [{"row": i, "id": f"v{i}", "prompt": f"a cat walking on a beach, take {i}",
             "expanded_prompt": f"a cat walking on a beach, take {i}", "negative_prompt": "", "seed": i,
             "height": a.height, "width": a.width, "num_frames": a.frames, "fps": 8, "num_inference_steps": a.steps,
             "guidance_scale": 5.0, "style": None, "tags": [], "extra": {}, "status": "pending", "stage_seconds": {},
             "params_hash": f"{i:064x}"} for i in range(start, start + n)]


def bench(family: str, path: str, a) -> dict:
    ctx = RunContext(model=ModelSpec(family=family, path=path))
    one = {"num_cpus": 1, "num_gpus": 0}
    resolve_model_path(path)  # built into the cache outside the timings
    import diffusers  # noqa: F401 - imports outside the timings (the first family would pay them)
    import diffusers.pipelines  # noqa: F401
    timings = {}
    start = time.perf_counter()
    sample = SampleStage(SampleOptions(resources=one), ctx)
    sample.setup()
    timings["load sampler"] = time.perf_counter() - start
    start = time.perf_counter()
    decode = DecodeStage(DecodeOptions(resources=one), ctx)
    decode.setup()
    timings["load VAE"] = time.perf_counter() - start
    stages = [("sample", sample), ("decode", decode), ("filter", FilterStage(FilterOptions(min_motion=0))),
              ("encode", EncodeStage(EncodeOptions(preset="ultrafast", keep_rejected=True)))]
    for _, stage in stages[2:]:
        stage.setup()
    warm = rows(1, a, start=1000)
    for _, stage in stages:
        warm = stage(warm)
    data = rows(a.videos, a)
    for name, stage in stages:
        start = time.perf_counter()
        data = stage(data)
        timings[name] = (time.perf_counter() - start) / a.videos
    timings["statuses"] = sorted({r["status"] for r in data})
    return timings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--height", type=int, default=96)
    ap.add_argument("--width", type=int, default=160)
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--only", default=None, help="one builtin, e.g. tiny-ltx")
    a = ap.parse_args()
    print(describe())
    print(f"{a.videos} videos per family of {a.width}x{a.height}, {a.frames} frames, {a.steps} steps "
          "(seconds; load once per actor, the rest per video)")
    print(f"{'model':<24}{'load sampler':>13}{'load VAE':>10}{'sample':>9}{'decode':>9}{'filter':>9}{'encode':>9}"
          f"{'total':>9}")
    for family, path in MODELS:
        if a.only and path != f"builtin:{a.only}":
            continue
        t = bench(family, path, a)
        total = sum(t[k] for k in ("sample", "decode", "filter", "encode"))
        print(f"{path.removeprefix('builtin:'):<24}{t['load sampler']:>13.2f}{t['load VAE']:>10.2f}"
              f"{t['sample']:>9.3f}{t['decode']:>9.3f}{t['filter']:>9.3f}{t['encode']:>9.3f}{total:>9.3f}"
              f"  {','.join(t['statuses'])}")


if __name__ == "__main__":
    main()
