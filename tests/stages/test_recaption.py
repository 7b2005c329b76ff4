"""The language-model rewriter without Ray: builtin:tiny-qwen through from_pretrained, and the guard rails."""
import pytest

from stages.expand import ExpandOptions, ExpandStage
from stages.models.rewriters import SYSTEM_PROMPTS, Rewrite, check_rewrite
from tests import planning

LLM = {"mode": "llm", "backend": "local", "model": "builtin:tiny-qwen", "resources": {"num_gpus": 0}}
PROMPTS = ["a cat walking along a beach at sunset", "a red car at night", "two robots dance in a warehouse",
           "a chef in a busy kitchen", "whales under the sea", "一只猫在海边散步"]


def planned(options: ExpandOptions, prompts=PROMPTS, variants=1):
    rows = [{"row": i, "id": f"r{i}", "prompt": p, "negative_prompt": "", "seed": 100 + i, "num_variants": variants,
             "height": 64, "width": 64, "num_frames": 9, "fps": 8, "num_inference_steps": 2, "guidance_scale": 5.0,
             "style": None, "tags": [], "extra": {}} for i, p in enumerate(prompts)]
    return planning.planned(ExpandStage(options), rows)


def rewritten(options: ExpandOptions, batch_size: int, variants=1) -> list[dict]:
    stage = ExpandStage(options.model_copy(update={"batch_size": batch_size}))
    stage.setup()
    rows = planned(options, variants=variants)
    out = []
    for i in range(0, len(rows), batch_size):
        out += stage(rows[i:i + batch_size])
    return out


@pytest.fixture(scope="module")
def by_batch():
    options = ExpandOptions(**LLM)
    return {b: rewritten(options, b) for b in (1, 4)}


def test_planning_leaves_the_rewrite_to_ray_and_names_the_rewriter():
    rows = planned(ExpandOptions(**LLM))
    assert all(r["expanded_prompt"] is None for r in rows)
    assert {r["expand_model"] for r in rows} == {"local:builtin:tiny-qwen"}
    assert [r["expand_seed"] for r in rows] == [r["seed"] for r in rows]


def test_same_seed_same_rewrite_across_batch_sizes(by_batch):
    one, four = by_batch[1], by_batch[4]
    assert [r["expanded_prompt"] for r in one] == [r["expanded_prompt"] for r in four]
    assert [r["expand_error"] for r in one] == [r["expand_error"] for r in four]
    # the tiny model really rewrote some of them (its text is gibberish, but it is its own)
    used = [r for r in one if r["expand_error"] is None]
    assert used and all(r["expanded_prompt"] != r["prompt"] for r in used)
    assert all(r["expand_output_tokens"] >= 1 and r["expand_input_tokens"] > 10 for r in one)
    assert all(r["stage_seconds"]["expand"] == r["expand_seconds"] > 0 for r in one)


def test_each_variant_has_its_own_rewrite_unless_shared():
    options = ExpandOptions(**LLM, temperature=1.0)
    per_variant = rewritten(options, 4, variants=3)
    by_row = {}
    for r in per_variant:
        by_row.setdefault(r["id"], set()).add(r["expanded_prompt"])
    assert any(len(texts) > 1 for texts in by_row.values())
    shared = rewritten(options.model_copy(update={"per_variant": False}), 4, variants=3)
    by_row = {}
    for r in shared:
        by_row.setdefault(r["id"], set()).add(r["expanded_prompt"])
    assert all(len(texts) == 1 for texts in by_row.values())


def test_fallback_and_fail_are_recorded():
    # max_words 10 with a tiny model that rambles: some outputs are too long, recorded, original prompt kept
    options = ExpandOptions(**LLM, max_new_tokens=8)
    rows = rewritten(options, 6)
    cut = [r for r in rows if r["expand_error"] and "over-long" in r["expand_error"]]
    assert cut, [r["expand_error"] for r in rows]
    assert all(r["expanded_prompt"] == r["prompt"] and r["status"] == "pending" for r in cut)
    assert all("the original prompt is used" in r["expand_error"] for r in cut)
    failing = rewritten(options.model_copy(update={"on_error": "fail"}), 6)
    failed = [r for r in failing if r["status"] == "failed"]
    assert {r["id"] for r in failed} == {r["id"] for r in cut}
    assert all(r["error"].startswith("expand: over-long output") for r in failed)


def test_a_detailed_prompt_is_kept_as_it_is():
    stage = ExpandStage(ExpandOptions(**LLM, keep_over_words=5))
    rows = planned(stage.options, prompts=["one two three four five six seven"])
    stage.rewriter = object()  # never called: nothing to rewrite
    out = stage(rows)
    assert out[0]["expanded_prompt"] == "one two three four five six seven"
    assert "already 7 words" in out[0]["expand_error"]


@pytest.mark.parametrize("text, finished, why", [
    ("", True, "empty output"),
    ("I'm sorry, but I can't help with that.", True, "refusal"),
    ("抱歉，我无法完成。", True, "refusal"),
    ("Keep every subject, count, name and quoted text of the idea exactly as given.", True, "echo"),
    ("a cat " * 200, True, "over-long output: 400 words"),
    ("a cat on a beach", False, "over-long output: not finished"),
])
def test_guard_rails(text, finished, why):
    used, reason = check_rewrite(Rewrite(text, finished), SYSTEM_PROMPTS["en"], max_words=160, max_new_tokens=256)
    assert used is None and reason.startswith(why)


def test_a_good_rewrite_is_cleaned_and_used():
    used, reason = check_rewrite(Rewrite('Rewritten prompt: "A tabby cat pads along wet sand at sunset."', True),
                                 SYSTEM_PROMPTS["en"], 160, 256)
    assert reason is None and used == "A tabby cat pads along wet sand at sunset."


def test_identity_follows_the_rewriter():
    base = ExpandOptions(**LLM).pixel_settings()["expand"]
    assert base["weights_hash"] and base["system_prompt"] == SYSTEM_PROMPTS["en"]
    assert ExpandOptions(**LLM, system_prompt="Describe it.").pixel_settings() != {"expand": base}
    assert ExpandOptions(**LLM, temperature=0.2).pixel_settings() != {"expand": base}
    assert ExpandOptions().pixel_settings() == {}  # the template's words are in expanded_prompt itself


def test_system_prompt_from_a_file(tmp_path):
    f = tmp_path / "rewrite.txt"
    f.write_text("Describe the video in one paragraph.\n")
    assert ExpandOptions(**LLM, system_prompt={"file": str(f)}).instructions() == "Describe the video in one paragraph."
    with pytest.raises(ValueError, match="system_prompt.file: cannot read"):
        ExpandOptions(**LLM, system_prompt={"file": str(tmp_path / "missing.txt")})


def test_backend_settings_are_checked():
    with pytest.raises(ValueError, match="needs expand.model"):
        ExpandOptions(mode="llm")
    with pytest.raises(ValueError, match="needs expand.url"):
        ExpandOptions(mode="llm", backend="openai", model="m")
    assert ExpandOptions(**LLM).resources.num_gpus == 0
    assert ExpandOptions(mode="llm", model="m").resources.num_gpus == "auto"  # a GPU (or a share) on a cluster
    assert ExpandOptions(mode="llm", backend="openai", model="m", url="http://x/v1").resources.num_gpus == 0
