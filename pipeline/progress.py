"""Progress on a terminal: one line, redrawn in place, with variants done of the total, the rate and the ETA.

    [rushes] 37/120 variants (31%)  2.1/s  ETA 0:40

Used by pipeline/job.py when its output is a terminal; then Ray Data's own progress output (bars, or the
per-operator log lines it writes every few seconds) is turned off, and the job's messages are printed
above the line. Off a terminal the job keeps its line per committed batch, for log files.
"""
from __future__ import annotations

import logging
import sys
import time
from collections import deque

RATE_WINDOW_S = 60.0  # the rate is measured over about the last minute, so the ETA follows changes
LOGGERS = ("", "ray", "ray.data")  # loggers with handlers of their own (Ray's do not propagate to the root)
CLEAR = "\r\x1b[K"  # to the line's start, then erase it


def clock_text(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def format_line(done: int, total: int, rate: float | None) -> str:
    """The progress line: rate in variants per second, None before it can be measured."""
    pct = f" ({100 * done // total}%)" if total else ""
    text = f"[rushes] {done}/{total} variants{pct}"
    if rate is None:
        return text + "  starting" if done == 0 else text
    eta = clock_text((total - done) / rate) if rate > 0 else "?"
    return f"{text}  {rate:.2f}/s  ETA {eta}" if done < total else f"{text}  {rate:.2f}/s"


class ProgressLine:
    """One line on `stream`, rewritten at most every `min_interval_s`; messages go above it."""

    def __init__(self, stream=None, clock=time.monotonic, min_interval_s: float = 0.5):
        self.stream = stream or sys.stdout
        self.clock, self.min_interval_s = clock, min_interval_s
        self.samples: deque = deque()  # (time, done), over the last RATE_WINDOW_S
        self.text = ""
        self.drawn_at = float("-inf")
        self._filter = _ClearBeforeLogging(self)
        self._filtered: set = set()

    def rate(self) -> float | None:
        """Variants per second over the window, counted from the first variant done (start-up is not work)."""
        if len(self.samples) < 2:
            return None
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else None

    def update(self, done: int, total: int, force: bool = False) -> None:
        now = self.clock()
        if done > 0 and (not self.samples or done != self.samples[-1][1]):
            self.samples.append((now, done))
            while len(self.samples) > 2 and now - self.samples[1][0] > RATE_WINDOW_S:
                self.samples.popleft()
        if force or now - self.drawn_at >= self.min_interval_s:
            self._filter_logging()  # again: Ray Data sets its handlers up when it is first used
            self.text = format_line(done, total, self.rate())
            self.stream.write(CLEAR + self.text)
            self.stream.flush()
            self.drawn_at = now

    def clear(self) -> None:
        if self.text:
            self.stream.write(CLEAR)
            self.stream.flush()

    def echo(self, message: str) -> None:
        """Print `message` on its own line, then the progress line again under it."""
        self.clear()
        self.stream.write(message + "\n")
        if self.text:
            self.stream.write(self.text)
        self.stream.flush()

    def _filter_logging(self) -> None:
        """Log records are printed above the line too: each handler clears it first."""
        for name in LOGGERS:
            for handler in logging.getLogger(name).handlers:
                if handler not in self._filtered and not isinstance(handler, logging.FileHandler):
                    handler.addFilter(self._filter)
                    self._filtered.add(handler)

    def __enter__(self) -> "ProgressLine":
        self._filter_logging()
        return self

    def __exit__(self, *exc) -> None:
        for handler in self._filtered:
            handler.removeFilter(self._filter)
        self._filtered.clear()
        if self.text:
            self.stream.write("\n")
            self.stream.flush()
            self.text = ""


class _ClearBeforeLogging(logging.Filter):
    def __init__(self, line: ProgressLine):
        super().__init__()
        self.line = line

    def filter(self, record: logging.LogRecord) -> bool:
        self.line.clear()
        self.line.drawn_at = float("-inf")  # drawn again at the next update
        return True


def on_terminal(echo) -> bool:
    """Whether a run shows the progress line: its messages go to print and stdout is a terminal."""
    return echo is print and sys.stdout.isatty()
