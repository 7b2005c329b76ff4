"""Segments: the saved windows that make a long video resumable.

When a window is finished its latents (and the generator state after it) are written to
`<output>/segments/<id>/<variant>/<params_hash[:16]>/<n>.npz` with an atomic put. A sampler that dies
mid-video (a killed actor, a lost node, a killed driver and a re-run) starts again from the last saved
segment, not from the first. The folder is keyed by `params_hash`, so a changed prompt or setting never
resumes from another video's segments, and a re-run under a new run id still finds them. The decoded frames
of a long video are written beside them (stages/long_video/stream.py). The folder is removed once the video's
record (accepted or rejected) is committed (`forget_segments`, from the driver): a driver that dies between
writing the objects and committing finds every segment again on the re-run.
"""
from __future__ import annotations

import io

import numpy as np

from stages.common.storage import filesystem, join, put_atomic, read_bytes, with_retries
from stages.long_video.windows import is_streamed


class SegmentStore:
    """The saved segments of one long video: `<n>.npz` holding the latents that segment added (C, t, H', W')
    and the sampling generator's state after it. Written atomically, so a reader sees whole segments only."""

    def __init__(self, output: str, row_id: str, variant: int, params_hash: str, storage_options: dict | None = None):
        self.fs, root = filesystem(output, storage_options)
        self.folder = join(root, "segments", row_id, str(variant), params_hash[:16])
        self.saved = 0  # segments written by this store (not loaded)

    def path(self, n: int) -> str:
        return join(self.folder, f"{n:04d}.npz")

    def load(self) -> list[dict]:
        """The segments already saved, in order, up to the first one missing."""
        out = []
        while True:
            path = self.path(len(out))
            if not with_retries("read", self.fs.unstrip_protocol(path), lambda p=path: self.fs.exists(p)):
                return out
            with np.load(io.BytesIO(read_bytes(self.fs, path))) as z:
                out.append({k: z[k] for k in z.files})

    def save(self, n: int, latents: np.ndarray, **state: np.ndarray) -> None:
        buf = io.BytesIO()
        np.savez(buf, latents=latents, **state)
        put_atomic(self.fs, self.path(n), buf.getvalue())
        self.saved += 1

    def remove(self) -> None:
        """Forget the segments (the video is finished and recorded)."""
        uri = self.fs.unstrip_protocol(self.folder)
        with_retries("delete", uri, lambda: self.fs.rm(self.folder, recursive=True)
                     if self.fs.exists(self.folder) else None)


def store_for(ctx, row: dict) -> SegmentStore | None:
    """The segment store of a row in this run's output, or None outside a job (no output to save to)."""
    if not ctx.output or not row.get("params_hash"):
        return None
    return SegmentStore(ctx.output, row["id"], row["variant"], row["params_hash"], ctx.storage_options)


def forget_segments(ctx, row: dict) -> None:
    """Remove a finished long video's segments and frame chunks (its record is committed, accepted or
    rejected: a re-run would skip it either way). The driver calls it for every committed record, so a
    record that is no long video costs nothing (no store, no filesystem)."""
    if not is_streamed(row):
        return
    store = store_for(ctx, row)
    if store is not None:
        store.remove()
