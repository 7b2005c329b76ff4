"""CogVideoX (`CogVideoXPipeline`, `AutoencoderKLCogVideoX`).

Latents stay in the pipeline's layout, (F', C, H', W') per variant, scaled by the VAE's `scaling_factor`;
decoding permutes them to (C, F', H', W') and divides by it, as `pipe.decode_latents` does. The text
sequence length is the transformer's `max_text_seq_length` (226 for the released models). The image-to-video
checkpoints (`CogVideoXImageToVideoPipeline`) give latents in the same layout.
"""
from __future__ import annotations

from stages.models.families.base import DiffusersFamily


class CogVideoXFamily(DiffusersFamily):
    name = "cogvideox"
    pipeline_class = "CogVideoXPipeline"
    pipeline_classes = ("CogVideoXPipeline", "CogVideoXImageToVideoPipeline")
    transformer_class = "CogVideoXTransformer3DModel"
    vae_class = "AutoencoderKLCogVideoX"
    spatial_multiple = 16  # VAE 8x, transformer patch 2
    temporal_stride = 4
    frame_examples = "9, 17, 49, 81"
    max_sequence_length = 226
    tensor_format = "BFCHW"
    window = 49  # CogVideoX-5b: 49 frames (6 s at 8 fps)
    dispatches_attention = False  # CogVideoXAttnProcessor2_0 calls F.scaled_dot_product_attention itself
    tiled_by_default = True  # its model card decodes tiled (vae.enable_tiling()) to fit a single GPU
    # CogVideoX-5b (THUDM/CogVideoX-5b model card): 480x720, 49 frames at 8 fps, guidance 6, DDIM/DPM (no shift).
    RECOMMENDED = dict(height=480, width=720, num_frames=49, fps=8, num_inference_steps=50, guidance_scale=6.0)

    @classmethod
    def class_by_name(cls, path: str) -> str:
        return "CogVideoXImageToVideoPipeline" if "i2v" in path.lower() else cls.pipeline_class

    @classmethod
    def conditionings(cls, path: str | None) -> frozenset[str]:
        """CogVideoX-5b-I2V and CogVideoX1.5-5B-I2V (`CogVideoXImageToVideoPipeline`) take a first image, and need
        one; the text-to-video checkpoints none."""
        i2v = cls.checkpoint_class(path) == "CogVideoXImageToVideoPipeline"
        return frozenset({"image"}) if i2v else frozenset()

    @classmethod
    def required_conditionings(cls, path: str | None) -> frozenset[str]:
        return cls.conditionings(path)

    @classmethod
    def window_frames(cls, path: str | None) -> int | None:
        return 81 if "1.5" in (path or "") else cls.window  # CogVideoX1.5-5B: 81 frames at 16 fps

    @classmethod
    def encode_one(cls, pipe, prompt: str, negative: str, cfg: bool, device) -> dict:
        pos, neg = pipe.encode_prompt(prompt=[prompt], negative_prompt=[negative], do_classifier_free_guidance=cfg,
                                      max_sequence_length=pipe.transformer.config.max_text_seq_length,
                                      device=device)
        return {"prompt_embeds": pos, "negative_prompt_embeds": neg if cfg else None}

    @classmethod
    def latents_out(cls, pipe, latents, params):
        """CogVideoX 1.5 (a temporal patch of 2) pads the latent frames to a multiple of its patch at the start;
        the pipeline drops them only when it decodes itself, so they are dropped here."""
        patch_t = pipe.transformer.config.patch_size_t
        frames = (params.num_frames - 1) // pipe.vae_scale_factor_temporal + 1
        extra = patch_t - frames % patch_t if patch_t and frames % patch_t else 0
        return latents[:, extra:]

    @classmethod
    def call_kwargs(cls, pipe, params) -> dict:
        return {"max_sequence_length": pipe.transformer.config.max_text_seq_length}

    @classmethod
    def decode_video(cls, vae, z, seed: int):
        dtype = next(vae.parameters()).dtype
        z = z.permute(0, 2, 1, 3, 4) / vae.config.scaling_factor  # (1, F', C, H', W') -> (1, C, F', H', W')
        return vae.decode(z.to(dtype)).sample
