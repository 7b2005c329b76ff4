"""Encoding: frames to an H.264 MP4 (PyAV, libx264, yuv420p, +faststart) and a JPEG poster.

In: filtered rows carrying `frames`. Out: the same rows with `video_bytes`, `poster_bytes`, `codec` and
`duration_s`, frames dropped. Accepted rows are always encoded; rejected ones only with
`keep_rejected`, so that reviewers can look at what the filter threw away.
"""
from __future__ import annotations

import io
import os
import tempfile
import time
from fractions import Fraction

import av
import numpy as np
from PIL import Image

from pipeline.spec import EncodeSpec


def encode_mp4(frames: np.ndarray, fps: int, crf: int, preset: str, metadata: dict | None = None) -> bytes:
    """uint8 (T, H, W, 3) RGB frames to MP4 bytes. H and W must be even (yuv420p halves chroma)."""
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"encode: yuv420p needs even height and width, got {h}x{w}")
    # A real file: +faststart rewrites the file in a second pass, which PyAV cannot do on a BytesIO.
    with tempfile.TemporaryDirectory(prefix="rushes-encode-") as tmp:
        path = os.path.join(tmp, "video.mp4")
        _write_mp4(path, frames, fps, crf, preset, metadata or {})
        with open(path, "rb") as f:
            return f.read()


def _write_mp4(path: str, frames: np.ndarray, fps: int, crf: int, preset: str, metadata: dict) -> None:
    _, h, w, _ = frames.shape
    with av.open(path, mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
        for k, v in metadata.items():
            container.metadata[k] = str(v)
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf), "preset": preset}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def encode_poster(frames: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frames[len(frames) // 2]).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class EncodeStage:
    def __init__(self, spec: EncodeSpec):
        self.spec = spec

    def setup(self) -> None:
        """Nothing to load; libx264 comes with PyAV's wheels."""

    def __call__(self, rows: list[dict]) -> list[dict]:
        for r in rows:
            frames = r.pop("frames", None)
            wanted = r["status"] == "accepted" or (r["status"] == "rejected" and self.spec.keep_rejected)
            if frames is None or not wanted:
                continue
            start = time.perf_counter()
            try:
                r["video_bytes"] = encode_mp4(frames, r["fps"], self.spec.crf, self.spec.preset,
                                              metadata={"comment": f"rushes params_hash={r['params_hash']}"})
                r["poster_bytes"] = encode_poster(frames, self.spec.poster_quality)
            except Exception as e:  # noqa: BLE001 - recorded on the row
                r.update(status="failed", error=f"encode: {type(e).__name__}: {e}")
                continue
            r["codec"] = "h264"
            r["duration_s"] = len(frames) / r["fps"]
            r["stage_seconds"]["encode"] = time.perf_counter() - start
        return rows
