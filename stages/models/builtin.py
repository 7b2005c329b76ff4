"""Tiny random models of every built-in family, built offline from configs with a fixed seed.

Each `build_*` function builds one diffusers pipeline (transformer, VAE, text encoder(s), the offline
byte-level BPE tokenizer of `stages.models.checkpoints`) and saves it with `save_pretrained` at a target folder;
`stages.models.checkpoints.resolve_model_path` builds each once into the cache and every stage then loads it with
`from_pretrained`, the same path a real checkpoint takes. The shapes keep each real model's compression
ratios (so its shape rules hold) and are otherwise as small as the classes allow: a family's end-to-end
test runs in seconds on two CPU cores.
"""
from __future__ import annotations

from pathlib import Path

from stages.models.devices import quiet_loading

# Words the tokenizer is trained on; also a fair sample of what prompts in this domain say.
_CORPUS = """
a an the of in on at with and through over under across into from by near beside behind toward
cat dog horse bird fox wolf deer whale fish robot drone car truck train bus bicycle motorcycle boat ship
plane rocket city street road highway bridge tunnel forest jungle desert beach ocean sea lake river
mountain valley canyon cliff field meadow garden park market warehouse factory kitchen office studio
person woman man child chef dancer runner pilot worker driver crowd team family
walks runs drives flies swims jumps dances turns falls rises spins moves crosses climbs waves
slowly quickly gently smoothly suddenly
red orange yellow green blue purple white black gray golden silver bright dark warm cool soft hard
sunset sunrise morning noon evening night dusk dawn rain snow fog storm wind clouds sky stars moon sun
cinematic photorealistic documentary anime watercolor noir vintage film 35mm 4k hdr macro aerial drone
shot wide close-up medium tracking dolly pan tilt crane handheld static orbit zoom push pull
lighting light shadow backlit rim neon candle lamp volumetric overcast golden hour blue hour
product bottle shoe phone watch coffee cup sneaker perfume logo brand ad commercial showroom
simulation traffic pedestrian intersection warehouse forklift robot arm conveyor sensor lidar weather
""".split()



# The pipeline class each built-in model is saved as (its model_index.json's `_class_name`), known without
# building it: a job's model references are checked against it (stages/models/references.py).
BUILTIN_PIPELINES = {"tiny-wan": "WanPipeline", "tiny-wan22": "WanPipeline", "tiny-wan22-ti2v": "WanPipeline",
                     "tiny-ltx": "LTXPipeline", "tiny-cogvideox": "CogVideoXPipeline",
                     "tiny-hunyuan": "HunyuanVideoPipeline", "tiny-skyreels": "SkyReelsV2Pipeline",
                     "tiny-skyreels-df": "SkyReelsV2DiffusionForcingPipeline", "toy-shapes": "WanPipeline",
                     "null": "none",
                     # conditioned by an image (and a last image): their own pipeline classes
                     "tiny-wan-i2v": "WanImageToVideoPipeline", "tiny-wan-flf2v": "WanImageToVideoPipeline",
                     "tiny-wan22-i2v": "WanImageToVideoPipeline", "tiny-skyreels-i2v": "SkyReelsV2ImageToVideoPipeline",
                     "tiny-cogvideox-i2v": "CogVideoXImageToVideoPipeline"}


