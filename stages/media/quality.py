"""Quality metrics of decoded frames, and their perceptual hash: plain image statistics, no model.

In: uint8 frames (T, H, W, 3) RGB (float frames are taken on a 0..1 scale by `as_uint8`). Out, from
`frame_metrics`: the metrics below, a perceptual hash, and the frames where scene cuts start. The filter
stage (stages/filter.py) turns them into a verdict; the driver compares hashes across the library with
the near-duplicate index (stages/media/dedup.py).

Metrics (luma is BT.601, 0..255):
    nonfinite_fraction  share of NaN/Inf values in float frames (0 for uint8)
    brightness          mean luma                        contrast      mean per-frame luma std
    black_fraction      frames darker than black_luma    constant_fraction  frames of one flat colour
    clipped_low/high    share of pixels at luma <= 5 / >= 250
    sharpness           variance of the Laplacian, at full resolution, mean over sampled frames
    motion              speed of the fastest 1% of the picture: the 99th percentile of dense optical
                        flow (Farneback), in % of the frame width per frame, mean over sampled pairs
    flow_residual       mean luma change the flow does not explain (noise, chaos, motion too fast)
    frame_diff          mean absolute luma difference of consecutive analysis frames
    flicker             mean brightness jump not explained by a steady change (luma levels)
    scene_cuts          consecutive frames whose content, not just brightness, changes abruptly

The perceptual hash (`clip_phash`) is a 64-bit DCT hash of each of PHASH_FRAMES sampled frames,
concatenated as hex. Motion, flicker and cuts run on grey frames downscaled to ANALYSIS_WIDTH: flow at
full size would cost more than encoding, and the verdicts do not need it.
"""
from __future__ import annotations

import cv2
import numpy as np

ANALYSIS_WIDTH = 160    # px; frames narrower than this are analysed at their own size
FLOW_PAIRS = 16         # consecutive-frame pairs sampled for optical flow
SHARPNESS_FRAMES = 8
PHASH_FRAMES = 4
CONSTANT_STD = 2.0      # a frame whose luma std is below this is one flat colour
CLIP_LOW, CLIP_HIGH = 5, 250
CUT_THUMB_WIDTH = 32    # content change is compared on tiny, mean-removed thumbnails (noise averages out)
CUT_MIN_CHANGE = 12.0   # luma levels: a cut changes the thumbnail at least this much...
CUT_RATIO = 4.0         # ...and this many times more than the clip's typical frame-to-frame change

def as_uint8(frames: np.ndarray) -> tuple[np.ndarray, float]:
    """uint8 frames, and the share of non-finite values (float frames: 0..1 scale, NaN/Inf counted)."""
    if frames.dtype == np.uint8:
        return frames, 0.0
    if not np.issubdtype(frames.dtype, np.floating):
        raise ValueError(f"frames must be uint8 or float, got {frames.dtype}")
    finite = np.isfinite(frames)
    bad = float(1.0 - finite.mean())
    clean = np.where(finite, frames, 0.0)
    return (np.clip(clean, 0.0, 1.0) * 255.0).round().astype(np.uint8), bad


def grey(frames: np.ndarray) -> np.ndarray:
    """BT.601 luma of uint8 RGB frames, uint8 (T, H, W)."""
    return np.stack([cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames])


def downscale(y: np.ndarray, width: int) -> np.ndarray:
    t, h, w = y.shape
    if w <= width:
        return y
    size = (width, max(1, round(h * width / w)))
    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in y])


def sample_indices(n: int, k: int) -> np.ndarray:
    return np.linspace(0, n - 1, num=min(k, n)).round().astype(int)


def exposure_metrics(y: np.ndarray, black_luma: float) -> dict[str, float]:
    stats = np.array([cv2.meanStdDev(f) for f in y]).reshape(len(y), 2)
    mean, std = stats[:, 0], stats[:, 1]
    return {
        "brightness": float(mean.mean()),
        "contrast": float(std.mean()),
        "black_fraction": float((mean < black_luma).mean()),
        "constant_fraction": float((std < CONSTANT_STD).mean()),
        "clipped_low": float(np.count_nonzero(y <= CLIP_LOW) / y.size),
        "clipped_high": float(np.count_nonzero(y >= CLIP_HIGH) / y.size),
    }


def sharpness(y: np.ndarray) -> float:
    """Variance of the Laplacian, mean over sampled frames; it depends on resolution and content."""
    return float(np.mean([cv2.meanStdDev(cv2.Laplacian(y[i], cv2.CV_32F))[1][0, 0] ** 2
                          for i in sample_indices(len(y), SHARPNESS_FRAMES)]))


