"""Filter verdicts on synthetic clips with known properties, with the default thresholds."""
import cv2
import numpy as np
import pytest

from pipeline.spec import JobSpecError, load_job
from stages.filter import FilterOptions, FilterStage
from stages.media.quality import PHASH_FRAMES, phash_distance
from stages.media.frames import FrameArray


def clip(frames, prompt="a test clip"):
    return {"id": "c", "variant": 0, "status": "pending", "frames": FrameArray(np.asarray(frames)), "prompt": prompt,
            "metrics": {}, "reasons": [], "stage_seconds": {}}


def run(frames, **spec):
    return FilterStage(FilterOptions(**spec))([clip(frames)])[0]


def words(row):
    return {reason.split(":")[0] for reason in row["reasons"]}


def pattern(h, w, seed=0):
    """A smooth random colour texture (random 8 px cells, bicubic): edges, contrast, no flat areas."""
    cells = np.random.default_rng(seed).integers(0, 256, size=(h // 8 + 2, w // 8 + 2, 3)).astype(np.uint8)
    return cv2.resize(cells, ((w // 8 + 2) * 8, (h // 8 + 2) * 8), interpolation=cv2.INTER_CUBIC)[:h, :w]


def panning(t=17, h=64, w=96, speed=1, seed=0):
    """The texture sliding left by `speed` px per frame: a good, steadily moving clip."""
    big = pattern(h, w + speed * t, seed)
    return np.stack([big[:, i * speed:i * speed + w] for i in range(t)])


def moving_square(speed, t=17, size=16):
    frames = np.full((t, 96, 96, 3), 100, np.uint8)
    for i in range(t):
        frames[i, 40:40 + size, 4 + i * speed:4 + i * speed + size] = 220
    return frames


def test_a_steadily_moving_textured_clip_is_accepted_with_every_metric():
    r = run(panning())
    assert r["status"] == "accepted" and r["reasons"] == []
    assert set(r["metrics"]) >= {"nonfinite_fraction", "brightness", "contrast", "black_fraction",
                                 "constant_fraction", "clipped_low", "clipped_high", "sharpness", "motion",
                                 "flow_residual", "frame_diff", "flicker", "scene_cuts"}
    assert all(isinstance(v, float) for v in r["metrics"].values())
    assert "clip_score" not in r["metrics"]  # off when no CLIP model is configured
    assert len(r["phash"]) == 16 * PHASH_FRAMES and int(r["phash"], 16) >= 0


def test_black_clip_is_rejected_as_black():
    r = run(np.zeros((9, 32, 32, 3), np.uint8))
    assert r["status"] == "rejected" and "black" in words(r)
    assert r["metrics"]["black_fraction"] == 1.0


def test_constant_clip_is_rejected_as_constant():
    r = run(np.full((9, 32, 32, 3), 128, np.uint8))
    assert "constant" in words(r) and "black" not in words(r)
    assert r["metrics"]["constant_fraction"] == 1.0


def test_frozen_clip_is_rejected_as_frozen():
    r = run(np.repeat(pattern(64, 96)[None], 17, axis=0))
    assert words(r) == {"frozen"}
    assert r["metrics"]["motion"] < 0.1 and r["metrics"]["frame_diff"] == 0.0


@pytest.mark.parametrize("background", ["flat", "textured"])
def test_moving_square_motion_grows_with_its_speed(background):
    def score(speed):
        frames = moving_square(speed)
        if background == "textured":
            bg = pattern(96, 96, seed=3)
            frames = np.where(frames == 100, bg[None], frames)
        return run(frames)["metrics"]["motion"]

    slow, medium, fast = score(1), score(2), score(4)
    assert 0.2 < slow < medium < fast
    # on a flat background the flow follows the square exactly: % of the 96 px width per frame
    if background == "flat":
        assert fast == pytest.approx(100 * 4 / 96, rel=0.1)


def test_chaotic_clip_is_rejected_as_chaotic():
    r = run(np.stack([pattern(64, 96, seed=i) for i in range(17)]))  # unrelated frames
    assert "chaotic" in words(r)
    assert r["metrics"]["flow_residual"] > 20


def test_noisy_clip_is_rejected_as_chaotic():
    noise = np.random.default_rng(0).normal(0, 50, size=(17, 64, 96, 3))
    r = run(np.clip(panning().astype(float) + noise, 0, 255).astype(np.uint8))
    assert "chaotic" in words(r)


def test_too_fast_motion_is_chaotic_and_max_motion_caps_followed_motion():
    assert "chaotic" in words(run(panning(speed=24)))  # a quarter of the frame per frame
    r = run(panning(speed=2), max_motion=1.0)
    assert words(r) == {"chaotic"} and r["reasons"][0].startswith("chaotic: motion")


def test_flickering_clip_is_rejected_as_flicker_not_as_cut():
    frames = panning().astype(int)
    frames[1::2] += 40  # every other frame brighter
    r = run(np.clip(frames, 0, 255).astype(np.uint8))
    assert "flicker" in words(r) and "scene cut" not in words(r)
    assert r["metrics"]["flicker"] > 15


def test_a_steady_fade_is_not_flicker():
    frames = panning().astype(float) * np.linspace(1.0, 0.5, 17)[:, None, None, None]
    r = run(frames.astype(np.uint8))
    assert r["metrics"]["flicker"] < 1 and r["status"] == "accepted"


def test_scene_cut_is_found_at_its_frame():
    frames = np.concatenate([panning(t=9, seed=1), panning(t=8, seed=2)])
    r = run(frames)
    assert r["metrics"]["scene_cuts"] == 1.0
    assert [x for x in r["reasons"] if x.startswith("scene cut:")][0].endswith("at frame 9")
    assert "flicker" not in words(r)
    assert run(frames, max_scene_cuts=1)["status"] == "accepted"


def test_blurred_clip_is_rejected_as_blurry():
    sharp = panning()
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 3) for f in sharp])
    s, b = run(sharp)["metrics"]["sharpness"], run(blurred)["metrics"]["sharpness"]
    assert s > 4 * b
    assert "blurry" in words(run(blurred, min_sharpness=s / 2))
    assert run(blurred)["status"] == "accepted"  # min_sharpness is off by default


def test_overexposed_and_too_dark_clips():
    bright = run(np.clip(panning().astype(int) + 150, 0, 255).astype(np.uint8))
    assert "overexposed" in words(bright) and bright["metrics"]["clipped_high"] > 0.25
    dark = run((panning() // 16).astype(np.uint8))
    assert "too dark" in words(dark) and dark["metrics"]["brightness"] < 16


def test_low_contrast_clip():
    faint = 120 + (panning().astype(float) - 128) / 16
    r = run(faint.astype(np.uint8))
    assert "low contrast" in words(r) and "constant" not in words(r)


def test_nan_frames_are_rejected_and_clean_float_frames_accepted():
    frames = panning().astype(np.float32) / 255
    assert run(frames)["status"] == "accepted"
    frames[3, :4] = np.nan
    r = run(frames)
    assert "nan" in words(r) and r["metrics"]["nonfinite_fraction"] > 0


def test_null_threshold_and_score_only_record_without_rejecting():
    still = np.repeat(pattern(64, 96)[None], 17, axis=0)
    for spec in ({"min_motion": None}, {"score_only": ["motion"]}):
        r = run(still, **spec)
        assert r["status"] == "accepted" and r["metrics"]["motion"] < 0.1
    r = run(np.zeros((9, 32, 32, 3), np.uint8), score_only=["black_fraction", "constant_fraction"])
    assert "black" not in words(r) and "constant" not in words(r) and "too dark" in words(r)


def test_score_only_names_are_checked():
    with pytest.raises(ValueError, match="unknown metric 'motoin'.*allowed: .*motion"):
        FilterOptions(score_only=["motoin"])
    with pytest.raises(JobSpecError, match="min_clip_score needs filter.clip_model"):
        load_job({"manifest": "m.parquet", "output": "o", "filter": {"min_clip_score": 20}})


def test_near_identical_clips_have_close_hashes_and_different_clips_far():
    a = panning(seed=5)
    noisy = np.clip(a.astype(float) + np.random.default_rng(1).normal(0, 3, a.shape), 0, 255).astype(np.uint8)
    other = panning(seed=6)
    ha, hn, ho = (run(x)["phash"] for x in (a, noisy, other))
    assert phash_distance(ha, hn) <= 8
    assert phash_distance(ha, ho) > 64
    with pytest.raises(ValueError, match="different lengths"):
        phash_distance(ha, ha[:-1])


def test_rows_not_pending_pass_through():
    row = dict(clip(panning()), status="failed", error="sample: x")
    out = FilterStage(FilterOptions())([row])[0]
    assert out["status"] == "failed" and out["metrics"] == {} and "phash" not in out


def test_a_clip_that_cannot_be_measured_is_failed_not_raised():
    r = run(np.zeros((0, 8, 8, 3), np.uint8))
    assert r["status"] == "failed" and r["error"].startswith("filter:")
    r = run(np.zeros((4, 8, 8), np.int32))
    assert r["error"] == "filter: ValueError: frames must be uint8 or float, got int32"
