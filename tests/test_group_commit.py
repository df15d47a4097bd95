"""Group commit: writes that queue behind a commit share the next one, and each still fails alone."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import Column, Connection, Integer, MetaData, String, Table, create_engine, event, insert, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL

from boshreg.registry.group_commit import GroupCommit

T = TypeVar("T")
metadata = MetaData()
rows = Table("rows", metadata, Column("id", Integer, primary_key=True), Column("name", String(20), unique=True))


def test_writes_queued_behind_a_commit_share_one_and_a_refused_one_fails_alone(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/group.db")
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(rows).values(name="taken"))
    writer = threading.Lock()
    commits = GroupCommit(engine, writer)
    outcomes: dict[str, str] = {}

    def write(name: str) -> None:
        def insert_one(conn: Connection) -> int:
            return conn.execute(insert(rows).values(name=name)).rowcount

        try:
            commits.run(insert_one)
            outcomes[name] = "ok"
        except sa_exc.IntegrityError:
            outcomes[name] = "refused"

    with writer:  # a commit is on its way: every write below queues behind it
        threads = [threading.Thread(target=write, args=(name,)) for name in ("a", "b", "taken", "c", "d")]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
    for thread in threads:
        thread.join(timeout=10)
    assert outcomes == {"a": "ok", "b": "ok", "taken": "refused", "c": "ok", "d": "ok"}
    with engine.connect() as conn:
        assert sorted(conn.execute(select(rows.c.name)).scalars()) == ["a", "b", "c", "d", "taken"]


def test_eight_writers_queued_behind_a_commit_are_committed_once(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/once.db")
    metadata.create_all(engine)
    commits_seen: list[object] = []
    event.listen(engine, "commit", commits_seen.append)
    writer = threading.Lock()
    commits = GroupCommit(engine, writer)
    with writer:
        threads = [
            threading.Thread(
                target=commits.run, args=(lambda conn, n=n: conn.execute(insert(rows).values(name=f"w{n}")),)
            )
            for n in range(8)
        ]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
    for thread in threads:
        thread.join(timeout=10)
    assert len(commits_seen) == 1
    with engine.connect() as conn:
        assert len(conn.execute(select(rows.c.name)).all()) == 8


def test_a_write_alone_commits_at_once_and_returns_its_result(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/alone.db")
    metadata.create_all(engine)
    commits = GroupCommit(engine, threading.Lock())
    assert commits.run(lambda conn: conn.execute(insert(rows).values(name="x")).rowcount) == 1
    with pytest.raises(sa_exc.IntegrityError):
        commits.run(lambda conn: conn.execute(insert(rows).values(name="x")).rowcount)


async def behind_a_commit(writer: threading.Lock, writes: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Start ``writes`` while ``writer`` is held, as when a commit is on its way: they queue in one batch,
    committed once the writer is let go. Their outcomes, in order."""
    writer.acquire()
    tasks = [asyncio.create_task(write) for write in writes]
    await asyncio.sleep(0.2)
    writer.release()
    return await asyncio.gather(*tasks)


def test_the_event_loops_writes_queued_behind_a_commit_share_one_and_a_refused_one_fails_alone(
    tmp_path: Path,
) -> None:
    """run_async, the PUT's road: one worker thread commits the batch of every write the loop's callers queued."""
    engine = create_engine(f"sqlite:///{tmp_path}/loop.db")
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(rows).values(name="taken"))
    commits_seen: list[object] = []
    event.listen(engine, "commit", commits_seen.append)
    writer = threading.Lock()
    commits = GroupCommit(engine, writer)

    async def write(name: str) -> str:
        try:
            await commits.run_async(lambda conn: conn.execute(insert(rows).values(name=name)).rowcount)
        except sa_exc.IntegrityError:
            return "refused"
        return "ok"

    outcomes = asyncio.run(behind_a_commit(writer, [write(name) for name in ("a", "b", "taken", "c", "d")]))
    assert outcomes == ["ok", "ok", "refused", "ok", "ok"]
    with engine.connect() as conn:
        assert sorted(conn.execute(select(rows.c.name)).scalars()) == ["a", "b", "c", "d", "taken"]
    assert len(commits_seen) == 4  # the shared transaction failed on "taken" (rolled back); then each alone

    def insert_named(name: str) -> Callable[[Connection], object]:
        return lambda conn: conn.execute(insert(rows).values(name=name))

    asyncio.run(behind_a_commit(writer, [commits.run_async(insert_named(f"w{n}")) for n in range(8)]))
    assert len(commits_seen) == 4 + 1


