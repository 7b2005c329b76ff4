"""Prompt alignment with a tiny CLIP built offline from a config (random weights: no claim about quality)."""
import hashlib

import numpy as np
import pytest

from stages.filter import FilterOptions
from stages.models.clip_score import ClipScorer, build_tiny_clip, resolve_clip_path
from stages.filter import FilterStage
from stages.media.frames import FrameArray


def frames(seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(9, 40, 56, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def scorer():
    return ClipScorer("builtin:tiny-clip")


def test_score_is_finite_in_range_and_deterministic_across_loads(scorer):
    cos = scorer.cosines("a red car at night", frames())
    assert cos.shape == (8,) and np.all(np.abs(cos) <= 1)
    again = ClipScorer(resolve_clip_path("builtin:tiny-clip"))  # the cached folder, by plain path
    assert np.array_equal(again.cosines("a red car at night", frames()), cos)
    for prompt in ("a red car at night", "a cat walking on a beach", "zzz qqq"):
        s = scorer.score(prompt, frames(1))
        assert np.isfinite(s) and 0.0 <= s <= 100.0
        assert s == pytest.approx(100 * max(scorer.cosines(prompt, frames(1)).mean(), 0))


def test_tiny_clip_is_built_the_same_every_time(tmp_path):
    def digest(folder):
        return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()

    build_tiny_clip(tmp_path / "a")
    build_tiny_clip(tmp_path / "b")
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert {p.name for p in (tmp_path / "a").iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json",
                                                              "preprocessor_config.json"}


def test_unknown_builtin_names_the_known_ones():
    with pytest.raises(ValueError, match="known: builtin:tiny-clip"):
        resolve_clip_path("builtin:huge-clip")
    with pytest.raises(ValueError, match=r"clip_model\n.*unknown builtin model \(known: builtin:tiny-clip, builtin:toy-clip\)"):
        FilterOptions(clip_model="builtin:huge-clip")


def test_filter_records_the_score_and_a_threshold_rejects_with_its_reason():
    moving = np.stack([np.roll(frames()[0], 2 * i, axis=1) for i in range(9)])
    row = {"id": "c", "variant": 0, "status": "pending", "frames": FrameArray(moving), "prompt": "a cat",
           "expanded_prompt": "a cat, cinematic", "stage_seconds": {}}
    spec = FilterOptions(clip_model="builtin:tiny-clip", min_clip_score=100, score_only=["flow_residual"])
    stage = FilterStage(spec)
    stage.setup()
    r = stage([dict(row)])[0]
    assert 0.0 <= r["metrics"]["clip_score"] < 100.0
    assert [x.split(":")[0] for x in r["reasons"]] == ["clip score"] and r["status"] == "rejected"
    unscored = FilterStage(FilterOptions(clip_model="builtin:tiny-clip"))
    unscored.setup()
    recorded = unscored([dict(row)])[0]
    assert recorded["metrics"]["clip_score"] == r["metrics"]["clip_score"]  # no threshold: score only
    assert "clip_score" not in FilterStage(FilterOptions())([dict(row)])[0]["metrics"]


def test_a_frame_layout_file_scores_one_tiled_image(tmp_path):
    import json

    from stages.models.clip_score import tile_frames

    build_tiny_clip(tmp_path)
    (tmp_path / "rushes_clip.json").write_text(json.dumps({"frames": 4, "layout": "grid"}))
    tiled = ClipScorer(str(tmp_path))
    clip = frames()
    grid = tile_frames(clip, tiled.layout)
    assert grid.shape == (80, 112, 3)
    assert np.array_equal(grid[:40, :56], clip[0]) and np.array_equal(grid[40:, 56:], clip[8])
    assert np.array_equal(grid[:40, 56:], clip[3]) and np.array_equal(grid[40:, :56], clip[5])  # linspace(0, 8, 4)
    cos = tiled.cosines("a red car", clip)
    assert cos.shape == (1,)
    per_frame = ClipScorer(resolve_clip_path("builtin:tiny-clip"))  # same weights, no layout file
    assert per_frame.cosines("a red car", clip).shape == (8,)
    assert tiled.score("a red car", clip) == pytest.approx(100 * max(float(cos[0]), 0))


def _tiny_clip_with_channels(target, channels):
    """builtin:tiny-clip's tokenizer and processor, with a vision tower of `channels` input channels."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    build_tiny_clip(target)
    config = CLIPConfig.from_pretrained(target)
    config.vision_config.num_channels = channels
    torch.manual_seed(1)
    CLIPModel(config).save_pretrained(target)


def test_a_channels_layout_stacks_the_processed_frames_earliest_first(tmp_path):
    """`{"layout": "channels"}`: k evenly spaced frames, each through the image processor, concatenated along the
    channel axis into one input of 3k channels; reversing the clip in time changes the score."""
    import json

    import torch

    _tiny_clip_with_channels(tmp_path, 12)
    (tmp_path / "rushes_clip.json").write_text(json.dumps({"frames": 4, "layout": "channels"}))
    stacked = ClipScorer(str(tmp_path))
    clip = frames()
    cos = stacked.cosines("a red car", clip)
    assert cos.shape == (1,)
    px = stacked.processor(images=[clip[i] for i in (0, 3, 5, 8)], return_tensors="pt")["pixel_values"]
    px = torch.cat(list(px), dim=0)[None]  # frame 0's RGB, then frame 3's, ...
    text = stacked.tokenizer(["a red car"], return_tensors="pt")
    with torch.inference_mode():
        out = stacked.model(**text, pixel_values=px)
    assert float(cos[0]) == pytest.approx(float(out.image_embeds[0] @ out.text_embeds[0]), abs=1e-6)
    assert float(stacked.cosines("a red car", clip[::-1])[0]) != pytest.approx(float(cos[0]), abs=1e-6)


def test_a_layout_that_does_not_fit_the_vision_tower_is_refused_by_name(tmp_path):
    import json

    build_tiny_clip(tmp_path)  # a 3-channel tower
    (tmp_path / "rushes_clip.json").write_text(json.dumps({"frames": 4, "layout": "channels"}))
    with pytest.raises(ValueError, match=r"rushes_clip.json: layout 'channels' of 4 frames makes 12 channels, but "
                                         r"the vision tower takes 3"):
        ClipScorer(str(tmp_path))
    (tmp_path / "rushes_clip.json").write_text(json.dumps({"frames": 4, "layout": "strip"}))
    with pytest.raises(ValueError, match=r"unknown layout 'strip' \(known: grid, channels\)"):
        ClipScorer(str(tmp_path))
