"""Accepting connections a batch per turn of the event loop, on uvloop and on asyncio's own loop alike.

Why not ``loop.create_server``: since libuv 1.45, uvloop accepts one connection per turn of the loop.
Under load a turn answers every connection with a request waiting, which on a cold read at 256
connections took 30 ms; a burst of new connections (a boot storm, a client reopening its pool, a load
balancer's reconnects) then waited in the kernel's queue one turn each: the last of 128 new connections
to one worker had its request answered 2.5 s after it came in. Here a turn accepts up to a batch, the
queue drains in a few turns, and each connection is counted by the front as soon as it is made.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable

from boshreg.registry.connections import RateLimitedLog

log = logging.getLogger(__name__)

# accept() failing for want of resources: wait before trying again (the queue keeps the connections),
# as asyncio's own loop does, instead of waking to the same full queue at once.
_SHORT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
RETRY_SECONDS = 0.25


class Acceptor:
    """Accepts up to ``batch`` connections of the listening ``sock`` each time it is readable."""

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        tls: ssl.SSLContext | None,
        batch: int,
        tasks: set[asyncio.Task[object]],
    ) -> None:
        self.sock = sock
        self.protocol_factory = protocol_factory
        self.tls = tls
        self.batch = batch
        self.tasks = tasks  # the front's: shutdown waits for a connection being set up as for an answer
        self.loop = asyncio.get_running_loop()
        self.listening = False
        self.short = RateLimitedLog("accepting connections")
        self._retry: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.sock.setblocking(False)
        self.loop.add_reader(self.sock.fileno(), self.accept_batch)
        self.listening = True

    def close(self) -> None:
        """Accept no more; connections accepted already are still set up (and the front closes them)."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self.listening:
            self.listening = False
            self.loop.remove_reader(self.sock.fileno())

    def accept_batch(self) -> None:
        """Accept what waits, up to a batch (the loop calls this again next turn while more waits)."""
        for _ in range(self.batch):
            try:
                connection, _address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # reset by the client while it waited in the queue
            except OSError as exc:
                if exc.errno not in _SHORT_OF_RESOURCES:
                    # Linux hands a connection's pending network error to accept() (EPROTO, ENETDOWN, ...):
                    # that connection is gone; the next turn takes the rest of the queue.
                    self.short.note(f"accept() failed ({exc.strerror})")
                    return
                self.short.note(f"accept() failed ({exc.strerror}); trying again in {RETRY_SECONDS:g} s")
                self.close()
                self._retry = self.loop.call_later(RETRY_SECONDS, self.start)
                return
            connection.setblocking(False)
            task = self.loop.create_task(
                self.loop.connect_accepted_socket(self.protocol_factory, connection, ssl=self.tls)
            )
            self.tasks.add(task)
            task.add_done_callback(self._set_up)

    def _set_up(self, task: asyncio.Task[object]) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:  # a TLS handshake that failed or timed out, a client gone before its transport
            log.debug("a connection was not set up: %s", exc)
