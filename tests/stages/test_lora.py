"""LoRAs through peft on the tiny models: a tiny random LoRA saved with peft changes the pixels at its scale,
reaches both Wan2.2 experts, keeps batching invariant, and is part of the model identity (params_hash)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.contract import ModelSpec, RunContext
from stages.models.checkpoints import model_identity, resolve_model_path
from stages.sample import SampleOptions, SampleStage

pytest.importorskip("peft")

PROMPTS = ["a cat on a beach", "a red car at night"]


def make_lora(folder, path="builtin:tiny-wan", seed=0, name="tiny_lora.safetensors"):
    """A random rank-4 LoRA on the attention projections, saved the way LoRA checkpoints are published."""
    from diffusers import WanPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    pipe = WanPipeline.from_pretrained(resolve_model_path(path))
    torch.manual_seed(seed)
    pipe.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                            target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    WanPipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(pipe.transformer),
                                  weight_name=name)
    return str(folder / name)


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    return make_lora(tmp_path_factory.mktemp("lora"))


def rows(n=2):
    return [dict(id=f"r{i}", status="pending", expanded_prompt=PROMPTS[i], negative_prompt="", seed=10 + i,
                 height=64, width=64, num_frames=9, num_inference_steps=2, guidance_scale=5.0, stage_seconds={})
            for i in range(n)]


def sampled(model: dict, batch_size=1, n=2):
    s = SampleStage(SampleOptions(batch_size=batch_size, resources={"num_gpus": 0}),
                    RunContext(model=ModelSpec(**model)))
    s.setup()
    out = s(rows(n))
    assert all(r["status"] == "pending" for r in out), [r.get("error") for r in out]
    return s, [r["latents"] for r in out]


def test_a_lora_changes_the_pixels_at_its_scale(lora):
    _, plain = sampled({})
    s, with_lora = sampled({"loras": [{"path": lora, "scale": 1.0}]})
    assert not np.array_equal(plain[0], with_lora[0])
    assert any("lora" in n for n, _ in s.pipe.transformer.named_parameters())
    _, off = sampled({"loras": [{"path": lora, "scale": 0.0}]})
    np.testing.assert_allclose(off[0], plain[0], atol=1e-6)


def test_a_lora_keeps_batching_invariant(lora):
    _, alone = sampled({"loras": [{"path": lora}]}, batch_size=1)
    _, together = sampled({"loras": [{"path": lora}]}, batch_size=2)
    for a, b in zip(alone, together):
        np.testing.assert_array_equal(a, b)


def test_wan22_loads_the_lora_into_both_experts(tmp_path):
    lora = make_lora(tmp_path, path="builtin:tiny-wan22")
    s, _ = sampled({"path": "builtin:tiny-wan22", "loras": [{"path": lora, "scale": 0.7}]}, n=1)
    for name in ("transformer", "transformer_2"):
        model = getattr(s.pipe, name)
        assert any("lora" in n for n, _ in model.named_parameters()), name
        assert model.peft_config["lora0"]


def test_the_lora_is_part_of_the_model_identity(lora, tmp_path):
    base = model_identity("wan", "builtin:tiny-wan", None, "float32")
    assert "loras" not in base  # no LoRA: the identity (and params_hash) of before
    spec = ModelSpec(loras=[{"path": lora, "scale": 1.0}])
    one = model_identity("wan", "builtin:tiny-wan", None, "float32", loras=spec.loras)
    assert one["loras"][0]["weights_hash"] and one["loras"][0]["scale"] == 1.0
    half = model_identity("wan", "builtin:tiny-wan", None, "float32",
                          loras=ModelSpec(loras=[{"path": lora, "scale": 0.5}]).loras)
    assert half != one
    other = make_lora(tmp_path, seed=1)  # other weights, same name elsewhere
    again = model_identity("wan", "builtin:tiny-wan", None, "float32", loras=ModelSpec(loras=[{"path": other}]).loras)
    assert again["loras"][0]["weights_hash"] != one["loras"][0]["weights_hash"]


def test_a_job_file_names_loras():
    from pipeline.spec import JobSpecError, load_job

    spec = load_job({"manifest": "m", "output": "o", "model": {"family": "wan", "loras": [
        {"path": "lightx2v/Wan2.1-T2V-14B-StepDistill-CfgDistill-Lightx2v", "weight_name": "loras/distill.safetensors",
         "scale": 1.0}]}})
    assert spec.model.loras[0].scale == 1.0
    with pytest.raises(JobSpecError, match="model.loras.0.strength: unknown key"):
        load_job({"manifest": "m", "output": "o", "model": {"loras": [{"path": "x", "strength": 1}]}})
