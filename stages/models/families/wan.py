"""Wan2.1 / Wan2.2 (`WanPipeline`) and SkyReels-V2 (`SkyReelsV2Pipeline`, the same Wan stack).

Latents: (C, T', H', W'), normalized by the VAE's per-channel `latents_mean` / `latents_std`. Wan2.2 A14B's
two experts (`transformer`, `transformer_2`, switching at `boundary_ratio`) are both made batch-invariant;
Wan2.2 TI2V-5B's VAE compresses 16x, so its sizes are multiples of 32 (read from the checkpoint).
"""
from __future__ import annotations

import json

import numpy as np

from stages.media.frames import video_to_frames
from stages.models.checkpoints import checkpoint_on_disk
from stages.models.families.base import DiffusersFamily

_READ: dict = {}  # what was read from a checkpoint, by question and path


def _read_once(key: tuple, path: str | None, read):
    """`read(path, folder)`, asked once per manifest row, so read from a checkpoint's configs once per path.
    A builtin model that is not built yet is not remembered as missing: planning builds it moments later."""
    if key in _READ:
        return _READ[key]
    folder = checkpoint_on_disk(path) if path else None
    answer = read(path, folder)
    if folder is not None or not (path or "").startswith("builtin:"):
        _READ[key] = answer
    return answer


