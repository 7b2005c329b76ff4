"""One run at a time per output: a lease object at `<output>/_lease.json`.

The lease is created with an exclusive write (O_EXCL locally, a conditional PUT `If-None-Match: *` on
S3), so of two runs started together exactly one gets it. The holder renews it every `ttl/4` seconds
from a background thread; a lease whose holder died expires after `ttl` and the next run takes it over,
and `--force` takes it over at once. A holder that finds its lease taken over stops before committing
anything more.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

from pipeline.storage import filesystem, join, put_atomic, put_exclusive, read_bytes, remove

LEASE_NAME = "_lease.json"
log = logging.getLogger("rushes")


class LeaseHeld(RuntimeError):
    """Another live run holds the output."""


class LeaseLost(RuntimeError):
    """Our lease was taken over (we were presumed dead); stop committing."""


class Lease:
    def __init__(self, output: str, run_id: str, ttl_s: float = 120.0, storage_options: dict | None = None):
        self.output, self.run_id, self.ttl_s = output, run_id, ttl_s
        self.fs, root = filesystem(output, storage_options)
        self.path = join(root, LEASE_NAME)
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        now = time.time()
        return json.dumps({"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(),
                           "renewed_at": now, "expires_at": now + self.ttl_s}).encode()

    def holder(self) -> dict | None:
        try:
            return json.loads(read_bytes(self.fs, self.path))
        except Exception:  # noqa: BLE001 - gone or unreadable: nobody holds it
            return None

    def acquire(self, force: bool = False) -> str | None:
        """Take the lease; returns the run id taken over from, if any. Raises LeaseHeld."""
        try:
            put_exclusive(self.fs, self.path, self._body())
            taken_from = None
        except FileExistsError:
            cur = self.holder() or {}
            expired = cur.get("expires_at", 0) < time.time()
            if not (force or expired):
                left = cur.get("expires_at", 0) - time.time()
                raise LeaseHeld(
                    f"output {self.output} is held by run {cur.get('run_id')} (host {cur.get('host')}, "
                    f"pid {cur.get('pid')}); its lease expires in {left:.0f} s. Wait for that run, or pass "
                    f"--force if it is dead.") from None
            taken_from = cur.get("run_id")
            remove(self.fs, self.path)
            try:
                put_exclusive(self.fs, self.path, self._body())
            except FileExistsError:
                cur = self.holder() or {}
                raise LeaseHeld(f"output {self.output}: run {cur.get('run_id')} took the lease first") from None
        self._thread = threading.Thread(target=self._renew, name="rushes-lease", daemon=True)
        self._thread.start()
        return taken_from

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            cur = self.holder()
            if not cur or cur.get("run_id") != self.run_id:
                self.lost.set()
                return
            try:
                put_atomic(self.fs, self.path, self._body())
            except Exception as e:  # noqa: BLE001 - try again next tick; the lease lasts 4 ticks
                log.warning("could not renew the lease on %s: %s", self.output, e)

    def check(self) -> None:
        if self.lost.is_set():
            raise LeaseLost(f"output {self.output}: another run took over the lease of run {self.run_id}")

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        cur = self.holder()
        if cur and cur.get("run_id") == self.run_id:
            remove(self.fs, self.path)
