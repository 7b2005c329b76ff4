"""Free TCP ports for servers the tests start (a Ray head, `transformers serve`, Chromium's debugging port).

Chosen below the kernel's ephemeral range and checked free by binding them. A port taken with bind(0) is
ephemeral: once released, it can be handed again to anything that binds port 0 or connects out before the
server binds it (a Ray head picks its agents' gRPC ports that way), and the server then fails to start.
"""
from __future__ import annotations

import random
import socket
from pathlib import Path

LOW = 20000  # Ray's workers take 10002-19999 by default


def free_ports(n: int) -> list[int]:
    """n distinct free ports."""
    high = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    held: list[socket.socket] = []
    try:
        while len(held) < n:
            s = socket.socket()
            try:
                s.bind(("0.0.0.0", rng.randrange(LOW, high)))
            except OSError:
                s.close()
                continue
            held.append(s)
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]
