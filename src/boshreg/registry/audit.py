"""The audit trail: every settings read, write and delete, and who asked, in ``registry_events``.

Requests only append to an in-memory queue; one thread writes batches and prunes by age and count, so
the trail costs a request nothing measurable and a slow database slows only the trail. If the database
is down, events wait in memory, and past ``QUEUE_MAX`` of them on disk.

Past ``QUEUE_MAX`` waiting events (a writer behind reads that saturate the cores, or a database away) the writer
moves the oldest to files in the data directory and writes them back itself, a few files a turn before the turn's
own events: memory stays bounded and no event is dropped while the disk has room. Without a data directory, or
with the disk refusing them, the oldest are dropped, counted and logged.

The trail sits on the VMs' network, so it is built to survive them: ids are stored escaped (a NUL byte
or a newline arrives as ``\x00``, ``\n``), an event the database refuses is dropped alone instead of
blocking the batch, refused requests (401, 403, 429) from one address for one id are written once per window,
and the rest of that window's as one event with a count, and pruning removes those refusals before any other event.

Successful reads are counted as refusals are: per (instance, address, credential kind) and window of
``READS_SECONDS``, the first read is written at once (``why`` and the fleet see it within a flush), the rest of
the window's as one event with the time of the first of them, the last, and how many. "Who read what from
where" stays exact; at 50,000 reads a second the trail grows by two rows per reader and window, not by 50,000
rows (which had overwritten a million-row cap every 20 s), and a read costs a dictionary update.
"""

from __future__ import annotations

import logging
import operator
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select
from sqlalchemy import exc as sa_exc

from boshreg.errors import BoshregError
from boshreg.registry import audit_pending
from boshreg.registry.driver_sql import driver_statement
from boshreg.registry.fleet import apply_changes, changes_of
from boshreg.registry.tables import registry_events

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.5
REFUSALS_WINDOW = 10.0  # seconds: refused requests from one address become one event with a count
# Reads after the first of a window become one event this often (or sooner, when another event for the trail
# arrives). Each row of a distinct reader costs a random page of the trail's per-instance index and one of the
# fleet table: with 2,000 VMs polling, those rows were ~30% of a worker's CPU at 0.5 s and still ~30% at 2 s.
READS_SECONDS = REFUSALS_WINDOW
# A window holding this many readers is closed at the writer's next turn: what a window remembers (~0.3 KiB a
# reader) stays bounded when every read is a VM not yet seen (a boot storm: 11,000 a second a worker).
READS_WINDOW_MAX = 20_000
REFUSED_STATUSES = frozenset({401, 403, 429})
# At a stop, how long the writer may go on writing what is queued; the rest is saved for the next start
# (audit_pending). With the front's 5 s of grace it keeps a stop within systemd's TimeoutStopSec (15 s).
STOP_DRAIN_SECONDS = 5.0
GIVE_UP_SECONDS = 2.0  # then how long the batch in hand may take before the rest is saved
PENDING_FILES_A_TURN = 10  # files a stop left, written back per turn of the writer (a batch each)
# Events per transaction at most. Each distinct VM's event dirties a page of the trail's per-instance index and
# one of the fleet table, and a commit writes each once (to the WAL, then the database: ~6 system calls a page
# on SQLite), so larger transactions share pages: 10,000 wrote a cold backlog with ~30% less CPU and drained it
# in 10-12 s instead of 16-19. Not kept: during the load the writer then took more of the interpreter lock,
# and cold reads fell 8-15% (four pairs); README, "Measured".
BATCH_EVENTS = 1000
PRUNE_SECONDS = 60.0
QUEUE_MAX = 100_000  # waiting events a process keeps in memory (~300 bytes each); past it the oldest go to disk
SPILL_DOWN_TO = QUEUE_MAX // 2  # a spill leaves this many in memory: one file write for many events
# A window this full is closed within a turn of the writer (a turn writing a backlog can last seconds), before it
# reaches QUEUE_MAX readers, past which the event loop drops a new reader's read. Not sooner: the loop's reads
# come first, and closing windows within turns moves the writer's work into the load (20,000: 5-8% fewer cold
# reads at 1,000,000 stored, two pairs).
WINDOW_CLOSED_IN_A_TURN = QUEUE_MAX * 4 // 5
# The writer thread's CPU priority below the serving thread's (Linux: nice +19, the lowest): on saturated cores the
# trail waits (spilled to disk past QUEUE_MAX) until the load ends. Against +10, cold SQLite at 1,000,000 stored
# served ~8% more reads with a p99 of 32-34 ms instead of 37-81 (three pairs; README, "Measured").
WRITER_NICENESS = 19
FLEET_ATTEMPTS = 4  # a fleet update that meets another writer's lock is tried this many times
EVENTS_DEFAULT = 100  # one page of GET /instances/<id>/events
EVENTS_MAX = 1000