def bpe_tokenizer(vocab_size: int, specials: list[str], template: str, lowercase: bool = False,
                  bpe_unk: str | None = None, **named):
    """A byte-level BPE tokenizer trained offline on `_CORPUS` with `tokenizers`, as a transformers tokenizer:
    `specials` first in its vocabulary, `template` its post-processing of one text (e.g. "$A </s>"), `bpe_unk`
    the BPE model's own unknown token, `named` the special tokens' roles (pad_token=..., eos_token=...)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=bpe_unk) if bpe_unk else models.BPE())
    tok.normalizer = (normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()]) if lowercase
                      else normalizers.NFKC())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(_CORPUS[i:i + 12]) for i in range(0, len(_CORPUS), 12)], trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(s, tok.token_to_id(s)) for s in specials if s in template.split()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, **named)


def build_tokenizer():
    """The tokenizer of the tiny video models and of tiny-qwen: T5-style, ending each text with </s>."""
    return bpe_tokenizer(1024, ["<pad>", "</s>", "<unk>"], "$A </s>", pad_token="<pad>", eos_token="</s>",
                         unk_token="<unk>")


def build_clip_tokenizer():
    """The tiny CLIP's tokenizer: lowercased, each text between CLIP's start and end tokens, padded with its end
    token (CLIP pools the text at the first end token)."""
    return bpe_tokenizer(512, ["<|startoftext|>", "<|endoftext|>"], "<|startoftext|> $A <|endoftext|>",
                         lowercase=True, bpe_unk="<|endoftext|>", bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                         pad_token="<|endoftext|>", unk_token="<|endoftext|>", model_max_length=77)


def build_tiny_wan(target: Path) -> None:
    """Build the tiny Wan pipeline with a fixed seed and save it in diffusers layout at `target`."""
    import torch
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    quiet_loading()
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=64, ffn_dim=64, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=64)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.save_pretrained(target)



def _umt5(vocab: int, d_model: int = 32):
    import torch
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    return UMT5EncoderModel(UMT5Config(
        vocab_size=vocab, d_model=d_model, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))


def _t5(vocab: int, d_model: int = 32):
    import torch
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    return T5EncoderModel(T5Config(
        vocab_size=vocab, d_model=d_model, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))


def _wan_transformer(cls=None, channels: int = 16, in_channels: int | None = None, **kw):
    """A tiny Wan-stack transformer; `in_channels` more than `channels` for an image-to-video model, which takes
    the noisy latents with the image's mask and latents concatenated."""
    import torch
    from diffusers import WanTransformer3DModel

    torch.manual_seed(kw.pop("seed", 0))
    return (cls or WanTransformer3DModel)(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=in_channels or channels,
        out_channels=channels, text_dim=32, freq_dim=64, ffn_dim=64, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=64, **kw)


def _wan_vae():
    import torch
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    return AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True])


