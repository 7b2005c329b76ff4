from stages.expand import ExpandOptions, ExpandStage
from stages.common.variant import params_hash
from tests.planning import planned


def row(**kw):
    base = {"row": 0, "id": "a", "prompt": "a cat on a beach", "negative_prompt": "", "seed": 41,
            "num_variants": 1, "height": 64, "width": 64, "num_frames": 9, "fps": 8,
            "num_inference_steps": 2, "guidance_scale": 5.0, "style": None, "tags": [], "extra": {}}
    return {**base, **kw}


def test_one_row_per_variant_with_stable_seeds():
    stage = ExpandStage(ExpandOptions())
    out = planned(stage, [row(num_variants=3)])
    assert [v["variant"] for v in out] == [0, 1, 2]
    assert [v["seed"] for v in out] == [41, 42, 43]
    assert all(v["status"] == "pending" for v in out)
    assert len({params_hash({}, v) for v in out}) == 3


def test_expansion_is_deterministic_and_enriches_short_prompts():
    a = planned(ExpandStage(ExpandOptions()), [row()])[0]
    b = planned(ExpandStage(ExpandOptions()), [row()])[0]
    assert a["expanded_prompt"] == b["expanded_prompt"]
    assert a["expanded_prompt"].startswith("a cat on a beach, ")
    assert len(a["expanded_prompt"]) > len("a cat on a beach") + 20
    # another seed draws other vocabulary (not guaranteed for one pair, so look across several)
    prompts = {planned(ExpandStage(ExpandOptions()), [row(seed=s)])[0]["expanded_prompt"] for s in range(8)}
    assert len(prompts) > 1


def test_row_style_and_mode_none():
    v = planned(ExpandStage(ExpandOptions()), [row(style="noir")])[0]
    assert v["expanded_prompt"].endswith("noir style.")
    v = planned(ExpandStage(ExpandOptions(mode="none")), [row()])[0]
    assert v["expanded_prompt"] == "a cat on a beach"


def test_params_hash_follows_everything_that_decides_pixels():
    def hashed(settings, **kw):
        return params_hash(settings, planned(ExpandStage(ExpandOptions()), [row(**kw)])[0])

    base = hashed({"model": "m1"})
    assert hashed({"model": "m1"}) == base
    assert hashed({"model": "m2"}) != base
    assert hashed({"model": "m1"}, num_inference_steps=3) != base
    assert hashed({"model": "m1"}, prompt="a dog") != base
    # tags do not change pixels
    assert hashed({"model": "m1"}, tags=["x"]) == base


def expanded(prompt: str, seeds=range(16), **kw) -> list[dict]:
    return [planned(ExpandStage(ExpandOptions()), [row(prompt=prompt, seed=s, **kw)])[0] for s in seeds]


def test_template_never_overrides_what_the_prompt_fixes():
    from stages.models.template import CAMERAS, LIGHTING, STYLES

    for v in expanded("a cat walking along a beach at sunset"):
        assert not any(light in v["expanded_prompt"] for light in LIGHTING), v["expanded_prompt"]
        assert v["expand_error"] is None and v["expand_model"] == "template"
    for v in expanded("an aerial drone shot of a city"):
        added = v["expanded_prompt"].removeprefix("an aerial drone shot of a city")
        assert not any(camera in added for camera in CAMERAS), v["expanded_prompt"]
    for v in expanded("a fox in the snow, watercolor"):
        assert not any(f"{style} style" in v["expanded_prompt"] for style in STYLES), v["expanded_prompt"]
    # an unfixed prompt still gets all three kinds
    v = expanded("a cat on a beach", seeds=[41])[0]
    assert any(light in v["expanded_prompt"] for light in LIGHTING)
    assert any(camera in v["expanded_prompt"] for camera in CAMERAS)


def test_template_keeps_a_prompt_in_another_language_and_says_so():
    for prompt in ["一只猫在日落时沿着海滩散步", "Кошка идёт по пляжу на закате"]:
        v = expanded(prompt, seeds=[1])[0]
        assert v["expanded_prompt"] == prompt
        assert v["expand_error"].startswith("template did not apply: the prompt is not in English")
    # Latin-alphabet accents are still English enough for the template
    assert expanded("a café in Paris", seeds=[1])[0]["expand_error"] is None


def test_template_output_is_unchanged_for_prompts_it_did_not_contradict():
    # every draw is made whatever the prompt fixes: only the words of a fixed kind go
    v = expanded("a cat on a beach", seeds=[41])[0]
    w = expanded("a cat on a beach at night", seeds=[41])[0]
    assert v["expanded_prompt"].split(", ")[1] == w["expanded_prompt"].split(", ")[1]
