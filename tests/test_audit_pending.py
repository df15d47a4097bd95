"""A stop loses no audit event: what the writer cannot write in the stop's time, or at all (the database is
away), is saved in the data directory, and the next start writes it back, once."""

from __future__ import annotations

import logging
import stat
import threading
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError

from boshreg.registry import audit as audit_module
from boshreg.registry.audit import BATCH_EVENTS, AuditLog, Event
from boshreg.registry.audit_pending import load, pending
from boshreg.registry.store import SettingsStore
from boshreg.registry.tables import registry_events, registry_fleet
from conftest import RegistryLauncher
from support.pgserver import PgServer


def _trail(engine: Engine, directory: Path, *, write_pending: bool = False) -> AuditLog:
    return AuditLog(
        engine, max_age=timedelta(days=1), max_rows=1_000_000, pending_dir=directory, write_pending=write_pending
    )


def _stored_counts(engine: Engine) -> dict[tuple[str, int], int]:
    """Events in the trail by action and status, each counted as many times as it says (a window's reads are
    one row)."""
    events = registry_events.c
    count = func.sum(func.coalesce(events.count, 1))
    with engine.connect() as conn:
        rows = conn.execute(select(events.action, events.status, count).group_by(events.action, events.status))
        return {(action, status): int(total) for action, status, total in rows}


def _saved_counts(directory: Path) -> dict[tuple[str, int], int]:
    """The same for the events saved in ``directory``."""
    counts: dict[tuple[str, int], int] = {}
    for path in pending(directory):
        rows, damaged = load(path)
        assert damaged == 0
        for row in rows:
            key = (row["action"], row["status"])
            counts[key] = counts.get(key, 0) + int(row["count"] or 1)
    return counts


def _both(stored: dict[tuple[str, int], int], saved: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
    return {key: stored.get(key, 0) + saved.get(key, 0) for key in stored.keys() | saved.keys()}


def _written_back(engine: Engine, directory: Path, seconds: float = 30.0) -> None:
    """A new process's trail writes back what the stop saved, within ``seconds``."""
    trail = _trail(engine, directory, write_pending=True).start()
    try:
        deadline = time.monotonic() + seconds
        while pending(directory) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        trail.stop()
    assert pending(directory) == []


@pytest.mark.sqlite
def test_a_backlog_the_stop_cannot_write_in_time_is_saved_and_written_at_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """After a boot storm a worker held more events than its writer could store before systemd's deadline, and
    the rest were lost with the process (30 s of cold reads: 83,534 of 418,195 reads missing after a clean stop)."""
    store = SettingsStore(create_engine(f"sqlite:///{tmp_path / 'trail.db'}"))
    store.ensure_schema()
    store.put("vm-polling", "{}")
    directory = tmp_path / "data" / "audit-pending"
    trail = _trail(store.engine, directory)
    write = trail._write

    def slow_write(batch: list[Event]) -> None:  # a database busy with a storm
        time.sleep(0.3)
        write(batch)

    monkeypatch.setattr(trail, "_write", slow_write)
    trail.start()
    try:
        readers = 2 * BATCH_EVENTS + 500
        for n in range(readers):
            trail.record_read(f"vm-{n}", "10.0.0.2", "per-vm")
        for _ in range(3):
            trail.record_read("vm-polling", "10.0.0.3", "per-vm")
        trail.record("read", "vm-1", "10.0.0.9", "none", 401, "unauthorized")
        trail.record("read", "vm-1", "10.0.0.9", "none", 401, "unauthorized")
        with caplog.at_level(logging.WARNING, logger="boshreg.registry.audit"):
            trail.stop(drain_seconds=0.1)
        everything = {("read", 200): readers + 3, ("read", 401): 2}
        stored, saved = _stored_counts(store.engine), _saved_counts(directory)
        assert saved.get(("read", 200), 0) > 0, "the slow writer could not have written everything in 0.1 s"
        assert _both(stored, saved) == everything
        assert "written at the next start" in caplog.text
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700  # names VMs and the addresses that read them
        assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in pending(directory))
        assert all(len(path.read_text().splitlines()) <= BATCH_EVENTS for path in pending(directory))

        _written_back(store.engine, directory)
        assert _stored_counts(store.engine) == everything  # every event once: none lost, none written twice
        with store.engine.connect() as conn:
            fleet = conn.execute(select(registry_fleet.c.reads).where(registry_fleet.c.instance_id == "vm-polling"))
            assert fleet.scalar() == 3  # the fleet learns from written-back events as from live ones
    finally:
        store.close()


