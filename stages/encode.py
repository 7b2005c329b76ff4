"""Encoding: frames to a video file, a JPEG poster and an animated WebP preview, each checked.

In: filtered rows carrying `frames` (uint8 (T, H, W, 3)). Out: the same rows, frames dropped, with
`video_bytes`, `video_ext`, `poster_bytes`, `preview_bytes`, `codec`, `resolution` (the size in the
file) and `duration_s`, and for a conditioned row `input_preview_bytes`: a small JPEG of each conditioning input as
the video saw it (fitted to its size; a clip's last frame), which the report shows beside the video; or
`status="failed"` and an `error` starting with "encode:". Accepted rows are
always encoded; rejected ones only with `keep_rejected`, so that reviewers can look at what the filter
threw away. Codecs, containers and provenance tags: stages/media/codecs.py.

Every file is decoded back before it leaves the stage (`verify_video`): frame count, size and duration
must match, else the row is `failed` with the reason.
"""
from __future__ import annotations

import io
import time
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import Field, model_validator

from stages.contract import Stage, StageOptions
from stages.long_video.stream import encode_stream
from stages.media.conditioning import COLUMNS, InputError, Target, load
from stages.media.codecs import (CODECS, VerifyError, coded_size, encode_poster, encode_preview, encode_video,
                                 missing_encoder, provenance, verify_video)


class EncodeOptions(StageOptions):
    """`preset` is libx264's speed scale; for av1 and vp9 it maps onto SVT-AV1's preset and libvpx's
    cpu-used. An unset `crf` takes the codec's default."""

    codec: Literal["h264", "av1", "vp9"] = Field(
        "h264", description="h264 (libx264, .mp4), av1 (libsvtav1, .mp4), vp9 (libvpx-vp9, .webm)")
    crf: int = Field(
        20, ge=0, le=63, description="quality, lower is better: h264 0..51 (20), av1/vp9 0..63 (35/32)")
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
                    "veryslow"] = Field("medium", description="the encoder's speed against size (libx264's scale)")
    poster_quality: int = Field(90, ge=1, le=95, description="JPEG quality of the poster")
    preview_width: int = Field(256, ge=16, le=1024, description="animated WebP preview width (never upscaled)")
    preview_frames: int = Field(16, ge=2, le=64, description="most frames in the preview")
    keep_rejected: bool = Field(False, description="also write videos that the filter rejected")

    @model_validator(mode="before")
    @classmethod
    def _codec_default_crf(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("crf") is None:
            data = {**data, "crf": {"h264": 20, "av1": 35, "vp9": 32}.get(data.get("codec", "h264"), 20)}
        return data

    @model_validator(mode="after")
    def _codec_is_usable(self) -> "EncodeOptions":
        if self.codec == "h264" and self.crf > 51:
            raise ValueError(f"crf: h264 takes 0..51, got {self.crf}")
        problem = missing_encoder(self.codec)
        if problem:
            raise ValueError(f"codec: {problem}")
        return self

    def pixel_settings(self) -> dict:
        return {"encode": {"codec": self.codec, "crf": self.crf, "preset": self.preset}}


class EncodeStage(Stage):
    """The run id and the model identity of the run context go into each file's provenance tags."""

    name = "encode"
    Options = EncodeOptions
    reads = ("frames",)
    writes = ("video_bytes", "video_ext", "poster_bytes", "preview_bytes", "codec", "resolution", "duration_s",
              "input_preview_bytes")
    consumes = ("frames",)

    def encode(self, r: dict, frames: np.ndarray) -> None:
        s = self.options
        t, h, w, _ = frames.shape
        ch, cw = coded_size(s.codec, h, w)
        video = encode_video(frames, r["fps"], s.codec, s.crf, s.preset, provenance(r, self.ctx.run_id, self.ctx.identity))
        # against the frames the row asked for: a model that made more or fewer is caught here
        problem = verify_video(video, r.get("num_frames", t), ch, cw, r["fps"])
        if problem:
            raise VerifyError(problem)
        r.update(video_bytes=video, video_ext=CODECS[s.codec][2], codec=s.codec, resolution=f"{cw}x{ch}",
                 duration_s=t / r["fps"], poster_bytes=encode_poster(frames, s.poster_quality),
                 preview_bytes=encode_preview(frames, r["fps"], s.preview_width, s.preview_frames))

    def input_previews(self, r: dict) -> dict[str, bytes]:
        """{column: JPEG} of the row's conditioning inputs, read again by URI and fitted as sampling fitted them, at
        the preview's width. One that cannot be read now (changed since sampling) is left out: the video is fine."""
        out = {}
        for column in (c for c in COLUMNS if r.get(c)):
            target = Target(r["width"], r["height"], r.get("conditioning_resize") or "crop")
            try:
                img = load(column, r[column], r[f"{column}_sha256"], target, self.ctx.storage_options, last_frames=1)
            except InputError:
                continue
            img = img[-1] if isinstance(img, list) else img
            width = min(self.options.preview_width, img.width)
            img = img.resize((width, max(1, round(img.height * width / img.width))), Image.Resampling.BILINEAR)
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=self.options.poster_quality)
            out[column] = buf.getvalue()
        return out

    def __call__(self, rows: list[dict]) -> list[dict]:
        for r in rows:
            frames = r.pop("frames", None)
            wanted = r["status"] == "accepted" or (r["status"] == "rejected" and self.options.keep_rejected)
            if frames is None or not wanted:
                continue
            start = time.perf_counter()
            try:
                if frames.streamed:  # a long video, encoded a segment at a time (stages/long_video/stream.py)
                    r.update(encode_stream(r, frames, self.options,
                                           provenance(r, self.ctx.run_id, self.ctx.identity)))
                else:
                    self.encode(r, frames.array)
                r["input_preview_bytes"] = self.input_previews(r)
            except VerifyError as e:
                r.update(status="failed", error=f"encode: verify: {e}")
            except Exception as e:  # noqa: BLE001 - recorded on the row
                r.update(status="failed", error=f"encode: {type(e).__name__}: {e}")
            r["stage_seconds"]["encode"] = time.perf_counter() - start
        return rows
