"""The encoded answer to a settings read, per instance, held in each worker process.

A read of a cached instance costs a dictionary lookup instead of a database round trip; the cache must
never outlive a write by more than a stated bound:

- in the process that wrote: forgotten at once, before the write is acknowledged;
- SQLite, other workers and replicas of this host: every boshreg write changes a shared 8-byte marker
  file beside the database (``<db>-boshreg-changes``, mapped into memory); a read that sees it changed
  drops the cache. Bound: none (the next read after the acknowledgement sees the change). Writers that
  are not boshreg (the original registry on the same file, ``sqlite3``) are seen through SQLite's
  ``PRAGMA data_version`` within ``FOREIGN_CHECK_SECONDS`` (that number also moves when any process
  writes its audit trail, so checking it more often would empty the cache several times a second);
- PostgreSQL, other workers and replicas on any host: each boshreg write sends a notification in its own
  transaction (``LISTEN``/``NOTIFY``); every worker listens and drops its cache when one arrives (the
  bound is the delivery, milliseconds); while a worker is not listening it keeps nothing. Writers that
  are not boshreg are seen when entries expire, within ``FOREIGN_EXPIRY_SECONDS``;
- MySQL/MariaDB (no notifications), other workers and replicas on any host: each boshreg write raises a
  counter row (``registry_changes``) as the last statement of its transaction; a thread per worker reads
  it every ``CHANGE_POLL_SECONDS`` and drops the cache when it moved (the bound: that interval and one
  round trip); while it cannot read it, the worker keeps nothing. Writers that are not boshreg are seen
  within ``http.cache_seconds``: that same thread checks the answers about to expire against the database
  (an MD5 of their settings, many ids a query) and keeps those unchanged for another ``cache_seconds`` from
  the check, drops those changed or gone. A hot answer is then never read again only because it aged (those
  reads, ~3% of hot GETs at a 10 s life, set the p99: 60-220 ms at 256 connections against 19-21).

Memory is bounded (``http.cache_bytes``, least recently used out first) and answers over
``ENTRY_MAX_BYTES`` are not cached.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import mmap
import os
import random
import secrets
import sqlite3
import struct
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple, Protocol

from sqlalchemy import Connection, Engine, func, literal_column, select
from sqlalchemy import exc as sa_exc

from boshreg.registry.tables import registry_changes, registry_instances

log = logging.getLogger(__name__)

ENTRY_MAX_BYTES = 64 * 1024
CHANNEL = "boshreg_settings"  # PostgreSQL's notification channel for settings writes
NOTIFY_POLL_SECONDS = 1.0
FOREIGN_EXPIRY_SECONDS = 60.0  # PostgreSQL: how long an answer lives, for writers that send no notification
FOREIGN_CHECK_SECONDS = 10.0  # SQLite's data_version also moves on every audit-trail commit: not more often
CHANGE_POLL_SECONDS = 0.1  # MySQL: how often each worker reads the change counter (one tiny query)
# MySQL: answers are checked against the database this often, as a share of their life (http.cache_seconds),
# those that would expire before two more checks: each kept answer is checked about twice a life.
REVALIDATE_SHARE = 0.25
REVALIDATE_IDS = 500  # ids a checking query names (one such query between two readings of the counter)
_MARKER_BYTES = 8
_MARKER_MAX = 2**64 - 1
_MARKER = struct.Struct("<Q")  # the marker's number (read on every cached read: 50 ns, int.from_bytes 120)


class ChangeWatch(Protocol):
    """What tells a process that another may have written since it last looked."""

    def version(self) -> int:
        """A number that differs whenever a write may have happened since the last call returned it."""
        ...

    def changed_here(self) -> None:
        """This process committed a write: tell the others."""
        ...

    def attach(self, cache: ResponseCache) -> bool:
        """The cache this watch serves; True when the watch checks its answers against the database (then
        each answer is kept with a digest of its settings)."""
        ...

    def close(self) -> None: ...


class NoWatch:
    """No other writer can be seen: entries are kept for their time only (a cache of one process)."""

    def version(self) -> int:
        return 0

    def changed_here(self) -> None:
        return None

    def attach(self, cache: ResponseCache) -> bool:
        return False

    def close(self) -> None:
        return None


class SharedMarker:
    """A file of 8 bytes that every boshreg process on this SQLite database rewrites after each write."""

    def __init__(self, database: Path) -> None:
        self.path = database.with_name(database.name + "-boshreg-changes")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < _MARKER_BYTES:
                os.ftruncate(fd, _MARKER_BYTES)
            self._map = mmap.mmap(fd, _MARKER_BYTES)
        finally:
            os.close(fd)
        self._foreign = _DataVersion(database)
        self._foreign_seen = self._foreign.read()
        self._next_foreign_check = time.monotonic() + FOREIGN_CHECK_SECONDS
        self._foreign_changes = 0
        self._counter = itertools.count()
        self._counter_pid = 0  # a counter inherited through fork would repeat the parent's values: start anew

    def version(self) -> int:
        now = time.monotonic()
        if now >= self._next_foreign_check:
            self._next_foreign_check = now + FOREIGN_CHECK_SECONDS
            seen = self._foreign.read()
            if seen != self._foreign_seen:
                self._foreign_seen = seen
                self._foreign_changes += 1
        return int(_MARKER.unpack_from(self._map)[0]) ^ self._foreign_changes

    def changed_here(self) -> None:
        # Any new value will do (readers compare for difference), so writers need no lock between them:
        # each process counts on from a random start of its own (os.urandom once, not once per write).
        if self._counter_pid != os.getpid():
            self._counter = itertools.count(secrets.randbits(64))
            self._counter_pid = os.getpid()
        _MARKER.pack_into(self._map, 0, next(self._counter) & _MARKER_MAX)

    def attach(self, cache: ResponseCache) -> bool:
        return False  # every write is seen at the next read: nothing ages

    def close(self) -> None:
        self._map.close()
        self._foreign.close()


class _WatchThread:
    """A thread per worker that hears of other processes' writes on a database connection of its own.

    While it is not hearing (start-up, the database away), ``version`` changes on every call: nothing is
    kept, since no change would be heard. Each kind says how it hears (``_hear``) and what it logs.
    """

    _name = ""
    _not_hearing = ""  # the warning's words when it cannot: "... (the error's kind); not caching"

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._version = 0
        self._hearing = False
        self._failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def version(self) -> int:
        if not self._hearing:
            self._version += 1
        return self._version

    def changed_here(self) -> None:
        return None  # the write's own transaction told the others

    def attach(self, cache: ResponseCache) -> bool:
        return False

    def close(self) -> None:
        self._stop.set()

    def _changed(self) -> None:
        self._version += 1

    def _hearing_now(self) -> None:
        """Called by ``_hear`` once it hears every write from here on."""
        self._hearing = True
        self._failures = 0

    def _hear(self) -> None:
        """Until ``_stop``: call ``_changed`` for each change heard, ``_hearing_now`` once hearing."""
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._hear()
            except Exception as exc:  # any failure of its connection means: not hearing
                self._failures += 1
                if self._failures == 1:
                    log.warning("read cache: %s (%s); not caching", self._not_hearing, type(exc).__name__)
            finally:
                self._hearing = False
                self._version += 1
            self._stop.wait(1.0)


class PgNotifications(_WatchThread):
    """PostgreSQL tells every worker of every replica about each boshreg write (LISTEN/NOTIFY).

    Writers send ``pg_notify(CHANNEL, id)`` inside the write's transaction, so it is delivered at commit.
    """

    _name = "cache-notifications"
    _not_hearing = "not listening for PostgreSQL notifications"

    def _hear(self) -> None:
        raw = self._engine.raw_connection()
        try:
            conn = raw.driver_connection
            assert conn is not None
            conn.autocommit = True
            conn.execute(f"LISTEN {CHANNEL}")
            self._changed()  # writes before LISTEN were not heard: drop what is kept
            self._hearing_now()
            while not self._stop.is_set():
                for _ in conn.notifies(timeout=NOTIFY_POLL_SECONDS):
                    self._changed()
        finally:
            with contextlib.suppress(Exception):
                raw.invalidate()


class ChangeCounter(_WatchThread):
    """MySQL/MariaDB tell every worker of every replica about boshreg's writes through a counter they raise.

    Why not a time to live alone: entries that expired every second sent a third of the hot reads to the
    database (hot GET, MariaDB: 15,000 reads a second against ~50,000). The counter is read outside any
    transaction, so each read sees the latest commit; a table not there yet counts as not hearing.
    """

    _name = "cache-change-counter"
    _not_hearing = "not reading MySQL's change counter"
    _cache: ResponseCache | None = None

    def attach(self, cache: ResponseCache) -> bool:
        if not cache.max_seconds:
            return False
        self._cache = cache
        return True

    def _hear(self) -> None:
        with self._engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            seen: int | None = None
            due: list[tuple[str, Entry]] = []
            next_round = time.monotonic()
            while not self._stop.is_set():
                counter = conn.execute(_COUNTER).scalar_one()  # no row: an error, as if away
                if counter != seen:
                    seen = counter
                    self._changed()  # at the first read too: writes until then were not seen
                self._hearing_now()
                cache = self._cache
                if cache is not None:
                    # One query of ids between two readings of the counter, so that checking thousands of
                    # answers never holds back the news of a boshreg write by more than that query.
                    if not due and time.monotonic() >= next_round:
                        next_round = time.monotonic() + cache.revalidate_every
                        due = cache.due_for_check()
                    if due:
                        self._check(conn, cache, due[:REVALIDATE_IDS])
                        due = due[REVALIDATE_IDS:]
                self._stop.wait(CHANGE_POLL_SECONDS)

    def _check(self, conn: Connection, cache: ResponseCache, due: list[tuple[str, Entry]]) -> None:
        """``due`` against what is stored now; a query the database refuses (not a lost connection, which
        ends the hearing) stops the checks: answers then expire after their life, as before there were checks."""
        try:
            revalidate(conn, cache, due)
        except (sa_exc.OperationalError, sa_exc.InterfaceError):
            raise
        except sa_exc.SQLAlchemyError as exc:
            log.warning("read cache: answers not checked against MySQL (%s); they expire instead", type(exc).__name__)
            self._cache = None


def revalidate(conn: Connection, cache: ResponseCache, due: list[tuple[str, Entry]]) -> None:
    """Check answers against what is stored: unchanged ones live on, the rest are dropped.

    The time of the check is taken before the query, so an answer is never served longer than the cache's
    life after a moment the database was seen to hold what it says."""
    checked_at = time.monotonic()
    ids = [instance_id for instance_id, _entry in due]
    rows = conn.execute(_DIGESTS.where(registry_instances.c.instance_id.in_(ids)))
    stored: dict[str, str] = {instance_id: digest for instance_id, digest in rows}
    cache.checked(due, stored, checked_at)


def settings_digest(settings: str) -> str:
    """What MySQL's ``MD5(CONVERT(settings USING utf8mb4))`` gives for these settings (``_DIGESTS``)."""
    return hashlib.md5(settings.encode("utf-8", "surrogatepass"), usedforsecurity=False).hexdigest()


