"""Wan2.1 / Wan2.2 (`WanPipeline`) and SkyReels-V2 (`SkyReelsV2Pipeline`, the same Wan stack).

Latents: (C, T', H', W'), normalized by the VAE's per-channel `latents_mean` / `latents_std`. Wan2.2 A14B's
two experts (`transformer`, `transformer_2`, switching at `boundary_ratio`) are both made batch-invariant;
Wan2.2 TI2V-5B's VAE compresses 16x, so its sizes are multiples of 32 (read from the checkpoint).
"""
from __future__ import annotations

import functools

from stages.families.base import DiffusersFamily


class WanFamily(DiffusersFamily):
    """Wan2.1 / Wan2.2 text-to-video (diffusers `WanPipeline`, `AutoencoderKLWan`)."""

    name = "wan"
    pipeline_class = "WanPipeline"
    vae_class = "AutoencoderKLWan"
    spatial_multiple = 16  # VAE downsamples by 8, the transformer patchifies by 2
    temporal_stride = 4
    transformers = ("transformer", "transformer_2")
    vae_dtype = "float32"  # Wan's VAE is numerically fragile in half precision; diffusers' examples keep it fp32

    @classmethod
    @functools.lru_cache(maxsize=64)  # asked once per manifest row: read the configs once per checkpoint
    def spatial_multiple_of(cls, path: str | None) -> int:
        """The checkpoint's own multiple: its VAE's spatial factor times its transformer's patch. 16 for
        Wan2.1 and Wan2.2 A14B (8 x 2); 32 for Wan2.2 TI2V-5B, whose VAE (z_dim 48) downsamples by 16.
        Read from the configs when the checkpoint is on disk; else the Wan2.1 rule (16)."""
        import json

        from stages.checkpoints import checkpoint_on_disk

        folder = checkpoint_on_disk(path) if path else None
        if folder is None:
            return cls.spatial_multiple
        try:
            vae = json.loads((folder / "vae" / "config.json").read_text())
            transformer = json.loads((folder / "transformer" / "config.json").read_text())
        except (OSError, ValueError):  # not in diffusers layout: the Wan2.1 rule
            return cls.spatial_multiple
        patch = transformer.get("patch_size") or [1, 2, 2]
        return int(vae.get("scale_factor_spatial") or 8) * int(patch[-1])

    @classmethod
    def after_load(cls, pipe, path: str, revision: str | None) -> None:
        # Loaded without its VAE, the pipeline assumes Wan2.1's factors (8, 4); TI2V-5B's VAE has 16 spatially.
        from diffusers import AutoencoderKLWan

        config = AutoencoderKLWan.load_config(path, subfolder="vae", revision=revision)
        pipe.vae_scale_factor_spatial = int(config.get("scale_factor_spatial") or 8)
        pipe.vae_scale_factor_temporal = int(config.get("scale_factor_temporal") or 4)

    @classmethod
    def decode_video(cls, vae, z, seed: int):
        import torch

        c = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean, device=z.device).view(1, c, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std, device=z.device).view(1, c, 1, 1, 1)
        return vae.decode(z * std + mean, return_dict=False)[0]


class SkyReelsFamily(WanFamily):
    """SkyReels-V2 text-to-video (diffusers `SkyReelsV2Pipeline`): Wan's VAE, text encoder and shape rule."""

    name = "skyreels"
    pipeline_class = "SkyReelsV2Pipeline"
    transformers = ("transformer",)
