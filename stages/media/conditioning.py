"""Conditioning inputs: the images and clips a row's video starts from, joins or continues.

A manifest row may name `image` (the first frame), `last_image` (the last frame) and `video` (a clip to
continue), each a URI. They are read twice, by the same code:
- while planning, in the driver (`probe`): the bytes are read (storage errors retried like any other), hashed
  (the sha256 enters `params_hash`), and decoded once to prove they are a usable image or clip; nothing is kept;
- in the sample stage's worker (`load`): read again by URI, the hash checked against the planned one, decoded
  and fitted to the variant's height and width (`fit`: crop, pad or stretch).

Every problem is an `InputError` whose message names the column and the URI: a missing or unreadable file, an
empty or truncated one, a file that is no image or video, an image over the pixel limit (checked from its
header, before any pixel is decoded), a clip with no frames.

Images are made 8-bit RGB the same way every time: EXIF orientation applied; transparency (RGBA, LA, a palette
or a grayscale image with a transparent colour) composited over white, the usual ground of a product shot;
CMYK converted (no ICC profile is applied); 16-bit and 32-bit grayscale scaled to 8 bits (the top 8 bits of
16); palette and other modes converted by Pillow. A padded image is letterboxed in black.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import Field

from stages.common.storage import StorageError, filesystem, with_retries
from stages.common.strict import Strict

COLUMNS = ("image", "last_image", "video")  # the manifest columns, in the order they are checked
IMAGE_COLUMNS = ("image", "last_image")
MAX_PIXELS = 50_000_000  # 50 MP: the default limit of one conditioning image
BACKGROUND = (255, 255, 255)  # transparent pixels become white
PAD = (0, 0, 0)  # `pad` letterboxes in black
Resize = Literal["crop", "pad", "stretch"]


class ConditioningSpec(Strict):
    """How a row's conditioning image (or clip) meets the video's size, and how strongly it holds."""

    resize: Resize = Field("crop", description="crop: scale to cover the target size and cut the centre (keeps the "
                                               "target's aspect ratio); pad: scale to fit inside and letterbox in "
                                               "black; stretch: scale each side to the target")
    strength: float | None = Field(None, ge=0.0, le=1.0, description=(
        "how strongly the conditioning frames hold (1: exactly), for families that have it (ltx: "
        "LTXConditionPipeline's strength); null: the pipeline's own"))
    max_pixels: int = Field(MAX_PIXELS, ge=1, description="an image with more pixels than this is refused (its row "
                                                          "is invalid), checked before it is decoded")


class InputError(ValueError):
    """A conditioning input cannot be used; the message names the column and the URI."""


@dataclass(frozen=True)
class Probe:
    """What planning learns of one input: the sha256 of its bytes, its size, and a clip's frame count."""

    sha256: str
    width: int
    height: int
    frames: int = 1


@dataclass(frozen=True)
class Target:
    """The shape a variant's conditioning is fitted to."""

    width: int
    height: int
    resize: str = "crop"


def resolve_uri(value: str, base: str) -> str:
    """A manifest's URI as read: an fsspec URI or an absolute path as given; a relative path joined to `base`
    (the manifest's folder)."""
    if "://" in value or value.startswith("/") or not base:
        return value
    return f"{base.rstrip('/')}/{value}"