class WanFamily(DiffusersFamily):
    """Wan2.1 / Wan2.2 text-to-video (diffusers `WanPipeline`, `AutoencoderKLWan`)."""

    name = "wan"
    pipeline_class = "WanPipeline"
    pipeline_classes = ("WanPipeline", "WanImageToVideoPipeline")
    transformer_class = "WanTransformer3DModel"
    vae_class = "AutoencoderKLWan"
    spatial_multiple = 16  # VAE downsamples by 8, the transformer patchifies by 2
    temporal_stride = 4
    transformers = ("transformer", "transformer_2")
    vae_dtype = "float32"  # Wan's VAE is numerically fragile in half precision; diffusers' examples keep it fp32
    shifted = True
    window = 81  # Wan2.1 / Wan2.2 A14B: 81 frames (5 s at 16 fps); TI2V-5B: 121 (`window_frames`)
    # Wan2.1 T2V at 480p (Wan-AI/Wan2.1-T2V-14B-Diffusers model card, diffusers' Wan docs: shift 3.0 at 480p).
    RECOMMENDED = dict(height=480, width=832, num_frames=81, fps=16, num_inference_steps=50, guidance_scale=5.0,
                       flow_shift=3.0)
    # Wan2.2 T2V-A14B: two guidance scales, one per expert; its scheduler config carries its shift.
    RECOMMENDED_A14B = dict(height=720, width=1280, num_frames=81, fps=16, num_inference_steps=40,
                            guidance_scale=4.0, guidance_scale_2=3.0)
    # Wan2.2 TI2V-5B: 720p at 24 fps, sizes multiples of 32.
    RECOMMENDED_TI2V = dict(height=704, width=1280, num_frames=121, fps=24, num_inference_steps=50,
                            guidance_scale=5.0)
    # Wan2.1 I2V-14B-480P: the text-to-video model's settings (diffusers' Wan I2V example); FLF2V-14B-720P: 720p,
    # guidance 5.5 (diffusers' example), its scheduler config's own shift; Wan2.2 I2V-A14B: diffusers' example,
    # 480x832, 40 steps, guidance 3.5 (the low-noise expert's the same unless guidance_scale_2 is set).
    RECOMMENDED_FLF2V = dict(height=720, width=1280, num_frames=81, fps=16, num_inference_steps=50,
                             guidance_scale=5.5)
    RECOMMENDED_A14B_I2V = dict(height=480, width=832, num_frames=81, fps=16, num_inference_steps=40,
                                guidance_scale=3.5)

    @classmethod
    def kind_of(cls, path: str | None) -> str:
        """What the checkpoint is: text-to-video '2.1', 'a14b' (two experts) or 'ti2v' (48-channel VAE; it also
        takes an image); image-to-video 'i2v' (Wan2.1, a CLIP image encoder), 'flf2v' (Wan2.1 first and last
        frame: CLIP embeddings of both frames, with positions) or 'a14b-i2v' (Wan2.2, two experts, no CLIP). Read
        from the checkpoint's model_index.json and transformer config when it is on disk, else from its name."""
        return _read_once(("kind", path), path, cls._kind_of)

    @classmethod
    def _kind_of(cls, path: str | None, folder) -> str:
        if folder is not None:
            try:
                index = json.loads((folder / "model_index.json").read_text())
            except (OSError, ValueError):
                index = {}
            try:
                transformer = json.loads((folder / "transformer" / "config.json").read_text())
            except (OSError, ValueError):
                transformer = {}
            i2v = index.get("_class_name") in ("WanImageToVideoPipeline", "SkyReelsV2ImageToVideoPipeline")
            if (index.get("transformer_2") or [None])[0] is not None:
                return "a14b-i2v" if i2v else "a14b"
            if index.get("expand_timesteps"):
                return "ti2v"
            if i2v:
                return "flf2v" if transformer.get("pos_embed_seq_len") else "i2v"
            return "2.1"
        name = (path or "").lower()
        if "ti2v" in name:
            return "ti2v"
        if "flf2v" in name:
            return "flf2v"
        wan22 = "wan2.2" in name or "wan22" in name
        if "i2v" in name:
            return "a14b-i2v" if wan22 else "i2v"
        return "a14b" if wan22 else "2.1"

    @classmethod
    def class_by_name(cls, path: str) -> str:
        return "WanImageToVideoPipeline" if cls.kind_of(path) in ("i2v", "flf2v", "a14b-i2v") else "WanPipeline"

    # What each kind takes (the manifest's image, last_image, video columns), and what its rows must give. Wan2.1
    # I2V embeds one image with CLIP, so it cannot join two frames (FLF2V's positions are what let it); TI2V-5B
    # takes an image through the same checkpoint (diffusers' WanImageToVideoPipeline over its components), and
    # drops a last image, so refuses one; Wan2.2 I2V-A14B encodes both frames with its VAE.
    CONDITIONINGS = {"ti2v": ({"image"}, set()), "i2v": ({"image"}, {"image"}),
                     "flf2v": ({"image", "last_image"}, {"image", "last_image"}),
                     "a14b-i2v": ({"image", "last_image"}, {"image"})}

    @classmethod
    def conditionings(cls, path: str | None) -> frozenset[str]:
        return frozenset(cls.CONDITIONINGS.get(cls.kind_of(path), ((), ()))[0])

    @classmethod
    def required_conditionings(cls, path: str | None) -> frozenset[str]:
        return frozenset(cls.CONDITIONINGS.get(cls.kind_of(path), ((), ()))[1])

    @classmethod
    def conditioned_class(cls, pipe, v) -> str:
        # TI2V-5B's checkpoint loads as WanPipeline; its image rows run WanImageToVideoPipeline over its parts
        return "WanImageToVideoPipeline" if type(pipe).__name__ == "WanPipeline" else type(pipe).__name__

    @classmethod
    def has_second_expert(cls, path: str | None) -> bool:
        return cls.kind_of(path) in ("a14b", "a14b-i2v")

    @classmethod
    def window_frames(cls, path: str | None) -> int | None:
        return 121 if cls.kind_of(path) == "ti2v" else cls.window  # TI2V-5B: 121 frames at 24 fps

    @classmethod
    def family_recommended(cls, path: str | None) -> dict:
        base = super().family_recommended(path)
        if path and path.startswith("builtin:"):
            return base
        kind = cls.kind_of(path)
        extra = {"a14b": cls.RECOMMENDED_A14B, "ti2v": cls.RECOMMENDED_TI2V, "flf2v": cls.RECOMMENDED_FLF2V,
                 "a14b-i2v": cls.RECOMMENDED_A14B_I2V}.get(kind, {})
        return {**base, **({"flow_shift": None} if extra else {}), **extra}

    @classmethod
    def tiny_overrides(cls, path: str) -> dict:
        # tiny-wan22 shows both guidance scales the way the real A14B uses them
        return {"guidance_scale": 4.0, "guidance_scale_2": 3.0} if path == "builtin:tiny-wan22" else {}

    @classmethod
    def call_kwargs(cls, pipe, params) -> dict:
        if getattr(pipe, "transformer_2", None) is not None and params.guidance_scale_2 is not None:
            return {"guidance_scale_2": params.guidance_scale_2}
        return {}

    @classmethod
    def spatial_multiple_of(cls, path: str | None) -> int:
        """The checkpoint's own multiple: its VAE's spatial factor times its transformer's patch. 16 for
        Wan2.1 and Wan2.2 A14B (8 x 2); 32 for Wan2.2 TI2V-5B, whose VAE (z_dim 48) downsamples by 16.
        Read from the configs when the checkpoint is on disk; else the Wan2.1 rule (16)."""
        return _read_once(("multiple", cls.spatial_multiple, path), path, cls._spatial_multiple_of)

    @classmethod
    def _spatial_multiple_of(cls, path: str | None, folder) -> int:
        if folder is None:  # not downloaded yet: the rule its name says (TI2V-5B's VAE downsamples by 16)
            return 2 * cls.spatial_multiple if cls._kind_of(path, None) == "ti2v" else cls.spatial_multiple
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

    @classmethod
    def decode_chunks(cls, vae, latents: np.ndarray):
        """uint8 frames (t, H, W, 3) of normalized Wan latents (C, T', H', W'), one latent frame at a time through
        the VAE's causal cache: the same frames as `vae.decode` (tested), without its whole-video output."""
        import torch
        from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify


        p = next(vae.parameters())
        c = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean, device=p.device).view(1, c, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std, device=p.device).view(1, c, 1, 1, 1)
        with torch.no_grad():
            vae.clear_cache()
            try:
                for i in range(latents.shape[1]):
                    z = torch.from_numpy(latents[:, i:i + 1]).unsqueeze(0).to(p.device, torch.float32) * std + mean
                    vae._conv_idx = [0]
                    out = vae.decoder(vae.post_quant_conv(z.to(p.dtype)), feat_cache=vae._feat_map,
                                      feat_idx=vae._conv_idx, first_chunk=i == 0)
                    if vae.config.patch_size is not None:
                        out = unpatchify(out, patch_size=vae.config.patch_size)
                    yield video_to_frames(torch.clamp(out, -1.0, 1.0)[0])
            finally:
                vae.clear_cache()