def test_an_event_loop_caller_that_stops_waiting_leaves_its_write_to_commit(tmp_path: Path) -> None:
    """A PUT past its deadline is answered 503, and its write may still commit (as with an abandoned thread):
    the batch is not torn down under the writes of the callers still waiting."""
    engine = create_engine(f"sqlite:///{tmp_path}/late.db")
    metadata.create_all(engine)
    writer = threading.Lock()
    commits = GroupCommit(engine, writer)

    async def one_gives_up() -> int:
        writer.acquire()
        gave_up = asyncio.create_task(commits.run_async(lambda conn: conn.execute(insert(rows).values(name="late"))))
        waited = asyncio.create_task(
            commits.run_async(lambda conn: conn.execute(insert(rows).values(name="waited")).rowcount)
        )
        await asyncio.sleep(0.1)
        gave_up.cancel()
        await asyncio.sleep(0.1)
        writer.release()
        return await waited

    assert asyncio.run(one_gives_up()) == 1
    with engine.connect() as conn:
        assert sorted(conn.execute(select(rows.c.name)).scalars()) == ["late", "waited"]


def test_two_batches_writing_the_same_vms_in_opposite_orders_do_not_deadlock(server_database_url: URL) -> None:
    """Two workers' batches commit at once (and on PostgreSQL a batch and the next): PUTs of the same two VMs
    that arrived in opposite orders locked their rows in opposite orders, and the database broke the
    deadlock by failing one transaction (PostgreSQL after deadlock_timeout, a second). Writes run in the
    order of their keys instead, so the second batch waits for the first and neither fails."""
    engine = create_engine(server_database_url)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(rows), [{"name": "vm-a"}, {"name": "vm-b"}])
    both_hold_a_row = threading.Barrier(2)
    deadlocks: list[BaseException] = []

    def batch(order: list[str]) -> tuple[threading.Lock, list[threading.Thread]]:
        writer = threading.Lock()
        commits = GroupCommit(engine, writer)
        first = threading.Event()

        def touch(name: str) -> Callable[[Connection], object]:
            def write(conn: Connection) -> object:
                try:
                    result = conn.execute(rows.update().where(rows.c.name == name).values(name=name)).rowcount
                except sa_exc.DBAPIError as exc:
                    deadlocks.append(exc)
                    raise
                if not first.is_set():  # this batch holds its first row: wait (a little) for the other's
                    first.set()
                    with contextlib.suppress(threading.BrokenBarrierError):
                        both_hold_a_row.wait(timeout=1.0)
                return result

            return write

        threads = [threading.Thread(target=commits.run, args=(touch(name), name)) for name in order]
        return writer, threads

    first_writer, first_threads = batch(["vm-a", "vm-b"])
    second_writer, second_threads = batch(["vm-b", "vm-a"])
    with first_writer, second_writer:  # a commit is on its way in each: both writes of each queue in one batch
        for thread in (*first_threads, *second_threads):
            thread.start()
            time.sleep(0.05)  # in this order of arrival
    for thread in (*first_threads, *second_threads):
        thread.join(timeout=20)
    engine.dispose()
    assert deadlocks == []


def test_the_last_statement_ends_each_transaction_after_its_writes(tmp_path: Path) -> None:
    """MySQL's change counter is raised this way: once a commit, after every row the writes lock, and never in
    a transaction that did not commit (a refused write's batch is rolled back, then each write runs alone)."""
    engine = create_engine(f"sqlite:///{tmp_path}/last.db")
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(rows).values(name="taken"))
    seen_at_the_end: list[int] = []

    def count_rows(conn: Connection) -> None:
        seen_at_the_end.append(len(conn.execute(select(rows.c.name)).all()))

    writer = threading.Lock()
    commits = GroupCommit(engine, writer, last_statement=count_rows)

    def write(name: str) -> None:
        with contextlib.suppress(sa_exc.IntegrityError):
            commits.run(lambda conn: conn.execute(insert(rows).values(name=name)), name)

    with writer:
        threads = [threading.Thread(target=write, args=(f"w{n}",)) for n in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
    for thread in threads:
        thread.join(timeout=10)
    assert seen_at_the_end == [5]  # one batch: after its four rows
    seen_at_the_end.clear()
    with writer:
        threads = [threading.Thread(target=write, args=(name,)) for name in ("a", "taken", "b")]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
    for thread in threads:
        thread.join(timeout=10)
    # The batch failed (its last statement never ran to a commit); then "a" and "b" alone, each ended by it.
    assert seen_at_the_end == [6, 7]
