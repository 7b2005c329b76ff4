"""The window arithmetic of long videos, with no storage and no model.

A row asks for a long video through `num_frames` or `duration_s`. A family that extends videos (SkyReels-V2
diffusion forcing) makes it window by window in latent space, each window continuing from the tail latents of
the one before, as diffusers' own diffusion-forcing pipeline plans them (`segment_plan`), or shot by shot for a
storyboard (`windows_for` with shots). Each window's new frames are one segment (`segment_frames`).
"""
from __future__ import annotations

import math

# The long-video settings of diffusion forcing (variant fields, in params_hash only when set).
LONG_SETTINGS = ("base_num_frames", "overlap_history", "addnoise_condition", "ar_step", "causal_block_size")


def frames_for(duration_s: float, fps: int, stride: int = 4) -> int:
    """The number of frames that holds `duration_s` at `fps` on the family's `stride*k+1` rule: the first
    frame, then whole latent frames of `stride` frames each (60 s at 24 fps: 1441)."""
    steps = math.ceil(round(duration_s * fps, 6) / stride)
    return stride * max(steps, 1) + 1


def segment_plan(num_frames: int, base_num_frames: int, overlap_history: int, temporal: int = 4) -> list[int]:
    """The latent frames each window makes, in order, as diffusers' diffusion-forcing pipeline makes them
    (`SkyReelsV2DiffusionForcingPipeline.__call__` and `prepare_latents`): one window when the video fits,
    else a first full window and then windows of at most `base` latent frames, each starting with the last
    `overlap` latent frames of the video so far. Each entry is the window's length including that overlap."""
    total = (num_frames - 1) // temporal + 1
    base = (base_num_frames - 1) // temporal + 1
    if num_frames <= base_num_frames:
        return [total]
    overlap = (overlap_history - 1) // temporal + 1
    n_iter = 1 + (total - base - 1) // (base - overlap) + 1
    windows = [base]
    for k in range(1, n_iter):
        finished = k * (base - overlap) + overlap
        windows.append(min(total - finished + overlap, base))
    return windows


def shot_latents(durations: list[float], fps: int, temporal: int = 4) -> list[int]:
    """The latent frames of each shot of a storyboard: the first shot's `temporal*k+1` frames (its duration on
    the family's rule), each later one whole latent frames of `temporal` frames that hold its duration."""
    first = (frames_for(durations[0], fps, temporal) - 1) // temporal + 1
    return [first] + [max(1, math.ceil(round(d * fps, 6) / temporal)) for d in durations[1:]]


def shot_ranges(latents: list[int], temporal: int = 4) -> list[tuple[int, int]]:
    """(first_frame, end_frame) of each shot, from its latent frames (latent frame j >= 1 is frames 4j-3..4j)."""
    out, done = [], 0
    for n in latents:
        first = 0 if done == 0 else temporal * done - temporal + 1
        done += n
        out.append((first, temporal * done - temporal + 1))
    return out


def windows_for(num_frames: int, base_num_frames: int, overlap_history: int | None, shots: list[int] | None = None,
                temporal: int = 4) -> list[tuple[int, int, int]]:
    """(latent frames in the window, new latent frames it adds, shot index) of each window, in order.

    Without shots: diffusers' own plan (`segment_plan`). With shots (latent frames per shot): each shot's windows
    in turn, the first window of the video without a prefix, every later one starting with the last
    `overlap_history` frames made so far, so that a shot continues from the tail of the one before."""
    if not shots:
        plan = segment_plan(num_frames, base_num_frames, overlap_history or 0, temporal)
        overlap = (overlap_history - 1) // temporal + 1 if len(plan) > 1 else 0
        return [(w, w if k == 0 else w - overlap, 0) for k, w in enumerate(plan)]
    base = (base_num_frames - 1) // temporal + 1
    overlap = (overlap_history - 1) // temporal + 1
    out = []
    for s, left in enumerate(shots):
        while left > 0:
            new = min(left, base) if not out else min(left, base - overlap)
            out.append((new if not out else new + overlap, new, s))
            left -= new
    return out


def is_streamed(r: dict) -> bool:
    """A row made in more than one window (a long video, a storyboard): its frames go through storage, a segment
    at a time."""
    base = r.get("base_num_frames")
    return bool(base) and bool(r.get("params_hash")) and (r["num_frames"] > base or len(r.get("shots") or []) > 1)


def segment_frames(r: dict, temporal: int = 4) -> list[tuple[int, int]]:
    """(first, end) frame of each segment of a row: one per window, the frames that window added."""
    shots = r.get("shots")
    per_shot = shot_latents([s["duration_s"] for s in shots], r["fps"], temporal) if shots else None
    windows = windows_for(r["num_frames"], r["base_num_frames"], r["overlap_history"], per_shot, temporal)
    return shot_ranges([new for _, new, _ in windows], temporal)