@dataclass(slots=True)
class Event:
    """One line of the trail; a value, never changed once made (``dataclasses.replace`` makes another).

    Not frozen: a cold read makes one (a distinct VM's read is an event of its own), and a frozen dataclass's
    construction and ``values`` cost ~6 us of the writer's GIL time per event, against ~1 us here.
    """

    at: datetime
    action: str
    instance_id: str
    client: str
    credential: str
    status: int
    outcome: str
    count: int = 1  # refused requests aggregated into this event
    size: int | None = None  # for the fleet table, not the trail: a write's settings bytes
    last_at: datetime | None = None  # for the fleet table: the last of the reads counted in this event

    def to_json(self) -> dict[str, Any]:
        return {**self.row(), "at": self.at.isoformat()}

    def row(self) -> dict[str, Any]:
        """The event as a ``registry_events`` row."""
        return dict(zip(_COLUMNS, self.values(), strict=True))

    def values(self) -> tuple[Any, ...]:
        """The row's values in ``registry_events``' column order (the INSERT's and the COPY's)."""
        return _column_values(self)

    def to_pending(self) -> dict[str, Any]:
        """Every field, for a file of events waiting to be written (``audit_pending``, whose orjson writes the
        times as ISO 8601)."""
        return _pending_row(_fields(self))

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Event:
        """An event from a ``registry_events`` row, or from a saved one's fields (``from_pending``): the types
        made sure of, as a saved file can be damaged; raises KeyError, TypeError or ValueError if they are not."""
        return cls(
            _aware(row["at"]),
            str(row["action"]),
            str(row["instance_id"]),
            str(row["client"]),
            str(row["credential"]),
            int(row["status"]),
            str(row["outcome"]),
            int(row["count"] or 1),
        )

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Event:
        """``to_json``'s inverse, as the events API answers it (``count`` may be missing: a registry before
        aggregation); raises KeyError, TypeError or ValueError for one that is not an event."""
        return cls.from_row({**raw, "at": datetime.fromisoformat(str(raw["at"])), "count": raw.get("count")})

    @classmethod
    def from_pending(cls, row: dict[str, Any]) -> Event:
        """``to_pending``'s inverse; raises KeyError, TypeError or ValueError for a row that is not one."""
        event = cls.from_json(row)
        last_at = row.get("last_at")
        return replace(
            event,
            size=None if row.get("size") is None else int(row["size"]),
            last_at=_aware(datetime.fromisoformat(str(last_at))) if last_at else None,
        )

    def to_text(self) -> str:
        """One line, safe for a terminal: every control character shown escaped."""
        times = f" x{self.count}" if self.count > 1 else ""
        return (
            f"{self.at.strftime('%Y-%m-%dT%H:%M:%S')}Z {self.action:<11} {printable(self.instance_id)} from "
            f"{printable(self.client)} ({printable(self.credential)}): {self.status} {printable(self.outcome)}{times}"
        )


def escape_id(raw: str) -> str:
    """An id as stored: exact, but with backslashes and control characters escaped (databases refuse NUL)."""
    if raw.isprintable() and "\\" not in raw:
        return raw
    return "".join(
        "\\\\" if char == "\\" else char if char.isprintable() else f"\\x{ord(char):02x}" if ord(char) < 256
        else f"\\u{ord(char):04x}" for char in raw
    )  # fmt: skip


def printable(text: str) -> str:
    """``text`` with every control character escaped: no forged lines, no terminal escapes."""
    return text if text.isprintable() else "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


