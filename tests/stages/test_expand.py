from stages.expand import ExpandOptions, ExpandStage
from stages.variant import params_hash


def row(**kw):
    base = {"row": 0, "id": "a", "prompt": "a cat on a beach", "negative_prompt": "", "seed": 41,
            "num_variants": 1, "height": 64, "width": 64, "num_frames": 9, "fps": 8,
            "num_inference_steps": 2, "guidance_scale": 5.0, "style": None, "tags": [], "extra": {}}
    return {**base, **kw}


def test_one_row_per_variant_with_stable_seeds():
    stage = ExpandStage(ExpandOptions())
    out = stage([row(num_variants=3)])
    assert [v["variant"] for v in out] == [0, 1, 2]
    assert [v["seed"] for v in out] == [41, 42, 43]
    assert all(v["status"] == "pending" for v in out)
    assert len({params_hash({}, v) for v in out}) == 3


def test_expansion_is_deterministic_and_enriches_short_prompts():
    a = ExpandStage(ExpandOptions())([row()])[0]
    b = ExpandStage(ExpandOptions())([row()])[0]
    assert a["expanded_prompt"] == b["expanded_prompt"]
    assert a["expanded_prompt"].startswith("a cat on a beach, ")
    assert len(a["expanded_prompt"]) > len("a cat on a beach") + 20
    # another seed draws other vocabulary (not guaranteed for one pair, so look across several)
    prompts = {ExpandStage(ExpandOptions())([row(seed=s)])[0]["expanded_prompt"] for s in range(8)}
    assert len(prompts) > 1


def test_row_style_and_mode_none():
    v = ExpandStage(ExpandOptions())([row(style="noir")])[0]
    assert v["expanded_prompt"].endswith("noir style.")
    v = ExpandStage(ExpandOptions(mode="none"))([row()])[0]
    assert v["expanded_prompt"] == "a cat on a beach"


def test_params_hash_follows_everything_that_decides_pixels():
    def hashed(settings, **kw):
        return params_hash(settings, ExpandStage(ExpandOptions())([row(**kw)])[0])

    base = hashed({"model": "m1"})
    assert hashed({"model": "m1"}) == base
    assert hashed({"model": "m2"}) != base
    assert hashed({"model": "m1"}, num_inference_steps=3) != base
    assert hashed({"model": "m1"}, prompt="a dog") != base
    # tags do not change pixels
    assert hashed({"model": "m1"}, tags=["x"]) == base
