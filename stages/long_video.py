"""Long rows: videos longer than the model's window, made segment by segment in latent space.

A row asks for a long video through `num_frames` or `duration_s` (a manifest column or a job-file default).
A family that can extend a video (`extends = True`: SkyReels-V2 diffusion forcing, stages/families/
skyreels_df.py) makes it window by window, each window continuing from the tail latents of the one before;
every other family refuses a row longer than its window, naming the family and the window.

Segments are work units: when one is finished its latents (and the generator state after it) are written
to `<output>/segments/<id>/<variant>/<params_hash[:16]>/<n>.npz` with an atomic put. A sampler that dies
mid-video (a killed actor, a lost node, a killed driver and a re-run) starts again from the last saved
segment, not from the first. The folder is keyed by `params_hash`, so a changed prompt or setting never
resumes from another video's segments, and a re-run under a new run id still finds them. It is removed once
the video's record (accepted or rejected) is committed (`forget_segments`, from the driver): a driver that
dies between writing the objects and committing finds every segment again on the re-run.

In: a row's settings. Out: its number of frames, a refusal, and a `SegmentStore` for the sampler.
"""
from __future__ import annotations

import io
import math

import numpy as np

from stages.storage import filesystem, join, put_atomic, read_bytes, with_retries

# The longest video one window of each family's model makes, in frames (its model card / diffusers' docs).
# A row longer than this is refused unless the family extends (`extends = True`).
WINDOWS = {
    "wan": 81,  # Wan2.1 / Wan2.2 A14B: 81 frames (5 s at 16 fps); TI2V-5B: 121 (see `window_frames`)
    "skyreels": 97,  # SkyReels-V2 T2V 540P: 97 frames (4 s at 24 fps)
    "ltx": 257,  # LTX-Video: up to 257 frames
    "cogvideox": 49,  # CogVideoX-5b: 49 frames (6 s at 8 fps)
    "hunyuan": 129,  # HunyuanVideo: 129 frames (5 s at 24 fps)
}
# The long-video settings of diffusion forcing (variant fields, in params_hash only when set).
LONG_SETTINGS = ("base_num_frames", "overlap_history", "addnoise_condition", "ar_step", "causal_block_size")


def frames_for(duration_s: float, fps: int, stride: int = 4) -> int:
    """The number of frames that holds `duration_s` at `fps` on the family's `stride*k+1` rule: the first
    frame, then whole latent frames of `stride` frames each (60 s at 24 fps: 1441)."""
    steps = math.ceil(round(duration_s * fps, 6) / stride)
    return stride * max(steps, 1) + 1


def window_frames(family, path: str | None) -> int | None:
    """The most frames one window of this model makes, or None when the family has no known window."""
    if hasattr(family, "window_frames"):
        return family.window_frames(path)
    name, lower = getattr(family, "name", ""), (path or "").lower()
    if name == "wan" and family.kind_of(path) == "ti2v":
        return 121  # Wan2.2 TI2V-5B: 121 frames at 24 fps
    if name == "skyreels" and "720p" in lower:
        return 121  # SkyReels-V2 T2V 720P
    if name == "cogvideox" and "1.5" in lower:
        return 81  # CogVideoX1.5-5B: 81 frames at 16 fps
    return WINDOWS.get(name)


def check_row(family, row: dict, path: str | None) -> str | None:
    """None when the family can make this row's length with these settings, else the message."""
    extends = getattr(family, "extends", False)
    if not extends:
        if row.get("shots"):
            return (f"shots: family '{family.name}' cannot continue one shot from another; storyboards need a "
                    "family that extends (model.family: skyreels_df)")
        given = [k for k in LONG_SETTINGS if row.get(k) is not None]
        if given:
            return (f"{given[0]}: a long-video setting, but family '{family.name}' does not extend videos "
                    "(use model.family: skyreels_df)")
        window = window_frames(family, path)
        if window is not None and row["num_frames"] > window:
            return (f"num_frames: {row['num_frames']} frames is longer than family '{family.name}''s window of "
                    f"{window} frames, and family '{family.name}' cannot extend a video; make at most {window} "
                    "frames, or use a family that extends (model.family: skyreels_df)")
        return None
    problem = family.check_long(row, path)
    if problem is None and row.get("shots") and row.get("overlap_history") is None:
        return "overlap_history: a storyboard's shots continue from each other's tails; it needs overlap_history"
    return problem


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


class SegmentStore:
    """The saved segments of one long video: `<n>.npz` holding the latents that segment added (C, t, H', W')
    and the sampling generator's state after it. Written atomically, so a reader sees whole segments only."""

    def __init__(self, output: str, row_id: str, variant: int, params_hash: str, storage_options: dict | None = None):
        self.fs, root = filesystem(output, storage_options)
        self.folder = join(root, "segments", row_id, str(variant), params_hash[:16])
        self.saved = 0  # segments written by this store (not loaded)

    def path(self, n: int) -> str:
        return join(self.folder, f"{n:04d}.npz")

    def load(self) -> list[dict]:
        """The segments already saved, in order, up to the first one missing."""
        out = []
        while True:
            path = self.path(len(out))
            if not with_retries("read", self.fs.unstrip_protocol(path), lambda p=path: self.fs.exists(p)):
                return out
            with np.load(io.BytesIO(read_bytes(self.fs, path))) as z:
                out.append({k: z[k] for k in z.files})

    def save(self, n: int, latents: np.ndarray, **state: np.ndarray) -> None:
        buf = io.BytesIO()
        np.savez(buf, latents=latents, **state)
        put_atomic(self.fs, self.path(n), buf.getvalue())
        self.saved += 1

    def remove(self) -> None:
        """Forget the segments (the video is finished and recorded)."""
        uri = self.fs.unstrip_protocol(self.folder)
        with_retries("delete", uri, lambda: self.fs.rm(self.folder, recursive=True)
                     if self.fs.exists(self.folder) else None)


def store_for(ctx, row: dict) -> SegmentStore | None:
    """The segment store of a row in this run's output, or None outside a job (no output to save to)."""
    if not ctx.output or not row.get("params_hash"):
        return None
    return SegmentStore(ctx.output, row["id"], row["variant"], row["params_hash"], ctx.storage_options)


def forget_segments(ctx, row: dict) -> None:
    """Remove a finished long video's segments and frame chunks (its record is committed, accepted or
    rejected: a re-run would skip it either way). The driver calls it for every committed record, so a
    record that is no long video costs nothing (no store, no filesystem)."""
    from stages.stream import is_streamed

    if not is_streamed(row):
        return
    store = store_for(ctx, row)
    if store is not None:
        store.remove()