def read_input(column: str, uri: str, storage_options: dict | None = None) -> bytes:
    """The bytes at `uri` (transient storage errors retried); an InputError for a missing, unreadable or empty one."""
    try:
        fs, path = filesystem(uri, storage_options)
        data = with_retries("read", uri, lambda: fs.cat_file(path))
    except StorageError as e:
        cause = e.__cause__
        if isinstance(cause, FileNotFoundError):
            raise InputError(f"{column}: {uri}: no such file") from None
        if isinstance(cause, IsADirectoryError):
            raise InputError(f"{column}: {uri}: is a folder, not a file") from None
        raise InputError(f"{column}: {uri}: cannot be read: {type(cause).__name__}: {cause}") from None
    except (ValueError, ImportError) as e:  # an unknown protocol, a missing fsspec implementation
        raise InputError(f"{column}: {uri}: cannot be read: {e}") from None
    if not data:
        raise InputError(f"{column}: {uri}: the file is empty")
    return data


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB: transparency over white, CMYK and palettes converted, 16- and 32-bit grayscale scaled."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or (img.mode == "I" and a.max(initial=0) > 255):
            a = a / 257.0  # 0..65535 -> 0..255
        img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    transparent = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if transparent:
        rgba = img.convert("RGBA")
        ground = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(ground, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def decode_image(data: bytes, column: str, uri: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The image in `data` as upright 8-bit RGB, or an InputError: not an image, over `max_pixels` (read from the
    header before decoding), truncated or corrupt."""
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:  # Pillow's own guard (about 179 MP): too big to decode at all
        raise InputError(f"{column}: {uri}: the image is too large to decode ({e})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise InputError(f"{column}: {uri}: not an image ({type(e).__name__}: {e})") from None
    w, h = img.size
    if w * h > max_pixels:
        raise InputError(f"{column}: {uri}: the image is {w}x{h} = {w * h:,} pixels, over the limit of "
                         f"{max_pixels:,} pixels (conditioning.max_pixels)")
    if w < 1 or h < 1:
        raise InputError(f"{column}: {uri}: the image has no pixels ({w}x{h})")
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
        return _rgb(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InputError(f"{column}: {uri}: the image cannot be decoded, it may be truncated or corrupt "
                         f"({type(e).__name__}: {e})") from None


def decode_video(data: bytes, column: str, uri: str, last: int | None = None) -> tuple[list[Image.Image], int]:
    """(the clip's last `last` frames as RGB images (all of them when None; none when 0), its frame count), or an
    InputError: not a video (an image is refused too), no video stream, undecodable, no frames."""
    import av

    frames, count = [], 0
    try:
        with av.open(io.BytesIO(data)) as container:
            fmt = container.format.name or ""
            if fmt.endswith("_pipe") or fmt in ("image2", "gif"):
                raise InputError(f"{column}: {uri}: an image ({fmt.removesuffix('_pipe')}), not a video clip")
            if not container.streams.video:
                raise InputError(f"{column}: {uri}: has no video stream")
            for frame in container.decode(container.streams.video[0]):
                count += 1
                if last is None or last > 0:
                    frames.append(frame.to_image().convert("RGB"))
                    if last is not None and len(frames) > last:
                        frames.pop(0)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - PyAV's errors (InvalidDataError, ...) are OSErrors and ValueErrors
        raise InputError(f"{column}: {uri}: not a readable video ({type(e).__name__}: {e})") from None
    if count == 0:
        raise InputError(f"{column}: {uri}: the clip has no frames (empty or truncated)")
    return frames, count


def probe(column: str, uri: str, storage_options: dict | None = None, max_pixels: int = MAX_PIXELS) -> Probe:
    """Read, hash and check one input while planning; an InputError names the column and the URI."""
    data = read_input(column, uri, storage_options)
    if column == "video":
        frames, count = decode_video(data, column, uri, last=1)
        w, h = frames[-1].size
        return Probe(sha256_of(data), w, h, count)
    img = decode_image(data, column, uri, max_pixels)
    return Probe(sha256_of(data), img.width, img.height)


def fit(img: Image.Image, target: Target) -> Image.Image:
    """`img` at exactly the target's width and height, by its resize policy."""
    size = (target.width, target.height)
    if img.size == size:
        return img
    if target.resize == "crop":
        return ImageOps.fit(img, size, method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))
    if target.resize == "pad":
        return ImageOps.pad(img, size, method=Image.Resampling.LANCZOS, color=PAD, centering=(0.5, 0.5))
    if target.resize == "stretch":
        return img.resize(size, Image.Resampling.LANCZOS)
    raise ValueError(f"conditioning.resize: {target.resize!r} (crop, pad or stretch)")


def load(column: str, uri: str, sha256: str, target: Target, storage_options: dict | None = None,
         last_frames: int | None = None):
    """In the sample stage: the input read again, its bytes checked against the hash planned for it, and fitted to
    `target`: an RGB image, or for `video` a list of the clip's last `last_frames` frames. An InputError when
    the bytes changed since planning (the variant is then failed, and the next run plans it anew)."""
    data = read_input(column, uri, storage_options)
    if sha256_of(data) != sha256:
        raise InputError(f"{column}: {uri}: the file changed since the run was planned (sha256 {sha256_of(data)[:12]}, "
                         f"planned {sha256[:12]}); run the job again to use the new one")
    if column == "video":
        frames, _ = decode_video(data, column, uri, last=last_frames)
        return [fit(f, target) for f in frames]
    return fit(decode_image(data, column, uri, max_pixels=2**62), target)
