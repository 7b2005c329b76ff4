"""Encoding round-trips through PyAV: frame count, size, fps, faststart, poster."""
import io

import av
import numpy as np
import pytest
from PIL import Image

from pipeline.spec import EncodeSpec
from stages.encode import EncodeStage, encode_mp4


def gradient(t=9, h=48, w=64):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([np.stack([(x * 4 + i * 8) % 256, (y * 4) % 256, np.full_like(x, 128)], -1)
                     for i in range(t)]).astype(np.uint8)


def decode(data: bytes):
    with av.open(io.BytesIO(data)) as c:
        s = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
        return frames, s.average_rate, s.codec_context.name, dict(c.metadata)


def test_mp4_round_trip_keeps_frames_size_and_fps():
    frames = gradient()
    data = encode_mp4(frames, fps=12, crf=10, preset="ultrafast", metadata={"comment": "params_hash=abc"})
    out, rate, codec, meta = decode(data)
    assert len(out) == 9 and out[0].shape == (48, 64, 3)
    assert rate == 12 and codec == "h264"
    assert meta.get("comment") == "params_hash=abc"
    # lossy but close at crf 10
    assert np.abs(out[4].astype(int) - frames[4].astype(int)).mean() < 6
    # +faststart: the index (moov) comes before the media data (mdat)
    assert data.index(b"moov") < data.index(b"mdat")


def test_encoding_is_deterministic():
    frames = gradient()
    assert encode_mp4(frames, 8, 20, "medium") == encode_mp4(frames, 8, 20, "medium")


def test_odd_size_is_an_error_naming_the_size():
    with pytest.raises(ValueError, match="even height and width, got 47x64"):
        encode_mp4(gradient(h=47), 8, 20, "ultrafast")


def test_stage_encodes_accepted_rows_and_skips_rejected_unless_kept():
    rows = [{"id": "a", "variant": 0, "status": s, "fps": 8, "params_hash": "h", "frames": gradient(),
             "stage_seconds": {}} for s in ("accepted", "rejected")]
    out = EncodeStage(EncodeSpec(preset="ultrafast"))(rows)
    assert "video_bytes" in out[0] and "video_bytes" not in out[1]
    assert all("frames" not in r for r in out)
    assert out[0]["duration_s"] == pytest.approx(9 / 8)
    poster = Image.open(io.BytesIO(out[0]["poster_bytes"]))
    assert poster.size == (64, 48) and poster.format == "JPEG"
    rows = [{"id": "a", "variant": 0, "status": "rejected", "fps": 8, "params_hash": "h",
             "frames": gradient(), "stage_seconds": {}}]
    assert "video_bytes" in EncodeStage(EncodeSpec(keep_rejected=True, preset="ultrafast"))(rows)[0]
