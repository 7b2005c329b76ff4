"""The `null` family: no model at all, for measuring the pipeline's own cost."""
from __future__ import annotations

import numpy as np

from stages.common.variant import SamplingParams
from stages.models.families.base import TINY, FamilyRules
from stages.models.families.wan import WanFamily
from stages.models.protocol import VariantInput


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

    @classmethod
    def recommended(cls, path: str | None) -> dict:
        return dict(TINY)

    @classmethod
    def check_settings(cls, settings: dict, path: str | None = None) -> str | None:
        return None  # no model: every setting is accepted and ignored

    @classmethod
    def load_pipeline(cls, path: str, device: str, model, speed=None, batch_invariant: bool = True):
        return "null-pipeline"

    @classmethod
    def tokenizer(cls, pipe):
        return None

    @classmethod
    def sample(cls, pipe, inputs: list[VariantInput], params: SamplingParams) -> np.ndarray:
        """Standard-normal latents (N, 16, (T-1)//4+1, H//8, W//8) from each seed, like Wan's shape."""
        shape = (cls.latent_channels, (params.num_frames - 1) // cls.temporal_stride + 1,
                 params.height // 8, params.width // 8)
        return np.stack([np.random.default_rng(v.seed).standard_normal(shape, dtype=np.float32) for v in inputs])

    @classmethod
    def load_vae(cls, path: str, dtype: str, device: str, revision: str | None = None):
        return "null-vae"

    @classmethod
    def decode_chunks(cls, vae, latents: np.ndarray):
        raise ValueError("the null family makes no long videos")

    @staticmethod
    def decode(vae, latents: np.ndarray, seed: int = 0) -> tuple[np.ndarray, bool]:
        """Latents (16, T', H', W') to uint8 frames (4*(T'-1)+1, 8*H', 8*W', 3): the first latent frame's
        first three channels as a smooth picture, shifted 2 px right per frame."""
        import cv2

        _, tl, hl, wl = latents.shape
        picture = np.nan_to_num(128 + 40 * latents[:3, 0].transpose(1, 2, 0))
        picture = np.clip(picture, 0, 255).astype(np.uint8)
        picture = cv2.resize(picture, (8 * wl, 8 * hl), interpolation=cv2.INTER_CUBIC)
        frames = np.stack([np.roll(picture, 2 * t, axis=1) for t in range(4 * (tl - 1) + 1)])
        return frames, bool(np.isfinite(latents).all())