def build_tiny_wan22(target: Path) -> None:
    """Wan2.2 A14B-style: two experts (`transformer` for high noise, `transformer_2` for low noise) that
    hand over at `boundary_ratio` 0.875 of the schedule, as in the real text-to-video model."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline


    tokenizer = build_tokenizer()
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=_umt5(len(tokenizer)), vae=_wan_vae(),
                       transformer=_wan_transformer(seed=0), transformer_2=_wan_transformer(seed=1),
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=12.0), boundary_ratio=0.875)
    pipe.save_pretrained(target)


def build_tiny_wan22_ti2v(target: Path) -> None:
    """Wan2.2 TI2V-5B-style: a residual VAE with 48 latent channels, 2x2 patchified pixels and 16x spatial
    compression (so sizes are multiples of 32), and per-token timesteps (`expand_timesteps`)."""
    import torch
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline


    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, decoder_base_dim=8, z_dim=48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True], is_residual=True, in_channels=12,
                           out_channels=12, patch_size=2, scale_factor_spatial=16,
                           latents_mean=[0.0] * 48, latents_std=[1.0] * 48)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=_umt5(len(tokenizer)), vae=vae,
                       transformer=_wan_transformer(channels=48), expand_timesteps=True,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0))
    pipe.save_pretrained(target)


def build_tiny_skyreels(target: Path) -> None:
    """SkyReels-V2 text-to-video: the Wan stack with its own transformer class and a UniPC flow scheduler."""
    from diffusers import SkyReelsV2Pipeline, SkyReelsV2Transformer3DModel, UniPCMultistepScheduler


    tokenizer = build_tokenizer()
    pipe = SkyReelsV2Pipeline(
        tokenizer=tokenizer, text_encoder=_umt5(len(tokenizer)), vae=_wan_vae(),
        transformer=_wan_transformer(SkyReelsV2Transformer3DModel),
        scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=8.0))
    pipe.save_pretrained(target)


def build_tiny_ltx(target: Path) -> None:
    """LTX-Video 0.9.1+-style: 32x spatial and 8x temporal VAE compression, a timestep-conditioned decoder."""
    import torch
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline, LTXVideoTransformer3DModel


    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    vae = AutoencoderKLLTXVideo(
        latent_channels=8, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, False), decoder_spatio_temporal_scaling=(True, True, True, False),
        decoder_inject_noise=(False, False, False, False, False), upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1), timestep_conditioning=True, patch_size=4, patch_size_t=1,
        encoder_causal=True, decoder_causal=False)
    torch.manual_seed(0)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=16,
        cross_attention_dim=32, num_layers=2, caption_channels=32)
    pipe = LTXPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=_t5(len(tokenizer)),
                       tokenizer=tokenizer, transformer=transformer)
    pipe.save_pretrained(target)


def build_tiny_cogvideox(target: Path) -> None:
    """CogVideoX-5b-style: 3D rotary embeddings, 8x spatial and 4x temporal VAE compression, DDIM (v-prediction)."""
    _tiny_cogvideox(target, "CogVideoXPipeline", in_channels=4)


def _tiny_cogvideox(target: Path, pipeline_class: str, in_channels: int) -> None:
    import diffusers
    import torch
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    vae = AutoencoderKLCogVideoX(
        block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=2,
        temporal_compression_ratio=4, sample_height=64, sample_width=64)
    torch.manual_seed(0)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=in_channels, out_channels=4, time_embed_dim=8,
        text_embed_dim=32, num_layers=2, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=32, use_rotary_positional_embeddings=True)
    scheduler = CogVideoXDDIMScheduler(prediction_type="v_prediction", rescale_betas_zero_snr=True,
                                       timestep_spacing="trailing", snr_shift_scale=1.0)
    pipe = getattr(diffusers, pipeline_class)(tokenizer=tokenizer, text_encoder=_t5(len(tokenizer)), vae=vae,
                                              transformer=transformer, scheduler=scheduler)
    pipe.save_pretrained(target)


def build_tiny_hunyuan(target: Path) -> None:
    """HunyuanVideo (community diffusers layout): a Llama text encoder with the prompt template, a CLIP text
    encoder for the pooled embedding, a guidance-distilled transformer, 8x/4x VAE compression."""
    import torch
    from diffusers import (AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline,
                           HunyuanVideoTransformer3DModel)
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel


    tokenizer = build_tokenizer()
    vocab = len(tokenizer)
    torch.manual_seed(0)
    llama = LlamaModel(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                   pad_token_id=0, bos_token_id=1, eos_token_id=1))
    torch.manual_seed(0)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
                                        pad_token_id=0, bos_token_id=1, eos_token_id=1))
    torch.manual_seed(0)
    vae = AutoencoderKLHunyuanVideo(
        latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
        spatial_compression_ratio=8, temporal_compression_ratio=4, mid_block_add_attention=False)
    torch.manual_seed(0)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=32,
        pooled_projection_dim=32, rope_axes_dim=(4, 6, 6))
    pipe = HunyuanVideoPipeline(text_encoder=llama, tokenizer=tokenizer, transformer=transformer, vae=vae,
                                scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=clip,
                                tokenizer_2=build_tokenizer())
    pipe.save_pretrained(target)


def build_tiny_skyreels_df(target: Path) -> None:
    """SkyReels-V2 diffusion forcing: the Wan stack with the DF transformer, which takes a timestep per latent
    frame and an fps embedding (`inject_sample_info`), and a UniPC flow scheduler (stages/models/families/skyreels_df.py)."""
    from diffusers import SkyReelsV2DiffusionForcingPipeline, SkyReelsV2Transformer3DModel, UniPCMultistepScheduler


    tokenizer = build_tokenizer()
    pipe = SkyReelsV2DiffusionForcingPipeline(
        tokenizer=tokenizer, text_encoder=_umt5(len(tokenizer)), vae=_wan_vae(),
        transformer=_wan_transformer(SkyReelsV2Transformer3DModel, inject_sample_info=True),
        scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=8.0))
    pipe.save_pretrained(target)


# Image-to-video: the latents (16) with the image's mask (4: one per frame of a latent frame) and latents (16)
I2V_CHANNELS = 36
CLIP_TOKENS = 65  # the tiny CLIP's image tokens: (32 / 4)^2 patches + its class token


def _clip_vision(with_projection: bool = False):
    """A tiny CLIP image encoder and its processor (32x32 crops, CLIP's mean and std), as Wan2.1 I2V and
    SkyReels-V2 I2V embed their image with; the pipeline reads its penultimate hidden states (32 wide)."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, projection_dim=32, num_hidden_layers=2,
                              num_attention_heads=4, image_size=32, patch_size=4)
    encoder = (CLIPVisionModelWithProjection if with_projection else CLIPVisionModel)(config)
    return encoder, CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def build_tiny_wan_i2v(target: Path) -> None:
    """Wan2.1 I2V-style (`WanImageToVideoPipeline`): a CLIP image encoder whose embedding the transformer attends
    to (image_dim, added K/V projections), and 36 input channels (latents, the image's mask and latents)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline

    tokenizer = build_tokenizer()
    encoder, processor = _clip_vision()
    pipe = WanImageToVideoPipeline(
        tokenizer=tokenizer, text_encoder=_umt5(len(tokenizer)), vae=_wan_vae(), image_encoder=encoder,
        image_processor=processor, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=_wan_transformer(in_channels=I2V_CHANNELS, image_dim=32, added_kv_proj_dim=32))
    pipe.save_pretrained(target)


def build_tiny_wan_flf2v(target: Path) -> None:
    """Wan2.1 FLF2V-style (first and last frame): as tiny-wan-i2v, with positions for the CLIP tokens of both
    frames (`pos_embed_seq_len`), which is what lets it join two frames."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline

    tokenizer = build_tokenizer()
    encoder, processor = _clip_vision()
    pipe = WanImageToVideoPipeline(
        tokenizer=tokenizer, text_encoder=_umt5(len(tokenizer)), vae=_wan_vae(), image_encoder=encoder,
        image_processor=processor, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=_wan_transformer(in_channels=I2V_CHANNELS, image_dim=32, added_kv_proj_dim=32,
                                     pos_embed_seq_len=2 * CLIP_TOKENS))
    pipe.save_pretrained(target)


