"""The audit trail's writer: its one-statement batches on SQLite."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert, select

from boshreg.registry import driver_sql
from boshreg.registry.audit import AuditLog, Event, query_events
from boshreg.registry.store import SettingsStore
from boshreg.registry.tables import registry_fleet


def _batch(count: int) -> list[Event]:
    at = datetime(2026, 12, 7, 4, 0, tzinfo=UTC)
    events = [
        Event(at + timedelta(seconds=n), "read", f"vm-{n}", f"10.0.0.{n}", "per-vm", 200, "ok", n + 1,
              last_at=at + timedelta(seconds=n + 30))
        for n in range(count)
    ]  # fmt: skip
    events.append(Event(at, "read", "vm-0", "10.0.0.9", "anonymous", 401, "access_denied", 2))
    return events


@pytest.mark.sqlite
@pytest.mark.parametrize("one_step", [True, False], ids=["json_each", "executemany"])
def test_a_batch_in_one_statement_stores_what_one_statement_a_row_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_step: bool
) -> None:
    """SQLite runs the trail's insert and the fleet's updates as one statement over a JSON array (one step: no
    interpreter lock let go and retaken per row); the rows and the fleet must be exactly the row-by-row ones."""
    monkeypatch.setattr(driver_sql, "SQLITE_HAS_JSON", one_step)
    driver_sql._compiled.clear()  # each form compiled anew for this test's choice
    store = SettingsStore(create_engine(f"sqlite:///{tmp_path / 'trail.db'}"))
    store.ensure_schema()
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
    assert len(fleet) == len(ids)
