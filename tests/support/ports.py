"""Ports for the processes the tests start, never the same for two parallel workers.

A port picked by binding to port 0 comes from the kernel's ephemeral range
(32768 and up here), where another worker's pick, or any client connection's
own port, can take it between the pick and the server's start; the server then
fails to listen while a readiness probe is answered by someone else's process.
Instead each pytest-xdist worker draws from a window of its own below that
range, in order from a random start (two test sessions at once rarely meet),
skipping ports something already holds. All picks lie in [10000, 20000), so a
Redis Cluster node's bus port (+10000) lies in [20000, 30000), where no pick is.
"""

from __future__ import annotations

import os
import random
import socket

LOW = 10_000
WINDOWS = 8
WINDOW = 1_250  # WINDOWS * WINDOW = 10,000 ports below 20,000
BUS_OFFSET = 10_000  # a Redis Cluster node's bus port


def _worker() -> int:
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    digits = name.removeprefix("gw")
    return int(digits) % WINDOWS if digits.isdigit() else 0


_start = LOW + _worker() * WINDOW
_next = random.randrange(WINDOW)


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, cluster_bus: bool = False) -> int:
    """A free port of this worker's window (and, with ``cluster_bus``, a free port + 10000)."""
    global _next
    for _ in range(WINDOW):
        port = _start + _next % WINDOW
        _next += 1
        if _bindable(port) and (not cluster_bus or _bindable(port + BUS_OFFSET)):
            return port
    raise RuntimeError(f"no free port in {_start}..{_start + WINDOW - 1}")
