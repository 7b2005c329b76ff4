"""The progress line on a terminal: its text, its redraws, messages and log records above it, and the
choice of it only when stdout is a terminal (checked through a real pty)."""
from __future__ import annotations

import io
import logging
import os
import pty
import subprocess
import sys

import pytest

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


def read_pty(argv: list[str], env: dict) -> tuple[str, int]:
    """Run `argv` with a pty as its terminal; (everything it wrote, its exit status)."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(argv[0], argv, env)
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # the child closed the pty
            break
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    return b"".join(chunks).decode(errors="replace"), os.waitstatus_to_exitcode(status)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_run_on_a_terminal_shows_one_progress_line(tmp_path, model_cache):
    import yaml

    from tests.conftest import job_dict, write_manifest

    rows = [{"id": f"fox-{i}", "prompt": f"a fox number {i}", "seed": i} for i in range(3)] + [{"id": "bad id",
                                                                                               "prompt": "x"}]
    job = job_dict(write_manifest(tmp_path / "m.parquet", rows), str(tmp_path / "out"), ray={"num_cpus": 4})
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    rushes = os.path.join(os.path.dirname(sys.executable), "rushes")
    text, code = read_pty([rushes, "run", str(tmp_path / "job.yaml")], dict(os.environ))
    assert code == 0, text[-3000:]
    assert CLEAR + "[rushes] 3/3 variants (100%)" in text
    assert "[rushes] invalid row 3 (id 'bad id')" in text  # messages still printed, above the line
    assert "report:   file://" in text
    # Ray Data's own progress (per-operator log lines, or bars) is off on a terminal
    assert "Total Progress" not in text and "MapBatches(sample): " not in text and "Running Dataset" not in text
    assert "[rushes] committed " not in text  # the line per commit is for log files