class SkyReelsFamily(WanFamily):
    """SkyReels-V2 text-to-video (diffusers `SkyReelsV2Pipeline`): Wan's VAE, text encoder and shape rule."""

    name = "skyreels"
    pipeline_class = "SkyReelsV2Pipeline"
    pipeline_classes = ("SkyReelsV2Pipeline", "SkyReelsV2ImageToVideoPipeline")
    transformer_class = "SkyReelsV2Transformer3DModel"
    transformers = ("transformer",)
    window = 97  # SkyReels-V2 T2V 540P: 97 frames (4 s at 24 fps)
    # SkyReels-V2-T2V-14B-540P (model card): 544x960, 97 frames at 24 fps, guidance 6, shift 8.
    RECOMMENDED = dict(height=544, width=960, num_frames=97, fps=24, num_inference_steps=50, guidance_scale=6.0,
                       flow_shift=8.0)
    # SkyReels-V2-I2V-14B-540P (SkyReels-V2's README): guidance 5, shift 3.
    RECOMMENDED_I2V = dict(guidance_scale=5.0, flow_shift=3.0)

    @classmethod
    def family_recommended(cls, path: str | None) -> dict:
        base = DiffusersFamily.family_recommended.__func__(cls, path)
        i2v = not (path or "").startswith("builtin:") and cls.kind_of(path) in ("i2v", "flf2v")
        return {**base, **cls.RECOMMENDED_I2V} if i2v else base

    @classmethod
    def class_by_name(cls, path: str) -> str:
        return "SkyReelsV2ImageToVideoPipeline" if "i2v" in path.lower() else "SkyReelsV2Pipeline"

    @classmethod
    def conditioned_class(cls, pipe, v) -> str:
        return type(pipe).__name__  # only its image-to-video checkpoints take an image

    @classmethod
    def tiny_overrides(cls, path: str) -> dict:
        return {}

    @classmethod
    def has_second_expert(cls, path: str | None) -> bool:
        return False

    @classmethod
    def window_frames(cls, path: str | None) -> int | None:
        return 121 if "720p" in (path or "").lower() else cls.window  # SkyReels-V2 T2V 720P