def motion(small: np.ndarray) -> tuple[float, float]:
    """Motion (99th percentile of the flow magnitude, % of the frame width per frame) and flow residual.

    The percentile, not the mean, so that a small subject moving in a still scene counts as motion: a
    frozen clip is one where nothing moves, not one where little does.

    The residual is what is left of frame t+1 after warping it back onto frame t along the flow: small
    for motion the flow follows (a pan, a moving object), large for frames that change in ways no motion
    explains (noise, content jumping about, motion too fast to follow). Flow magnitude alone cannot tell
    these apart: Farneback saturates and reports a moderate value for both.
    """
    if len(small) < 2:
        return 0.0, 0.0
    h, w = small.shape[1:]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    mags, residuals = [], []
    means = small.reshape(len(small), -1).mean(axis=1)
    for t in sample_indices(len(small) - 1, FLOW_PAIRS):
        # Match b's brightness to a's first: a flicker is measured as flicker, not as motion or chaos.
        a = small[t]
        b = np.clip(small[t + 1].astype(np.int16) + round(means[t] - means[t + 1]), 0, 255).astype(np.uint8)
        flow = cv2.calcOpticalFlowFarneback(a, b, None, pyr_scale=0.5, levels=3, winsize=15, iterations=3,
                                            poly_n=5, poly_sigma=1.2, flags=0)
        mags.append(float(np.percentile(np.sqrt((flow ** 2).sum(axis=-1)), 99)))
        back = cv2.remap(b, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)
        residuals.append(float(cv2.absdiff(back, a).mean()))
    return 100.0 * float(np.mean(mags)) / w, float(np.mean(residuals))


def flicker(mean_luma: np.ndarray) -> float:
    """Mean |m[t] - (m[t-1] + m[t+1]) / 2|: a fade (steady change) scores 0, alternating jumps score high."""
    if len(mean_luma) < 3:
        return 0.0
    return float(np.abs(mean_luma[1:-1] - (mean_luma[:-2] + mean_luma[2:]) / 2).mean())


def cut_frames(small: np.ndarray) -> list[int]:
    """Frames that start a new shot: their content jumps both absolutely and against the clip's norm.

    Thumbnails are mean-removed, so a flicker or a fade (a brightness change) is not a cut; a steady
    motion or noise changes every pair alike, so the ratio to the other pairs keeps it from counting.
    """
    if len(small) < 2:
        return []
    thumbs = downscale(small, CUT_THUMB_WIDTH).astype(np.float32)
    thumbs -= thumbs.mean(axis=(1, 2), keepdims=True)
    change = np.abs(np.diff(thumbs, axis=0)).mean(axis=(1, 2))
    cuts = []
    for t, c in enumerate(change):
        others = np.delete(change, t)
        typical = float(np.median(others)) if len(others) else 0.0
        if c > CUT_MIN_CHANGE and c > CUT_RATIO * typical:
            cuts.append(t + 1)
    return cuts


def frame_phash(y: np.ndarray) -> int:
    """64-bit DCT perceptual hash of one grey frame (the 8x8 lowest frequencies against their median)."""
    low = cv2.dct(cv2.resize(y, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32))[:8, :8]
    bits = (low > np.median(low)).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def clip_phash(y: np.ndarray) -> str:
    """PHASH_FRAMES frame hashes, evenly spaced, as one hex string (16 hex digits per frame)."""
    idx = np.linspace(0, len(y) - 1, PHASH_FRAMES).round().astype(int)  # repeats frames of short clips
    return "".join(f"{frame_phash(y[i]):016x}" for i in idx)


def phash_distance(a: str, b: str) -> int:
    """Hamming distance in bits between two clip hashes of the same length."""
    if len(a) != len(b):
        raise ValueError(f"phash_distance: hashes of different lengths ({len(a)} and {len(b)} hex digits)")
    return (int(a, 16) ^ int(b, 16)).bit_count()


def frame_metrics(frames: np.ndarray, black_luma: float) -> tuple[dict[str, float], str, list[int]]:
    """All image metrics of one clip of uint8 frames, its perceptual hash, and the frames where cuts start."""
    y = grey(frames)
    small = downscale(y, ANALYSIS_WIDTH)
    m = {**exposure_metrics(y, black_luma), "sharpness": sharpness(y)}
    m["motion"], m["flow_residual"] = motion(small)
    m["frame_diff"] = float(np.abs(np.diff(small.astype(np.int16), axis=0)).mean()) if len(small) > 1 else 0.0
    m["flicker"] = flicker(small.reshape(len(small), -1).mean(axis=1))
    cuts = cut_frames(small)
    m["scene_cuts"] = float(len(cuts))
    return m, clip_phash(y), cuts
