"""IP address literals as every side reads and writes them: one parser, one way to bracket IPv6."""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def ip_or_none(text: object) -> IPAddress | None:
    """The address ``text`` spells, or None for a host name (or anything else)."""
    try:
        return ipaddress.ip_address(str(text))
    except ValueError:
        return None


def is_ip_address(value: object) -> bool:
    """True for an IPv4 or IPv6 address literal."""
    return ip_or_none(value) is not None


def url_host(host: str) -> str:
    """The host as it stands in a URL: IPv6 literals in brackets."""
    return f"[{host}]" if ":" in host else host