class AuditLog:
    """Queue events from request handlers; a background thread stores and prunes them."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_age: timedelta,
        max_rows: int,
        writer: AbstractContextManager[object] | None = None,
        pending_dir: Path | None = None,
        write_pending: bool = False,
    ) -> None:
        """``pending_dir``: where a stop saves what it could not write; ``write_pending``: this process writes
        back what earlier stops saved there (one process of a registry does, so no file is written twice)."""
        self.engine = engine
        self._writer = writer or nullcontext()  # the store's queue for writers, where its database has one
        self.max_age = max_age
        self.max_rows = max_rows
        # The events waiting for the writer, each as a plain tuple of its fields (``_fields``), made an Event a
        # batch at a time: the garbage collector stops tracking such a tuple at its first pass, while it walked
        # every waiting Event object in each full pass, with every request on the worker stalled (a cold load
        # leaves 100,000 a worker waiting: passes of 30-63 ms; README, "Measured").
        self._queue: deque[tuple[Any, ...]] = deque()
        # by (client, action, id, credential, status): this window's refusals, as their latest event's fields with
        # the count of further ones (tuples, as the queue's: a flood of refusers must not fill the collector's walks)
        self._refusals: dict[tuple[str, ...], tuple[Any, ...]] = {}
        self._refusals_since = 0.0
        # (id, client, credential) → (the first of the window's further reads (time.time()), how many, the last
        # read's): the window's readers; their first reads wait in _first_reads to be written at the next flush.
        # Tuples, not lists, for the queue's reason: a starved writer let a window grow to 66,000 readers a worker.
        self._reads: dict[tuple[str, str, str], tuple[float, int, float]] = {}
        self._first_reads: list[tuple[str, str, str, float]] = []
        self._further_reads = 0  # readers with further reads in this window: events waiting for its close
        self._reads_lock = threading.Lock()
        self._dropped = 0
        self._poisoned = 0
        self.dropped_total = 0  # every event dropped since start (the metrics)
        self._fleet_failures = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._giving_up = threading.Event()  # the stop's drain time is over: no new batch
        self._in_hand: list[Event] = []  # the batch the writer is writing
        self._pending_dir = pending_dir
        # Files to write back, oldest first: what earlier stops saved (the parent lists them as it starts, right
        # after forking, seconds before a worker could hold QUEUE_MAX events), then this process's own spills.
        self._pending: list[Path] = audit_pending.pending(pending_dir) if pending_dir and write_pending else []
        self._spilled: dict[Path, int] = {}  # this process's spilled files not yet written back: their events
        self._spilled_events = 0  # their sum (read by other threads, which must not iterate the dict)
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._last_prune = 0.0

    def start(self) -> AuditLog:
        self._thread.start()
        return self

    def record(
        self,
        action: str,
        instance_id: str,
        client: str,
        credential: str,
        status: int,
        outcome: str,
        *,
        size: int | None = None,
    ) -> None:
        """Queue one event; never blocks, never raises. Refusals are counted, one event per window."""
        if status == 200 and action == "read":
            self.record_read(instance_id, client, credential)
            return
        if self._reads:
            self._close_reads()  # reads so far come before this event in the trail, as they happened
        event = Event(
            datetime.now(UTC), action, escape_id(instance_id)[:255], client[:64], credential, status, outcome, size=size
        )
        if status in REFUSED_STATUSES:
            # The first refusal of a window is written at once (`why` sees it); the rest become one event.
            key = (event.client, action, event.instance_id, credential, str(status))
            seen = self._refusals.get(key)
            if seen is not None:
                self._refusals[key] = _with_count(_fields(event), seen[_COUNT] + 1)
                return
            if len(self._refusals) < QUEUE_MAX:
                self._refusals[key] = _with_count(_fields(event), 0)
        self._enqueue(event)

    def record_read(self, instance_id: str, client: str, credential: str) -> None:
        """Count one successful read: a reader's first of the window is written at the next flush, the rest
        when the window closes.

        On the event loop, once per read: times are kept as ``time.time()`` (~50 ns) and become datetimes in
        the writer's thread (``datetime.now`` here was a third of this method's time on a cold read)."""
        key = (instance_id, client, credential)
        now = time.time()
        with self._reads_lock:
            seen = self._reads.get(key)
            if seen is not None:
                first, count, _last = seen
                if not count:
                    first = now
                    self._further_reads += 1
                self._reads[key] = (first, count + 1, now)  # now: the fleet's "last read"
            elif len(self._reads) < QUEUE_MAX:
                self._reads[key] = (now, 0, now)
                self._first_reads.append((instance_id, client, credential, now))
            else:
                self._dropped += 1
                self.dropped_total += 1

    def _take_first_reads(self) -> None:
        """Move the readers' first reads of this window to the queue, one event each."""
        with self._reads_lock:
            firsts, self._first_reads = self._first_reads, []
        for instance_id, client, credential, first in firsts:
            self._enqueue_fields(_read_fields(instance_id, client, credential, first, 1, first))

    def _close_reads(self) -> None:
        """Close the reads' window: first reads to the queue, then one event per reader with further reads."""
        self._take_first_reads()
        with self._reads_lock:
            reads, self._reads = self._reads, {}
            self._further_reads = 0
        for (instance_id, client, credential), (first, count, last) in reads.items():
            if count:  # a reader with one read was written as its first
                self._enqueue_fields(_read_fields(instance_id, client, credential, first, count, last))

    @property
    def queue_depth(self) -> int:
        """Events waiting to be written, spilled ones included (a reader's further reads in this window count as
        one)."""
        return len(self._queue) + len(self._first_reads) + self._further_reads + self._spilled_events

    def _enqueue(self, event: Event) -> None:
        self._enqueue_fields(_fields(event))

    def _enqueue_fields(self, event_fields: tuple[Any, ...]) -> None:
        # The bound keeps memory in check while the database is away; at a stop the windows' reads come in on
        # top of a full queue, and what is not written then is saved to disk, so nothing is dropped for it. With
        # a data directory the writer spills past QUEUE_MAX (never this thread, which may be the event loop's),
        # so here the bound is twice that: reached only while the writer is stuck in a statement.
        bound = QUEUE_MAX if self._pending_dir is None else 2 * QUEUE_MAX
        if len(self._queue) >= bound and not self._stopping.is_set():
            self._queue.popleft()
            self._dropped += 1
            self.dropped_total += 1
        self._queue.append(event_fields)

    def _close_window(self, now: float, *, force: bool = False) -> None:
        """Move this window's aggregated refusals to the queue."""
        if not force and now - self._refusals_since < REFUSALS_WINDOW:
            return
        self._refusals_since = now
        refusals, self._refusals = self._refusals, {}
        for event_fields in refusals.values():
            if event_fields[_COUNT]:  # the window's further refusals, as one event with their count
                self._enqueue_fields(event_fields)

    def stop(self, drain_seconds: float = STOP_DRAIN_SECONDS) -> None:
        """Write what is queued for up to ``drain_seconds``, then stop the writer; what is left (a backlog
        larger than a stop's deadline allows, or a database that is away) is saved for the next start."""
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=drain_seconds)
        if self._thread.is_alive():
            self._giving_up.set()  # the batch in hand is finished (or fails), no other is begun
            self._thread.join(timeout=GIVE_UP_SECONDS)
        self._save_the_rest()

    def _save_the_rest(self) -> None:
        """What the writer left in the queue, saved to ``pending_dir``; said in the log either way."""
        self._close_window(time.monotonic(), force=True)
        self._close_reads()
        # A writer still in a statement (a database that hangs past the stop's time) holds a batch that may never
        # commit: saved too. Should it commit before the process ends, those events are in the trail twice.
        in_hand = list(self._in_hand) if self._thread.is_alive() else []
        if self._spilled_events:
            log.warning(
                "audit trail: %d events this process kept in %s are not written yet; the next start writes them",
                self._spilled_events,
                self._pending_dir,
            )
        # the queue's tuples become rows as they are: no Event made only to be taken apart (up to 200,000 at a stop)
        rest = [event.to_pending() for event in in_hand]
        rest += [_pending_row(self._queue.popleft()) for _ in range(len(self._queue))]
        if not rest:
            return
        if self._pending_dir is None:
            self.dropped_total += len(rest)
            log.error("audit trail: %d events not written before the stop, and lost (no data directory)", len(rest))
            return
        try:
            audit_pending.save(self._pending_dir, rest, BATCH_EVENTS)
        except OSError as exc:
            self.dropped_total += len(rest)
            log.error(
                "audit trail: %d events not written before the stop, and lost: cannot save them in %s (%s); "
                "make that directory writable for the registry's user",
                len(rest),
                self._pending_dir,
                exc.strerror or exc,
            )
            return
        log.warning(
            "audit trail: %d events not written before the stop; saved in %s, written at the next start",
            len(rest),
            self._pending_dir,
        )

    def _spill(self) -> None:
        """In the writer's thread: past QUEUE_MAX waiting events, the oldest to files in ``pending_dir`` (a batch
        each, made and written one at a time, so a spill costs no memory of its own), written back by this writer
        (``write_pending``); a disk that refuses them drops them, counted and logged."""
        if self._pending_dir is None or len(self._queue) <= QUEUE_MAX:
            return
        spilled = 0
        while len(self._queue) > SPILL_DOWN_TO:
            count = min(BATCH_EVENTS, len(self._queue) - SPILL_DOWN_TO)
            oldest = [_pending_row(self._queue.popleft()) for _ in range(count)]
            try:
                (path,) = audit_pending.save(self._pending_dir, oldest, BATCH_EVENTS)  # at most a batch: one file
            except OSError as exc:
                lost = len(oldest) + self._drop_oldest(len(self._queue) - SPILL_DOWN_TO)
                self._dropped += lost
                self.dropped_total += lost
                log.error(
                    "audit trail: %d events dropped: more than %d waited, and they cannot be kept in %s (%s)",
                    lost,
                    QUEUE_MAX,
                    self._pending_dir,
                    exc.strerror or exc,
                )
                break
            self._spilled[path] = len(oldest)
            self._pending.append(path)
            self._spilled_events += len(oldest)
            spilled += len(oldest)
        if spilled:
            log.info("audit trail: %d events waiting; kept the %d oldest in %s", len(self._queue) + spilled, spilled,
                     self._pending_dir)  # fmt: skip

    def _drop_oldest(self, count: int) -> int:
        """Drop up to ``count`` of the oldest waiting events; how many were."""
        dropped = 0
        while dropped < count and self._queue:
            self._queue.popleft()
            dropped += 1
        return dropped

    def write_pending(self) -> None:
        """Write back a few of the files earlier stops (or this writer's spills) saved, oldest first; each is
        deleted once written. A database that is away leaves them for a later turn."""
        for _ in range(min(len(self._pending), PENDING_FILES_A_TURN)):
            path = self._pending[0]
            try:
                rows, damaged = audit_pending.load(path)
                events = [Event.from_pending(row) for row in rows]
            except (OSError, KeyError, TypeError, ValueError) as exc:
                log.error("audit trail: cannot read %s (%s); left it there", path, exc)
                self._done_with(path)
                continue
            if damaged:
                log.error("audit trail: %d damaged lines in %s, skipped", damaged, path)
            try:
                self._write(events)
            except (sa_exc.OperationalError, sa_exc.InterfaceError):
                return  # the database is away: the next turn tries again
            except sa_exc.SQLAlchemyError:
                self._write_isolating(events)
            except Exception:  # a fault of ours: the writer must live on; the file stays for the next start
                log.exception("audit trail: cannot write back %s; left it there", path)
                self._done_with(path)
                continue
            path.unlink(missing_ok=True)
            if not self._done_with(path) and not self._pending:
                log.info("audit trail: the events earlier stops saved are written")

    def _done_with(self, path: Path) -> bool:
        """``path`` off the list of files to write back (written, or left for the next start); whether it was one
        of this writer's spills (its events then no longer wait here)."""
        self._pending.remove(path)
        spilled = self._spilled.pop(path, None)
        if spilled is None:
            return False
        self._spilled_events -= spilled
        return True

    def flush(self, *, reads: bool = True) -> None:
        """Write everything queued now, first reads included, and (``reads``) close the reads' window; tests may
        call it too."""
        if reads:
            self._close_reads()
        else:
            self._take_first_reads()
        while self._queue and not self._giving_up.is_set():
            if len(self._reads) >= WINDOW_CLOSED_IN_A_TURN:  # a long turn (a backlog) must not let the window fill
                self._close_reads()
            self._spill()
            batch: list[Event] = []
            while self._queue and len(batch) < BATCH_EVENTS:
                batch.append(Event(*self._queue.popleft()))
            self._in_hand = batch
            try:
                self._write(batch)
            except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:  # the database is away: keep them
                self._queue.extendleft(_fields(event) for event in reversed(batch))
                log.warning("audit trail not written (%d events waiting): %s", len(self._queue), type(exc).__name__)
                return
            except sa_exc.SQLAlchemyError:
                self._write_isolating(batch)  # one event the database refuses must not hold the others back
            except Exception:  # a fault of ours: the writer must live on, and say what it lost
                self.dropped_total += len(batch)
                log.exception("audit trail: %d events not written", len(batch))
            finally:
                self._in_hand = []
        if self._dropped:
            log.warning(
                "audit trail dropped %d events: more waited than it keeps (the database away or slow, or reads "
                "faster than it writes)%s",
                self._dropped,
                "" if self._pending_dir else "; a data directory (data_dir) keeps them on disk instead",
            )
            self._dropped = 0

    def _write(self, batch: list[Event]) -> None:
        """The events; then, in a transaction of its own, what the fleet table learns from them.

        The trail comes first: a fleet update the database refuses is logged, never a reason to lose events.
        """
        with self._writer, self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                _copy_events(conn, batch)
            else:
                driver_statement(_INSERT, conn.dialect, _COLUMNS).run_rows(conn, [event.values() for event in batch])
        changes = changes_of(batch)
        for attempt in range(FLEET_ATTEMPTS):
            try:
                with self._writer, self.engine.begin() as conn:
                    apply_changes(conn, changes)
                return
            except sa_exc.OperationalError:  # a deadlock or a lock wait another writer caused: once more
                if attempt + 1 < FLEET_ATTEMPTS:
                    time.sleep(0.05 * (attempt + 1))
                    continue
                self._fleet_failed("OperationalError")
            except Exception as exc:  # the events are written: writing them again would repeat them
                self._fleet_failed(type(exc).__name__, None if isinstance(exc, sa_exc.SQLAlchemyError) else exc)
                return

    def _fleet_failed(self, reason: str, fault: Exception | None = None) -> None:
        """A fleet update given up on: logged now and then (a fault of ours with its traceback), counted; the
        trail itself is complete."""
        self._fleet_failures += 1
        if self._fleet_failures == 1 or self._fleet_failures % 1000 == 0:
            log.warning(
                "fleet table not updated (%s; %d batches so far); the audit trail is complete",
                reason,
                self._fleet_failures,
                exc_info=fault,
            )

    def _write_isolating(self, batch: list[Event]) -> None:
        """A batch the database refused, written in halves until the events it refuses are alone, then dropped.

        Halves, not one by one: a transaction (and a disk flush) per event held the writer 1.6 s for a batch of
        1,000 with one refused event (PostgreSQL on a 2-core VM), halves 0.13 s: ~2 log2(n) transactions."""
        for half in (batch[: len(batch) // 2], batch[len(batch) // 2 :]):
            if not half:
                continue
            try:
                self._write(half)
            except sa_exc.SQLAlchemyError as exc:
                if len(half) > 1:
                    self._write_isolating(half)
                    continue
                self._poisoned += 1
                self.dropped_total += 1
                if self._poisoned == 1 or self._poisoned % 1000 == 0:
                    log.warning(
                        "audit trail: the database refused an event (%s; %d so far), dropped it alone",
                        type(exc).__name__,
                        self._poisoned,
                    )

    def prune(self) -> None:
        """Delete events older than max_age; beyond max_rows, refusals first, then the oldest of the rest."""
        try:
            with self.engine.begin() as conn:
                conn.execute(delete(registry_events).where(registry_events.c.at < datetime.now(UTC) - self.max_age))
                rows = conn.execute(select(func.count()).select_from(registry_events)).scalar() or 0
                excess = rows - self.max_rows
                for refused in (True, False):
                    if excess <= 0:
                        break
                    kind = registry_events.c.status.in_(REFUSED_STATUSES)
                    oldest = (
                        select(registry_events.c.id)
                        .where(kind if refused else ~kind)
                        .order_by(registry_events.c.id)
                        .limit(excess)
                    )
                    ids = [row[0] for row in conn.execute(oldest)]
                    for start in range(0, len(ids), 1000):
                        conn.execute(delete(registry_events).where(registry_events.c.id.in_(ids[start : start + 1000])))
                    excess -= len(ids)
        except sa_exc.SQLAlchemyError as exc:
            log.warning("audit trail not pruned: %s", type(exc).__name__)

    def _run(self) -> None:
        _yield_cpu_to_serving()
        # Reads are closed by the clock (or a full window), not by turns of this loop: a turn that writes a
        # window's reads can take seconds under load, and counting turns then added idle turns before a close.
        reads_closed = pruned = time.monotonic()
        while not self._stopping.is_set():
            self._wake.wait(FLUSH_SECONDS)
            self._wake.clear()
            now = time.monotonic()
            self._close_window(now)
            reads_due = now - reads_closed >= READS_SECONDS or len(self._reads) >= READS_WINDOW_MAX
            if reads_due:
                reads_closed = now
            if self._pending:  # before this turn's events, so that most of the trail stays in order
                self.write_pending()
            self.flush(reads=reads_due)
            if now - pruned >= PRUNE_SECONDS:
                pruned = now
                self.prune()
        self._close_window(time.monotonic(), force=True)
        self.flush()


def _read_fields(
    instance_id: str, client: str, credential: str, first: float, count: int, last: float
) -> tuple[Any, ...]:
    """Successful reads as a trail event's fields (``Event(*fields)``): ``first`` and ``last`` (``time.time()``
    values, kept so by the loop) made datetimes here, in the writer's thread; the id and address stored as every
    event stores them."""
    at = datetime.fromtimestamp(first, UTC)
    last_at = at if last == first else datetime.fromtimestamp(last, UTC)
    return (at, "read", escape_id(instance_id)[:255], client[:64], credential, 200, "ok", count, None, last_at)


def _yield_cpu_to_serving() -> None:
    """Lower the calling thread's CPU priority (Linux, where each thread has its own nice value).

    Why: the trail's writing is CPU (SQLite's page writes through the kernel: ~130 us a distinct read on a slow
    VM) on the cores that serve the reads. When they are saturated, a boot storm, the reads come first and the
    trail catches up after; its queue's bound, spill to disk and logged drops are as before. Cold SQLite reads,
    six pairs side by side: 6,349-7,475 req/s (p99 median ~94 ms) against 4,521-5,743 (~147 ms) at the same
    priority; at 1,000,000 stored, +19 against +10: 14,095-14,595 against 12,745-13,400 (three pairs).
    """
    if sys.platform != "linux":
        return  # elsewhere PRIO_PROCESS with a thread's id is not that thread
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + WRITER_NICENESS))
    except OSError as exc:  # a sandbox that forbids it: the writer runs as it always did
        log.info("audit trail writer keeps its CPU priority: %s", exc)


