"""Reads of one event-loop turn coalesced into one statement (read_batch): who gets what, and what a failure
or a deadline does to the others. The statement here is a recording function; test_read_pool runs it on
PostgreSQL through the store."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from boshreg.registry.read_batch import ReadBatches, Row


class Recording:
    """A stand-in for the database's statement: rows for the ids it knows, each call noted."""

    def __init__(self, known: dict[str, str], delay: float = 0.0, fail: Exception | None = None) -> None:
        self.known = known
        self.delay = delay
        self.fail = fail
        self.calls: list[list[str]] = []

    async def __call__(self, ids: list[str]) -> Sequence[Row]:
        self.calls.append(ids)
        await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        return [(i, self.known.get(i), 0) for i in ids]


def test_reads_of_one_turn_share_one_statement_each_caller_gets_its_own_row() -> None:
    statement = Recording({"vm-1": "one", "vm-2": "two"})
    batches = ReadBatches(statement, limit=64)

    async def many() -> list[Row | None]:
        return await asyncio.gather(*(batches.read(i) for i in ["vm-1", "vm-2", "vm-1", "vm-none"] * 10))

    rows = asyncio.run(many())
    assert rows == [("one", 0), ("two", 0), ("one", 0), (None, 0)] * 10
    assert statement.calls == [["vm-1", "vm-2", "vm-none"]]  # one statement, each id once


def test_a_turn_with_more_ids_than_the_limit_is_split_into_statements_of_the_limit() -> None:
    statement = Recording({})
    batches = ReadBatches(statement, limit=64)

    async def many() -> None:
        await asyncio.gather(*(batches.read(f"vm-{n}") for n in range(100)))
        await batches.read("vm-later")  # a later turn: a statement of its own

    asyncio.run(many())
    assert [len(ids) for ids in statement.calls] == [64, 36, 1]


def test_a_caller_whose_deadline_passes_stops_waiting_without_cancelling_the_others() -> None:
    statement = Recording({"vm-1": "one"}, delay=0.2)
    batches = ReadBatches(statement)

    async def one_gives_up() -> tuple[Row | None, bool]:
        patient = asyncio.create_task(batches.read("vm-1"))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await batches.read("vm-1")
        return await patient, patient.cancelled()

    assert asyncio.run(one_gives_up()) == (("one", 0), False)
    assert len(statement.calls) == 1


def test_a_failed_statement_fails_every_caller_of_its_turn_and_the_next_turn_tries_again() -> None:
    statement = Recording({"vm-1": "one"}, fail=ConnectionResetError(104, "Connection reset by peer"))
    batches = ReadBatches(statement)

    async def fails_then_works() -> tuple[list[object], Row | None]:
        failed = await asyncio.gather(batches.read("vm-1"), batches.read("vm-2"), return_exceptions=True)
        statement.fail = None
        return list(failed), await batches.read("vm-1")

    failed, later = asyncio.run(fails_then_works())
    assert all(isinstance(result, ConnectionResetError) for result in failed)
    assert later == ("one", 0)
    assert len(statement.calls) == 2


def test_statements_in_threads_run_at_most_so_many_at_once_and_none_for_callers_who_left() -> None:
    """A stalled database: the first statement hangs; the turns behind it wait for a slot, and when the slot
    frees, the batches whose callers' deadlines have passed are not sent."""
    statement = Recording({"vm-1": "one"}, delay=0.6)  # longer than the five deadlines below, one after another
    batches = ReadBatches(statement, concurrency=1)

    async def impatient_then_patient() -> Row | None:
        first = asyncio.create_task(batches.read("vm-1"))
        await asyncio.sleep(0.05)  # the first turn's statement is running
        for n in range(5):  # five more turns, each giving up before the first statement ends
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await batches.read(f"vm-gave-up-{n}")
        await first
        return await batches.read("vm-1")

    assert asyncio.run(impatient_then_patient()) == ("one", 0)
    assert statement.calls == [["vm-1"], ["vm-1"]]
