"""Conditioning inputs read and checked without Ray (stages/media/conditioning.py): every kind of bad file names
its column and URI, every image mode becomes the same 8-bit RGB, the resize policies, the hash checked again in
the worker, and a transient storage error retried."""
from __future__ import annotations

import io
import struct
import zlib

import av
import numpy as np
import pytest
from PIL import Image

from stages.media.conditioning import (MAX_PIXELS, InputError, Target, decode_image, fit, load, probe,
                                       resolve_uri)


def png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def mp4(frames: int, size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            a = np.full((size[1], size[0], 3), 20 * i % 255, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (its CRC fixed), over a tiny body: only a lazy size check, before
    any pixel is decoded, can refuse it cheaply."""
    data = bytearray(png(Image.new("RGB", (4, 4))))
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12:ihdr + 13]))
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def write(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("name,data,column,words", [
    ("missing.png", None, "image", "no such file"),
    ("empty.png", b"", "image", "the file is empty"),
    ("notes.png", b"not an image at all, just words\n" * 4, "image", "not an image"),
    ("truncated.png", "truncated", "last_image", "truncated"),
    ("huge.png", "huge", "image", f"over the limit of {MAX_PIXELS:,} pixels"),
    ("still.png", "still", "video", "an image (png), not a video clip"),
    ("cut.mp4", "cut-mp4", "video", "not a readable video"),
    ("words.mp4", b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 30, "video", "not a readable video"),
])
def test_every_bad_input_names_its_column_and_uri(tmp_path, name, data, column, words):
    if data == "truncated":
        data = png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)))[:400]
    elif data == "huge":
        data = huge_png_header(10_000, 6_000)  # 60 MP
    elif data == "still":
        data = png(Image.new("RGB", (8, 8)))
    elif data == "cut-mp4":
        data = mp4(9)[:300]
    uri = str(tmp_path / name) if data is None else write(tmp_path, name, data)
    with pytest.raises(InputError) as e:
        probe(column, uri)
    message = str(e.value)
    assert message.startswith(f"{column}: {uri}: ") and words in message, message


def test_the_pixel_limit_is_checked_before_decoding_and_names_the_limit(tmp_path):
    uri = write(tmp_path, "big.png", huge_png_header(8_000, 8_000))
    with pytest.raises(InputError, match="8000x8000 = 64,000,000 pixels, over the limit of 50,000,000"):
        probe("image", uri)
    with pytest.raises(InputError, match="over the limit of 1,000 pixels"):
        probe("image", write(tmp_path, "small.png", png(Image.new("RGB", (40, 40)))), max_pixels=1000)


def test_every_image_mode_becomes_upright_8bit_rgb(tmp_path):
    rgb = decode_image(png(Image.new("RGB", (6, 4), (10, 200, 30))), "image", "u")
    assert rgb.mode == "RGB" and rgb.size == (6, 4)
    # CMYK JPEG
    cmyk = decode_image(jpeg(Image.new("CMYK", (8, 8), (0, 255, 255, 0))), "image", "u")
    assert cmyk.mode == "RGB" and np.asarray(cmyk)[4, 4, 0] > 200 and np.asarray(cmyk)[4, 4, 1] < 60  # red
    # 16-bit grayscale PNG: 65535 is white, 32896 mid-grey (not clipped to white)
    a16 = np.array([[0, 32896], [65535, 65535]], np.uint16)
    g16 = decode_image(png(Image.fromarray(a16)), "image", "u")
    assert g16.mode == "RGB" and [int(v) for v in np.asarray(g16)[..., 0].ravel()] == [0, 128, 255, 255]
    # palette PNG with a transparent index: transparent pixels over white
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 255] + [255, 0, 0] * 255)
    pal.putpixel((0, 0), 1)
    p = decode_image(png(pal, transparency=0), "image", "u")
    assert tuple(np.asarray(p)[1, 1]) == (255, 255, 255) and tuple(np.asarray(p)[0, 0]) == (255, 0, 0)
    # RGBA: half-transparent black over white is mid-grey
    rgba = decode_image(png(Image.new("RGBA", (2, 2), (0, 0, 0, 128))), "image", "u")
    assert abs(int(np.asarray(rgba)[0, 0, 0]) - 127) <= 1
    # EXIF orientation 6 (rotate 90 clockwise to view): a 40x20 JPEG is shown 20x40
    exif = Image.Exif()
    exif[0x0112] = 6
    upright = decode_image(jpeg(Image.new("RGB", (40, 20), (0, 0, 0)), exif=exif.tobytes()), "image", "u")
    assert upright.size == (20, 40)


def test_resize_policies_meet_the_target_size():
    img = Image.new("RGB", (200, 100), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 50, 100))  # a blue left quarter
    crop = fit(img, Target(64, 64, "crop"))
    pad = fit(img, Target(64, 64, "pad"))
    stretch = fit(img, Target(64, 64, "stretch"))
    assert crop.size == pad.size == stretch.size == (64, 64)
    assert tuple(np.asarray(crop)[32, 2]) != (0, 0, 0) and np.asarray(crop)[32, 2, 2] < 100  # blue cut away
    assert tuple(np.asarray(pad)[2, 32]) == (0, 0, 0) and np.asarray(pad)[32, 2, 2] > 200  # letterboxed; blue kept
    assert np.asarray(stretch)[32, 2, 2] > 200 and tuple(np.asarray(stretch)[2, 32]) != (0, 0, 0)


def test_the_worker_reads_again_and_checks_the_planned_hash(tmp_path):
    uri = write(tmp_path, "a.png", png(Image.new("RGB", (30, 20), (1, 2, 3))))
    planned = probe("image", uri)
    assert (planned.width, planned.height, planned.frames) == (30, 20, 1)
    img = load("image", uri, planned.sha256, Target(32, 16, "stretch"))
    assert img.size == (32, 16) and img.mode == "RGB"
    write(tmp_path, "a.png", png(Image.new("RGB", (30, 20), (9, 9, 9))))
    with pytest.raises(InputError, match="changed since the run was planned"):
        load("image", uri, planned.sha256, Target(32, 16))


def test_a_clip_is_counted_and_its_last_frames_loaded(tmp_path):
    uri = write(tmp_path, "clip.mp4", mp4(13))
    found = probe("video", uri)
    assert found.frames == 13 and (found.width, found.height) == (32, 32)
    frames = load("video", uri, found.sha256, Target(64, 32, "crop"), last_frames=9)
    assert len(frames) == 9 and frames[0].size == (64, 32)


def test_a_transient_storage_error_is_retried(monkeypatch):
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe_file("/cond/a.png", png(Image.new("RGB", (8, 8))))
    real, calls = fs.cat_file, []

    def flaky(path, *a, **kw):
        calls.append(path)
        if len(calls) < 3:
            raise OSError("503 SlowDown: please reduce your request rate")
        return real(path, *a, **kw)

    monkeypatch.setattr(type(fs), "cat_file", lambda self, path, *a, **kw: flaky(path, *a, **kw))
    assert probe("image", "memory:///cond/a.png").width == 8 and len(calls) == 3


def test_relative_paths_start_from_the_manifests_folder():
    assert resolve_uri("shots/a.png", "s3://b/jobs") == "s3://b/jobs/shots/a.png"
    assert resolve_uri("/abs/a.png", "s3://b/jobs") == "/abs/a.png"
    assert resolve_uri("gs://x/a.png", "/local") == "gs://x/a.png"
