"""Group commit: writes that arrive while another commit is on its way share the next transaction.

Every answered PUT is on disk (SQLite ``synchronous=FULL``, PostgreSQL's WAL flush), so a commit costs a
flush of the disk, and sixteen writers queued one flush each: 958 PUTs/s on SQLite. Here the first writer
to find no open batch leads: it waits its turn for the store's writer lock while later writers join its
batch, then commits them all at once and wakes them. Nothing is acknowledged before its commit. If the
batch's transaction fails, each write is tried alone, so one write the database refuses fails only itself.
A batch runs its writes in the order of their keys (the instance id), so that two batches committing at
once (two workers, or a batch and the next on PostgreSQL) take row locks in one order: in arrival order,
PUTs of the same VMs in two batches deadlocked, and PostgreSQL breaks a deadlock after a second.

``run_async`` is the same for the event loop: the writes of its callers queue in a batch of their own, and
one worker thread per batch commits it, where ``run`` holds a thread per write. Every thread woken is a
context switch; sixteen writers made ~15 of them per PUT, on cores the answers need too.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy import exc as sa_exc

T = TypeVar("T")
BATCH_MAX = 64

Write = Callable[[Connection], Any]


class _Batch:
    __slots__ = ("committed", "done", "errors", "keys", "results", "writes")

    def __init__(self) -> None:
        self.writes: list[Write] = []
        self.keys: list[str] = []  # each write's: the order its rows are locked in
        self.results: list[Any] = []
        self.errors: list[BaseException | None] = []
        self.done = threading.Event()
        self.committed: asyncio.Future[None] | None = None  # run_async's: the thread committing this batch


class GroupCommit:
    """Runs writes in shared transactions, one commit for every write that waited behind the last."""

    def __init__(
        self,
        engine: Engine,
        writer: AbstractContextManager[object],
        *,
        last_statement: Callable[[Connection], None] | None = None,
    ) -> None:
        """``last_statement``: run in every transaction after its writes, before the commit."""
        self._engine = engine
        self._writer = writer
        self._last_statement = last_statement
        self._lock = threading.Lock()
        self._open: _Batch | None = None
        self._open_async: _Batch | None = None  # run_async's batch, filled on the event loop

    def run(self, write: Callable[[Connection], T], key: str = "") -> T:
        """Run ``write`` in a transaction committed before this returns; its result, or its error.

        ``key`` (the instance id it writes) places it among the batch's writes.
        """
        batch, index, leader = self._join(write, key, on_loop=False)
        if leader:
            self._commit_when_free(batch)
        else:
            batch.done.wait()
        result: T = _outcome(batch, index)
        return result

    async def run_async(self, write: Callable[[Connection], T], key: str = "") -> T:
        """``run`` for the event loop's callers: committed before this returns; its result, or its error.

        A caller that stops waiting (its deadline) leaves its write in the batch: it may still commit,
        as a write whose thread was abandoned could.
        """
        batch, index, leader = self._join(write, key, on_loop=True)
        if leader:
            batch.committed = asyncio.get_running_loop().run_in_executor(None, self._lead, batch)
        assert batch.committed is not None
        await asyncio.shield(batch.committed)
        result: T = _outcome(batch, index)
        return result

    def _join(self, write: Write, key: str, *, on_loop: bool) -> tuple[_Batch, int, bool]:
        """Add ``write`` to the open batch of its callers (threads', or the event loop's), opening one when
        there is none or it is full: the batch, the write's place in it, and whether this caller leads it."""
        with self._lock:
            batch = self._open_async if on_loop else self._open
            leader = batch is None or len(batch.writes) >= BATCH_MAX
            if batch is None or leader:
                batch = _Batch()
                if on_loop:
                    self._open_async = batch
                else:
                    self._open = batch
            batch.writes.append(write)
            batch.keys.append(key)
            return batch, len(batch.writes) - 1, leader

    def _commit_when_free(self, batch: _Batch) -> None:
        """Commit ``batch`` once the writer is free; from then on no write joins it (later ones open the next)."""
        try:
            with self._writer:
                with self._lock:
                    if self._open is batch:
                        self._open = None
                    if self._open_async is batch:
                        self._open_async = None
                self._commit(batch)
        except BaseException as exc:  # the writer lock itself failed: every waiter gets the error, none hangs
            if len(batch.errors) != len(batch.writes):
                batch.results, batch.errors = [None] * len(batch.writes), [exc] * len(batch.writes)
                batch.done.set()
            raise

    def _lead(self, batch: _Batch) -> None:
        """``run_async``'s batch, in a worker thread; each caller finds its own error in the batch."""
        with contextlib.suppress(BaseException):
            self._commit_when_free(batch)

    def _commit(self, batch: _Batch) -> None:
        try:
            try:
                results: list[Any] = [None] * len(batch.writes)
                with self._engine.begin() as conn:
                    for index in _in_key_order(batch):
                        results[index] = batch.writes[index](conn)
                    self._end(conn)
                batch.results, batch.errors = results, [None] * len(batch.writes)
            except sa_exc.SQLAlchemyError as exc:
                if len(batch.writes) == 1 or _connection_lost(exc):
                    batch.results, batch.errors = [None] * len(batch.writes), [exc] * len(batch.writes)
                else:
                    self._one_by_one(batch)
        except BaseException as exc:  # anything else: every waiter gets it, none waits forever
            batch.results, batch.errors = [None] * len(batch.writes), [exc] * len(batch.writes)
            raise
        finally:
            batch.done.set()

    def _end(self, conn: Connection) -> None:
        if self._last_statement is not None:
            self._last_statement(conn)

    def _one_by_one(self, batch: _Batch) -> None:
        results: list[Any] = [None] * len(batch.writes)
        errors: list[BaseException | None] = [None] * len(batch.writes)
        for index in _in_key_order(batch):
            try:
                with self._engine.begin() as conn:
                    results[index] = batch.writes[index](conn)
                    self._end(conn)
            except sa_exc.SQLAlchemyError as exc:
                errors[index] = exc
        batch.results, batch.errors = results, errors


def _in_key_order(batch: _Batch) -> list[int]:
    """The batch's writes by key; writes of one key in the order they came (the last one wins)."""
    return sorted(range(len(batch.writes)), key=batch.keys.__getitem__)


def _outcome(batch: _Batch, index: int) -> Any:
    """The result of the write at ``index`` of a committed batch, or its error raised."""
    error = batch.errors[index]
    if error is not None:
        raise error
    return batch.results[index]


def _connection_lost(exc: sa_exc.SQLAlchemyError) -> bool:
    return isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated
