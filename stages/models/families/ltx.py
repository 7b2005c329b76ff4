"""LTX-Video (`LTXPipeline`, `AutoencoderKLLTXVideo`).

The pipeline's latents come out packed, (B, seq, C); sampling unpacks them to (C, F', H', W') with the
transformer's patch sizes, so that what travels between stages is a plain video latent. Decoding
denormalizes them with the VAE's `latents_mean` / `latents_std` / `scaling_factor`, and when the VAE is
timestep-conditioned (LTX 0.9.1 and later) it mixes in seeded noise at `decode_noise_scale` and passes
`decode_timestep`, as the pipeline's own decode does. Sizes are multiples of 32, frames 8k+1.

Conditioned rows run over the same checkpoint's components: an image alone through `LTXImageToVideoPipeline`
(its latents packed, as the text-to-video ones); a last image, a clip to continue, or any row when the job sets
`conditioning.strength`, through `LTXConditionPipeline`: the image at frame 0, the last image at the last
frame, the clip's last frames at frame 0, each with that strength (1.0 unset). Its latents come out unpacked.
"""
from __future__ import annotations

from stages.models.families.base import DiffusersFamily


class LTXFamily(DiffusersFamily):
    name = "ltx"
    pipeline_class = "LTXPipeline"
    pipeline_classes = ("LTXPipeline", "LTXImageToVideoPipeline", "LTXConditionPipeline")
    conditioning_strength = True
    transformer_class = "LTXVideoTransformer3DModel"
    vae_class = "AutoencoderKLLTXVideo"
    spatial_multiple = 32  # the VAE compresses 32x (patch 4 x three 2x stages); the transformer's patch is 1
    temporal_stride = 8
    frame_examples = "9, 17, 97, 121, 161"
    decode_uses_seed = True
    window = 257  # LTX-Video: up to 257 frames
    masks_attention = True  # the prompt's attention mask in cross-attention
    # LTX-Video 0.9.1's recommended decode settings (diffusers' LTX examples); pixels depend on them.
    decode_timestep = 0.05
    decode_noise_scale = 0.025
    max_sequence_length = 128
    # LTX-Video (Lightricks/LTX-Video model card, diffusers' LTX docs): 480x704, 161 frames at 25 fps (the
    # pipeline's `frame_rate`, which scales its rotary positions), guidance 3. Its scheduler shifts dynamically.
    RECOMMENDED = dict(height=480, width=704, num_frames=161, fps=25, num_inference_steps=50, guidance_scale=3.0)

    @classmethod
    def call_kwargs(cls, pipe, params) -> dict:
        return {"frame_rate": params.fps} if params.fps else {}

    @classmethod
    def conditionings(cls, path: str | None) -> frozenset[str]:
        return frozenset({"image", "last_image", "video"})

    @classmethod
    def video_tail(cls, row: dict, path: str | None) -> int | None:
        """A clip is continued from its last frames, which fill (at most) the first half of the new video, on the
        8k+1 rule: 1 frame of a 9-frame video, 9 of 17, 81 of 161."""
        return 8 * ((row["num_frames"] - 1) // 16) + 1

    @classmethod
    def conditioned_class(cls, pipe, v) -> str:
        if v.last_image is None and v.video is None and v.strength is None:
            return "LTXImageToVideoPipeline"
        return "LTXConditionPipeline"

    @classmethod
    def condition_kwargs(cls, pipe, v, params) -> dict:
        if type(pipe).__name__ == "LTXImageToVideoPipeline":
            return {"image": v.image}
        from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition

        strength = 1.0 if v.strength is None else v.strength
        conditions = []
        if v.video is not None:
            conditions.append(LTXVideoCondition(video=v.video, frame_index=0, strength=strength))
        if v.image is not None:
            conditions.append(LTXVideoCondition(image=v.image, frame_index=0, strength=strength))
        if v.last_image is not None:
            conditions.append(LTXVideoCondition(image=v.last_image, frame_index=params.num_frames - 1,
                                                strength=strength))
        return {"conditions": conditions}

    @classmethod
    def encode_one(cls, pipe, prompt: str, negative: str, cfg: bool, device) -> dict:
        pos, pos_mask, neg, neg_mask = pipe.encode_prompt(
            prompt=[prompt], negative_prompt=[negative], do_classifier_free_guidance=cfg,
            max_sequence_length=cls.max_sequence_length, device=device)
        return {"prompt_embeds": pos, "prompt_attention_mask": pos_mask,
                "negative_prompt_embeds": neg if cfg else None, "negative_prompt_attention_mask": neg_mask if cfg else None}

    @classmethod
    def latents_out(cls, pipe, latents, params):
        if type(pipe).__name__ == "LTXConditionPipeline":
            return latents  # unpacked by the pipeline itself
        frames = (params.num_frames - 1) // pipe.vae_temporal_compression_ratio + 1
        return pipe._unpack_latents(latents, frames, params.height // pipe.vae_spatial_compression_ratio,
                                    params.width // pipe.vae_spatial_compression_ratio,
                                    pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size)

    @classmethod
    def decode_video(cls, vae, z, seed: int):
        import torch
        from diffusers import LTXPipeline

        z = LTXPipeline._denormalize_latents(z, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
        timestep = None
        if vae.config.timestep_conditioning:
            noise = torch.randn(z.shape, generator=torch.Generator(device="cpu").manual_seed(seed)).to(z.device)
            z = (1 - cls.decode_noise_scale) * z + cls.decode_noise_scale * noise
            timestep = torch.tensor([cls.decode_timestep], device=z.device)
        dtype = next(vae.parameters()).dtype
        return vae.decode(z.to(dtype), timestep.to(dtype) if timestep is not None else None, return_dict=False)[0]
