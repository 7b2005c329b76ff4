"""A lock shared by every process of one machine: an exclusive `flock` on a file."""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager


@contextmanager
def node_lock(path: str | os.PathLike):
    """Held while the block runs; the kernel releases it if the process dies."""
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