def build_tiny_wan22_i2v(target: Path) -> None:
    """Wan2.2 I2V-A14B-style: two image-to-video experts (36 input channels, no CLIP) that hand over at
    `boundary_ratio` 0.9, as in the real image-to-video model."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline

    tokenizer = build_tokenizer()
    pipe = WanImageToVideoPipeline(
        tokenizer=tokenizer, text_encoder=_umt5(len(tokenizer)), vae=_wan_vae(),
        transformer=_wan_transformer(in_channels=I2V_CHANNELS, seed=0),
        transformer_2=_wan_transformer(in_channels=I2V_CHANNELS, seed=1),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), boundary_ratio=0.9)
    pipe.save_pretrained(target)


def build_tiny_skyreels_i2v(target: Path) -> None:
    """SkyReels-V2 I2V-style (`SkyReelsV2ImageToVideoPipeline`): tiny-skyreels with a CLIP image encoder (with its
    projection, as the pipeline declares) and 36 input channels, as Wan2.1 I2V."""
    from diffusers import SkyReelsV2ImageToVideoPipeline, SkyReelsV2Transformer3DModel, UniPCMultistepScheduler

    tokenizer = build_tokenizer()
    encoder, processor = _clip_vision(with_projection=True)
    pipe = SkyReelsV2ImageToVideoPipeline(
        tokenizer=tokenizer, text_encoder=_umt5(len(tokenizer)), vae=_wan_vae(), image_encoder=encoder,
        image_processor=processor,
        transformer=_wan_transformer(SkyReelsV2Transformer3DModel, in_channels=I2V_CHANNELS, image_dim=32,
                                     added_kv_proj_dim=32),
        scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0))
    pipe.save_pretrained(target)


def build_tiny_cogvideox_i2v(target: Path) -> None:
    """CogVideoX-5b-I2V-style (`CogVideoXImageToVideoPipeline`): tiny-cogvideox whose transformer also takes the
    image's latents, concatenated on the channels (8 in, 4 out)."""
    _tiny_cogvideox(target, "CogVideoXImageToVideoPipeline", in_channels=8)
