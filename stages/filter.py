"""Quality filtering: decoded frames to metrics and an accept/reject verdict with reasons.

In: rows carrying `frames` (uint8 (T, H, W, 3)). Out: the same rows with `metrics` filled and
`status` set to "accepted" or "rejected" (with human-readable `reasons`). Thresholds come from the
job file; a threshold of 0 switches its check off while the metric is still recorded.
"""
from __future__ import annotations

import time

import cv2
import numpy as np

from pipeline.spec import FilterSpec


def luma(frames: np.ndarray) -> np.ndarray:
    """BT.601 luma of uint8 RGB frames, float32 (T, H, W)."""
    f = frames.astype(np.float32)
    return 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]


def frame_metrics(frames: np.ndarray, black_luma: float) -> dict[str, float]:
    y = luma(frames)
    per_frame_mean = y.reshape(len(y), -1).mean(axis=1)
    per_frame_std = y.reshape(len(y), -1).std(axis=1)
    motion = float(np.abs(np.diff(y, axis=0)).mean()) if len(y) > 1 else 0.0
    # Sharpness on at most 8 evenly spaced frames: the Laplacian is the costly part.
    idx = np.linspace(0, len(y) - 1, num=min(8, len(y))).round().astype(int)
    sharpness = float(np.mean([cv2.Laplacian(y[i], cv2.CV_32F).var() for i in idx]))
    return {
        "brightness": float(per_frame_mean.mean()),
        "contrast": float(per_frame_std.mean()),
        "black_fraction": float((per_frame_mean < black_luma).mean()),
        "constant_fraction": float((per_frame_std < 1.0).mean()),
        "motion": motion,
        "sharpness": sharpness,
    }


class FilterStage:
    def __init__(self, spec: FilterSpec):
        self.spec = spec

    def setup(self) -> None:
        """No model: the first metrics are plain image statistics."""

    def verdict(self, m: dict[str, float], num_frames: int) -> list[str]:
        s, reasons = self.spec, []
        if m["black_fraction"] > s.max_black_fraction:
            reasons.append(f"black: {m['black_fraction']:.0%} of frames darker than luma {s.black_luma:g}")
        if m["constant_fraction"] >= 1.0:
            reasons.append("constant: every frame is a single flat color")
        if num_frames > 1 and s.min_motion > 0 and m["motion"] < s.min_motion:
            reasons.append(f"frozen: motion {m['motion']:.3f} < min_motion {s.min_motion:g}")
        if m["brightness"] < s.min_brightness:
            reasons.append(f"too dark: brightness {m['brightness']:.1f} < min_brightness {s.min_brightness:g}")
        if m["brightness"] > s.max_brightness:
            reasons.append(
                f"too bright: brightness {m['brightness']:.1f} > max_brightness {s.max_brightness:g}")
        if s.min_sharpness > 0 and m["sharpness"] < s.min_sharpness:
            reasons.append(f"blurry: sharpness {m['sharpness']:.1f} < min_sharpness {s.min_sharpness:g}")
        return reasons

    def __call__(self, rows: list[dict]) -> list[dict]:
        for r in rows:
            if r["status"] != "pending":
                continue
            start = time.perf_counter()
            r["metrics"] = frame_metrics(r["frames"], self.spec.black_luma)
            r["reasons"] = self.verdict(r["metrics"], len(r["frames"]))
            r["status"] = "rejected" if r["reasons"] else "accepted"
            r["stage_seconds"]["filter"] = time.perf_counter() - start
        return rows
