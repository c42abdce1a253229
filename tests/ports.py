"""Ports for the test servers.

Not port 0: the kernel hands out bind(0) ports from the ephemeral range, the same range it
takes the local ports of outgoing connections from. A listener the tests start, stop and
start again on one port (a filter that is "down" for a while, a restarted next hop) can
then find that port taken meanwhile: by another test's bind(0), or by an outgoing
connection whose local port happens to be it (on loopback, a client connecting to a free
port equal to its own local port even connects to itself). Ports below the ephemeral range
are handed out by no one but us."""

from __future__ import annotations

import random
import socket
from pathlib import Path

# Below Linux's default ephemeral range (32768-60999) and above the well-known services
# a test machine runs (Redis 6379, PostgreSQL 5432, RabbitMQ 5672, ...).
_LOW, _HIGH = 20000, 32767
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, outside the ephemeral range,
    and not handed out before in this test run."""
    high = min(_HIGH, _ephemeral_low() - 1)
    for _ in range(1000):
        port = random.randint(_LOW, high)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {_LOW}-{high}")
