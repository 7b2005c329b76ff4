"""HunyuanVideo (`HunyuanVideoPipeline`: a Llama text encoder with a prompt template, CLIP for the pooled
embedding, `AutoencoderKLHunyuanVideo`).

HunyuanVideo is guidance-distilled: `guidance_scale` is embedded into the transformer and there is no second
(negative) pass, so the negative prompt is not used, unless `true_cfg_scale` is above 1: the pipeline then also
runs the negative prompt each step and mixes the two (true classifier-free guidance, twice the denoiser's
work). Latents: (C, T', H', W') scaled by `scaling_factor`.
"""
from __future__ import annotations

from stages.models.families.base import DiffusersFamily


class HunyuanFamily(DiffusersFamily):
    name = "hunyuan"
    pipeline_class = "HunyuanVideoPipeline"
    pipeline_classes = ("HunyuanVideoPipeline",)
    transformer_class = "HunyuanVideoTransformer3DModel"
    vae_class = "AutoencoderKLHunyuanVideo"
    spatial_multiple = 16  # VAE 8x, transformer patch 2
    temporal_stride = 4
    frame_examples = "17, 33, 61, 129"
    max_sequence_length = 256
    shifted = True
    guidance_distilled = True
    window = 129  # HunyuanVideo: 129 frames (5 s at 24 fps)
    masks_attention = True  # the joint attention over video and text tokens masks the text padding
    vae_dtype = "float16"  # diffusers' HunyuanVideo example: the VAE in float16, the transformer in bfloat16
    tiled_by_default = True  # 720x1280x129 in one piece: about 30 GB for one activation (diffusers' example tiles)
    # HunyuanVideo (tencent/HunyuanVideo, 720p): 129 frames at 24 fps, embedded guidance 6, flow shift 7.
    RECOMMENDED = dict(height=720, width=1280, num_frames=129, fps=24, num_inference_steps=50, guidance_scale=6.0,
                       flow_shift=7.0)

    @classmethod
    def encode_one(cls, pipe, prompt: str, negative: str, cfg: bool, device) -> dict:
        pos, pooled, mask = pipe.encode_prompt(prompt=[prompt], prompt_2=[prompt], device=device,
                                                max_sequence_length=cls.max_sequence_length)
        out = {"prompt_embeds": pos, "pooled_prompt_embeds": pooled, "prompt_attention_mask": mask}
        if cfg:  # true CFG: the negative prompt too
            neg, neg_pooled, neg_mask = pipe.encode_prompt(prompt=[negative], prompt_2=[negative], device=device,
                                                           max_sequence_length=cls.max_sequence_length)
            out.update(negative_prompt_embeds=neg, negative_pooled_prompt_embeds=neg_pooled,
                       negative_prompt_attention_mask=neg_mask)
        return out

    @classmethod
    def negative_pass(cls, params) -> bool:
        return (params.true_cfg_scale or 0.0) > 1.0

    @classmethod
    def call_kwargs(cls, pipe, params) -> dict:
        return {"true_cfg_scale": params.true_cfg_scale} if params.true_cfg_scale is not None else {}

    @classmethod
    def decode_video(cls, vae, z, seed: int):
        dtype = next(vae.parameters()).dtype
        return vae.decode((z / vae.config.scaling_factor).to(dtype), return_dict=False)[0]
