"""Video files, posters and previews: the codecs and containers the encode stage writes, and reading them back.

Codecs (PyAV's FFmpeg): h264 = libx264 in MP4, av1 = libsvtav1 in MP4, vp9 = libvpx-vp9 in WebM (VP9's
own container, as browsers and YouTube serve it). All yuv420p, constant quality (CRF); MP4s get
+faststart. yuv420p halves chroma, and H.264 can only code even sizes, so h264 pads an odd width or
height by one pixel (the edge repeated, right and bottom); AV1 and VP9 code odd sizes as they are.

Provenance: the container carries `rushes_*` tags (model, params_hash, run id, id, variant; see
`provenance`), and a `comment` "rushes params_hash=...". MP4 keeps custom tags only with
`movflags use_metadata_tags`; Matroska upper-cases tag names, so `read_provenance` lower-cases them.
"""
from __future__ import annotations

import io
import math
import os
import tempfile
from fractions import Fraction

import av
import cv2
import numpy as np
from PIL import Image

# codec option -> (FFmpeg encoder, container format, file extension)
CODECS = {"h264": ("libx264", "mp4", "mp4"), "av1": ("libsvtav1", "mp4", "mp4"),
          "vp9": ("libvpx-vp9", "webm", "webm")}
PRESETS = ["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"]
# libx264's preset names mapped onto SVT-AV1's preset (0 slowest .. 13) and libvpx's (deadline, cpu-used).
SVT_PRESET = dict(zip(PRESETS, [12, 11, 10, 9, 8, 7, 6, 5, 4]))
VPX_SPEED = dict(zip(PRESETS, [("realtime", 8), ("realtime", 6), ("good", 5), ("good", 4), ("good", 3),
                               ("good", 2), ("good", 1), ("good", 0), ("best", 0)]))


def missing_encoder(codec: str) -> str | None:
    """Why this PyAV cannot encode `codec`, or None when it can."""
    encoder = CODECS[codec][0]
    if encoder in av.codec.codecs_available:
        return None
    return (f"{codec} needs the {encoder} encoder, which this PyAV ({av.__version__}) was built without; "
            f"available here: {', '.join(c for c in CODECS if CODECS[c][0] in av.codec.codecs_available)}")


def encoder_options(codec: str, crf: int, preset: str) -> dict[str, str]:
    if codec == "h264":
        return {"crf": str(crf), "preset": preset}
    if codec == "av1":
        return {"crf": str(crf), "preset": str(SVT_PRESET[preset])}
    deadline, cpu_used = VPX_SPEED[preset]
    # b=0 makes libvpx's crf constant quality rather than a cap on a bitrate target.
    return {"crf": str(crf), "b": "0", "deadline": deadline, "cpu-used": str(cpu_used), "row-mt": "1"}


def coded_size(codec: str, height: int, width: int) -> tuple[int, int]:
    """(height, width) in the file: h264 rounds odd sizes up to even; AV1 and VP9 keep them."""
    if codec == "h264":
        return height + height % 2, width + width % 2
    return height, width


def encode_video(frames: np.ndarray, fps: int, codec: str = "h264", crf: int = 20, preset: str = "medium",
                 metadata: dict | None = None) -> bytes:
    """uint8 (T, H, W, 3) RGB frames to the bytes of a file in the codec's container."""
    if codec == "av1":
        os.environ.setdefault("SVT_LOG", "2")  # SVT-AV1 prints a banner per encoder at its default level
    # A real file: +faststart rewrites the file in a second pass, which PyAV cannot do on a BytesIO.
    with tempfile.TemporaryDirectory(prefix="rushes-encode-") as tmp:
        path = os.path.join(tmp, f"video.{CODECS[codec][2]}")
        _write(path, frames, fps, codec, crf, preset, metadata or {})
        with open(path, "rb") as f:
            return f.read()


def _write(path: str, frames: np.ndarray, fps: int, codec: str, crf: int, preset: str, metadata: dict) -> None:
    encoder, fmt, _ = CODECS[codec]
    _, h, w, _ = frames.shape
    ch, cw = coded_size(codec, h, w)
    options = {"movflags": "+faststart+use_metadata_tags"} if fmt == "mp4" else {}
    with av.open(path, mode="w", format=fmt, options=options) as container:
        for k, v in metadata.items():
            container.metadata[k] = str(v)
        stream = container.add_stream(encoder, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = cw, ch, "yuv420p"
        stream.options = encoder_options(codec, crf, preset)
        for frame in frames:
            if (ch, cw) != (h, w):
                frame = cv2.copyMakeBorder(frame, 0, ch - h, 0, cw - w, cv2.BORDER_REPLICATE)
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def verify_video(data: bytes, num_frames: int, height: int, width: int, fps: int) -> str | None:
    """Decode `data` back; None when frame count, size and duration match, else what is wrong."""
    try:
        with av.open(io.BytesIO(data)) as c:
            stream = c.streams.video[0]
            count, size = 0, None
            for frame in c.decode(stream):
                count += 1
                size = size or (frame.height, frame.width)
            duration = c.duration / 1e6 if c.duration else count / float(stream.average_rate or fps)
    except Exception as e:  # noqa: BLE001 - any decoder complaint means the file is not usable
        return f"cannot decode: {type(e).__name__}: {e}"
    if count != num_frames:
        return f"{count} frames decoded, expected {num_frames}"
    if size != (height, width):
        return f"decoded size {size[1]}x{size[0]}, expected {width}x{height}"
    if abs(duration - num_frames / fps) > 1 / fps + 1e-6:
        return f"duration {duration:.3f} s, expected {num_frames / fps:.3f} s (within one frame)"
    return None


def encode_poster(frames: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frames[len(frames) // 2]).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_preview(frames: np.ndarray, fps: int, width: int = 256, max_frames: int = 16) -> bytes:
    """An animated WebP: every k-th frame (at most `max_frames`), at most `width` px wide, real-time speed."""
    step = max(1, math.ceil(len(frames) / max_frames))
    _, h, w, _ = frames.shape
    size = (min(width, w), max(1, round(h * min(width, w) / w)))
    images = [Image.fromarray(f).resize(size, Image.Resampling.BILINEAR) if size != (w, h) else Image.fromarray(f)
              for f in frames[::step]]
    buf = io.BytesIO()
    images[0].save(buf, format="WEBP", save_all=True, append_images=images[1:], duration=round(1000 * step / fps),
                   loop=0, quality=70, method=4)
    return buf.getvalue()


def provenance(r: dict, run_id: str, model: dict | None) -> dict[str, str]:
    """Container tags that say where a file came from, even when it travels without its record."""
    model = model or {}
    tags = {
        "comment": f"rushes params_hash={r['params_hash']}",
        "rushes_id": r.get("id"), "rushes_variant": r.get("variant"), "rushes_run_id": run_id or None,
        "rushes_params_hash": r["params_hash"],
        "rushes_model_family": model.get("family"), "rushes_model_path": model.get("path"),
        "rushes_model_revision": model.get("revision"),
        "rushes_model_weights_hash": r.get("model_weights_hash") or model.get("weights_hash"),
    }
    return {k: str(v) for k, v in tags.items() if v is not None}


def read_provenance(data: bytes) -> dict[str, str]:
    """The `rushes_*` tags (and comment) of an encoded file, with lower-case names whatever the container."""
    with av.open(io.BytesIO(data)) as c:
        tags = {k.lower(): v for k, v in c.metadata.items()}
    return {k: v for k, v in tags.items() if k.startswith("rushes_") or k == "comment"}


class VerifyError(Exception):
    """The encoded file does not decode back to what was encoded."""
