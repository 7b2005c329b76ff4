"""Speed options of the sampler on tiny models (no Ray): every cache kind keeps batching from changing pixels or
is refused with the reason, every option that changes pixels is in params_hash, and each option runs."""
from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from stages.contract import ModelSpec, RunContext
from stages.sample import SampleOptions, SampleStage

PROMPTS = ["a cat on a beach", "a red car at night"]
# ratios measured on builtin:tiny-wan at 8 steps with {kind: mag, calibrate: true}
TINY_WAN_MAG_RATIOS = [1.0, 0.9911, 0.9974, 0.9817, 1.0134, 1.0012, 1.0021, 1.0032]


def rows(n=2, steps=8):
    return [dict(id=f"r{i}", status="pending", expanded_prompt=PROMPTS[i], negative_prompt="blurry", seed=10 + i,
                 height=64, width=64, num_frames=9, num_inference_steps=steps, guidance_scale=5.0, stage_seconds={})
            for i in range(n)]


def stage(family="wan", path="builtin:tiny-wan", **options):
    s = SampleStage(SampleOptions(resources={"num_gpus": 0}, **options),
                    RunContext(model=ModelSpec(family=family, path=path)))
    return s


def latents(s, n=2):
    out = s(rows(n))
    assert all(r["status"] == "pending" for r in out), [r.get("error") for r in out]
    return [r["latents"] for r in out]


@pytest.fixture(scope="module")
def reference():
    """Latents with no speed option, one variant per call."""
    s = stage()
    s.setup()
    return [s(rows(2)[i:i + 1])[0]["latents"] for i in range(2)]


@pytest.mark.parametrize("family,path,cache", [
    ("wan", "builtin:tiny-wan", {"kind": "first_block", "threshold": 0.2}),
    ("wan", "builtin:tiny-wan", {"kind": "taylorseer", "cache_interval": 2, "disable_cache_before_step": 2}),
    ("wan", "builtin:tiny-wan", {"kind": "mag", "threshold": 0.5, "retention_ratio": 0.1,
                                 "mag_ratios": TINY_WAN_MAG_RATIOS}),
    ("wan", "builtin:tiny-wan22", {"kind": "first_block", "threshold": 0.2}),  # both experts
    ("ltx", "builtin:tiny-ltx", {"kind": "first_block", "threshold": 0.2}),  # [uncond, cond] in one batch
], ids=["first_block", "taylorseer", "mag", "first_block-wan22", "first_block-ltx"])
def test_a_cache_keeps_its_state_per_item_so_batching_never_changes_pixels(family, path, cache):
    """The trap: with the per-item split, one cache state carried from item to item (a 2-row batch differed
    from single runs by 0.08-0.13). Each item now runs in its own cache context."""
    batched = stage(family, path, batch_size=2, cache=cache)
    batched.setup()
    together = latents(batched)
    single = stage(family, path, batch_size=1, cache=cache)
    single.pipe = batched.pipe
    alone = [single(rows(2)[i:i + 1])[0]["latents"] for i in range(2)]
    for a, b in zip(together, alone):
        np.testing.assert_array_equal(a, b)
    off = stage(family, path)
    off.setup()
    plain = [off(rows(2)[i:i + 1])[0]["latents"] for i in range(2)]
    assert any(not np.array_equal(a, b) for a, b in zip(plain, alone)), "the cache hook skipped nothing"


def test_shared_state_caches_are_refused_with_batches_and_run_alone(reference):
    with pytest.raises(ValidationError, match="keeps one state for the whole batch.*batch_size 1"):
        SampleOptions(batch_size=2, cache={"kind": "pyramid_attention_broadcast"})
    s = stage(cache={"kind": "pyramid_attention_broadcast", "spatial_attention_block_skip_range": 2,
                     "spatial_attention_timestep_skip_range": [0, 1000]})
    s.setup()
    out = [s(rows(2)[i:i + 1])[0]["latents"] for i in range(2)]
    assert not np.array_equal(out[0], reference[0])


def test_without_per_item_contexts_the_cache_state_would_leak_between_batch_items(monkeypatch):
    """The fix above is what keeps batches invariant: with every item in the pipeline's own context, a
    2-row batch differs from single runs."""
    import stages.models.families.base as base

    cache = {"kind": "first_block", "threshold": 0.2}
    batched = stage(batch_size=2, cache=cache)
    batched.setup()
    fixed = latents(batched)
    monkeypatch.setattr(base, "_cache_context", lambda module: None)
    leaked = latents(batched)
    # each item's cache decisions read the other item's residuals, from the second step on
    assert not np.array_equal(leaked[0], fixed[0]) and not np.array_equal(leaked[1], fixed[1])


