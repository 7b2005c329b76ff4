"""stages/models/memory_plan.py on the config-only checkpoints in tests/checkpoints (no weights anywhere): parameter
counts against published sizes, what fits which GPU, and FLOPs. Everything runs on the meta device: seconds on a CPU.

Published sizes are the byte sizes of public weight files divided by bytes per parameter (tests/checkpoints/
SOURCES.md has every source); a file that ships a tied embedding twice or a causal-LM head is corrected for it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stages.models import memory_plan as mp

ROOT = Path(__file__).parents[1] / "checkpoints"
NAMES = sorted(p.name for p in ROOT.iterdir() if (p / "model_index.json").exists())
GB = 1e9

# (checkpoint, component): (published parameters, how it was derived) - see SOURCES.md
PUBLISHED = {
    ("wan2.1-t2v-1.3b", "transformer"): (2_838_104_528 / 2, "wan2.1_t2v_1.3B_bf16.safetensors, 2,838,104,528 B"),
    ("wan2.1-t2v-14b", "transformer"): (28.6 * GB / 2, "wan2.1_t2v_14B_bf16.safetensors, 28.6 GB"),
    ("wan2.1-t2v-14b", "text_encoder"): (11_366_399_385 / 2, "umt5_xxl_fp16.safetensors, 11,366,399,385 B"),
    ("wan2.1-t2v-14b", "vae"): (508e6 / 4, "Wan2_1_VAE_fp32.safetensors, 508 MB"),
    ("wan2.1-i2v-14b-480p", "transformer"): (32.8 * GB / 2, "wan2.1_i2v_480p_14B_bf16.safetensors, 32.8 GB"),
    ("wan2.1-i2v-14b-480p", "image_encoder"): (1.26 * GB / 2, "Wan2.1-I2V-14B-720P-Diffusers image_encoder, 1.26 GB"),
    ("wan2.2-t2v-a14b", "transformer"): (28.6 * GB / 2, "wan2.2_t2v_high_noise_14B_fp16.safetensors, 28.6 GB"),
    ("wan2.2-t2v-a14b", "transformer_2"): (28.6 * GB / 2, "wan2.2_t2v_low_noise_14B_fp16.safetensors, 28.6 GB"),
    ("wan2.2-ti2v-5b", "transformer"): (5.0 * GB, "wan2.2_ti2v_5B_fp8.safetensors, 5 GB at 1 byte"),
    ("wan2.2-ti2v-5b", "vae"): (1.41 * GB / 2, "wan2.2_vae.safetensors (fp16), 1.41 GB"),
    ("skyreels-v2-df-14b-540p", "transformer"): (28.6 * GB / 2, "Wan2.1-T2V-14B architecture (DF conversion config)"),
    ("ltx-video", "transformer+vae"): (5.72 * GB / 2, "ltx-video-2b-v0.9.1.safetensors (transformer + VAE), 5.72 GB"),
    ("ltx-video", "text_encoder"): ((4.99 + 4.53) * GB / 2, "T5-XXL encoder fp16 shards 4.99 + 4.53 GB"),
    ("cogvideox-5b", "transformer"): (5.57 * GB, "CogVideoX-5b-8bit model.safetensors, 5.57 GB at 1 byte"),
    ("cogvideox1.5-5b", "transformer"): ((4.98 + 4.95 + 1.22) * GB / 2, "CogVideoX-5b-1.5 transformer_T2V bf16 shards"),
    ("cogvideox-5b", "vae"): (431e6 / 2, "CogVideoX-5b VAE bf16, 431 MB"),
    ("hunyuanvideo", "transformer"): (25.6 * GB / 2, "hunyuan_video_t2v_720p_bf16.safetensors, 25.6 GB"),
    ("hunyuanvideo", "vae"): (986e6 / 4, "hunyuan_video_vae_fp32.safetensors, 986 MB"),
    ("hunyuanvideo", "text_encoder"): (((4.98 + 5 + 4.92 + 1.17) * GB / 2 - 128320 * 4096),
                                       "HunyuanVideo-TextEncoder LlamaForCausalLM fp16 16.07 GB less lm_head"),
    ("hunyuanvideo", "text_encoder_2"): (246e6 / 2, "clip_l.safetensors (fp16), 246 MB"),
}


def count(name: str, component: str) -> int:
    return sum(mp.param_count(mp.build(ROOT / name, c)) for c in component.split("+"))


@pytest.mark.parametrize("name", NAMES)
def test_every_component_builds_on_the_meta_device_from_its_config(name):
    folder = ROOT / name
    comps = mp.components(folder)
    assert {"transformer", "vae", "text_encoder"} <= set(comps)
    for component, (lib, cls) in comps.items():
        model = mp.build(folder, component)
        assert type(model).__name__ == cls and next(model.parameters()).is_meta
    assert json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["_class_name"]


@pytest.mark.parametrize("key", sorted(PUBLISHED), ids="/".join)
def test_parameter_counts_are_within_one_percent_of_the_published_sizes(key):
    published, source = PUBLISHED[key]
    counted = count(*key)
    assert abs(counted / published - 1) < 0.01, (counted, published, source)


def test_skyreels_df_13b_is_wan_13b_plus_its_fps_embedding():
    """Its only public size is the name; the architecture is Wan2.1-1.3B with inject_sample_info (fps) added."""
    sky = mp.build(ROOT / "skyreels-v2-df-1.3b-540p", "transformer")
    wan = mp.build(ROOT / "wan2.1-t2v-1.3b", "transformer")
    fps = sum(p.numel() for n, p in sky.named_parameters() if n.startswith(("fps_embedding", "fps_projection")))
    assert fps > 0 and mp.param_count(sky) == mp.param_count(wan) + fps


def test_the_umt5_encoder_counts_its_tied_embedding_once():
    """5.68 B, not 6.73 B: the shared embedding and encoder.embed_tokens are one tensor (11.37 GB in fp16)."""
    te = mp.build(ROOT / "wan2.1-t2v-14b", "text_encoder")
    assert te.shared.weight is te.encoder.embed_tokens.weight
    assert round(mp.param_count(te) / 1e9, 2) == 5.68


def test_header_params_reads_the_counts_from_safetensors_headers(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "model_index.json").write_text("{}")
    (tmp_path / "vae").mkdir()
    save_file({"a": torch.zeros(3, 4), "b": torch.zeros(5)}, str(tmp_path / "vae" / "x.safetensors"))
    assert mp.header_params(tmp_path, "vae") == 17
    assert mp.header_params(ROOT / "wan2.1-t2v-1.3b", "vae") is None  # config only


def test_weight_bytes_keep_fp32_modules_and_fp8_storage():
    t = mp.build(ROOT / "wan2.1-t2v-14b", "transformer", "bfloat16")
    n = mp.param_count(t)
    bf16, fp8 = mp.weight_bytes(t, "bfloat16"), mp.weight_bytes(t, "bfloat16", fp8=True)
    assert 2 * n < bf16 < 2.01 * n  # time_embedder, norms, scale_shift_table stay float32
    assert n < fp8 < 1.05 * n  # every block Linear at 1 byte; embedders and norms are skipped
    te = mp.build(ROOT / "wan2.1-t2v-14b", "text_encoder", "float16")
    assert mp.weight_bytes(te, "float16") > mp.weight_bytes(te, "bfloat16")  # T5's `wo` kept float32 in fp16 only


def test_wan21_14b_in_bf16_fits_an_h100_as_sampler_with_its_text_encoder_resident():
    """14.29 B transformer (26.6 GiB) + umT5 (10.6 GiB) + traced activations: 42 GiB at 480p, 47 GiB at 720p, under
    the 71.6 GiB an H100 leaves after a 10% headroom; offloading the text encoder saves its 10.6 GiB."""
    for h, w in ((480, 832), (720, 1280)):
        plan = mp.fits(ROOT / "wan2.1-t2v-14b", "h100-80gb", (h, w, 81))
        sampler = plan["sampler"]
        assert sampler["fits"] and sampler["fix"] is None, plan
        assert 40 < sampler["needs_gib"]["none"] < 50
        saved = sampler["needs_gib"]["none"] - sampler["needs_gib"]["offload_text_encoder"]
        assert 10 < saved < 11
        assert plan["decoder"]["fits"]  # Wan's VAE decodes frame by frame: ~10 GiB at 480p, ~22 GiB at 720p in fp32


def test_wan21_14b_in_float32_does_not_fit_an_80gb_gpu_with_its_text_encoder():
    """53.2 GiB transformer + 21.2 GiB umT5 alone exceed 80 GB; offloading the encoder after encoding is enough."""
    for gpu in ("h100-80gb", "a100-80gb"):
        plan = mp.fits(ROOT / "wan2.1-t2v-14b", gpu, (480, 832, 81), dtype="float32")
        needs = plan["sampler"]["needs_gib"]
        assert not plan["sampler"]["fits"] and needs["none"] > mp.GPUS[gpu][0]  # not even without headroom
        assert plan["sampler"]["fix"] == ["offload_text_encoder"]


def test_wan22_a14b_needs_offload_or_one_expert_on_smaller_gpus():
    plan = mp.fits(ROOT / "wan2.2-t2v-a14b", "h100-80gb", (720, 1280, 81))
    assert not plan["sampler"]["fits"] and plan["sampler"]["fix"] == ["offload_text_encoder"]
    needs = plan["sampler"]["needs_gib"]
    assert needs["one_expert"] == pytest.approx(needs["none"] - 26.7, abs=0.2)  # one 14.29 B expert in bf16
    l40s = mp.fits(ROOT / "wan2.2-t2v-a14b", "l40s-48gb", (720, 1280, 81))["sampler"]
    assert l40s["fix"] == ["offload_text_encoder", "one_expert"]


def test_hunyuanvideo_720p_129_frames_decode_needs_tiling_beside_its_sampler():
    """The whole decode (framewise, 17 frames at a time, by default) peaks at ~41 GiB in fp16 - most of it the mid
    block's causal attention mask, (5 x 90 x 160)^2 elements built through float32 - so on an H100 it fits alone
    but not beside the HunyuanVideo sampler (53 GiB), nor on a 48 GB L40S; the default tiling brings it to ~5 GiB."""
    plan = mp.fits(ROOT / "hunyuanvideo", "h100-80gb", (720, 1280, 129), vae_dtype="float16", share_gpu=True)
    decoder, whole = plan["decoder"], plan["decoder"]["needs_gib"]["none"]
    assert 35 < whole < 50 and whole < plan["budget_gib"]  # alone, it would fit
    assert not decoder["fits"] and decoder["fix"] == ["tiling"] and decoder["needs_gib"]["tiling"] < 8
    assert whole > mp.GPUS["l40s-48gb"][0] * 0.9


def test_wan21_13b_flops_at_480p_81_frames():
    """Tokens: 21 latent frames x 30 x 52 = 32,760. Linear: the 30 blocks hold 1.392 B Linear weights, of which the
    cross-attention K/V (141.6 M) see the 512 text tokens: 2 x 1.25 B x 32,760 = 82 TFLOP. Self-attention:
    30 x 4 x 32,760^2 x 1,536 = 197.8 TFLOP; cross-attention 3.1 TFLOP. One forward ~283 TFLOP; a variant at
    50 steps with CFG, 100 forwards: ~28.3 PFLOP, about 29 s at an H100's 989 dense TFLOP/s (~1 min at 50% MFU)."""
    folder = ROOT / "wan2.1-t2v-1.3b"
    assert mp.geometry(folder, 480, 832, 81)["tokens"] == 32760
    forward = mp.transformer_flops(folder, 480, 832, 81)
    assert 270e12 < forward < 295e12
    assert mp.variant_flops(folder, 480, 832, 81, steps=50) == pytest.approx(100 * forward)