# The settings' UTF-8 whatever the column's character set, so that the digest is settings_digest's.
_DIGESTS = select(registry_instances.c.instance_id, func.md5(literal_column("CONVERT(settings USING utf8mb4)")))


_COUNTER = select(registry_changes.c.version).where(registry_changes.c.id == 1)


def ensure_change_counter(engine: Engine) -> None:
    """MySQL/MariaDB: the counter's table and its one row, where missing (before any write that raises it)."""
    if engine.dialect.name not in ("mysql", "mariadb"):
        return
    registry_changes.create(engine, checkfirst=True)
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT IGNORE INTO registry_changes (id, version) VALUES (1, 0)")


def count_change(conn: Connection) -> None:
    """MySQL/MariaDB: raise the change counter in the caller's transaction, as its last statement.

    Last, because the row is every writer's: taken earlier, its lock would be held across the other rows a
    transaction locks, and two transactions could each hold what the other waits for.
    """
    if conn.dialect.name in ("mysql", "mariadb"):
        conn.exec_driver_sql("UPDATE registry_changes SET version = version + 1 WHERE id = 1")


class _DataVersion:
    """SQLite's count of commits made by other connections to the database file."""

    def __init__(self, database: Path) -> None:
        self._conn: sqlite3.Connection | None = None
        try:
            self._conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, check_same_thread=False)
        except sqlite3.Error:
            self._conn = None

    def read(self) -> int:
        if self._conn is None:
            return 0
        try:
            row = self._conn.execute("PRAGMA data_version").fetchone()
        except sqlite3.Error:
            return -1
        return int(row[0]) if row else 0

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


