"""Sample and decode stages on the real tiny Wan pipeline, called directly (no Ray)."""
import numpy as np
import pytest
import torch

from stages.contract import ModelSpec, RunContext
from stages.models.checkpoints import resolve_model_path
from stages.decode import DecodeOptions, DecodeStage
from stages.expand import ExpandStage
from stages.sample import SampleOptions, SampleStage
from tests.planning import planned
from tests.stages.test_expand import row


def variants(n, **kw):
    from stages.expand import ExpandOptions

    rows = [row(id=f"r{i}", prompt=p, seed=10 + i, **kw)
            for i, p in enumerate(["a cat on a beach", "a red car at night", "a robot arm in a warehouse",
                                   "a whale in the ocean"][:n])]
    return planned(ExpandStage(ExpandOptions()), rows)


def cpu(batch_size=4, **kw):
    return SampleOptions(batch_size=batch_size, resources={"num_gpus": 0}, **kw)


@pytest.fixture(scope="module")
def sampler():
    stage = SampleStage(cpu(batch_size=4), RunContext())
    stage.setup()
    return stage


def test_latents_have_the_models_shape(sampler):
    out = sampler(variants(2))
    for r in out:
        assert r["status"] == "pending"
        # Wan: 16 latent channels, (9 - 1) / 4 + 1 = 3 latent frames, 8x spatial compression
        assert r["latents"].shape == (16, 3, 8, 8)
        assert r["latents"].dtype == np.float32
    assert not np.array_equal(out[0]["latents"], out[1]["latents"])


def test_batching_never_changes_a_variants_latents(sampler):
    batched = sampler(variants(3))
    calls = sampler.calls
    single = SampleStage(cpu(batch_size=1), RunContext())
    single.pipe = sampler.pipe
    alone = [single(variants(3)[i:i + 1])[0] for i in range(3)]
    assert sampler.calls == calls  # the shared pipe did not count these
    assert single.calls == 3
    for a, b in zip(batched, alone):
        assert np.array_equal(a["latents"], b["latents"])


def test_same_seed_same_latents_and_rows_in_other_states_pass_through(sampler):
    a, b = sampler(variants(1))[0], sampler(variants(1))[0]
    assert np.array_equal(a["latents"], b["latents"])
    invalid = dict(variants(1)[0], status="failed", error="earlier")
    out = sampler([invalid])
    assert "latents" not in out[0] and out[0]["error"] == "earlier"


def test_shape_buckets_get_separate_calls(sampler):
    rows = variants(2) + [dict(v, height=80) for v in variants(2)]
    before = sampler.calls
    out = sampler(rows)
    assert sampler.calls - before == 2
    assert out[2]["latents"].shape == (16, 3, 10, 8)


def test_nan_weights_give_failed_rows_not_an_exception(tmp_path):
    """A real checkpoint whose transformer holds NaN: every row is recorded as failed, with the reason."""
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(resolve_model_path("builtin:tiny-wan"))
    with torch.no_grad():
        next(pipe.transformer.parameters()).fill_(float("nan"))
    pipe.save_pretrained(tmp_path / "nan-wan")
    stage = SampleStage(cpu(), RunContext(model=ModelSpec(path=str(tmp_path / "nan-wan"))))
    stage.setup()
    out = stage(variants(2))
    assert [r["status"] for r in out] == ["failed", "failed"]
    assert all("NaN" in r["error"] for r in out)
    assert all("latents" not in r for r in out)


def test_decode_gives_uint8_frames_and_drops_latents(sampler):
    rows = sampler(variants(2))
    decoder = DecodeStage(DecodeOptions(resources={"num_gpus": 0}), RunContext())
    decoder.setup()
    out = decoder(rows)
    for r in out:
        assert "latents" not in r
        assert r["frames"].array.shape == (9, 64, 64, 3) and r["frames"].array.dtype == np.uint8
        assert r["stage_seconds"]["decode"] > 0
    again = decoder(sampler(variants(2)))
    assert np.array_equal(out[0]["frames"].array, again[0]["frames"].array)
