"""PostgreSQL reads on the event loop, on asyncpg's connections, with no SQLAlchemy in between.

The settings read is one statement on a connection outside any transaction; asyncpg prepares it once per
connection and keeps it. Through SQLAlchemy's async engine, checking a connection out and back in through
its greenlet bridge cost more than the read: two processes of 64 readers each read 5,600-6,000 rows a
second that way, 6,900-7,300 with only the pool from SQLAlchemy, and 12,900-14,900 on psycopg's async
connections taken from a queue. asyncpg (its protocol in Cython) then took a third of psycopg's client
time per read (17 against 46 us, 32 readers on one loop): a cold GET through the registry 6,050 -> 7,200-7,400
a second, side by side. This pool is that queue, with what a registry needs around it: at most ``size``
connections, opened when first needed (a database that is down fails the read at once, with its cause,
instead of making it wait out a timeout); waiters served first come, first served within ``timeout``; a
connection that failed, is mid-query (a read cancelled by the request's deadline) or older than ``recycle``
closed instead of reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import asyncpg

if TYPE_CHECKING:
    Connection = asyncpg.Connection[asyncpg.Record]
else:
    Connection = asyncpg.Connection


# What a read here may fail with: the server's errors, the client's, and the event loop's bare network errors.
DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)
# SQLSTATE classes of a database that cannot answer now (psycopg calls them OperationalError): connection,
# authorization, no such database, insufficient resources, operator intervention (shutdown, a cancelled
# statement), system error.
_UNAVAILABLE_CLASSES = frozenset({"08", "28", "3D", "53", "57", "58"})


def unavailable_cause(exc: BaseException) -> str | None:
    """Why the database could not answer (the caller keeps the first line); None for a fault of the statement
    or the schema. asyncio's network errors all say "Connect call failed": the errno says why."""
    if isinstance(exc, asyncpg.PostgresError):
        return str(exc) if exc.sqlstate[:2] in _UNAVAILABLE_CLASSES else None
    if isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError):
        return None  # an argument asyncpg could not encode (its client-side DataError): the statement's fault
    if isinstance(exc, TimeoutError):
        return "no answer within db.connect_timeout"
    if isinstance(exc, OSError) and exc.errno:
        return f"{os.strerror(exc.errno)} ({exc})"
    return str(exc) or type(exc).__name__


class PoolExhausted(Exception):
    """No connection came free within the pool's timeout."""


class StaleConnection(Exception):
    """A connection kept from before failed as broken (the server dropped it while idle): worth one retry."""


class ReadPool:
    """Up to ``size`` connections made with ``connect_kwargs`` (asyncpg's ``connect`` arguments)."""

    def __init__(self, connect_kwargs: Mapping[str, Any], *, size: int, timeout: float, recycle: float) -> None:
        self.size = size
        self.timeout = timeout
        self.recycle = recycle
        self._connect_kwargs = dict(connect_kwargs)
        self._idle: list[tuple[Connection, float]] = []
        self._opened = 0  # connections open or being opened
        self._closed = False
        self._waiters: deque[asyncio.Future[tuple[Connection, float] | None]] = deque()

    async def fetchall(self, sql: str, parameters: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Every row of ``sql`` (numbered parameters: ``$1``) on a pooled connection, closed if the statement
        fails or is cancelled, else put back (written out here, not as a context manager: that was ~4 us of a
        cold read); asyncpg's errors as they are (``unavailable_cause`` words them)."""
        connection, opened_at, reused = await self._acquire()
        try:
            rows = await connection.fetch(sql, *parameters)
        except DRIVER_ERRORS as exc:
            # The server or the network ended it while it sat idle: closed, or (the server's goodbye read, its
            # socket's end not yet) still consuming that error, which asyncpg reports as an internal "another
            # operation is in progress".
            stale = reused and (connection.is_closed() or isinstance(exc, asyncpg.InternalClientError))
            self._discard(connection)
            if stale:
                raise StaleConnection(str(exc)) from exc
            raise
        except BaseException:
            self._discard(connection)
            raise
        await self._release(connection, opened_at)
        return [tuple(row) for row in rows]

    async def close(self) -> None:
        """Close the idle connections; those in use are closed as they come back."""
        idle, self._idle = self._idle, []
        self._closed = True
        for connection, _ in idle:
            self._opened -= 1
            await _close(connection)

    async def _acquire(self) -> tuple[Connection, float, bool]:
        """A connection, when it was opened, and whether it is kept from before (True) or new."""
        if self._idle:
            return (*self._idle.pop(), True)
        if self._opened < self.size:
            self._opened += 1
            return (*await self._open(), False)
        waiter: asyncio.Future[tuple[Connection, float] | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            handed = await asyncio.wait_for(asyncio.shield(waiter), self.timeout)
        except TimeoutError:
            self._give_back(waiter)
            raise PoolExhausted from None
        except asyncio.CancelledError:
            self._give_back(waiter)
            raise
        if handed is None:  # a slot reserved for this waiter to open a connection in
            return (*await self._open(), False)
        return (*handed, True)

    def _give_back(self, waiter: asyncio.Future[tuple[Connection, float] | None]) -> None:
        """A waiter that gave up: out of the queue, and whatever it was handed goes to the next one."""
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            waiter.cancel()
            return
        if waiter.done() and not waiter.cancelled():
            handed = waiter.result()
            if handed is None:
                self._opened -= 1
                self._hand_slot()
            else:
                self._hand_over(handed)

    async def _open(self) -> tuple[Connection, float]:
        """Open a connection in a slot already counted in ``_opened``; a failure frees the slot."""
        try:
            connection: Connection = await asyncpg.connect(**self._connect_kwargs)
        except BaseException:
            self._opened -= 1
            self._hand_slot()
            raise
        return connection, time.monotonic()

    async def _release(self, connection: Connection, opened_at: float) -> None:
        if connection.is_closed() or connection.is_in_transaction():
            self._discard(connection)  # broken, or in a state a next read must not inherit
            return
        if self._closed or time.monotonic() - opened_at >= self.recycle:
            self._opened -= 1  # healthy but no longer wanted: closed as the server likes it
            self._hand_slot()
            await _close(connection)
            return
        self._hand_over((connection, opened_at))

    def _hand_over(self, pooled: tuple[Connection, float]) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(pooled)
                return
        self._idle.append(pooled)

    def _discard(self, connection: Connection) -> None:
        """A connection that failed or was cancelled mid-query: closed at once, its state unknown."""
        self._opened -= 1
        self._hand_slot()
        connection.terminate()

    def _hand_slot(self) -> None:
        """A connection fewer: the first waiter may open one of its own."""
        if self._opened >= self.size:
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._opened += 1  # reserved for the waiter, which opens it (_acquire)
                waiter.set_result(None)
                return


async def _close(connection: Connection) -> None:
    """Say goodbye to the server (within a second); a connection already gone is simply let go."""
    with contextlib.suppress(*DRIVER_ERRORS):  # a TimeoutError of close() is an OSError
        await connection.close(timeout=1)
