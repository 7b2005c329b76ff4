"""Fault injection for long videos (`model.family: tests.chaos.long_video:ChaosSkyReelsDF`, with
`model.path: builtin:tiny-skyreels-df`).

The real tiny diffusion-forcing model; every window it starts and every segment it saves is logged to
<chaos_dir()>/segments.log (one line each, from whichever worker, so a test counts the work done across
processes). A row whose prompt says "kill-after:<n>" kills its sampling worker (os._exit) as it starts the
window after segment <n> is saved, the first time only: mid-video, with segments 0..n saved.
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from stages.models.families.skyreels_df import SkyReelsDFFamily


def chaos_dir() -> Path:
    """$RUSHES_CHAOS_DIR, else <$RUSHES_CACHE>/chaos (set before the session's Ray starts, so workers have it)."""
    folder = Path(os.environ.get("RUSHES_CHAOS_DIR") or Path(os.environ["RUSHES_CACHE"]) / "chaos")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def log(line: str) -> None:
    with open(chaos_dir() / "segments.log", "a") as f:
        f.write(line + "\n")


class LoggedStore:
    """A SegmentStore that logs each save and arms the kill once segment `kill_after` is saved."""

    def __init__(self, store, row: str, kill_after: int | None):
        self.store, self.row, self.kill_after = store, row, kill_after

    def load(self):
        return self.store.load()

    def save(self, n, latents, **state):
        self.store.save(n, latents, **state)
        log(f"saved {self.row} {n} {os.getpid()}")
        marker = chaos_dir() / f"killed-{self.row}"
        if n == self.kill_after and not marker.exists():
            marker.touch()
            (chaos_dir() / f"armed-{os.getpid()}").touch()


class ChaosSkyReelsDF(SkyReelsDFFamily):
    @classmethod
    def sample_one(cls, pipe, v, params):
        m = re.search(r"kill-after:(\d+)", v.prompt)
        row = re.sub(r"\W+", "-", v.prompt)[:40]
        if v.segments is not None:
            v = dataclasses.replace(v, segments=LoggedStore(v.segments, row, int(m.group(1)) if m else None))
        return super().sample_one(pipe, v, params)

    @classmethod
    def denoise_window(cls, *args, **kwargs):
        log(f"start {os.getpid()}")
        armed = chaos_dir() / f"armed-{os.getpid()}"
        if armed.exists():
            armed.unlink()
            os._exit(17)  # the sampling actor dies mid-video
        return super().denoise_window(*args, **kwargs)
