"""Encoding round-trips through PyAV for every codec: frames, size, fps, provenance, preview, verification."""
import io

import av
import numpy as np
import pytest
from PIL import Image

from pipeline.spec import JobSpecError, load_job
from stages.contract import RunContext
from stages.media.codecs import CODECS, coded_size, encode_preview, encode_video, read_provenance, verify_video
from stages.encode import EncodeOptions, EncodeStage
from stages.media.frames import FrameArray

MODEL = {"family": "wan", "path": "builtin:tiny-wan", "revision": None, "dtype": "float32",
         "weights_hash": "w" * 64}


def gradient(t=9, h=48, w=64):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([np.stack([(x * 4 + i * 8) % 256, (y * 4) % 256, np.full_like(x, 128)], -1)
                     for i in range(t)]).astype(np.uint8)


def decode(data: bytes):
    with av.open(io.BytesIO(data)) as c:
        s = c.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(s)])
        return frames, s.average_rate, c.duration / 1e6


def row(status="accepted", frames=None, **kw):
    return {"id": "a", "variant": 0, "status": status, "fps": 8, "params_hash": "h" * 64,
            "frames": FrameArray(gradient() if frames is None else frames), "stage_seconds": {}, **kw}


@pytest.mark.parametrize("codec", ["h264", "av1", "vp9"])
def test_every_codec_round_trips_frames_size_fps_and_duration(codec):
    frames = gradient()
    data = encode_video(frames, fps=12, codec=codec, crf=10, preset="ultrafast")
    out, rate, duration = decode(data)
    assert out.shape == frames.shape and rate == 12 and duration == pytest.approx(9 / 12, abs=1 / 12)
    assert np.abs(out[4].astype(int) - frames[4].astype(int)).mean() < 6  # lossy but close at crf 10
    assert verify_video(data, 9, 48, 64, 12) is None


@pytest.mark.parametrize("codec", ["h264", "av1", "vp9"])
def test_odd_sizes_round_trip(codec):
    frames = np.random.default_rng(0).integers(0, 256, size=(5, 63, 97, 3), dtype=np.uint8)
    out, _, _ = decode(encode_video(frames, 8, codec, 10, "ultrafast"))
    h, w = coded_size(codec, 63, 97)
    assert out.shape == (5, h, w, 3)
    if codec == "h264":  # padded by one pixel on the right and bottom, the edge repeated
        assert (h, w) == (64, 98)
        assert np.abs(out[:, -1].astype(int) - out[:, -2].astype(int)).mean() < 8
    else:  # AV1 and VP9 keep the model's exact size
        assert (h, w) == (63, 97)


def test_mp4s_are_faststart_and_h264_is_deterministic():
    for codec in ("h264", "av1"):
        data = encode_video(gradient(), 8, codec, 20, "ultrafast")
        assert data.index(b"moov") < data.index(b"mdat")
    assert encode_video(gradient(), 8, "h264", 20, "medium") == encode_video(gradient(), 8, "h264", 20, "medium")


@pytest.mark.parametrize("codec", ["h264", "av1", "vp9"])
def test_stage_writes_provenance_poster_and_animated_preview(codec):
    stage = EncodeStage(EncodeOptions(codec=codec, preset="ultrafast"), RunContext(run_id="run-1", identity=MODEL))
    r = stage([row(frames=gradient(t=17, h=48, w=64), variant=3)])[0]
    assert r["status"] == "accepted" and "frames" not in r
    assert r["codec"] == codec and r["video_ext"] == CODECS[codec][2] and r["resolution"] == "64x48"
    assert r["duration_s"] == pytest.approx(17 / 8) and r["stage_seconds"]["encode"] > 0
    tags = read_provenance(r["video_bytes"])
    assert tags == {"comment": f"rushes params_hash={'h' * 64}", "rushes_id": "a", "rushes_variant": "3",
                    "rushes_run_id": "run-1", "rushes_params_hash": "h" * 64, "rushes_model_family": "wan",
                    "rushes_model_path": "builtin:tiny-wan", "rushes_model_weights_hash": "w" * 64}
    poster = Image.open(io.BytesIO(r["poster_bytes"]))
    assert poster.size == (64, 48) and poster.format == "JPEG"
    preview = Image.open(io.BytesIO(r["preview_bytes"]))
    assert preview.format == "WEBP" and preview.is_animated and preview.n_frames > 1
    assert preview.size == (64, 48)


def test_preview_is_downscaled_and_subsampled():
    frames = np.random.default_rng(0).integers(0, 256, size=(81, 120, 416, 3), dtype=np.uint8)
    preview = Image.open(io.BytesIO(encode_preview(frames, fps=16, width=208, max_frames=16)))
    assert preview.size == (208, 60) and 1 < preview.n_frames <= 16
    preview.load()
    assert preview.info["duration"] == 1000 * 6 // 16  # every 6th frame, shown at real-time speed


def test_stage_skips_rejected_unless_kept_and_records_odd_size_resolution():
    out = EncodeStage(EncodeOptions(preset="ultrafast"))([row(), row("rejected")])
    assert "video_bytes" in out[0] and "video_bytes" not in out[1]
    assert all("frames" not in r for r in out)
    kept = EncodeStage(EncodeOptions(keep_rejected=True, preset="ultrafast"))([row("rejected")])[0]
    assert "video_bytes" in kept and kept["status"] == "rejected"
    odd = EncodeStage(EncodeOptions(preset="ultrafast"))([row(frames=gradient(h=47, w=63))])[0]
    assert odd["resolution"] == "64x48" and decode(odd["video_bytes"])[0].shape == (9, 48, 64, 3)


def test_verify_catches_truncated_and_mismatched_files():
    data = encode_video(gradient(t=17), 8, "h264", 20, "ultrafast")
    assert verify_video(data, 17, 48, 64, 8) is None
    assert verify_video(data[: len(data) // 2], 17, 48, 64, 8) is not None
    assert verify_video(b"not a video", 17, 48, 64, 8).startswith("cannot decode")
    assert verify_video(data, 18, 48, 64, 8) == "17 frames decoded, expected 18"
    assert verify_video(data, 17, 50, 64, 8) == "decoded size 64x48, expected 64x50"
    assert verify_video(data, 17, 48, 64, 4).startswith("duration 2.125 s, expected 4.250 s")


def test_a_row_that_cannot_be_encoded_is_failed_not_raised():
    r = EncodeStage(EncodeOptions(preset="ultrafast"))([row(frames=np.zeros((0, 8, 8, 3), np.uint8))])[0]
    assert r["status"] == "failed" and r["error"].startswith("encode:") and "video_bytes" not in r


def test_codec_settings_are_validated_up_front(monkeypatch):
    assert EncodeOptions(codec="av1").crf == 35 and EncodeOptions(codec="vp9").crf == 32 and EncodeOptions().crf == 20
    with pytest.raises(ValueError, match="h264 takes 0..51"):
        EncodeOptions(crf=60)
    monkeypatch.setattr(av.codec, "codecs_available", av.codec.codecs_available - {"libsvtav1"})
    with pytest.raises(JobSpecError, match="av1 needs the libsvtav1 encoder"):
        load_job({"manifest": "m.parquet", "output": "o", "encode": {"codec": "av1"}})
