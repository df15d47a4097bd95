"""The event loop's concurrent settings reads on a server database, coalesced: one query for those of one loop turn.

Why: under a boot storm a worker has dozens of misses in flight at once, and each as a query of its own cost
a round trip, a statement for the server and the client's work for each: ~60 us of the database's CPU and
~110 us of the worker's per read at 256 connections. The reads that arrive in the same turn of the event
loop go to the database together, as one statement over the array of their ids (up to ``BATCH_MAX``), each
caller getting its own row. A read's deadline cancels only its own wait, never the statement the others
share; a failure of the statement is every caller's (the store retries a dropped connection once, as before).
Where statements run in worker threads, at most ``concurrency`` run at once; a batch whose callers have all
stopped waiting by its turn is not sent (a stalled database would otherwise meet a backlog when it returns).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

BATCH_MAX = 64  # ids per statement: enough to carry a worker's share of a storm, small enough to stay quick

Row = tuple[Any, ...]


class ReadBatches:
    """``read(id)`` for many callers; ``fetch(ids)`` (one statement) returns rows that start with their id."""

    def __init__(
        self,
        fetch: Callable[[list[str]], Awaitable[Sequence[Row]]],
        limit: int = BATCH_MAX,
        concurrency: int | None = None,
    ) -> None:
        self._fetch = fetch
        self._limit = limit
        self._concurrency = concurrency
        self._slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None  # per loop (tests run several)
        self._waiting: dict[str, list[asyncio.Future[Row | None]]] = {}
        self._scheduled: asyncio.AbstractEventLoop | None = None  # the loop that will dispatch what waits
        self._running: set[asyncio.Task[None]] = set()  # kept referenced until done (the loop holds them weakly)

    async def read(self, instance_id: str) -> Row | None:
        """The row of ``instance_id`` without its id, or None when the statement found none."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Row | None] = loop.create_future()
        if self._scheduled is not loop:  # none scheduled, or on a loop that has ended (tests run several)
            self._scheduled = loop
            self._waiting = {}
            loop.call_soon(self._dispatch)  # after the callbacks of this turn: the reads they start join in
        self._waiting.setdefault(instance_id, []).append(future)
        return await future

    def _dispatch(self) -> None:
        self._scheduled = None
        waiting, self._waiting = self._waiting, {}
        ids = list(waiting)
        loop = asyncio.get_running_loop()
        for start in range(0, len(ids), self._limit):
            task = loop.create_task(self._run({i: waiting[i] for i in ids[start : start + self._limit]}))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: dict[str, list[asyncio.Future[Row | None]]]) -> None:
        if self._concurrency is None:
            await self._answer(batch)
            return
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots[0] is not loop:
            self._slots = (loop, asyncio.Semaphore(self._concurrency))
        async with self._slots[1]:
            if all(future.done() for futures in batch.values() for future in futures):
                return  # every caller's deadline passed while the batch waited: nobody wants the rows
            await self._answer(batch)

    async def _answer(self, batch: dict[str, list[asyncio.Future[Row | None]]]) -> None:
        try:
            rows = await self._fetch(list(batch))
        except asyncio.CancelledError:  # the loop is closing
            for futures in batch.values():
                for future in futures:
                    future.cancel()
            raise
        except Exception as exc:
            for futures in batch.values():
                for future in futures:
                    if not future.done():  # a caller whose deadline passed has stopped waiting
                        future.set_exception(exc)
            return
        found = {row[0]: tuple(row[1:]) for row in rows}
        for instance_id, futures in batch.items():
            row = found.get(instance_id)
            for future in futures:
                if not future.done():
                    future.set_result(row)
