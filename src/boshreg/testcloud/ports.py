"""A port for a server the test cloud (or a test) starts: free now, and outside the kernel's range for outgoing
connections.

Why outside it: a port the kernel picks (a bind to port 0) comes from that range, and before the server binds it
an outgoing connection can be given the same port; the server then fails with "Address already in use" (seen in
``make test``: a registry on "::", port 59369).
"""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST = 10_000  # below: ports services are configured on
ATTEMPTS = 200


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody holds on ``host`` now, outside the ephemeral range where the system says what it is."""
    low, high = _ephemeral_range()
    candidates: list[int] = [*range(LOWEST, min(low, 65_536)), *range(max(high + 1, LOWEST), 65_536)]
    for port in secrets.SystemRandom().sample(candidates, min(ATTEMPTS, len(candidates))):
        if _bindable(host, port):
            return port
    with _socket_for(host) as sock:  # every candidate taken: the kernel's choice, as before
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(part) for part in EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        return 32_768, 60_999  # Linux's default
    return low, high


def _bindable(host: str, port: int) -> bool:
    with _socket_for(host) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _socket_for(host: str) -> socket.socket:
    return socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
