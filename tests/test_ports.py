"""Ports for the servers tests and the test cloud start: never one an outgoing connection can be given."""

from __future__ import annotations

import socket

import pytest

from boshreg.testcloud import ports


def test_a_free_port_is_outside_the_range_the_kernel_gives_outgoing_connections() -> None:
    low, high = ports._ephemeral_range()
    for _ in range(20):
        port = ports.free_port()
        assert not low <= port <= high
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # and nobody holds it


def test_a_port_somebody_holds_is_not_offered(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = next(port for port in (ports.free_port() for _ in range(50)) if ports._bindable("127.0.0.1", port + 1))
    with socket.socket() as held:
        held.bind(("127.0.0.1", taken))
        held.listen()
        # the only candidates: the held port and the one after it
        monkeypatch.setattr(ports, "LOWEST", taken)
        monkeypatch.setattr(ports, "_ephemeral_range", lambda: (taken + 2, 65_535))
        assert {ports.free_port() for _ in range(10)} == {taken + 1}
