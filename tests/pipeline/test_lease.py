"""The output lease against real processes: a killed holder on this host is taken over at once; a live
holder, or one on another host, is refused until its lease expires."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.lease import Lease, LeaseHeld, host_identity, process_stat

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]
on_linux = pytest.mark.skipif(host_identity() is None, reason="needs /proc (boot id, PID namespace)")

HOLD = """
import sys, time
from pipeline.lease import Lease
Lease(sys.argv[1], "child-run", ttl_s=600).acquire()
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
    """A child process holding the lease of tmp_path/out with a 600 s ttl; yields (output, process)."""
    out = str(tmp_path / "out")
    proc = subprocess.Popen([sys.executable, "-c", HOLD, out], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout.readline() == "held\n"
        yield out, proc
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def taken():
    leases = []
    yield leases.append
    for lease in leases:
        lease.release()


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def write_lease(out, **fields):
    os.makedirs(out, exist_ok=True)
    body = {"run_id": "old-run", "host": "somewhere", "pid": dead_pid(), "expires_at": time.time() + 600}
    with open(f"{out}/_lease.json", "w") as f:
        json.dump(body | fields, f)


@on_linux
@pytest.mark.parametrize("reaped", [True, False], ids=["reaped", "zombie"])
def test_killed_holder_on_this_host_is_taken_over_at_once(holder, taken, reaped):
    out, proc = holder
    os.kill(proc.pid, signal.SIGKILL)
    if reaped:
        proc.wait()
    else:  # dead but not yet reaped by its parent
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    lease = Lease(out, "next-run", ttl_s=600)
    assert lease.acquire() == "child-run"
    taken(lease)
    assert lease.takeover_reason == f"its process (pid {proc.pid} on this host) is gone"
    assert lease.holder()["run_id"] == "next-run"


def test_live_holder_is_refused(holder):
    out, proc = holder
    with pytest.raises(LeaseHeld, match=rf"held by run child-run \(host \S+, pid {proc.pid}\); its lease "
                                        r"expires in \d+ s\. Wait for that run, or pass --force if it is dead\."):
        Lease(out, "next-run").acquire()


def test_force_takes_over_a_live_holder_and_says_so(holder, taken):
    out, _ = holder
    lease = Lease(out, "next-run")
    assert lease.acquire(force=True) == "child-run"
    taken(lease)
    assert lease.takeover_reason == "--force was given"


@on_linux
def test_reused_pid_is_not_the_holder(tmp_path, taken):
    """Our own pid, alive, but the lease names a process started at another time."""
    out = str(tmp_path / "out")
    state, started = process_stat(os.getpid())
    write_lease(out, host_id=host_identity(), pid=os.getpid(), pid_started=started - 1)
    lease = Lease(out, "next-run")
    assert lease.acquire() == "old-run"
    taken(lease)
    assert lease.takeover_reason == f"its process (pid {os.getpid()} on this host) is gone"


@pytest.mark.parametrize("identity", [
    dict(host_id="other-host boot 00000000-0000-0000-0000-000000000000 pid:[1]", pid_started=1),
    dict(host_id=f"{host_identity()}-other-container", pid_started=1),  # same host name, other PID namespace
    dict(),  # a lease written before host_id and pid_started existed
], ids=["other-host", "other-namespace", "old-lease"])
def test_dead_holder_elsewhere_waits_for_expiry(tmp_path, taken, identity):
    out = str(tmp_path / "out")
    write_lease(out, **identity)
    with pytest.raises(LeaseHeld, match="held by run old-run"):
        Lease(out, "next-run").acquire()
    write_lease(out, **identity, expires_at=time.time() - 1)
    lease = Lease(out, "next-run")
    assert lease.acquire() == "old-run"
    taken(lease)
    assert lease.takeover_reason == "its lease expired"