def test_faster_cache_needs_batched_guidance_and_no_per_item_split():
    with pytest.raises(ValidationError, match="'faster' cannot run with the batch-invariant"):
        SampleOptions(cache={"kind": "faster"})
    with pytest.raises(ValueError, match="'faster' needs a family that batches"):
        stage(cache={"kind": "faster"}, batch_invariant=False).setup()
    from pipeline.spec import JobSpecError, load_job

    with pytest.raises(JobSpecError, match="sample: cache kind 'faster' needs a family that batches"):
        load_job({"manifest": "m", "output": "o", "sample": {"cache": {"kind": "faster"}, "batch_invariant": False}})
    s = stage("cogvideox", "builtin:tiny-cogvideox", cache={"kind": "faster"}, batch_invariant=False)
    s.setup()
    assert latents(s, 1)[0].shape == (3, 4, 8, 8)


def test_bad_cache_settings_and_hub_kernels_are_errors():
    with pytest.raises(ValidationError, match="cache kind 'first_block' has no setting treshold .*allowed: threshold"):
        SampleOptions(cache={"kind": "first_block", "treshold": 0.1})
    with pytest.raises(ValidationError, match="downloads its kernels"):
        SampleOptions(attention_backend="flash_hub")
    s = stage(cache={"kind": "mag"})
    s.setup()
    assert "needs mag_ratios" in s(rows(1))[0]["error"]


def test_options_that_change_pixels_are_in_params_hash():
    assert SampleOptions().pixel_settings() == {"batch_invariant": True}  # unchanged hashes without options
    assert SampleOptions(group_offload={}).pixel_settings() == {"batch_invariant": True}  # same pixels
    speed = SampleOptions(cache={"kind": "first_block", "threshold": 0.1}, attention_backend="native",
                          compile_repeated_blocks=True, fp8_storage=True,
                          quantization={"quant_type": "int8wo"}).pixel_settings()["sample_speed"]
    assert speed["cache"] == {"kind": "first_block", "threshold": 0.1}
    assert speed["attention_backend"] == "native" and speed["fp8_storage"] and speed["compile_repeated_blocks"]
    assert speed["quantization"]["quant_type"] == "int8wo"
    a = SampleOptions(cache={"kind": "first_block", "threshold": 0.1}).pixel_settings()
    b = SampleOptions(cache={"kind": "first_block", "threshold": 0.2}).pixel_settings()
    assert a != b


@pytest.mark.parametrize("options,changes_pixels", [
    ({"attention_backend": "native"}, False),
    ({"fp8_storage": True}, True),
    ({"group_offload": {"num_blocks_per_group": 1}}, False),
    ({"quantization": {"backend": "torchao", "quant_type": "int8wo"}}, True),
], ids=["attention-native", "fp8", "group-offload", "torchao-int8wo"])
def test_load_time_options_run(reference, options, changes_pixels):
    pytest.importorskip("torchao") if "quantization" in options else None
    s = stage(**options)
    s.setup()
    out = [s(rows(2)[i:i + 1])[0]["latents"] for i in range(2)]
    assert all(np.isfinite(z).all() for z in out)
    assert (not np.array_equal(out[0], reference[0])) == changes_pixels


@pytest.mark.slow
def test_regional_compile_runs(reference):
    s = stage(compile_repeated_blocks=True)
    s.setup()
    out = s(rows(1))[0]["latents"]
    np.testing.assert_allclose(out, reference[0], atol=1e-4)


def test_a_job_file_sets_speed_options_under_sample():
    from pipeline.spec import load_job

    spec = load_job({"manifest": "m", "output": "o", "sample": {
        "cache": {"kind": "taylorseer", "cache_interval": 4}, "attention_backend": "native", "fp8_storage": True}})
    assert spec.sample.cache.settings()["cache_interval"] == 4
    assert spec.sample.pixel_settings()["sample_speed"]["fp8_storage"] is True


def test_bitsandbytes_on_cpu_is_refused_with_the_reason():
    s = stage(quantization={"backend": "bitsandbytes_8bit"})
    with pytest.raises(ValueError, match="bitsandbytes_8bit: diffusers' bitsandbytes quantizer needs a CUDA GPU, "
                                         "and this sampler runs on cpu; on CPU use backend torchao"):
        s.setup()


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["bitsandbytes_8bit", "bitsandbytes_4bit"])
def test_bitsandbytes_quantizes_the_transformer_on_a_gpu(backend):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("bitsandbytes")
    s = SampleStage(SampleOptions(resources={"num_gpus": 1}, quantization={"backend": backend}),
                    RunContext(model=ModelSpec(family="wan", path="builtin:tiny-wan")))
    s.setup()
    kinds = {type(m).__name__ for m in s.pipe.transformer.modules()}
    assert kinds & {"Linear8bitLt", "Linear4bit"}, kinds
    out = s(rows(1))[0]
    assert out["status"] == "pending" and np.isfinite(out["latents"]).all()
