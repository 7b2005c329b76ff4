"""One run at a time per output: a lease object at `<output>/_lease.json`.

The lease is created with an exclusive write (O_EXCL locally, a conditional PUT `If-None-Match: *` on
S3), so of two runs started together exactly one gets it. The holder renews it every `ttl/4` seconds
from a background thread; a lease whose holder died expires after `ttl` and the next run takes it over,
and `--force` takes it over at once. So does a run on the holder's host (same hostname, boot id and PID
namespace: a container that only shares the hostname is another host) when the holder's process is gone
or its pid now names a process started at another time. A holder that finds its lease taken over stops
before committing anything more.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

from stages.common.storage import filesystem, join, put_atomic, put_exclusive, read_bytes, remove

LEASE_NAME = "_lease.json"
log = logging.getLogger("rushes")


class LeaseHeld(RuntimeError):
    """Another live run holds the output."""


class LeaseLost(RuntimeError):
    """Our lease was taken over (we were presumed dead); stop committing."""


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def host_identity() -> str | None:
    """Hostname, boot id and PID namespace: where a pid means one process. None where unknown (not
    Linux), and then a dead holder's lease waits for its expiry."""
    boot, pidns = _read("/proc/sys/kernel/random/boot_id"), None
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pass
    return f"{socket.gethostname()} boot {boot.strip()} {pidns}" if boot and pidns else None


def process_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of a process from /proc/<pid>/stat; None if unreadable."""
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return None
    state, *fields = text.rsplit(")", 1)[1].split()  # the command name before ")" may hold spaces
    return state, int(fields[18])  # field 22 of proc(5)


def holder_is_gone(cur: dict) -> bool:
    """True only when the holder ran on this host and its process no longer runs."""
    pid, started, here = cur.get("pid"), cur.get("pid_started"), host_identity()
    if here is None or cur.get("host_id") != here or started is None or type(pid) is not int or pid <= 0:
        return False  # elsewhere, or an old lease without these fields: wait for the expiry
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    stat = process_stat(pid)
    if stat is None:
        return False  # alive but hidden from us (/proc mounted with hidepid): wait for the expiry
    state, now_started = stat
    return state in ("Z", "X") or now_started != started  # a zombie, or the pid went to another process


class Lease:
    def __init__(self, output: str, run_id: str, ttl_s: float = 120.0, storage_options: dict | None = None):
        self.output, self.run_id, self.ttl_s = output, run_id, ttl_s
        self.fs, root = filesystem(output, storage_options)
        self.path = join(root, LEASE_NAME)
        self.takeover_reason: str | None = None  # why acquire() took the lease over, for the caller to say
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.renewals = 0  # read by the run's metrics (pipeline/metrics.py)

    def _body(self) -> bytes:
        now, stat = time.time(), process_stat(os.getpid())
        return json.dumps({"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(),
                           "host_id": host_identity(), "pid_started": stat[1] if stat else None,
                           "renewed_at": now, "expires_at": now + self.ttl_s}).encode()

    def holder(self) -> dict | None:
        try:
            return json.loads(read_bytes(self.fs, self.path))
        except Exception:  # noqa: BLE001 - gone or unreadable: nobody holds it
            return None

    def acquire(self, force: bool = False) -> str | None:
        """Take the lease; returns the run id taken over from, if any, and sets `takeover_reason`.
        Raises LeaseHeld."""
        try:
            put_exclusive(self.fs, self.path, self._body())
            taken_from = None
        except FileExistsError:
            cur = self.holder() or {}
            if holder_is_gone(cur):
                self.takeover_reason = f"its process (pid {cur['pid']} on this host) is gone"
            elif cur.get("expires_at", 0) < time.time():
                self.takeover_reason = "its lease expired"
            elif force:
                self.takeover_reason = "--force was given"
            else:
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
                self.renewals += 1
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