def _copy_events(conn: Connection, batch: list[Event]) -> None:
    """The events into the trail through PostgreSQL's COPY (imported here: only a trail on PostgreSQL needs psycopg)."""
    from boshreg.registry.audit_copy import copy_rows

    copy_rows(conn, registry_events.name, _COLUMNS, (event.values() for event in batch))


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
    return [Event.from_row(row) for row in rows]


def _aware(value: datetime) -> datetime:
    """SQLite and MySQL give naive datetimes back; the stored ones are UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


_COLUMNS = tuple(column.name for column in registry_events.columns if column.name != "id")
_column_values: Callable[[Event], tuple[Any, ...]] = operator.attrgetter(*_COLUMNS)  # C: a tuple in column order
_FIELD_NAMES = tuple(field.name for field in fields(Event))  # to_pending's keys, in the queue's tuples' order
_fields: Callable[[Event], tuple[Any, ...]] = operator.attrgetter(*_FIELD_NAMES)
_COUNT = _FIELD_NAMES.index("count")


def _with_count(event_fields: tuple[Any, ...], count: int) -> tuple[Any, ...]:
    """An event's fields with another count."""
    return (*event_fields[:_COUNT], count, *event_fields[_COUNT + 1 :])


_INSERT = insert(registry_events)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def _pending_row(event_fields: tuple[Any, ...]) -> dict[str, Any]:
    """An event's fields (a queued tuple, or ``_fields`` of an Event) as a row of ``audit_pending``'s files."""
    return dict(zip(_FIELD_NAMES, event_fields, strict=True))


class SinceError(BoshregError, ValueError):
    """A --since that is not a duration."""


def parse_since(text: str | None) -> datetime | None:
    """``10m`` → ten minutes ago (UTC); None stays None."""
    if text is None:
        return None
    number, unit = text[:-1], text[-1:]
    if unit not in _UNITS or not number.isdigit():
        raise SinceError(f"--since {text!r}: write a number and a unit, e.g. 30s, 10m, 2h, 7d")
    return datetime.now(UTC) - timedelta(seconds=int(number) * _UNITS[unit])
