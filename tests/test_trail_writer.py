"""The audit trail's writer: its pace when writing is slow, and its one-statement batches on SQLite."""

from __future__ import annotations

import gc
import itertools
import os
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert, select
from sqlalchemy import event as sa_event

from boshreg.registry import audit as audit_module
from boshreg.registry import driver_sql
from boshreg.registry.audit import AuditLog, Event, query_events
from boshreg.registry.store import SettingsStore
from boshreg.registry.tables import registry_fleet


@pytest.mark.sqlite
def test_counted_reads_are_closed_by_the_clock_while_writing_them_is_slow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each close of the counted reads is written in 0.3 s (a database under load); a close is due every 0.4 s
    and the writer turns every 0.1 s. By the clock the next close comes at the first turn after its due time
    (~0.4 s apart); counting four turns a close, as before, added three idle turns (~0.7 s apart)."""
    monkeypatch.setattr(audit_module, "FLUSH_SECONDS", 0.1)
    monkeypatch.setattr(audit_module, "READS_SECONDS", 0.4)
    store = SettingsStore(create_engine(f"sqlite:///{tmp_path / 'trail.db'}"))
    store.ensure_schema()
    trail = AuditLog(store.engine, max_age=timedelta(days=1), max_rows=10_000)
    closes: list[float] = []
    close_reads, write = trail._close_reads, trail._write

    def counted_close() -> None:
        closes.append(time.monotonic())
        close_reads()

    def slow_write(batch: list[Event]) -> None:
        time.sleep(0.3)
        write(batch)

    monkeypatch.setattr(trail, "_close_reads", counted_close)
    monkeypatch.setattr(trail, "_write", slow_write)
    trail.start()
    try:
        until = time.monotonic() + 4.0
        n = 0
        while time.monotonic() < until:  # a read every 10 ms: every close has reads to write
            trail.record_read(f"vm-{n}", "10.0.0.2", "per-vm")
            n += 1
            time.sleep(0.01)
    finally:
        trail.stop()
        store.close()
    gaps = [later - earlier for earlier, later in itertools.pairwise(closes)]
    assert len(gaps) >= 4, gaps
    assert statistics.median(gaps) < 0.55, gaps  # by the clock 0.40 apart, by turns 0.70
    assert sum(1 for event in query_events(store.engine, limit=10_000) if event.action == "read") == n  # none lost


def _batch(count: int) -> list[Event]:
    at = datetime(2026, 12, 7, 4, 0, tzinfo=UTC)
    events = [
        Event(at + timedelta(seconds=n), "read", f"vm-{n}", f"10.0.0.{n}", "per-vm", 200, "ok", n + 1,
              last_at=at + timedelta(seconds=n + 30))
        for n in range(count)
    ]  # fmt: skip
    events.append(Event(at, "read", "vm-0", "10.0.0.9", "anonymous", 401, "access_denied", 2))
    events.append(Event(at, "read", "vm-1", "10.0.0.9", "refused", 403, "revoked"))
    return events


@pytest.mark.sqlite
@pytest.mark.parametrize("one_step_wanted", [True, False], ids=["json_each", "executemany"])
def test_a_batch_in_one_statement_stores_what_one_statement_a_row_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_step_wanted: bool
) -> None:
    """SQLite runs the trail's insert and the fleet's updates as one statement over a JSON array (one step: no
    interpreter lock let go and retaken per row); the rows and the fleet must be exactly the row-by-row ones."""
    monkeypatch.setattr(driver_sql, "SQLITE_HAS_JSON", one_step_wanted)
    driver_sql._compiled.clear()  # each form compiled anew for this test's choice
    store = SettingsStore(create_engine(f"sqlite:///{tmp_path / 'trail.db'}"))
    store.ensure_schema()
    statements: list[str] = []
    sa_event.listen(store.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    events = _batch(300)
    ids = sorted({event.instance_id for event in events})
    try:
        with store.engine.begin() as conn:
            conn.execute(insert(registry_fleet), [{"instance_id": i, "reads": 1, "refusals": 0} for i in ids])
        trail = AuditLog(store.engine, max_age=timedelta(days=1), max_rows=10_000)
        trail._write(events)
        stored = sorted((e.at, e.instance_id, e.client, e.status, e.count) for e in query_events(store.engine))
        with store.engine.connect() as conn:
            fleet = sorted(tuple(row) for row in conn.execute(select(registry_fleet)))
    finally:
        store.close()
        driver_sql._compiled.clear()
    assert stored == sorted((e.at, e.instance_id, e.client, e.status, e.count) for e in events)
    by_id = {row[0]: row for row in fleet}
    assert by_id["vm-7"][4] == 1 + 8  # reads added
    assert by_id["vm-7"][6] == datetime(2026, 12, 7, 4, 0, 37)  # the last read's time, as written
    assert by_id["vm-7"][7:9] == ("10.0.0.7", "per-vm")
    assert by_id["vm-0"][9] == 2  # the refusals, in the same batch
    assert by_id["vm-1"][9:12] == (1, datetime(2026, 12, 7, 4, 0), 403)
    assert len(fleet) == len(ids)
    one_step = sorted(" ".join(sql.split()[:3]) for sql in statements if "FROM json_each(?) AS anon_1) AS batch" in sql)
    trail_and_fleet = ["INSERT INTO registry_events", "UPDATE registry_fleet SET", "UPDATE registry_fleet SET"]
    assert one_step == (trail_and_fleet if one_step_wanted else []), statements  # the reads' and refusals' UPDATEs


@pytest.mark.sqlite
def test_a_readers_first_read_is_written_at_once_and_the_rest_of_its_window_as_one_event(tmp_path: Path) -> None:
    """`why` and the fleet see a VM's read at the writer's next turn; a VM polling its settings costs two rows
    a window (each a random page of the trail's index and of the fleet table), not one a read or a turn."""
    store = SettingsStore(create_engine(f"sqlite:///{tmp_path / 'trail.db'}"))
    store.ensure_schema()
    store.put("vm-a", "{}")
    store.put("vm-b", "{}")
    trail = AuditLog(store.engine, max_age=timedelta(days=1), max_rows=10_000)

    def reads() -> list[tuple[str, int]]:
        return [(e.instance_id, e.count) for e in reversed(query_events(store.engine)) if e.action == "read"]

    try:
        for _ in range(5):
            trail.record_read("vm-a", "10.0.0.2", "per-vm")
        trail.record_read("vm-b", "10.0.0.3", "per-vm")
        assert trail.queue_depth == 3  # two first reads, and vm-a's further reads as one event to come
        trail.flush(reads=False)  # a turn of the writer within the window
        assert reads() == [("vm-a", 1), ("vm-b", 1)]
        for _ in range(3):
            trail.record_read("vm-a", "10.0.0.2", "per-vm")
        trail.flush(reads=False)
        assert reads() == [("vm-a", 1), ("vm-b", 1)]  # further reads wait for the window's close
        assert trail.queue_depth == 1
        trail.flush()  # the window closes
        assert reads() == [("vm-a", 1), ("vm-b", 1), ("vm-a", 7)]
        assert trail.queue_depth == 0
        trail.record_read("vm-a", "10.0.0.2", "per-vm")  # a new window: its first read at once again
        trail.flush(reads=False)
        assert reads() == [("vm-a", 1), ("vm-b", 1), ("vm-a", 7), ("vm-a", 1)]
        with store.engine.connect() as conn:
            fleet = {row.instance_id: row for row in conn.execute(select(registry_fleet))}
    finally:
        store.close()
    assert (fleet["vm-a"].reads, fleet["vm-b"].reads) == (9, 1)  # every read counted once
    assert fleet["vm-a"].first_read_at < fleet["vm-a"].last_read_at


@contextmanager
def starved_trail(tmp_path: Path) -> Iterator[AuditLog]:
    """A trail whose writer never runs (as under a load that starves it): what is recorded waits in memory."""
    store = SettingsStore(create_engine(f"sqlite:///{tmp_path / 'trail.db'}"))
    store.ensure_schema()
    try:
        yield AuditLog(store.engine, max_age=timedelta(days=1), max_rows=100_000)
    finally:
        store.close()


def tracked_objects() -> int:
    """The objects the garbage collector walks, after a full pass."""
    gc.collect()
    return len(gc.get_objects())


@pytest.mark.sqlite
def test_events_waiting_for_a_starved_writer_are_out_of_the_garbage_collectors_walks(tmp_path: Path) -> None:
    """Under a cold load the writer (below the loop's CPU priority) falls behind: ~100,000 events a worker wait.
    As objects the collector tracked, each full pass walked them all with every request on the worker stalled
    (30-63 ms, cold GET p99.9 62-97 ms at 1,000,000 stored); waiting as plain tuples, it drops them from its
    walks at their first pass. The writer still writes every one, in order."""
    with starved_trail(tmp_path) as trail:
        tracked_before = tracked_objects()
        for n in range(20_000):  # a window of distinct readers, closed: their events wait in the queue
            trail.record_read(f"vm-{n}", "10.0.0.2", "per-vm")
        trail._close_reads()
        for n in range(10_000):  # an open window: each reader's first read and a further one
            for _ in range(2):
                trail.record_read(f"vm-{n}", "10.0.0.3", "per-vm")
        assert trail.queue_depth == 40_000
        assert tracked_objects() - tracked_before < 1_000  # was 30,000: an Event, or a list, per reader
        trail.flush()
    events = list(reversed(query_events(trail.engine, limit=100_000)))
    assert [(event.client, event.count) for event in events] == (
        [("10.0.0.2", 1)] * 20_000 + [("10.0.0.3", 1)] * 10_000 + [("10.0.0.3", 1)] * 10_000
    )
    assert [event.instance_id for event in events[:20_000]] == [f"vm-{n}" for n in range(20_000)]


@pytest.mark.sqlite
def test_a_flood_of_refusals_from_many_addresses_is_out_of_the_garbage_collectors_walks(tmp_path: Path) -> None:
    """Refused requests are counted per (address, id, ...) in a window, as reads are: 20,000 refusers kept as
    objects the collector tracks would be walked at each full pass, as the reads' backlog was. Each refuser's first
    refusal is an event at once; its further ones one event with their count when the window closes."""
    with starved_trail(tmp_path) as trail:
        tracked_before = tracked_objects()
        for n in range(20_000):
            for _ in range(3):
                trail.record("read", "vm-1", f"10.{n // 250}.{n % 250}.1", "refused", 401, "unauthorized")
        assert tracked_objects() - tracked_before < 1_000  # was 20,000: an Event per refuser
        trail._close_window(time.monotonic(), force=True)
        trail.flush()
    events = query_events(trail.engine, limit=100_000)
    by_client: dict[str, list[int]] = {}
    for event in events:
        by_client.setdefault(event.client, []).append(event.count or 1)
    assert len(by_client) == 20_000
    assert {tuple(sorted(counts)) for counts in by_client.values()} == {(1, 2)}  # the first, then 2 more


@pytest.mark.sqlite
def test_a_window_filling_while_the_writer_writes_a_backlog_is_closed_within_that_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A turn writing a backlog can last seconds while the loop counts new readers into the window; at QUEUE_MAX
    readers the loop drops a new reader's read. Closed within the turn, the window never gets there."""
    monkeypatch.setattr(audit_module, "QUEUE_MAX", 10_000)
    monkeypatch.setattr(audit_module, "WINDOW_CLOSED_IN_A_TURN", 2_000)
    store = SettingsStore(create_engine(f"sqlite:///{tmp_path / 'trail.db'}"))
    store.ensure_schema()
    trail = AuditLog(store.engine, max_age=timedelta(days=1), max_rows=100_000, pending_dir=tmp_path / "pending")
    write = trail._write
    batches = itertools.count()

    def write_while_reads_arrive(batch: list[Event]) -> None:
        number = next(batches)
        if number < 8:  # the loop serves 1,500 VMs not seen before during each of the backlog's batches
            for n in range(number * 1_500, (number + 1) * 1_500):
                trail.record_read(f"vm-{n}", "10.0.0.2", "per-vm")
        write(batch)

    monkeypatch.setattr(trail, "_write", write_while_reads_arrive)
    now = datetime.now(UTC)
    for n in range(8 * audit_module.BATCH_EVENTS):  # the backlog: eight batches
        trail._enqueue(Event(now, "write", f"vm-w{n}", "10.0.0.1", "admin", 200, "ok"))
    try:
        trail.flush()
        trail.flush()  # the next turn: what the last window holds
    finally:
        store.close()
    assert trail.dropped_total == 0  # 2,000 of the reads without the close within the turn
    events = query_events(store.engine, limit=100_000)
    assert sum(event.action == "read" for event in events) == 12_000
    assert sum(event.action == "write" for event in events) == 8_000


@pytest.mark.sqlite
def test_a_window_full_of_readers_is_closed_before_its_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a boot storm every read is a VM not yet seen; the window remembers each reader (to tell a further read
    from a first), so a full one is closed at the writer's next turn: memory stays bounded, no read is lost."""
    monkeypatch.setattr(audit_module, "FLUSH_SECONDS", 0.05)
    monkeypatch.setattr(audit_module, "READS_SECONDS", 60.0)
    monkeypatch.setattr(audit_module, "READS_WINDOW_MAX", 100)
    store = SettingsStore(create_engine(f"sqlite:///{tmp_path / 'trail.db'}"))
    store.ensure_schema()
    trail = AuditLog(store.engine, max_age=timedelta(days=1), max_rows=10_000)
    for n in range(150):  # all before the writer's first turn: one window, whatever the machine's pace
        for _ in range(2):  # a first read and a further one: the further waits for the window's close
            trail.record_read(f"vm-{n}", "10.0.0.2", "per-vm")
    trail.start()
    try:
        deadline = time.monotonic() + 5.0
        while trail.queue_depth and time.monotonic() < deadline:
            time.sleep(0.05)
        assert trail.queue_depth == 0  # closed long before READS_SECONDS
        assert trail.dropped_total == 0
    finally:
        trail.stop()
        store.close()
    reads = [event for event in query_events(store.engine, limit=10_000) if event.action == "read"]
    assert sum(event.count for event in reads) == 300


@pytest.mark.sqlite
def test_the_writer_runs_below_the_serving_threads_cpu_priority(tmp_path: Path) -> None:
    """When the cores are saturated the reads come first; the trail catches up after (a thread's own nice value:
    Linux, as everywhere this suite runs)."""
    store = SettingsStore(create_engine(f"sqlite:///{tmp_path / 'trail.db'}"))
    store.ensure_schema()
    trail = AuditLog(store.engine, max_age=timedelta(days=1), max_rows=10_000).start()
    try:
        writer = trail._thread.native_id
        assert writer is not None
        deadline = time.monotonic() + 5.0
        while os.getpriority(os.PRIO_PROCESS, writer) == os.getpriority(os.PRIO_PROCESS, 0):
            assert time.monotonic() < deadline, "the writer kept the serving thread's priority"
            time.sleep(0.01)
        serving = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        assert os.getpriority(os.PRIO_PROCESS, writer) == min(19, serving + audit_module.WRITER_NICENESS)
    finally:
        trail.stop()
        store.close()
