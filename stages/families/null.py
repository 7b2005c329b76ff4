"""The `null` family: no model at all, for measuring the pipeline's own cost."""
from __future__ import annotations

import numpy as np

from stages.families.base import TINY, DiffusersFamily
from stages.families.wan import WanFamily


class NullFamily:
    """No model: latents of the right shape at once, frames cheaply derived from them (a seeded noise
    picture panning sideways, so each row has its own content and the filter sees motion). Encode, the
    filter and every write stay real, so `model: {family: null, path: "builtin:null"}` measures the
    pipeline's own cost (bench/orchestration.py) and lets tests run thousands of rows quickly."""

    name = "null"
    spatial_multiple = WanFamily.spatial_multiple
    temporal_stride = WanFamily.temporal_stride
    frame_examples = WanFamily.frame_examples
    latent_channels = 16
    check_shape = classmethod(DiffusersFamily.check_shape.__func__)  # Wan's rules, naming this family

    @classmethod
    def spatial_multiple_of(cls, path: str | None) -> int:
        return cls.spatial_multiple  # no checkpoint: Wan2.1's rule

    @classmethod
    def recommended(cls, path: str | None) -> dict:
        return dict(TINY)

    @classmethod
    def check_settings(cls, settings: dict, path: str | None = None) -> str | None:
        return None  # no model: every setting is accepted and ignored

    @staticmethod
    def load_pipeline(path: str, dtype: str, device: str, revision: str | None = None,
                      batch_invariant: bool = True, **options):
        return "null-pipeline"

    @staticmethod
    def sample(pipe, prompts: list[str], negative_prompts: list[str], seeds: list[int], *,
               height: int, width: int, num_frames: int, num_inference_steps: int,
               guidance_scale: float, **settings) -> np.ndarray:
        """Standard-normal latents (N, 16, (T-1)//4+1, H//8, W//8) from each seed, like Wan's shape."""
        shape = (NullFamily.latent_channels, (num_frames - 1) // NullFamily.temporal_stride + 1,
                 height // 8, width // 8)
        return np.stack([np.random.default_rng(s).standard_normal(shape, dtype=np.float32) for s in seeds])

    @staticmethod
    def load_vae(path: str, dtype: str, device: str, revision: str | None = None):
        return "null-vae"

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