@pytest.mark.postgres
def test_events_queued_while_the_database_is_down_survive_a_stop(own_postgres: PgServer, tmp_path: Path) -> None:
    """The queue waits in memory while the database is away (bounded); a stop in that state used to end it."""
    url: URL = own_postgres.url
    store = SettingsStore(create_engine(url))
    store.ensure_schema()
    directory = tmp_path / "audit-pending"
    trail = _trail(store.engine, directory).start()
    try:
        own_postgres.stop()
        for n in range(50):
            trail.record_read(f"vm-{n}", "10.0.0.2", "per-vm")
        trail.record("write", "vm-0", "10.0.0.1", "admin", 200, "ok", size=2)
        trail.stop(drain_seconds=1.0)
        assert _saved_counts(directory) == {("read", 200): 50, ("write", 200): 1}
        own_postgres.start()
        _written_back(store.engine, directory)
        assert _stored_counts(store.engine) == {("read", 200): 50, ("write", 200): 1}
    finally:
        store.close()


@pytest.mark.sqlite
def test_a_damaged_line_in_a_saved_file_is_skipped_and_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A file cut short by a full disk or a crash loses its damaged line, not the file's other events."""
    store = SettingsStore(create_engine(f"sqlite:///{tmp_path / 'trail.db'}"))
    store.ensure_schema()
    directory = tmp_path / "audit-pending"
    trail = _trail(store.engine, directory)
    try:
        for n in range(10):
            trail.record_read(f"vm-{n}", "10.0.0.2", "per-vm")
        trail._save_the_rest()  # what a stop does with what is left
        (saved,) = pending(directory)
        saved.write_text(saved.read_text() + '{"at": "2026-12-07T1\n')
        with caplog.at_level(logging.ERROR, logger="boshreg.registry.audit"):
            _written_back(store.engine, directory)
        assert _stored_counts(store.engine) == {("read", 200): 10}
        assert f"1 damaged lines in {saved}" in caplog.text
    finally:
        store.close()


@pytest.mark.postgres
def test_a_registry_stopped_while_its_database_is_down_writes_its_trail_at_the_next_start(
    own_postgres: PgServer, start_registry: RegistryLauncher, tmp_path: Path
) -> None:
    """``boshreg serve`` end to end, two workers: each saves what it could not write in its data directory, and
    the next start's parent process writes both workers' files back."""
    registry = start_registry(own_postgres.url, workers=2)
    own_postgres.stop()
    wrong = httpx.BasicAuth("admin", "not-the-password")
    with httpx.Client(base_url=registry.url, auth=wrong, timeout=10) as client:
        statuses = [client.get("/instances/vm-outage/settings").status_code for _ in range(40)]
    assert set(statuses) <= {401, 429}
    registry.stop()
    directory = tmp_path / "data" / "audit-pending"
    assert pending(directory), "nothing was saved"
    own_postgres.start()
    start_registry(own_postgres.url, workers=2)
    deadline = time.monotonic() + 30
    while pending(directory) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pending(directory) == []
    engine = create_engine(own_postgres.url)
    try:
        stored = _stored_counts(engine)
    finally:
        engine.dispose()
    assert stored.get(("read", 401), 0) + stored.get(("read", 429), 0) == 40  # every refusal, once


