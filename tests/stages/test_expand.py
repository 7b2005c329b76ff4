from pipeline.spec import ExpandSpec
from stages.expand import ExpandStage


def row(**kw):
    base = {"row": 0, "id": "a", "prompt": "a cat on a beach", "negative_prompt": "", "seed": 41,
            "num_variants": 1, "height": 64, "width": 64, "num_frames": 9, "fps": 8,
            "num_inference_steps": 2, "guidance_scale": 5.0, "style": None, "tags": [], "extra": {}}
    return {**base, **kw}


def test_one_row_per_variant_with_stable_seeds():
    stage = ExpandStage(ExpandSpec(), {"model": "m"})
    out = stage([row(num_variants=3)])
    assert [v["variant"] for v in out] == [0, 1, 2]
    assert [v["seed"] for v in out] == [41, 42, 43]
    assert all(v["status"] == "pending" for v in out)
    assert len({v["params_hash"] for v in out}) == 3


def test_expansion_is_deterministic_and_enriches_short_prompts():
    a = ExpandStage(ExpandSpec(), {})([row()])[0]
    b = ExpandStage(ExpandSpec(), {})([row()])[0]
    assert a["expanded_prompt"] == b["expanded_prompt"]
    assert a["expanded_prompt"].startswith("a cat on a beach, ")
    assert len(a["expanded_prompt"]) > len("a cat on a beach") + 20
    # another seed draws other vocabulary (not guaranteed for one pair, so look across several)
    prompts = {ExpandStage(ExpandSpec(), {})([row(seed=s)])[0]["expanded_prompt"] for s in range(8)}
    assert len(prompts) > 1


def test_row_style_and_mode_none():
    v = ExpandStage(ExpandSpec(), {})([row(style="noir")])[0]
    assert v["expanded_prompt"].endswith("noir style.")
    v = ExpandStage(ExpandSpec(mode="none"), {})([row()])[0]
    assert v["expanded_prompt"] == "a cat on a beach"


def test_params_hash_follows_everything_that_decides_pixels():
    base = ExpandStage(ExpandSpec(), {"model": "m1"})([row()])[0]["params_hash"]
    assert ExpandStage(ExpandSpec(), {"model": "m1"})([row()])[0]["params_hash"] == base
    assert ExpandStage(ExpandSpec(), {"model": "m2"})([row()])[0]["params_hash"] != base
    assert ExpandStage(ExpandSpec(), {"model": "m1"})([row(num_inference_steps=3)])[0]["params_hash"] != base
    assert ExpandStage(ExpandSpec(), {"model": "m1"})([row(prompt="a dog")])[0]["params_hash"] != base
    # tags do not change pixels
    assert ExpandStage(ExpandSpec(), {"model": "m1"})([row(tags=["x"])])[0]["params_hash"] == base
