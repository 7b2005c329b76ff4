"""SkyReels-V2 diffusion forcing (diffusers `SkyReelsV2DiffusionForcingPipeline`): videos longer than the model's
window, extended window by window in latent space (stages/long_video/windows.py).

The loop over windows is diffusers' own `__call__`, driven here one window at a time so that each finished
window is a saved segment: the same `prepare_latents` (the next window starts with the last `overlap_history`
frames of the video so far as its clean prefix) and `generate_timestep_matrix` (synchronous with `ar_step` 0,
a denoising wave with `ar_step` > 0 and `causal_block_size`), the same per-frame schedulers and guidance, and
the same generator draws. With `addnoise_condition` 0 the latents equal the pipeline's own long output (tested).
One difference, on purpose: the pipeline draws the noise it adds to the prefix (`addnoise_condition`) from
torch's global generator; here it comes from a generator seeded by the variant's seed and the window, so a
video resumed from a saved segment has the same pixels as one made in one go.

A row may start from an image or continue a clip, as diffusers' `SkyReelsV2DiffusionForcingImageToVideoPipeline`
and `...VideoToVideoPipeline` do: the first window starts with the image's latent frame, or with the latents of
the clip's last `overlap_history` frames, as its clean prefix (the sampler loads the VAE to encode them), and the
video goes on window by window, saved and resumed as any long row. The prefix is part of the video: a clip's
continuation starts with its last `overlap_history` frames, made again through the VAE.

Latents: (C, T', H', W'), normalized, like Wan's; the decode is Wan's.
"""
from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass

import numpy as np

from stages.common.variant import SamplingParams
from stages.long_video.windows import shot_latents, windows_for
from stages.models.families.base import TINY, DiffusersFamily
from stages.models.families.wan import SkyReelsFamily
from stages.models.protocol import VariantInput


@dataclass
class Window:
    """One window of diffusion forcing: its latents (1, C, frames, H', W') denoised in place, the latent frames
    at its start that continue the video so far (`n_prefix`), and the generator of the noise added to them."""

    latents: object
    frames: int
    n_prefix: int
    noise: object


