"""The front's accept loop: a burst of new connections is taken in a few turns of the event loop, not one each."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections.abc import Callable, Iterator

import pytest
import uvloop

from boshreg.registry import acceptor as acceptor_module
from boshreg.registry.acceptor import Acceptor

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}


class Counted(asyncio.Protocol):
    """A protocol that only counts the connections made."""

    made: list[asyncio.BaseTransport]

    def __init__(self, made: list[asyncio.BaseTransport]) -> None:
        self.made = made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made.append(transport)


@pytest.fixture
def queued() -> Iterator[Callable[[int], socket.socket]]:
    """A listening socket with ``count`` connections in its queue, handshakes done and none accepted yet;
    every socket closed after the test."""
    opened: list[socket.socket] = []

    def listener_with(count: int) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        opened.append(listener)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
        for _ in range(count):
            client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            opened.append(client)
            client.connect(listener.getsockname())
        return listener

    yield listener_with
    for sock in opened:
        sock.close()


async def turns(count: int) -> None:
    """Let the loop go round ``count`` times (a callback scheduled in a turn runs in the next)."""
    for _ in range(count):
        done = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(done.set_result, None)
        await done


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_a_burst_waiting_in_the_queue_is_accepted_a_batch_per_turn(
    loop_name: str, queued: Callable[[int], socket.socket]
) -> None:
    """libuv (1.45 and later) accepts one connection per turn: under load a turn took 30 ms, and the last of a
    burst of 128 had its first request answered 2.5 s late. A batch per turn takes 128 in eight turns."""
    listener = queued(128)
    made: list[asyncio.BaseTransport] = []

    async def accept_for(count: int) -> int:
        tasks: set[asyncio.Task[object]] = set()
        acceptor = Acceptor(listener, lambda: Counted(made), None, 16, tasks)
        acceptor.start()
        try:
            await turns(count)
            return len(made)
        finally:
            acceptor.close()
            await asyncio.gather(*tasks, return_exceptions=True)
            for transport in made:
                transport.close()
            await turns(2)

    loop = LOOPS[loop_name]()
    try:
        # 8 turns of accepting plus the two it takes a connection to be made; one each would have made ~12
        assert loop.run_until_complete(accept_for(12)) == 128
    finally:
        loop.close()


def test_a_turn_accepts_no_more_than_a_batch(queued: Callable[[int], socket.socket]) -> None:
    """The connections already open are answered between two batches: a flood does not take a whole turn."""
    listener = queued(40)
    made: list[asyncio.BaseTransport] = []

    async def taken_per_turn() -> list[int]:
        tasks: set[asyncio.Task[object]] = set()
        acceptor = Acceptor(listener, lambda: Counted(made), None, 16, tasks)
        listener.setblocking(False)
        taken = []
        for _ in range(4):
            before = len(tasks) + len(made)
            acceptor.accept_batch()  # what one turn does when the listening socket is readable
            taken.append(len(tasks) + len(made) - before)
        await asyncio.gather(*tasks, return_exceptions=True)
        for transport in made:
            transport.close()
        return taken

    loop = uvloop.new_event_loop()
    try:
        assert loop.run_until_complete(taken_per_turn()) == [16, 16, 8, 0]
    finally:
        loop.close()


class FailingOnce:
    """A listening socket whose first accept() fails with ``code``, as the kernel's does at the file limit
    (EMFILE) or for a connection that failed while it waited in the queue (EPROTO)."""

    def __init__(self, sock: socket.socket, code: int) -> None:
        self.sock = sock
        self.code = code
        self.failed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def setblocking(self, flag: bool) -> None:
        self.sock.setblocking(flag)

    def accept(self) -> tuple[socket.socket, object]:
        if not self.failed:
            self.failed = True
            raise OSError(self.code, os.strerror(self.code))
        return self.sock.accept()


@pytest.mark.parametrize("code", [errno.EMFILE, errno.EPROTO], ids=["out-of-files", "a-failed-connection"])
def test_a_failing_accept_is_said_once_and_the_queue_is_served_after_it(
    code: int,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    queued: Callable[[int], socket.socket],
) -> None:
    """At the file limit accept() fails while the queue stays readable: trying again at once would spin the
    loop, so the acceptor waits a moment. Any other error ends only that turn's accepting. Either way one
    line says so, nothing is raised into the loop, and the connection waiting is then served."""
    monkeypatch.setattr(acceptor_module, "RETRY_SECONDS", 0.05)
    listener = queued(1)
    made: list[asyncio.BaseTransport] = []

    async def accept_through_the_failure() -> int:
        tasks: set[asyncio.Task[object]] = set()
        acceptor = Acceptor(FailingOnce(listener, code), lambda: Counted(made), None, 16, tasks)  # type: ignore[arg-type]
        acceptor.start()
        for _ in range(100):
            if made:
                break
            await asyncio.sleep(0.01)
        acceptor.close()
        for transport in made:
            transport.close()
        return len(made)

    loop = uvloop.new_event_loop()
    try:
        with caplog.at_level(logging.WARNING):
            assert loop.run_until_complete(accept_through_the_failure()) == 1
    finally:
        loop.close()
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 1, lines
    assert "accepting connections" in lines[0]
    assert os.strerror(code) in lines[0]
