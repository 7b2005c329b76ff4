"""Filter verdicts on synthetic clips with known properties."""
import numpy as np

from pipeline.spec import FilterSpec
from stages.filter import FilterStage


def clip(frames):
    return {"id": "c", "variant": 0, "status": "pending", "frames": np.asarray(frames, np.uint8),
            "metrics": {}, "reasons": [], "stage_seconds": {}}


def textured(t=9, h=32, w=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(40, 200, size=(t, h, w, 3))


def moving_square(t=9, speed=2):
    frames = np.full((t, 48, 48, 3), 100)
    for i in range(t):
        x = 4 + i * speed
        frames[i, 16:28, x:x + 12] = 220
    return frames


def run(frames, **spec):
    return FilterStage(FilterSpec(**spec))([clip(frames)])[0]


def test_textured_moving_clip_is_accepted_with_metrics():
    r = run(textured())
    assert r["status"] == "accepted" and r["reasons"] == []
    assert set(r["metrics"]) >= {"brightness", "contrast", "black_fraction", "motion", "sharpness"}
    assert 100 < r["metrics"]["brightness"] < 140


def test_black_clip_is_rejected_as_black():
    r = run(np.zeros((9, 32, 32, 3)))
    assert r["status"] == "rejected"
    assert any(reason.startswith("black:") for reason in r["reasons"])
    assert r["metrics"]["black_fraction"] == 1.0


def test_frozen_clip_is_rejected_as_frozen():
    still = np.repeat(textured(t=1), 9, axis=0)
    r = run(still)
    assert r["status"] == "rejected"
    assert any(reason.startswith("frozen:") for reason in r["reasons"])
    assert r["metrics"]["motion"] == 0.0


def test_constant_and_overexposed():
    r = run(np.full((9, 32, 32, 3), 250))
    assert any(reason.startswith("constant:") for reason in r["reasons"])
    assert any(reason.startswith("too bright:") for reason in r["reasons"])


def test_motion_grows_with_speed_and_threshold_off_means_score_only():
    slow = run(moving_square(speed=1))["metrics"]["motion"]
    fast = run(moving_square(speed=3))["metrics"]["motion"]
    assert fast > slow > 0
    still = np.repeat(textured(t=1), 9, axis=0)
    r = run(still, min_motion=0)
    assert r["status"] == "accepted" and r["metrics"]["motion"] == 0.0


def test_blur_threshold_uses_laplacian_variance():
    sharp = textured()
    blurred = np.repeat(np.repeat(textured(h=4, w=4), 8, axis=1), 8, axis=2)
    assert run(sharp)["metrics"]["sharpness"] > run(blurred)["metrics"]["sharpness"]
    r = run(blurred, min_sharpness=run(sharp)["metrics"]["sharpness"] / 2)
    assert any(reason.startswith("blurry:") for reason in r["reasons"])


def test_rows_not_pending_pass_through():
    row = dict(clip(textured()), status="failed", error="sample: x")
    out = FilterStage(FilterSpec())([row])[0]
    assert out["status"] == "failed" and out["metrics"] == {}
