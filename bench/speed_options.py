"""Each sampler speed option against the option off, measured side by side in one run: the speed-up ratio of
sampling, the pixel difference of the decoded video (PSNR against the option off) and, on the trained toy
model, how often each video still shows what its prompt says (adherence, off and on).

    python bench/speed_options.py --toy [--videos 8 --reps 3]       # builtin:toy-shapes, toy-world prompts
    python bench/speed_options.py [--height 128 --width 224 --frames 33 --steps 20 --reps 3]   # tiny Wan

On `builtin:toy-shapes` the settings are the ones it was trained for (64x64, 17 frames, 8 steps) and the prompts
are the toy world's, judged by plain image analysis (training/toy_world/world.py): a trained model's
step-to-step residuals are what the caches exploit, so these are the figures to read; tiny Wan's random
weights say nothing about quality.

For every option: a sampler with it and one without, each set up once and warmed up with one call (so
compilation and first-call costs are not counted); then `--reps` rounds, each timing the option off and on
one after the other on the same variants, so both see the same machine load. The ratio is the median of
off/on per round (above 1: faster). PSNR is over the uint8 frames that the VAE decodes from each latent
(inf: identical). MagCache is calibrated on the same shape first (its ratios are per model and schedule).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import math
import re
import statistics
import time

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.contract import ModelSpec, RunContext
from stages.models.checkpoints import resolve_model_path
from stages.decode import DecodeOptions, DecodeStage
from stages.sample import SampleOptions, SampleStage

from machine_info import describe  # noqa: E402 - bench/ is the script's folder

ONE = {"num_cpus": 1, "num_gpus": 0}


def prompts(a, n: int) -> list[str]:
    if not a.toy:
        return [f"a red car driving through a city at night, take {i}" for i in range(n)]
    from training.toy_world.world import canonical_prompt, random_scene

    rng = np.random.default_rng(700_000)
    return [canonical_prompt(*random_scene(rng)) for _ in range(n)]


def rows(a, n: int) -> list[dict]:
    return [dict(id=f"v{i}", status="pending", expanded_prompt=p, negative_prompt="", seed=700_000 + i,
                 height=a.height, width=a.width, num_frames=a.frames, fps=8, num_inference_steps=a.steps,
                 guidance_scale=a.guidance, flow_shift=a.flow_shift, stage_seconds={})
            for i, p in enumerate(prompts(a, n))]


def adherence(a, decoded: list[dict]) -> float | None:
    """Share of the videos whose every object has the colour, shape and motion its prompt says (toy model)."""
    if not a.toy:
        return None
    from training.toy_world.world import analyze, judge

    right = [judge(analyze(r["frames"].array, r["expanded_prompt"]), r["expanded_prompt"])["all"] for r in decoded]
    return 100.0 * sum(right) / len(right)


def sampler(ctx, **options) -> SampleStage:
    s = SampleStage(SampleOptions(resources=ONE, **options), ctx)
    s.setup()
    return s


def timed(s: SampleStage, data: list[dict]) -> tuple[float, list]:
    start = time.perf_counter()
    out = s(data)
    bad = [r.get("error") for r in out if r["status"] != "pending"]
    if bad:
        raise RuntimeError(bad[0])
    return time.perf_counter() - start, [r["latents"] for r in out]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def mag_ratios(ctx, a) -> list[float]:
    """Calibrate MagCache on this model and schedule: diffusers prints the ratios at the end of the call."""
    s = sampler(ctx, cache={"kind": "mag", "calibrate": True})
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        timed(s, rows(a, 1))
    lists = re.findall(r"\[([0-9eE.,\s+-]+)\]", buf.getvalue())
    return [float(x) for x in lists[-1].split(",")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=224)
    ap.add_argument("--frames", type=int, default=33)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--videos", type=int, default=1, help="variants per timed call")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--path", default="builtin:tiny-wan")
    ap.add_argument("--toy", action="store_true", help="builtin:toy-shapes at its trained settings, toy prompts")
    ap.add_argument("--only", default=None, help="one option by its label")
    a = ap.parse_args()
    a.guidance, a.flow_shift = 5.0, None
    if a.toy:
        from stages.models.checkpoints import trained_settings

        a.path = "builtin:toy-shapes"
        s = trained_settings(a.path)
        a.height, a.width, a.frames, a.steps = s["height"], s["width"], s["num_frames"], s["num_inference_steps"]
        a.guidance, a.flow_shift = s["guidance_scale"], s.get("flow_shift")
    ctx = RunContext(model=ModelSpec(family="wan", path=a.path))
    resolve_model_path(a.path)
    decoder = DecodeStage(DecodeOptions(resources=ONE), ctx)
    decoder.setup()
    ratios = mag_ratios(ctx, a)
    options = {
        "first_block 0.05": {"cache": {"kind": "first_block", "threshold": 0.05}},
        "first_block 0.2": {"cache": {"kind": "first_block", "threshold": 0.2}},
        "taylorseer interval 2": {"cache": {"kind": "taylorseer", "cache_interval": 2,
                                            "disable_cache_before_step": 3}},
        "taylorseer interval 4": {"cache": {"kind": "taylorseer", "cache_interval": 4,
                                            "disable_cache_before_step": 3}},
        "pyramid_attention_broadcast": {"cache": {"kind": "pyramid_attention_broadcast",
                                                  "spatial_attention_block_skip_range": 2,
                                                  "spatial_attention_timestep_skip_range": [100, 950]}},
        "mag 0.06": {"cache": {"kind": "mag", "threshold": 0.06, "mag_ratios": ratios}},
        "mag 0.3": {"cache": {"kind": "mag", "threshold": 0.3, "mag_ratios": ratios}},
        "attention native": {"attention_backend": "native"},
        "compile_repeated_blocks": {"compile_repeated_blocks": True},
        "fp8_storage": {"fp8_storage": True},
        "torchao int8wo": {"quantization": {"backend": "torchao", "quant_type": "int8wo"}},
        "torchao int8dq": {"quantization": {"backend": "torchao", "quant_type": "int8dq"}},
        "group_offload": {"group_offload": {"num_blocks_per_group": 1}},
    }
    print(describe(extra="torch threads per sampler: 1"))
    print(f"{a.path}, {a.width}x{a.height}, {a.frames} frames, {a.steps} steps, guidance {a.guidance:g}, "
          f"{a.videos} variant(s) per call, {a.reps} rounds; MagCache ratios calibrated: {len(ratios)}")
    print(f"{'option':<30}{'off s':>8}{'on s':>8}{'speed-up':>10}{'PSNR dB':>9}"
          + (f"{'adherence off':>15}{'on':>6}" if a.toy else ""))
    off = sampler(ctx)
    timed(off, rows(a, a.videos))  # warm-up
    for label, opts in options.items():
        if a.only and label != a.only:
            continue
        try:
            on = sampler(ctx, **opts)
            timed(on, rows(a, a.videos))  # warm-up (compilation, first-call costs)
        except Exception as e:  # noqa: BLE001 - an option this machine cannot run is reported, not fatal
            print(f"{label:<30}  not run: {type(e).__name__}: {str(e)[:90]}")
            continue
        per_round, t_off, t_on = [], [], []
        for _ in range(a.reps):
            x, z_off = timed(off, rows(a, a.videos))
            y, z_on = timed(on, rows(a, a.videos))
            t_off.append(x)
            t_on.append(y)
            per_round.append(x / y)
        frames_off = decoder([dict(r, latents=z) for r, z in zip(rows(a, a.videos), z_off)])
        frames_on = decoder([dict(r, latents=z) for r, z in zip(rows(a, a.videos), z_on)])
        quality = min(psnr(p["frames"].array, q["frames"].array) for p, q in zip(frames_off, frames_on))
        kept = f"{adherence(a, frames_off):>14.0f}%{adherence(a, frames_on):>5.0f}%" if a.toy else ""
        print(f"{label:<30}{statistics.median(t_off):>8.2f}{statistics.median(t_on):>8.2f}"
              f"{statistics.median(per_round):>9.2f}x{quality:>9.1f}{kept}")


if __name__ == "__main__":
    main()
