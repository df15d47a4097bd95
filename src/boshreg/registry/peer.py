"""Who is on the other end of a connection: the caller's address, as every check and record compares it."""

from __future__ import annotations

import ipaddress


def client_address(host: str) -> str:
    """The peer's address; an IPv4 caller seen through an IPv6 socket (``::ffff:a.b.c.d``) as IPv4.

    With ``http.host: "::"`` every IPv4 caller arrives mapped; compared as given, the address check and the
    127.0.0.1 exemption both failed for them.
    """
    if host.startswith("::ffff:"):
        address = ipaddress.ip_address(host)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
    return host
