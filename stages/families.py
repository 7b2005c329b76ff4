"""Model family adapters over diffusers pipelines.

A family knows the shapes its model can make, how to load the full pipeline for sampling (latents out)
and the VAE alone for decoding (latents in, uint8 frames out). Sampling and decoding stages call these;
they hold no Ray code. Wan comes first; LTX-Video and CogVideoX slot in as further classes here.
"""
from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np

# torch is imported where a model is loaded or run, never at import: CPU-only workers (validation,
# filter, encode) import this module and would otherwise pay ~3 CPU-s and ~400 MB each for torch.


def quiet_loading() -> None:
    """Loading progress bars and deprecation chatter would flood every actor's log."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _split_batch_forward(module) -> None:
    """Make `module` run each batch item in its own forward and concatenate the results.

    CPU and GPU kernels (conv, small-M GEMMs) round differently for different batch sizes, so a batched
    forward would make a video's pixels depend on which other rows shared its batch. One item per forward
    keeps them identical whatever the batching; the pipeline call around it is still batched.
    """
    import torch

    forward = module.forward

    @functools.wraps(forward)
    def per_item(*args: Any, **kwargs: Any):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        n = hidden.shape[0]
        if n == 1:
            return forward(*args, **kwargs)

        def item(v: Any, i: int) -> Any:
            return v[i:i + 1] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n else v

        outs = [forward(*[item(a, i) for a in args], **{k: item(v, i) for k, v in kwargs.items()})
                for i in range(n)]
        first = outs[0]
        if isinstance(first, tuple):
            return tuple(torch.cat([o[j] for o in outs]) for j in range(len(first)))
        return type(first)(sample=torch.cat([o.sample for o in outs]))

    module.forward = per_item


class WanFamily:
    """Wan2.1 / Wan2.2 text-to-video (diffusers `WanPipeline`, `AutoencoderKLWan`)."""

    name = "wan"
    spatial_multiple = 16  # VAE downsamples by 8, the transformer patchifies by 2
    temporal_stride = 4

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
    def check_shape(cls, height: int, width: int, num_frames: int, path: str | None = None) -> str | None:
        """None when the model at `path` can make this shape, else a message naming the field and the rule."""
        m = cls.spatial_multiple_of(path)
        if height % m:
            return f"height must be a multiple of {m} for family '{cls.name}', got {height}"
        if width % m:
            return f"width must be a multiple of {m} for family '{cls.name}', got {width}"
        if (num_frames - 1) % cls.temporal_stride:
            return (f"num_frames must be {cls.temporal_stride}*k+1 (e.g. 17, 33, 49, 81) for family "
                    f"'{cls.name}', got {num_frames}")
        return None

    @staticmethod
    def load_pipeline(path: str, dtype: str, device: str, revision: str | None = None,
                      batch_invariant: bool = True):
        from diffusers import WanPipeline

        quiet_loading()
        # The VAE is loaded by the decode stage alone; the sampler never holds it.
        pipe = WanPipeline.from_pretrained(path, vae=None, torch_dtype=torch_dtype(dtype), revision=revision)
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        if batch_invariant:
            for name in ("transformer", "transformer_2"):
                if getattr(pipe, name, None) is not None:
                    _split_batch_forward(getattr(pipe, name))
        return pipe

    @staticmethod
    def sample(pipe, prompts: list[str], negative_prompts: list[str], seeds: list[int], *,
               height: int, width: int, num_frames: int, num_inference_steps: int,
               guidance_scale: float) -> np.ndarray:
        """Latents for a batch of same-shape variants: float32 array (N, C, T', H', W')."""
        import torch

        device = pipe._execution_device
        # Prompts are encoded one at a time for the same reason the denoiser runs per item.
        cfg = guidance_scale > 1.0
        pos, neg = [], []
        for p, n in zip(prompts, negative_prompts):
            e, ne = pipe.encode_prompt(prompt=[p], negative_prompt=[n], do_classifier_free_guidance=cfg,
                                       device=device)
            pos.append(e)
            neg.append(ne)
        generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
        out = pipe(prompt_embeds=torch.cat(pos), negative_prompt_embeds=torch.cat(neg) if cfg else None,
                   height=height, width=width, num_frames=num_frames, num_inference_steps=num_inference_steps,
                   guidance_scale=guidance_scale, generator=generators, output_type="latent")
        return out.frames.float().cpu().numpy()

    @staticmethod
    def load_vae(path: str, dtype: str, device: str, revision: str | None = None):
        import torch
        from diffusers import AutoencoderKLWan

        quiet_loading()
        # Wan's VAE is numerically fragile in half precision; diffusers' own examples keep it in float32.
        vae = AutoencoderKLWan.from_pretrained(path, subfolder="vae", torch_dtype=torch.float32,
                                               revision=revision)
        return vae.to(device).eval()

    @staticmethod
    def decode(vae, latents: np.ndarray) -> tuple[np.ndarray, bool]:
        """One variant's latents (C, T', H', W') to frames uint8 (T, H, W, 3), and whether all were finite."""
        import torch

        with torch.no_grad():
            device = next(vae.parameters()).device
            z = torch.from_numpy(latents).unsqueeze(0).to(device, torch.float32)
            c = vae.config.z_dim
            mean = torch.tensor(vae.config.latents_mean, device=device).view(1, c, 1, 1, 1)
            std = torch.tensor(vae.config.latents_std, device=device).view(1, c, 1, 1, 1)
            video = vae.decode(z * std + mean, return_dict=False)[0][0]  # (3, T, H, W) in [-1, 1]
            finite = bool(torch.isfinite(video).all())
            video = torch.nan_to_num(video, nan=-1.0)
            frames = ((video.permute(1, 2, 3, 0) / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
            return frames.cpu().numpy(), finite


class NullFamily:
    """No model: latents of the right shape at once, frames cheaply derived from them (a seeded noise
    picture panning sideways, so each row has its own content and the filter sees motion). Encode, the
    filter and every write stay real, so `model: {family: null, path: "builtin:null"}` measures the
    pipeline's own cost (bench/orchestration.py) and lets tests run thousands of rows quickly."""

    name = "null"
    spatial_multiple = WanFamily.spatial_multiple
    temporal_stride = WanFamily.temporal_stride
    latent_channels = 16
    check_shape = classmethod(WanFamily.check_shape.__func__)  # Wan's rules, naming this family

    @classmethod
    def spatial_multiple_of(cls, path: str | None) -> int:
        return cls.spatial_multiple  # no checkpoint: Wan2.1's rule

    @staticmethod
    def load_pipeline(path: str, dtype: str, device: str, revision: str | None = None,
                      batch_invariant: bool = True):
        return "null-pipeline"

    @staticmethod
    def sample(pipe, prompts: list[str], negative_prompts: list[str], seeds: list[int], *,
               height: int, width: int, num_frames: int, num_inference_steps: int,
               guidance_scale: float) -> np.ndarray:
        """Standard-normal latents (N, 16, (T-1)//4+1, H//8, W//8) from each seed, like Wan's shape."""
        shape = (NullFamily.latent_channels, (num_frames - 1) // NullFamily.temporal_stride + 1,
                 height // 8, width // 8)
        return np.stack([np.random.default_rng(s).standard_normal(shape, dtype=np.float32) for s in seeds])

    @staticmethod
    def load_vae(path: str, dtype: str, device: str, revision: str | None = None):
        return "null-vae"

    @staticmethod
    def decode(vae, latents: np.ndarray) -> tuple[np.ndarray, bool]:
        """Latents (16, T', H', W') to uint8 frames (4*(T'-1)+1, 8*H', 8*W', 3): the first latent frame's
        first three channels as a smooth picture, shifted 2 px right per frame."""
        import cv2

        _, tl, hl, wl = latents.shape
        picture = np.nan_to_num(128 + 40 * latents[:3, 0].transpose(1, 2, 0))
        picture = np.clip(picture, 0, 255).astype(np.uint8)
        picture = cv2.resize(picture, (8 * wl, 8 * hl), interpolation=cv2.INTER_CUBIC)
        frames = np.stack([np.roll(picture, 2 * t, axis=1) for t in range(4 * (tl - 1) + 1)])
        return frames, bool(np.isfinite(latents).all())


FAMILIES: dict[str, type] = {"wan": WanFamily, "null": NullFamily}


def family_for(name: str):
    """A built-in family by name, or a user's own class named as 'package.module:ClassName' (it must be
    importable on every Ray worker, like any user code in a runtime environment)."""
    if name in FAMILIES:
        return FAMILIES[name]
    if ":" in name:
        import importlib

        module, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"model family '{name}' cannot be imported: {e}") from None
    raise ValueError(f"unknown model family '{name}' (built-in: {', '.join(FAMILIES)}; "
                     "or 'package.module:ClassName')")
