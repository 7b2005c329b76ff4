"""The `null` family: no model at all, for measuring the pipeline's own cost, and with `model.simulate` a fleet's.

Latents are seeded noise of Wan's shape, frames a picture derived from them; encode, the filter and every write stay
real. With `model.simulate` (stages/models/simulation.py) the sampler and the decoder also hold their logical GPU
for the simulated seconds of each window, sleeping, so the CPU stays free for the rest of the pipeline. A long row
(`base_num_frames: 17, overlap_history: 9`: each window after the first adds 8 frames) is made window by window,
each window saved as a segment, like a real long video (stages/long_video/segments.py).
"""
from __future__ import annotations

import os
import socket
import tempfile
import time
from contextlib import contextmanager

import numpy as np

from stages.common.locks import node_lock
from stages.common.variant import SamplingParams
from stages.long_video.windows import LONG_SETTINGS, windows_for
from stages.models.families.base import TINY, FamilyRules
from stages.models.families.wan import WanFamily
from stages.models.protocol import VariantInput

WINDOW, OVERLAP = 17, 9  # the null family's one window geometry: 5 latent frames, each next window adds 2


@contextmanager
def logical_gpu():
    """Holds this process's logical GPU while a window is simulated: a sampler and a decoder that share one GPU
    (num_gpus 0.5 each) take turns, as on a real GPU, instead of both running at full speed. The GPU is the one
    Ray gave the process (CUDA_VISIBLE_DEVICES) on its node (the raylet's pid: a test cluster's nodes share one
    machine); without one (a CPU run) nothing is held."""
    devices = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if not devices:
        yield
        return
    node = os.environ.get("RAY_RAYLET_PID") or socket.gethostname()
    path = os.path.join(tempfile.gettempdir(), f"rushes-simulated-gpu-{node}-{devices.replace(',', '_')}.lock")
    with node_lock(path):
        yield


class HeldGpu:
    """What the null family loads in place of a pipeline or a VAE: the seconds one window holds the GPU."""

    def __init__(self, seconds: float = 0.0):
        self.seconds = seconds

    def hold(self) -> None:
        if self.seconds > 0:
            with logical_gpu():
                time.sleep(self.seconds)


def held(model, stage: str) -> HeldGpu:
    """`model`: the job's ModelSpec (None: a stage used on its own, which simulates nothing)."""
    simulate = model.simulate if model is not None else None
    return HeldGpu(simulate.held(stage) if simulate is not None else 0.0)


class NullFamily(FamilyRules):
    """No model: latents of the right shape at once, frames cheaply derived from them (a seeded noise
    picture panning sideways, so each row has its own content and the filter sees motion). Encode, the
    filter and every write stay real, so `model: {family: null, path: "builtin:null"}` measures the
    pipeline's own cost (bench/orchestration.py) and lets tests run thousands of rows quickly."""

    name = "null"
    spatial_multiple = WanFamily.spatial_multiple
    temporal_stride = WanFamily.temporal_stride
    frame_examples = WanFamily.frame_examples
    latent_channels = 16
    max_sequence_length = None  # no text encoder
    pipeline_classes = ("none",)  # builtin:null only
    can_tile = False  # no VAE
    extends = True  # long rows, window by window (one window geometry: WINDOW, OVERLAP)

    @classmethod
    def recommended(cls, path: str | None) -> dict:
        return dict(TINY)

    @classmethod
    def check_settings(cls, settings: dict, path: str | None = None) -> str | None:
        return None  # no model: every setting is accepted and ignored

    @classmethod
    def check_length(cls, row: dict, path: str | None) -> str | None:
        if row.get("shots"):
            return "shots: the null family makes no storyboards"
        given = [k for k in LONG_SETTINGS if row.get(k) is not None]
        if given and (row.get("base_num_frames"), row.get("overlap_history")) != (WINDOW, OVERLAP):
            return (f"{given[0]}: the null family's long rows have one window geometry, base_num_frames {WINDOW} "
                    f"and overlap_history {OVERLAP} (each window after the first adds 8 frames)")
        return None

    @classmethod
    def free_to_sample(cls, model) -> bool:
        return model is None or model.simulate is None

    @classmethod
    def load_pipeline(cls, path: str, device: str, model, speed=None, batch_invariant: bool = True):
        return held(model, "sample")

    @classmethod
    def tokenizer(cls, pipe):
        return None

    @classmethod
    def sample(cls, pipe, inputs: list[VariantInput], params: SamplingParams) -> np.ndarray:
        """Standard-normal latents (N, 16, (T-1)//4+1, H//8, W//8) from each seed, like Wan's shape; a long row's
        window by window (the first from the seed alone, window k from (seed, k)), each saved as a segment."""
        return np.stack([cls.sample_one(pipe or HeldGpu(), v, params) for v in inputs])

    @classmethod
    def sample_one(cls, pipe: HeldGpu, v: VariantInput, params: SamplingParams) -> np.ndarray:
        if params.base_num_frames and params.num_frames > params.base_num_frames:
            new = [n for _, n, _ in windows_for(params.num_frames, params.base_num_frames, params.overlap_history)]
        else:
            new = [(params.num_frames - 1) // cls.temporal_stride + 1]
        store = v.segments if len(new) > 1 else None
        parts = [d["latents"] for d in (store.load()[:len(new)] if store else [])]
        for k in range(len(parts), len(new)):
            pipe.hold()
            rng = np.random.default_rng(v.seed if k == 0 else [v.seed, k])
            z = rng.standard_normal((cls.latent_channels, new[k], params.height // 8, params.width // 8),
                                    dtype=np.float32)
            if store is not None:
                store.save(k, z)
            parts.append(z)
        return np.concatenate(parts, axis=1)

    @classmethod
    def load_vae(cls, path: str, dtype: str, device: str, revision: str | None = None, model=None):
        return held(model, "decode")

    @classmethod
    def decode_chunks(cls, vae, latents: np.ndarray):
        """A long row's frames a latent frame at a time (1 frame, then 4 each), the GPU held once per window."""
        picture, finite = cls.picture(latents)
        first = (WINDOW - 1) // cls.temporal_stride + 1
        new = first - ((OVERLAP - 1) // cls.temporal_stride + 1)
        for i in range(latents.shape[1]):
            if vae is not None and (i == 0 or (i >= first and (i - first) % new == 0)):
                vae.hold()
            yield cls.frames(picture, range(0, 1) if i == 0 else range(4 * i - 3, 4 * i + 1)), finite

    @classmethod
    def decode(cls, vae, latents: np.ndarray, seed: int = 0) -> tuple[np.ndarray, bool]:
        """Latents (16, T', H', W') to uint8 frames (4*(T'-1)+1, 8*H', 8*W', 3): the first latent frame's
        first three channels as a smooth picture, shifted 2 px right per frame."""
        if vae is not None:
            vae.hold()
        picture, finite = cls.picture(latents)
        return cls.frames(picture, range(4 * (latents.shape[1] - 1) + 1)), finite

    @staticmethod
    def picture(latents: np.ndarray) -> tuple[np.ndarray, bool]:
        import cv2

        _, _, hl, wl = latents.shape
        picture = np.nan_to_num(128 + 40 * latents[:3, 0].transpose(1, 2, 0))
        picture = np.clip(picture, 0, 255).astype(np.uint8)
        return cv2.resize(picture, (8 * wl, 8 * hl), interpolation=cv2.INTER_CUBIC), bool(np.isfinite(latents).all())

    @staticmethod
    def frames(picture: np.ndarray, numbers: range) -> np.ndarray:
        return np.stack([np.roll(picture, 2 * t, axis=1) for t in numbers])
