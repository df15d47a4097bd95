"""The registry's listening socket, as the event loop that serves it sees it."""

from __future__ import annotations

import asyncio
import socket

import psutil
import pytest

from boshreg.registry.server import ServeError, bind
from conftest import RegistryLauncher


def test_connections_are_served_with_nagle_off() -> None:
    """With Nagle on, each response's last segment waits for the client's delayed ACK: ~40 ms a request."""
    listening = bind("127.0.0.1", 0)

    async def nodelay_of_an_accepted_connection() -> int:
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def on_connect(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connect, sock=listening.sock)  # as uvicorn serves it
        async with server:
            _reader, writer = await asyncio.open_connection("127.0.0.1", listening.port)
            try:
                return await asyncio.wait_for(accepted, timeout=5)
            finally:
                writer.close()

    assert asyncio.run(nodelay_of_an_accepted_connection()) != 0


def test_a_port_in_use_is_refused_also_when_workers_share_it() -> None:
    """Each worker listens on a socket of its own (SO_REUSEPORT): a second registry must not join them."""
    first = bind("127.0.0.1", 0, workers=2)
    try:
        assert first.shared
        for workers in (1, 2):
            with pytest.raises(ServeError, match=rf"cannot listen on 127\.0\.0\.1:{first.port}: .*--port"):
                bind("127.0.0.1", first.port, workers=workers)
    finally:
        first.sock.close()


def test_new_connections_are_spread_over_the_workers(start_registry: RegistryLauncher) -> None:
    """With one shared socket, whichever worker woke first took a burst of connections: at 64 the other idled."""
    registry = start_registry(workers=2)
    assert registry.process is not None
    parent = psutil.Process(registry.process.pid)
    connections = [socket.create_connection(("127.0.0.1", registry.port), timeout=5) for _ in range(64)]  # a burst
    try:
        for client in connections:
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: registry\r\n\r\n")
        for client in connections:
            assert client.recv(4096).startswith(b"HTTP/1.1 200")
        workers = [parent, *parent.children()]
        assert len(workers) == 2
        served = [
            sum(1 for c in worker.net_connections("tcp") if c.laddr.port == registry.port and c.raddr)
            for worker in workers
        ]
        assert sum(served) == 64
        assert min(served) >= 16, served  # the kernel's hash: fewer on one worker has odds below 1e-4
    finally:
        for client in connections:
            client.close()
