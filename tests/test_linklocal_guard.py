"""The suite's own guard: no test, and no process a test starts, may reach 169.254.0.0/16."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

import pytest

from support import linklocal


@pytest.mark.parametrize(
    ("address", "host"),
    [
        (("169.254.169.254", 80), "169.254.169.254"),
        (("169.254.0.1", 8775), "169.254.0.1"),
        (("fe80::a9fe:a9fe", 80, 0, 2), "fe80::a9fe:a9fe"),
        (("::ffff:169.254.169.254", 80, 0, 0), "::ffff:169.254.169.254"),
        (("127.0.0.1", 80), None),
        (("10.244.0.1", 80), None),
        ("/run/socket", None),
    ],
)
def test_link_local_addresses_are_recognised(address: object, host: str | None) -> None:
    assert linklocal.blocked(address) == host


def test_this_process_refuses_before_any_packet_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    assert getattr(socket.socket, linklocal.MARKER) is True  # else the next line would really connect
    monkeypatch.delenv(linklocal.LOG_VARIABLE)  # this attempt is on purpose: keep it out of the suite's log
    with socket.socket() as sock, pytest.raises(linklocal.LinkLocalRefused):
        sock.connect(("169.254.169.254", 80))


def test_an_event_loop_s_connections_are_refused_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """The storm's agents connect through asyncio's create_connection, which calls the same guarded method."""
    assert getattr(socket.socket, linklocal.MARKER) is True  # else the connection below would be real
    monkeypatch.delenv(linklocal.LOG_VARIABLE)

    async def connect() -> None:
        await asyncio.get_running_loop().create_connection(asyncio.Protocol, "169.254.169.254", 80)

    with pytest.raises(linklocal.LinkLocalRefused):
        asyncio.run(connect())


def test_every_python_process_a_test_starts_has_the_guard() -> None:
    result = subprocess.run(
        [sys.executable, "-c", f"import socket; print(getattr(socket.socket, {linklocal.MARKER!r}, False))"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert result.stdout.strip() == "True"