class SkyReelsDFFamily(SkyReelsFamily):
    """SkyReels-V2-DF-1.3B-540P, -14B-540P, -14B-720P (Skywork/SkyReels-V2-DF-*-Diffusers)."""

    name = "skyreels_df"
    pipeline_class = "SkyReelsV2DiffusionForcingPipeline"
    # the image-to-video and video-to-video forms are the same checkpoint (the same components)
    pipeline_classes = ("SkyReelsV2DiffusionForcingPipeline", "SkyReelsV2DiffusionForcingImageToVideoPipeline",
                        "SkyReelsV2DiffusionForcingVideoToVideoPipeline")
    extends = True  # makes rows longer than its window (stages/long_video/windows.py)
    # SkyReels-V2-DF 540P (model card and diffusers' example): 544x960, a 97-frame window at 24 fps, 30 steps,
    # guidance 6, shift 8; long videos: overlap 17 frames, addnoise_condition 20, synchronous (ar_step 0).
    RECOMMENDED = dict(height=544, width=960, num_frames=97, fps=24, num_inference_steps=30, guidance_scale=6.0,
                       flow_shift=8.0, base_num_frames=97, overlap_history=17, addnoise_condition=20.0, ar_step=0)
    # 720P: a 121-frame window at 720x1280.
    RECOMMENDED_720P = dict(height=720, width=1280, num_frames=121, base_num_frames=121)
    # builtin:tiny-skyreels-df: a 17-frame window (5 latent frames), 9 frames of overlap (3 latent frames), so
    # each window after the first adds 8 frames: 17, 25, 33, ... frames are 1, 2, 3, ... segments.
    TINY_LONG = dict(base_num_frames=17, overlap_history=9, addnoise_condition=20.0, ar_step=0)

    @classmethod
    def family_recommended(cls, path: str | None) -> dict:
        if path and path.startswith("builtin:"):
            return {**TINY, **cls.TINY_LONG}
        base = DiffusersFamily.family_recommended.__func__(cls, path)
        return {**base, **(cls.RECOMMENDED_720P if "720p" in (path or "").lower() else {})}

    @classmethod
    def window_frames(cls, path: str | None) -> int:
        return cls.recommended(path)["base_num_frames"]

    @classmethod
    def class_by_name(cls, path: str) -> str:
        return cls.pipeline_class

    @classmethod
    def conditionings(cls, path: str | None) -> frozenset[str]:
        return frozenset({"image", "video"})

    @classmethod
    def video_tail(cls, row: dict, path: str | None) -> int | None:
        return row.get("overlap_history")  # the clip's last frames become the first window's prefix

    @classmethod
    def check_conditioning(cls, row: dict, path: str | None) -> str | None:
        if row.get("image") and row.get("video"):
            return "image and video: a row starts from an image or continues a clip, not both"
        if row.get("video") and row.get("overlap_history") is None:
            return "overlap_history: continuing a clip needs overlap_history (its last frames the video starts from)"
        return super().check_conditioning(row, path)

    @classmethod
    def check_length(cls, row: dict, path: str | None) -> str | None:
        problem = cls.check_long(row, path)
        if problem is None and row.get("shots") and row.get("overlap_history") is None:
            return "overlap_history: a storyboard's shots continue from each other's tails; it needs overlap_history"
        return problem

    @classmethod
    def check_long(cls, row: dict, path: str | None) -> str | None:
        """None when these diffusion-forcing settings can make `num_frames`, else the message."""
        base, overlap, t = row.get("base_num_frames"), row.get("overlap_history"), cls.temporal_stride
        if base is None or (base - 1) % t:
            return f"base_num_frames: must be {t}*k+1 (97 at 540P, 121 at 720P) for family '{cls.name}', got {base}"
        if row["num_frames"] <= base:
            return None
        if overlap is None:
            return (f"overlap_history: required when num_frames ({row['num_frames']}) is longer than the window "
                    f"(base_num_frames {base}); 17 or 37 are recommended")
        if not 1 <= overlap < base or (overlap - 1) // t + 1 >= (base - 1) // t + 1:
            return f"overlap_history: must leave new frames in each window of {base}, got {overlap}"
        block = row.get("causal_block_size")
        if block is not None and (overlap - 1) // t + 1 < block:
            return (f"overlap_history: {overlap} frames hold fewer latent frames than causal_block_size {block}; "
                    "the next window would start without its prefix")
        return None

    @classmethod
    def sample(cls, pipe, inputs: list[VariantInput], params: SamplingParams) -> np.ndarray:
        """Latents for each variant, made one variant at a time (each saves and resumes its own segments). A
        storyboard's `shots` (its list of {expanded_prompt, first_frame, end_frame, ...}) give each window its
        shot's prompt."""
        import torch

        with torch.no_grad():  # encode_prompt is outside the pipeline's no_grad (families/base.py)
            return np.stack([cls.sample_one(pipe, v, params) for v in inputs])

    @classmethod
    def sample_one(cls, pipe, v: VariantInput, params: SamplingParams) -> np.ndarray:
        import torch
        from diffusers.utils.torch_utils import randn_tensor

        p = params
        device = pipe._execution_device
        dtype = pipe.transformer.dtype
        cfg = p.guidance_scale > 1.0
        texts = [s["expanded_prompt"] or s["prompt"] for s in v.shots] if v.shots else [v.prompt]
        embeds = []
        for text in texts:
            e = cls.encode_one(pipe, text, v.negative_prompt, cfg, device)
            embeds.append((e["prompt_embeds"].to(dtype), e["negative_prompt_embeds"].to(dtype) if cfg else None))
        cls.set_flow_shift(pipe, p.flow_shift)
        pipe.scheduler.set_timesteps(p.num_inference_steps, device=device)
        # causal_block_size is a config the pipeline sets on the transformer; unset, the checkpoint's own
        config = pipe.transformer.config
        if not hasattr(pipe, "_rushes_frames_per_block"):
            pipe._rushes_frames_per_block = config.num_frame_per_block
        block = p.causal_block_size or pipe._rushes_frames_per_block
        pipe.transformer.register_to_config(num_frame_per_block=block)

        temporal = pipe.vae_scale_factor_temporal
        per_shot = shot_latents([s["duration_s"] for s in v.shots], p.fps, temporal) if v.shots else None
        windows = windows_for(p.num_frames, p.base_num_frames, p.overlap_history, per_shot, temporal)
        store = v.segments
        saving = store is not None and len(windows) > 1
        generator = torch.Generator(device="cpu").manual_seed(v.seed)
        done = store.load()[:len(windows)] if saving else []
        if done:
            generator.set_state(torch.from_numpy(done[-1]["generator"]))
        video = torch.cat([torch.from_numpy(d["latents"]) for d in done], dim=1)[None] if done else None
        spatial = pipe.vae_scale_factor_spatial
        shape = (1, config.in_channels, 0, p.height // spatial, p.width // spatial)
        for k in range(len(done), len(windows)):
            length, new, shot = windows[k]
            # the same draws, in the same order, as the pipeline's prepare_latents
            latents = randn_tensor((*shape[:2], length, *shape[3:]), generator=generator, device=device,
                                   dtype=torch.float32)
            n_prefix = 0
            if k == 0 and (v.image is not None or v.video is not None):
                prefix = cls.prefix_latents(pipe, v, p)  # the image's latent frame, or the clip's tail's
                n_prefix = prefix.shape[2]
                latents[:, :, :n_prefix] = prefix.to(device, dtype)
            if k > 0:
                prefix = video[:, :, -(length - new):]
                if prefix.shape[2] % block:  # aligned to the causal block, as the pipeline does
                    prefix = prefix[:, :, :-(prefix.shape[2] % block)]
                n_prefix = prefix.shape[2]
                latents[:, :, :n_prefix] = prefix.to(device, dtype)
            noise = torch.Generator(device="cpu").manual_seed(v.seed * 1_000_003 + k)
            cls.denoise_window(pipe, Window(latents, length, n_prefix, noise), embeds[shot], p, block)
            part = latents[:, :, length - new:].float().cpu()
            video = part if video is None else torch.cat([video, part], dim=2)
            if saving:
                store.save(k, part[0].numpy(), generator=generator.get_state().numpy())
        pipe._current_timestep = None
        return video[0].numpy()

    @classmethod
    def prefix_latents(cls, pipe, v: VariantInput, params: SamplingParams):
        """The clean latents a conditioned row's first window starts with, as diffusers' image-to-video and
        video-to-video diffusion-forcing pipelines make them: the VAE's mode, normalized; a clip's last
        `overlap_history` frames, cut to whole causal blocks."""
        import torch

        vae = cls.ensure_vae(pipe)
        if v.image is not None:
            pixels = pipe.video_processor.preprocess(v.image, height=params.height, width=params.width).unsqueeze(2)
        else:
            pixels = pipe.video_processor.preprocess_video(v.video, height=params.height, width=params.width)
            pixels = pixels[:, :, -params.overlap_history:]
        device = pipe._execution_device
        z = vae.encode(pixels.to(device, vae.dtype)).latent_dist.mode().float()
        c = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, c, 1, 1, 1).to(z.device, z.dtype)
        std = 1.0 / torch.tensor(vae.config.latents_std).view(1, c, 1, 1, 1).to(z.device, z.dtype)
        z = (z - mean) * std
        block = pipe.transformer.config.num_frame_per_block
        if v.video is not None and z.shape[2] % block:
            z = z[:, :, :-(z.shape[2] % block)]
        return z

    @classmethod
    def denoise_window(cls, pipe, window: Window, embeds: tuple, params: SamplingParams, block: int) -> None:
        """One window of diffusers' diffusion-forcing loop, in place on its latents."""
        import torch

        latents, frames, n_prefix, noise = window.latents, window.frames, window.n_prefix, window.noise
        guidance_scale, addnoise_condition = params.guidance_scale, params.addnoise_condition or 0.0
        device, dtype = latents.device, pipe.transformer.dtype
        timesteps = pipe.scheduler.timesteps
        steps = len(timesteps)
        schedulers = []
        for _ in range(frames):
            s = deepcopy(pipe.scheduler)
            s.set_timesteps(steps, device=device)
            schedulers.append(s)
        matrix, _, update, intervals = pipe.generate_timestep_matrix(frames, timesteps, frames, params.ar_step or 0,
                                                                     n_prefix, block)
        fps_embeds = [0 if params.fps == 16 else 1]
        pos, neg = embeds
        with torch.no_grad():
            for i, t in enumerate(matrix):
                pipe._current_timestep = t
                start, end = intervals[i]
                x = latents[:, :, start:end].to(dtype).clone()
                timestep = t.expand(1, -1)[:, start:end].clone()
                if addnoise_condition > 0 and start < n_prefix:
                    f = 0.001 * addnoise_condition
                    clean = x[:, :, :n_prefix - start]
                    x[:, :, :n_prefix - start] = clean * (1.0 - f) + torch.randn(
                        clean.shape, generator=noise, dtype=clean.dtype).to(device) * f
                    timestep[:, :n_prefix - start] = addnoise_condition
                kw = dict(hidden_states=x, timestep=timestep, enable_diffusion_forcing=True, fps=fps_embeds,
                          return_dict=False)
                with pipe.transformer.cache_context("cond"):
                    pred = pipe.transformer(encoder_hidden_states=pos, **kw)[0]
                if neg is not None:
                    with pipe.transformer.cache_context("uncond"):
                        uncond = pipe.transformer(encoder_hidden_states=neg, **kw)[0]
                    pred = uncond + guidance_scale * (pred - uncond)
                for idx in range(start, end):
                    if update[i][idx].item():
                        latents[:, :, idx] = schedulers[idx].step(pred[:, :, idx - start], t[idx], latents[:, :, idx],
                                                                  return_dict=False)[0]
