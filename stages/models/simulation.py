"""Simulated GPU time for the `null` family: how long each window of a video would hold its GPU, without a GPU.

A job's `model.simulate` block (family `null` only) gives it in seconds per window (`sample_s`, `decode_s`), or as
a `profile` of a real model on a real GPU, `<model>@<gpu>` (e.g. `wan2.1-1.3b-480p@h100`): the FLOPs of one
window of that model at its shape, the same estimate as `rushes plan` (stages/models/memory_plan.py, on the
config-only checkpoints in tests/checkpoints), over the GPU's datasheet peak (stages/models/gpus.py) times an
MFU; decoding likewise from the VAE's FLOPs, at its own MFU. `time_scale` shrinks both, so that a fleet's hours
run in seconds here. The driver resolves a profile into seconds once (`resolved`); the null family's sampler and
decoder then hold their logical GPU that long per window, sleeping (stages/models/families/null.py).

A row of the null family stands for one window of the profile's shape; a long row (several windows,
stages/long_video/windows.py) for one such window per window of its own.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, model_validator

from stages.common.strict import Strict
from stages.models.gpus import GPU_TABLE

CHECKPOINTS = Path(__file__).resolve().parents[2] / "tests" / "checkpoints"  # config-only folders, no weights


@dataclass(frozen=True)
class Profile:
    """One window of a real model as its model card runs it."""

    folder: str  # under tests/checkpoints
    height: int
    width: int
    frames: int  # one window
    steps: int
    cfg: bool  # a negative pass per step (classifier-free guidance)


# Each model card's recommended settings (stages/models/families/*.py RECOMMENDED).
PROFILES = {
    "wan2.1-1.3b-480p": Profile("wan2.1-t2v-1.3b", 480, 832, 81, 50, True),
    "wan2.1-14b-480p": Profile("wan2.1-t2v-14b", 480, 832, 81, 50, True),
    "wan2.1-14b-720p": Profile("wan2.1-t2v-14b", 720, 1280, 81, 50, True),
    "skyreels-v2-df-1.3b-540p": Profile("skyreels-v2-df-1.3b-540p", 544, 960, 97, 30, True),
    "skyreels-v2-df-14b-540p": Profile("skyreels-v2-df-14b-540p", 544, 960, 97, 30, True),
}
GPU_NAMES = {"h100": "h100-80gb", "h200": "h200-141gb", "a100": "a100-80gb", "l40s": "l40s-48gb",
             "rtx4090": "rtx4090-24gb"}


def parse_profile(profile: str) -> tuple[Profile, str]:
    """`<model>@<gpu>` as (the model's window, a GPU_TABLE key); ValueError naming what is known."""
    model, _, gpu = profile.partition("@")
    if model not in PROFILES:
        raise ValueError(f"unknown profile model {model!r} (known: {', '.join(PROFILES)})")
    gpu = GPU_NAMES.get(gpu, gpu)
    if gpu not in GPU_TABLE:
        raise ValueError(f"unknown GPU {gpu!r} after '@' (known: {', '.join([*GPU_NAMES, *GPU_TABLE])})")
    return PROFILES[model], gpu


class SimulatedGpu(Strict):
    """`model.simulate`: the GPU time each window of a `null` video would take, slept on its logical GPU."""

    profile: str | None = Field(None, description="a real model on a real GPU, '<model>@<gpu>' (models: "
                                + ", ".join(PROFILES) + "; GPUs: " + ", ".join(GPU_NAMES) + "): seconds per "
                                "window from its FLOPs at its shape, the GPU's peak and the MFUs")
    sample_s: float | None = Field(None, ge=0, description="seconds one window holds the sampler's GPU (set: "
                                                           "instead of the profile's)")
    decode_s: float | None = Field(None, ge=0, description="seconds one window holds the decoder's GPU (set: "
                                                           "instead of the profile's)")
    mfu: float = Field(0.35, gt=0, le=1, description="a profile's sampling MFU (model FLOPs utilization)")
    decode_mfu: float = Field(0.1, gt=0, le=1, description="a profile's VAE decoding MFU (convolutions with a "
                                                           "causal cache run far below the denoiser's)")
    time_scale: float = Field(1.0, gt=0, description="every simulated second times this (0.005: an hour in 18 s)")

    @model_validator(mode="after")
    def _profile_or_seconds(self) -> "SimulatedGpu":
        if self.profile is None and self.sample_s is None and self.decode_s is None:
            raise ValueError("give a profile ('<model>@<gpu>') or sample_s and decode_s")
        if self.profile is not None:
            parse_profile(self.profile)
        return self

    def resolved(self) -> "SimulatedGpu":
        """The seconds per window that a profile gives, filled in where the job file left them unset (in the
        driver: it counts FLOPs on the meta device, some seconds once per profile)."""
        if self.profile is None or (self.sample_s is not None and self.decode_s is not None):
            return self
        sample, decode = window_seconds(self.profile, self.mfu, self.decode_mfu)
        return self.model_copy(update={"sample_s": self.sample_s if self.sample_s is not None else sample,
                                       "decode_s": self.decode_s if self.decode_s is not None else decode})

    def held(self, stage: str) -> float:
        """Seconds (time-scaled) one window holds the GPU in `stage` ('sample' or 'decode'), once resolved."""
        seconds = self.sample_s if stage == "sample" else self.decode_s
        return (seconds or 0.0) * self.time_scale


@functools.lru_cache(maxsize=32)
def window_seconds(profile: str, mfu: float, decode_mfu: float) -> tuple[float, float]:
    """(sampling, decoding) seconds of one window of `profile`, unscaled."""
    from stages.models.memory_plan import vae_decode, variant_flops

    p, gpu = parse_profile(profile)
    folder = CHECKPOINTS / p.folder
    if not folder.is_dir():
        raise ValueError(f"profile {profile!r} reads the config folder {folder}, which is not here (a source "
                         "checkout has it)")
    peak = GPU_TABLE[gpu][1] * 1e12
    sample = variant_flops(folder, p.height, p.width, p.frames, steps=p.steps, cfg=p.cfg) / (peak * mfu)
    # A causal VAE's decode FLOPs grow by the same amount per latent frame (4 frames) after the first: traced
    # at 5 and 9 frames, extended to the window's.
    five, nine = (vae_decode(folder, p.height, p.width, f, count_flops=True)["flops"] for f in (5, 9))
    decode = (five + (p.frames - 5) / 4 * (nine - five)) / (peak * decode_mfu)
    return sample, decode