@pytest.mark.sqlite
def test_the_batch_a_hanging_database_holds_at_the_stop_is_saved_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A statement that does not return within the stop's time (a database that hangs) kept its batch in the
    writer's hands, and the process ended with it."""
    store = SettingsStore(create_engine(f"sqlite:///{tmp_path / 'trail.db'}"))
    store.ensure_schema()
    directory = tmp_path / "audit-pending"
    trail = _trail(store.engine, directory)
    writing, release = threading.Event(), threading.Event()

    def hanging_write(batch: list[Event]) -> None:
        writing.set()
        release.wait(10)
        raise OperationalError("INSERT", {}, Exception("the database went away"))

    monkeypatch.setattr(trail, "_write", hanging_write)
    monkeypatch.setattr(audit_module, "GIVE_UP_SECONDS", 0.2)
    trail.start()
    try:
        for n in range(30):
            trail.record_read(f"vm-{n}", "10.0.0.2", "per-vm")
        assert writing.wait(5), "the writer did not take the batch"
        trail.stop(drain_seconds=0.2)
        assert _saved_counts(directory) == {("read", 200): 30}
    finally:
        release.set()
        store.close()


@pytest.mark.sqlite
def test_a_fault_of_ours_while_writing_back_keeps_the_file_and_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The writer thread is the trail's only one: an exception that is not the database's must not end it."""
    store = SettingsStore(create_engine(f"sqlite:///{tmp_path / 'trail.db'}"))
    store.ensure_schema()
    directory = tmp_path / "audit-pending"
    saving = _trail(store.engine, directory)
    try:
        saving.record_read("vm-1", "10.0.0.2", "per-vm")
        saving._save_the_rest()
        (saved,) = pending(directory)
        trail = _trail(store.engine, directory, write_pending=True)
        write = trail._write

        def broken_once(batch: list[Event]) -> None:
            monkeypatch.setattr(trail, "_write", write)
            raise RuntimeError("a bug")

        monkeypatch.setattr(trail, "_write", broken_once)
        with caplog.at_level(logging.ERROR, logger="boshreg.registry.audit"):
            trail.write_pending()
        assert pending(directory) == [saved]  # kept for the next start
        assert f"cannot write back {saved}" in caplog.text
        trail.record_read("vm-2", "10.0.0.2", "per-vm")
        trail.flush()
        assert _stored_counts(store.engine) == {("read", 200): 1}  # the writer goes on with the live events
    finally:
        store.close()


def _instances_in_trail(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [row[0] for row in conn.execute(select(registry_events.c.instance_id))]


def _reads_waiting(trail: AuditLog, vms: range) -> None:
    """A read of each VM, its window closed every 50 readers (a window holds fewer than QUEUE_MAX): as the
    writer's turns move them into the queue."""
    for start in range(vms.start, vms.stop, 50):
        for n in range(start, min(start + 50, vms.stop)):
            trail.record_read(f"vm-{n}", "10.0.0.2", "per-vm")
        trail._close_reads()