class Answer(NamedTuple):
    """A cached read: the encoded 200 body and the credential generation read with it."""

    body: bytes
    generation: int


# A kept answer: the answer, its monotonic expiry, the MD5 of its settings where the watch checks answers (else "").
Entry = tuple[Answer, float, str]


class ResponseCache:
    """Encoded answers by instance id: bounded in bytes, least recently used out first, dropped on change.

    Each answer keeps the instance's credential generation read with it: a revocation is a write, so it
    reaches the cache by the same bounds as a change of the settings.

    The event loop alone reads and keeps answers; a watch that checks them (MySQL's) works on a copy of the
    entries from its own thread and changes only entries that are still the ones it checked, under ``_lock``,
    which every change of the entries takes (a hit, which only reads and reorders, does not).
    """

    def __init__(self, watch: ChangeWatch, *, max_bytes: int, max_seconds: float | None) -> None:
        self.watch = watch
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._bytes = 0
        self._seen = watch.version()
        self._writes = 0  # this process's own writes: a read that began before one must not be kept
        self.hits = 0
        self.misses = 0
        self.revalidate_every = (max_seconds or 0.0) * REVALIDATE_SHARE
        self.revalidating = watch.attach(self)

    def get(self, instance_id: str) -> Answer | None:
        """The cached answer, or None when there is none or it may be stale."""
        version = self.watch.version()
        if version != self._seen:
            self._seen = version
            self.clear()
            self.misses += 1
            return None
        entry = self._entries.get(instance_id)
        if entry is None or (self.max_seconds is not None and entry[1] < time.monotonic()):
            self.misses += 1
            return None
        self._entries.move_to_end(instance_id)
        self.hits += 1
        return entry[0]

    def version(self) -> tuple[int, int]:
        """Taken before a database read: ``put`` keeps the answer only if nothing was written since."""
        return (self.watch.version(), self._writes)

    def put(
        self, instance_id: str, answer: Answer, version: tuple[int, int], read_at: float, settings: str = ""
    ) -> None:
        """Keep an answer read from the database at ``read_at`` (monotonic) while ``version`` held; ``settings``:
        the stored text it answers with (its digest is what a checking watch compares)."""
        if len(answer.body) > ENTRY_MAX_BYTES or version != self.version() or version[0] != self._seen:
            return
        # Spread over the second half of the allowed life: answers read together must not expire together
        # (a whole cache refilled at once from PostgreSQL stalled every request behind it).
        expires = read_at + self.max_seconds * (0.5 + random.random() / 2) if self.max_seconds is not None else 0.0
        digest = settings_digest(settings) if self.revalidating else ""
        with self._lock:
            self._drop(instance_id)
            self._entries[instance_id] = (answer, expires, digest)
            self._bytes += len(answer.body)
            while self._bytes > self.max_bytes and self._entries:
                _, (dropped, _, _) = self._entries.popitem(last=False)
                self._bytes -= len(dropped.body)

    def forget(self, instance_id: str) -> None:
        """This process is writing ``instance_id``: drop its answer here and tell the other processes."""
        self._writes += 1
        with self._lock:
            self._drop(instance_id)
        self.watch.changed_here()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def due_for_check(self) -> list[tuple[str, Entry]]:
        """The entries that would expire before two more checks (from the checking watch's thread)."""
        soon = time.monotonic() + 2 * self.revalidate_every
        # One C-level copy: the loop may reorder entries meanwhile, which iterating the dict itself forbids.
        entries = list(self._entries.items())
        return [(instance_id, entry) for instance_id, entry in entries if entry[2] and entry[1] < soon]

    def checked(self, due: list[tuple[str, Entry]], stored: dict[str, str], checked_at: float) -> None:
        """``due`` checked at ``checked_at`` against ``stored`` (id → digest): the unchanged live one more life
        from then, the changed and the gone are dropped; an entry replaced or dropped since is left alone."""
        if self.max_seconds is None:
            return
        expires = checked_at + self.max_seconds
        with self._lock:
            for instance_id, entry in due:
                if self._entries.get(instance_id) is not entry:
                    continue
                if stored.get(instance_id) == entry[2]:
                    self._entries[instance_id] = (entry[0], max(entry[1], expires), entry[2])
                else:
                    self._drop(instance_id)

    def _drop(self, instance_id: str) -> None:
        old = self._entries.pop(instance_id, None)
        if old is not None:
            self._bytes -= len(old[0].body)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def close(self) -> None:
        self.watch.close()
