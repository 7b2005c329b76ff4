"""Frames as stages see them: the `frames` row key.

A short video's frames are held whole (`FrameArray`). A long video's (a minute at 544x960 is 2.2 GB of uint8
frames) never are: they live in storage, one chunk object per segment (`FrameChunks`). Both offer the same
three things, so a stage that reads or changes frames works for either without knowing which:
- `num_frames`;
- `chunks()`: (first frame index, uint8 frames (t, H, W, 3)) in order: one chunk for a `FrameArray`;
- `map(fn)`: new frames, `fn(first, chunk)` applied chunk by chunk (for chunks in storage, each result is
  written beside the input, under the next generation's folder, and the input chunk is left for a retry).
`streamed` tells the stages that treat a long video differently (metrics per segment, encoding from storage).

`video_to_frames` turns a VAE's output into uint8 frames (T, H, W, 3).
"""
from __future__ import annotations

import io
import posixpath
from collections.abc import Callable, Iterator

import numpy as np

from stages.common.storage import filesystem, put_atomic, read_bytes, remove

Chunk = Callable[[int, np.ndarray], np.ndarray]


class FrameArray:
    """A short video's frames, whole: uint8 (T, H, W, 3)."""

    streamed = False

    def __init__(self, array: np.ndarray):
        self.array = array

    @property
    def num_frames(self) -> int:
        return len(self.array)

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        yield 0, self.array

    def map(self, fn: Chunk) -> "FrameArray":
        return FrameArray(fn(0, self.array))


def read_chunk(uri: str, storage_options: dict | None) -> np.ndarray:
    fs, path = filesystem(uri, storage_options)
    return np.load(io.BytesIO(read_bytes(fs, path)))


def write_chunk(fs, path: str, frames: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, frames)
    put_atomic(fs, path, buf.getvalue())
    return fs.unstrip_protocol(path)


class FrameChunks:
    """A long video's frames in storage: chunk object `uris[k]` holds frames [bounds[k][0], bounds[k][1])."""

    streamed = True

    def __init__(self, uris: list[str], bounds: list[tuple[int, int]], storage_options: dict | None = None):
        self.uris, self.bounds = list(uris), [tuple(b) for b in bounds]
        self.storage_options = storage_options or {}

    @property
    def num_frames(self) -> int:
        return self.bounds[-1][1]

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        for uri, (first, _) in zip(self.uris, self.bounds):
            yield first, read_chunk(uri, self.storage_options)

    def map(self, fn: Chunk) -> "FrameChunks":
        """`<folder>/frames/0000.npy` becomes `<folder>/frames.1/0000.npy`, then `frames.2`, ...: fixed keys, so a
        retried batch writes the same objects again."""
        uris = []
        for uri, (first, end) in zip(self.uris, self.bounds):
            out = fn(first, read_chunk(uri, self.storage_options))
            if len(out) != end - first:
                raise ValueError(f"a frame stage changed a chunk's length: {end - first} frames in, {len(out)} out")
            fs, path = filesystem(uri, self.storage_options)
            folder, name = posixpath.split(path)
            parent, kind = posixpath.split(folder)
            stem, _, generation = kind.partition(".")
            uris.append(write_chunk(fs, posixpath.join(parent, f"{stem}.{int(generation or 0) + 1}", name), out))
        return FrameChunks(uris, self.bounds, self.storage_options)

    def remove(self) -> None:
        for uri in self.uris:
            fs, path = filesystem(uri, self.storage_options)
            remove(fs, path)


def video_to_frames(video) -> tuple[np.ndarray, bool]:
    """A VAE's output for one video, (3, T, H, W) in [-1, 1], to uint8 frames (T, H, W, 3) and whether all
    values were finite (NaN become black rather than garbage, and the row is marked failed)."""
    import torch

    video = video.float()
    finite = bool(torch.isfinite(video).all())
    video = torch.nan_to_num(video, nan=-1.0)
    frames = ((video.permute(1, 2, 3, 0) / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return frames.cpu().numpy(), finite