@pytest.mark.sqlite
def test_past_the_memory_bound_the_oldest_events_wait_on_disk_and_the_writer_writes_them_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer behind reads that saturate the cores (1,000,000 stored, ~15,000 VMs not seen before a second a
    worker) reached the memory bound after ~7 s and dropped the oldest: 13,731 and 17,934 of ~250,000 in two runs
    of 8 s. With a data directory the oldest wait there instead, and the writer writes them back itself."""
    monkeypatch.setattr(audit_module, "QUEUE_MAX", 1_000)
    monkeypatch.setattr(audit_module, "SPILL_DOWN_TO", 500)
    store = SettingsStore(create_engine(f"sqlite:///{tmp_path / 'trail.db'}"))
    store.ensure_schema()
    directory = tmp_path / "data" / "audit-pending"
    trail = _trail(store.engine, directory)  # a worker's: not started, so every turn is this test's
    try:
        _reads_waiting(trail, range(1_800))  # VMs not seen before: all waiting, past the bound
        trail._spill()  # the writer's turn begins
        assert len(trail._queue) == 500
        assert trail.queue_depth == 1_800  # the spilled ones still count as waiting
        assert sum(len(load(path)[0]) for path in pending(directory)) == 1_300
        assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in pending(directory))
        _reads_waiting(trail, range(1_800, 2_800))
        trail.flush()  # spills again (1,500 waiting), then writes what stays in memory
        for _ in range(10):
            if not trail._pending:
                break
            trail.write_pending()  # the next turns write the files back, oldest first
        assert trail.queue_depth == 0
        assert trail.dropped_total == 0
        assert pending(directory) == []
    finally:
        store.close()
    written = _instances_in_trail(store.engine)
    assert sorted(written) == sorted(f"vm-{n}" for n in range(2_800))  # each once


@pytest.mark.sqlite
def test_spilled_events_a_process_did_not_write_back_are_written_by_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed (or stopped) with events of its own on disk leaves them where a stop's are: the next
    start's parent writes them."""
    monkeypatch.setattr(audit_module, "QUEUE_MAX", 100)
    monkeypatch.setattr(audit_module, "SPILL_DOWN_TO", 0)
    store = SettingsStore(create_engine(f"sqlite:///{tmp_path / 'trail.db'}"))
    store.ensure_schema()
    directory = tmp_path / "audit-pending"
    try:
        worker = _trail(store.engine, directory)
        _reads_waiting(worker, range(150))
        worker._spill()
        assert len(pending(directory)) == 1
        assert worker.queue_depth == 150
        _written_back(store.engine, directory)
    finally:
        store.close()
    assert sorted(_instances_in_trail(store.engine)) == sorted(f"vm-{n}" for n in range(150))


@pytest.mark.sqlite
@pytest.mark.parametrize("kept", ["no data directory", "a directory that cannot be made"])
def test_past_the_memory_bound_without_a_place_on_disk_the_oldest_are_dropped_counted_and_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, kept: str
) -> None:
    monkeypatch.setattr(audit_module, "QUEUE_MAX", 100)
    monkeypatch.setattr(audit_module, "SPILL_DOWN_TO", 50)
    (tmp_path / "a-file").write_text("")
    directory = None if kept == "no data directory" else tmp_path / "a-file" / "audit-pending"
    store = SettingsStore(create_engine(f"sqlite:///{tmp_path / 'trail.db'}"))
    store.ensure_schema()
    trail = AuditLog(store.engine, max_age=timedelta(days=1), max_rows=10_000, pending_dir=directory)
    try:
        with caplog.at_level(logging.WARNING, logger="boshreg.registry.audit"):
            _reads_waiting(trail, range(250))  # past the bound in memory: 100 without a directory, 200 with one
            trail.flush()
    finally:
        store.close()
    written = _instances_in_trail(store.engine)
    if directory is None:
        assert trail.dropped_total == 150
        assert written == [f"vm-{n}" for n in range(150, 250)]  # the newest kept
    else:
        assert trail.dropped_total == 200  # 50 past the bound of 200, then 150 the disk refused
        assert written == [f"vm-{n}" for n in range(200, 250)]
        assert "cannot be kept in" in caplog.text
    assert "dropped" in caplog.text
    assert "Traceback" not in caplog.text


@pytest.mark.sqlite
def test_a_spilled_file_that_cannot_be_read_back_is_left_for_an_operator_and_no_longer_counted_as_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(audit_module, "QUEUE_MAX", 100)
    monkeypatch.setattr(audit_module, "SPILL_DOWN_TO", 0)
    store = SettingsStore(create_engine(f"sqlite:///{tmp_path / 'trail.db'}"))
    store.ensure_schema()
    directory = tmp_path / "audit-pending"
    trail = _trail(store.engine, directory)
    try:
        _reads_waiting(trail, range(150))
        trail._spill()
        (spilled,) = pending(directory)
        spilled.write_text('{"not": "an event"}\n')  # damaged on disk
        with caplog.at_level(logging.ERROR, logger="boshreg.registry.audit"):
            trail.write_pending()
    finally:
        store.close()
    assert trail.queue_depth == 0  # a gauge stuck at 150 would say the trail never catches up
    assert pending(directory) == [spilled]
    assert f"cannot read {spilled}" in caplog.text
