"""Seconds per video for each stage with the builtin tiny model, stages called directly (no Ray).

    python bench/stage_costs.py [--videos 8] [--height 96 --width 160 --frames 17 --steps 4]

Prints the machine, then one line per stage. Figures, not assertions: compare stages within one run.
"""
from __future__ import annotations

import argparse
import time

import torch

from stages.decode import DecodeOptions, DecodeStage
from stages.encode import EncodeOptions, EncodeStage
from stages.expand import ExpandOptions, ExpandStage
from stages.filter import FilterOptions, FilterStage
from stages.sample import SampleOptions, SampleStage
from stages.common.variant import params_hash, variants_of

from machine_info import describe  # noqa: E402 - bench/ is the script's folder


def planned(stage, row: dict) -> list[dict]:
    variants = variants_of(row, None)
    stage.plan(row, variants)
    return variants


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--height", type=int, default=96)
    ap.add_argument("--width", type=int, default=160)
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=4)
    a = ap.parse_args()
    rows = [{"row": i, "id": f"v{i}", "prompt": f"a cat walking on a beach, take {i}", "negative_prompt": "",
             "seed": i, "num_variants": 1, "height": a.height, "width": a.width, "num_frames": a.frames,
             "fps": 8, "num_inference_steps": a.steps, "guidance_scale": 5.0, "style": None, "tags": [],
             "extra": {}} for i in range(a.videos)]
    gpu = 1 if torch.cuda.is_available() else 0
    stages = [
        ("expand", ExpandStage(ExpandOptions())),  # planned in the driver, as a run does it
        ("sample", SampleStage(SampleOptions(batch_size=a.batch_size, resources={"num_gpus": gpu}))),
        ("decode", DecodeStage(DecodeOptions(resources={"num_gpus": gpu}))),
        ("filter", FilterStage(FilterOptions(min_motion=0))),
        ("encode", EncodeStage(EncodeOptions())),
    ]
    print(describe())
    print(f"{a.videos} videos of {a.width}x{a.height}, {a.frames} frames, {a.steps} steps, "
          f"sample batch {a.batch_size}")
    data = rows
    for name, stage in stages:
        stage.setup()
        start = time.perf_counter()
        if name == "expand":  # the planner's part, as a run does it
            data = [v for r in data for v in planned(stage, r)]
            for v in data:
                v["params_hash"] = params_hash({}, v)
        else:
            data = stage(data)
        per = (time.perf_counter() - start) / a.videos
        print(f"  {name:<7} {per:8.4f} s/video  ({a.frames / per:8.1f} frames/s)")
    print(f"  statuses: {sorted({r['status'] for r in data})}")


if __name__ == "__main__":
    main()
