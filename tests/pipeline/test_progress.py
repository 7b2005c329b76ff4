"""The progress line on a terminal: its text, its redraws, messages and log records above it, and the
choice of it only when stdout is a terminal (checked through a real pty)."""
from __future__ import annotations

import io
import logging
import os
import pty
import subprocess
import sys

from pipeline.progress import CLEAR, ProgressLine, clock_text, format_line, on_terminal


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_format_line():
    assert format_line(0, 120, None) == "[rushes] 0/120 variants (0%)  starting"
    assert format_line(30, 120, 1.5) == "[rushes] 30/120 variants (25%)  1.50/s  ETA 1:00"
    assert format_line(30, 120, 0.01) == "[rushes] 30/120 variants (25%)  0.01/s  ETA 2:30:00"
    assert format_line(120, 120, 2.0) == "[rushes] 120/120 variants (100%)  2.00/s"
    assert clock_text(59.6) == "1:00" and clock_text(3725) == "1:02:05"


def test_one_line_redrawn_with_rate_and_eta():
    out, clock = io.StringIO(), Clock()
    line = ProgressLine(out, clock=clock, min_interval_s=0.5)
    line.update(0, 10)
    clock.now += 30  # start-up: not counted in the rate
    line.update(2, 10)
    clock.now += 0.1
    line.update(3, 10)  # within min_interval_s: not drawn
    clock.now += 3.9
    line.update(6, 10)  # 4 variants in 4 s since the first one
    assert "\n" not in out.getvalue()
    drawn = out.getvalue().split(CLEAR)[1:]
    assert drawn == ["[rushes] 0/10 variants (0%)  starting", "[rushes] 2/10 variants (20%)",
                     "[rushes] 6/10 variants (60%)  1.00/s  ETA 0:04"]


def test_messages_and_log_records_go_above_the_line():
    out, clock = io.StringIO(), Clock()
    handler = logging.StreamHandler(out)
    logging.getLogger().addHandler(handler)
    try:
        with ProgressLine(out, clock=clock) as line:
            line.update(1, 4)
            line.echo("[rushes] failed a/0: boom")
            logging.getLogger("rushes").warning("a warning")
            clock.now += 1
            line.update(2, 4)
        assert handler.filters == []
    finally:
        logging.getLogger().removeHandler(handler)
    text = out.getvalue()
    assert text.endswith("[rushes] 2/4 variants (50%)  1.00/s  ETA 0:02\n")
    # each message starts on a cleared line, and the line comes back under it
    assert CLEAR + "[rushes] failed a/0: boom\n[rushes] 1/4 variants (25%)" in text
    assert CLEAR + "a warning\n" in text


def test_only_on_a_terminal():
    assert not on_terminal(lambda *_: None)
    script = "import sys; from pipeline.progress import on_terminal; print(on_terminal(print))"
    piped = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=os.getcwd())
    assert piped.stdout.strip() == "False"
    pid, fd = pty.fork()
    if pid == 0:  # the child, on a pty
        os.execv(sys.executable, [sys.executable, "-c", script])
    chunks = []
    while True:
        try:
            data = os.read(fd, 1024)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.waitpid(pid, 0)
    assert b"True" in b"".join(chunks)
