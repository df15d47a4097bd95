"""A guard for the whole test run: nothing may connect to 169.254.0.0/16 (or IPv6 link-local fe80::/10).

On these machines 169.254.169.254 is the platform's own metadata service, and the agent side's default
metadata URL is that address: a test that forgets to name the emulator would talk to the real one. The
guard replaces ``socket.socket.connect``/``connect_ex``/``sendto`` before any packet is sent, in the test
process and (through ``guard_site/sitecustomize.py`` on PYTHONPATH) in every Python process a test
starts; each attempt is refused and written to the file named by TEST_LINKLOCAL_GUARD_LOG, which the
suite checks after every test.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any

LOG_VARIABLE = "TEST_LINKLOCAL_GUARD_LOG"  # no BOSHREG_ prefix: the CLI helper drops those
BLOCKED = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))
MARKER = "_boshreg_linklocal_guard"


class LinkLocalRefused(PermissionError):
    """A test tried to reach a link-local address."""


def blocked(address: Any) -> str | None:
    """The host of ``address`` when it is link-local, else None."""
    if not isinstance(address, tuple) or not address:
        return None
    host = str(address[0]).split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return host if any(ip in network for network in BLOCKED if ip.version == network.version) else None


def _refuse(host: str) -> None:
    log = os.environ.get(LOG_VARIABLE)
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"{os.getpid()} {host}\n")
    raise LinkLocalRefused(f"test guard: no connection to {host} (link-local); name the metadata emulator's URL")


def install() -> None:
    """Wrap the socket methods that send to an address; idempotent."""
    if getattr(socket.socket, MARKER, False):
        return
    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex
    original_sendto = socket.socket.sendto

    def connect(self: socket.socket, address: Any) -> None:
        host = blocked(address)
        if host is not None:
            _refuse(host)
        original_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        host = blocked(address)
        if host is not None:
            _refuse(host)
        return original_connect_ex(self, address)

    def sendto(self: socket.socket, data: Any, *args: Any) -> int:
        host = blocked(args[-1]) if args else None
        if host is not None:
            _refuse(host)
        return original_sendto(self, data, *args)

    socket.socket.connect = connect  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign,assignment]
    socket.socket.sendto = sendto  # type: ignore[method-assign,assignment]
    setattr(socket.socket, MARKER, True)
