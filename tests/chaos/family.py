"""Fault injection through the plug-in model family hook (`model.family: tests.chaos.family:ChaosWan`).

The real tiny Wan model, with faults keyed by words in a row's prompt and by files in $RUSHES_CHAOS_DIR
(files, because the faults cross worker processes and nodes):
- "crash-once": the first time any worker samples the row, the process exits (os._exit), mid-batch;
- "crash-always": every worker that samples the row exits;
- "hold:<gate>": sampling waits until the file <gate> exists, after writing "holding-<gate>-<pid>" so a test
  knows a worker is busy with it;
- the file "fail-setup": the next worker to load the pipeline removes it and raises.
"""
from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path

from stages.models.families import WanFamily


def chaos_dir() -> Path:
    return Path(os.environ["RUSHES_CHAOS_DIR"])


class ChaosWan(WanFamily):
    @classmethod
    def load_pipeline(cls, *args, **kwargs):
        try:
            os.remove(chaos_dir() / "fail-setup")
        except FileNotFoundError:
            return super().load_pipeline(*args, **kwargs)
        raise RuntimeError("injected setup failure")

    @classmethod
    def sample(cls, pipe, inputs, params):
        for p in (v.prompt for v in inputs):
            if "crash-always" in p:
                os._exit(17)
            if "crash-once" in p:
                marker = chaos_dir() / f"crashed-{hashlib.sha1(p.encode()).hexdigest()[:12]}"
                try:
                    fd = os.open(marker, os.O_CREAT | os.O_EXCL)
                    os.close(fd)
                    os._exit(17)
                except FileExistsError:
                    pass
            for gate in re.findall(r"hold:(\w+)", p):
                (chaos_dir() / f"holding-{gate}-{os.getpid()}").touch()
                while not (chaos_dir() / gate).exists():
                    time.sleep(0.05)
        return super().sample(pipe, inputs, params)
