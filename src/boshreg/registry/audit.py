"""The audit trail: every settings read, write and delete, and who asked, in ``registry_events``.

Requests only append to an in-memory queue; one thread writes batches and prunes by age and count, so
the trail costs a request nothing measurable and a slow database slows only the trail. If the database
is down, events wait in memory (bounded; the oldest are dropped, and the drop is logged).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select
from sqlalchemy import exc as sa_exc

from boshreg.registry.tables import registry_events

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.5
PRUNE_SECONDS = 60.0
QUEUE_MAX = 100_000
EVENTS_DEFAULT = 100  # one page of GET /instances/<id>/events
EVENTS_MAX = 1000


@dataclass(frozen=True)
class Event:
    at: datetime
    action: str
    instance_id: str
    client: str
    credential: str
    status: int
    outcome: str

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "at": self.at.isoformat()}

    def to_text(self) -> str:
        return (
            f"{self.at.strftime('%Y-%m-%dT%H:%M:%S')}Z {self.action:<11} {self.instance_id} from {self.client} "
            f"({self.credential}): {self.status} {self.outcome}"
        )


class AuditLog:
    """Queue events from request handlers; a background thread stores and prunes them."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_age: timedelta,
        max_rows: int,
        writer: AbstractContextManager[object] | None = None,
    ) -> None:
        self.engine = engine
        self._writer = writer or nullcontext()  # the store's queue for writers, where its database has one
        self.max_age = max_age
        self.max_rows = max_rows
        self._queue: deque[Event] = deque()
        self._dropped = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._last_prune = 0.0

    def start(self) -> AuditLog:
        self._thread.start()
        return self

    def record(self, action: str, instance_id: str, client: str, credential: str, status: int, outcome: str) -> None:
        """Queue one event; never blocks, never raises."""
        if len(self._queue) >= QUEUE_MAX:
            self._queue.popleft()
            self._dropped += 1
        self._queue.append(Event(datetime.now(UTC), action, instance_id, client, credential, status, outcome))

    def stop(self) -> None:
        """Write what is queued, then stop the writer."""
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def flush(self) -> None:
        """Write everything queued now (the writer thread calls this; tests may too)."""
        batch: list[Event] = []
        while self._queue and len(batch) < 1000:
            batch.append(self._queue.popleft())
        if not batch:
            return
        try:
            with self._writer, self.engine.begin() as conn:
                conn.execute(insert(registry_events), [event.__dict__ for event in batch])
        except sa_exc.SQLAlchemyError as exc:
            self._queue.extendleft(reversed(batch))  # keep them for the next try
            log.warning("audit trail not written (%d events waiting): %s", len(self._queue), type(exc).__name__)
            return
        if self._dropped:
            log.warning("audit trail dropped %d events while the database was unavailable", self._dropped)
            self._dropped = 0
        if self._queue:
            self.flush()

    def prune(self) -> None:
        """Delete events older than max_age, and the oldest beyond max_rows."""
        try:
            with self.engine.begin() as conn:
                conn.execute(delete(registry_events).where(registry_events.c.at < datetime.now(UTC) - self.max_age))
                newest = conn.execute(select(func.max(registry_events.c.id))).scalar()
                if newest is not None and newest > self.max_rows:
                    conn.execute(delete(registry_events).where(registry_events.c.id <= newest - self.max_rows))
        except sa_exc.SQLAlchemyError as exc:
            log.warning("audit trail not pruned: %s", type(exc).__name__)

    def _run(self) -> None:
        clock = 0.0
        while not self._stopping.is_set():
            self._wake.wait(FLUSH_SECONDS)
            self._wake.clear()
            self.flush()
            clock += FLUSH_SECONDS
            if clock >= PRUNE_SECONDS:
                clock = 0.0
                self.prune()
        self.flush()


def query_events(
    engine: Engine, *, instance_id: str | None = None, since: datetime | None = None, limit: int = 1000
) -> list[Event]:
    """The newest events first, optionally for one instance and since a time."""
    statement = select(registry_events).order_by(registry_events.c.id.desc()).limit(limit)
    if instance_id is not None:
        statement = statement.where(registry_events.c.instance_id == instance_id)
    if since is not None:
        statement = statement.where(registry_events.c.at >= since)
    with engine.connect() as conn:
        rows = conn.execute(statement).mappings().all()
    return [
        Event(
            _aware(row["at"]),
            row["action"],
            row["instance_id"],
            row["client"],
            row["credential"],
            row["status"],
            row["outcome"],
        )
        for row in rows
    ]


def _aware(value: datetime) -> datetime:
    """SQLite and MySQL give naive datetimes back; the stored ones are UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


class SinceError(ValueError):
    """A --since that is not a duration."""


def parse_since(text: str | None) -> datetime | None:
    """``10m`` → ten minutes ago (UTC); None stays None."""
    if text is None:
        return None
    number, unit = text[:-1], text[-1:]
    if unit not in _UNITS or not number.isdigit():
        raise SinceError(f"--since {text!r}: write a number and a unit, e.g. 30s, 10m, 2h, 7d")
    return datetime.now(UTC) - timedelta(seconds=int(number) * _UNITS[unit])