SHAPES = {"wan2.1-t2v-1.3b": (480, 832, 81, 1), "wan2.1-i2v-14b-480p": (480, 832, 81, 1),
          "wan2.2-ti2v-5b": (704, 1280, 121, 1), "skyreels-v2-df-1.3b-540p": (544, 960, 97, 1),
          "ltx-video": (480, 704, 161, 2), "cogvideox-5b": (480, 720, 49, 2), "cogvideox1.5-5b": (768, 1360, 81, 2),
          "hunyuanvideo": (720, 1280, 129, 1)}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_flops_formula_matches_the_traced_forward_and_the_activation_formula_bounds_it(name):
    h, w, f, batch = SHAPES[name]
    traced = mp.denoiser_activation_bytes(ROOT / name, h, w, f, batch)
    assert mp.transformer_flops(ROOT / name, h, w, f, batch) == pytest.approx(traced["flops"], rel=1e-3)
    assert traced["peak"] <= traced["formula"] <= 2 * traced["peak"]


def test_vae_tiling_defaults_come_from_the_installed_classes():
    tiles = {}
    for name in ("wan2.1-t2v-1.3b", "ltx-video", "cogvideox-5b", "hunyuanvideo"):
        vae = mp.build(ROOT / name, "vae")
        tiles[type(vae).__name__] = (vae.tile_sample_min_height, vae.tile_sample_min_width)
    assert tiles == {"AutoencoderKLWan": (256, 256), "AutoencoderKLLTXVideo": (512, 512),
                     "AutoencoderKLCogVideoX": (240, 360), "AutoencoderKLHunyuanVideo": (256, 256)}


def test_gpu_table():
    assert set(mp.GPUS) == {"h100-80gb", "h200-141gb", "a100-80gb", "a100-40gb", "l40s-48gb", "rtx4090-24gb"}
    assert mp.GPUS["h100-80gb"][1] == 989.0 and mp.GPUS["a100-80gb"][1] == 312.0
