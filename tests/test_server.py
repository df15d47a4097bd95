"""The registry's listening socket, as the event loop that serves it sees it."""

from __future__ import annotations

import asyncio
import socket

from boshreg.registry.server import bind


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
