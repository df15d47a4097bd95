"""Settings storage in the original registry's table, over any of the three databases.

The table is exactly the one the original's migration created, so a database written by the original
registry is served as it is. A database that is down is reported as ``StoreUnavailable`` (the caller
answers 503) and the pool reconnects by itself once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    PoolProxiedConnection,
    String,
    bindparam,
    delete,
    exists,
    func,
    inspect,
    null,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import URL
from sqlalchemy.pool import QueuePool
from sqlalchemy.sql.dml import Insert

from boshreg.bootstrap.endpoint import redact_url
from boshreg.bootstrap.registry_key import REGISTRY_KEY
from boshreg.errors import BoshregError
from boshreg.registry.cache import CHANNEL, count_change, ensure_change_counter
from boshreg.registry.driver_sql import DriverStatement
from boshreg.registry.group_commit import GroupCommit
from boshreg.registry.read_batch import ReadBatches
from boshreg.registry.tables import (
    metadata,
    registry_changes,
    registry_credentials,
    registry_events,
    registry_instances,
)

if TYPE_CHECKING:  # asyncpg is imported only where PostgreSQL is read on the loop (~3 MiB a process)
    from boshreg.registry.read_pool import ReadPool

log = logging.getLogger(__name__)
_SQL_LOG = logging.getLogger("sqlalchemy.engine.Engine")  # each statement, at loglevel: debug
_NO_FREE_CONNECTION = (
    "no free database connection within db.pool_timeout ({database}); raise db.max_connections or db.pool_timeout"
)

_MYSQL_DATA_TOO_LONG = 1406
_ASYNCPG = URL.create("postgresql+asyncpg").get_dialect()()  # the read pool's paramstyle: $1
_NOTIFY = text("SELECT pg_notify(:channel, :instance_id)")
_GET_SETTINGS = select(registry_instances.c.settings).where(
    registry_instances.c.instance_id == bindparam("instance_id")
)
_GET_GENERATION = select(registry_credentials.c.generation).where(
    registry_credentials.c.instance_id == bindparam("instance_id")
)
# A read answers both in one round trip: a per-VM credential is good only for the current generation.
_READ = select(_GET_SETTINGS.scalar_subquery(), _GET_GENERATION.scalar_subquery())
# The same for many ids at once (read_batch): a row per id given, the id first.
_WANTED = (
    func.unnest(bindparam("instance_ids", type_=postgresql.ARRAY(String))).table_valued("id").render_derived("wanted")
)
_READ_MANY = select(
    _WANTED.c.id,
    select(registry_instances.c.settings).where(registry_instances.c.instance_id == _WANTED.c.id).scalar_subquery(),
    select(registry_credentials.c.generation)
    .where(registry_credentials.c.instance_id == _WANTED.c.id)
    .scalar_subquery(),
)
# The same in a worker thread, for a server without the read pool (MySQL; PostgreSQL with an option asyncpg
# cannot take), portable SQL: the stored ids with their generation, then the ids with a generation only (their
# settings deleted); an id with neither has no row, as _READ's answer for it is (None, None).
_WANTED_IDS = bindparam("instance_ids", type_=String, expanding=True)
_READ_MANY_PORTABLE = union_all(
    select(registry_instances.c.instance_id, registry_instances.c.settings, registry_credentials.c.generation)
    .select_from(
        registry_instances.outerjoin(
            registry_credentials, registry_credentials.c.instance_id == registry_instances.c.instance_id
        )
    )
    .where(registry_instances.c.instance_id.in_(_WANTED_IDS)),
    select(registry_credentials.c.instance_id, null(), registry_credentials.c.generation).where(
        registry_credentials.c.instance_id.in_(_WANTED_IDS),
        ~exists().where(registry_instances.c.instance_id == registry_credentials.c.instance_id),
    ),
)
_DEFAULT_EXECUTOR_THREADS = min(32, (os.cpu_count() or 1) + 4)  # concurrent.futures.ThreadPoolExecutor's default
T = TypeVar("T")


class StoreError(BoshregError):
    """Base of the store's errors."""


class StoreUnavailable(StoreError):
    """The database cannot be reached or did not answer in time; try again later."""


class SettingsRejected(StoreError):
    """The database refused the value itself (e.g. larger than an existing column allows)."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


@dataclass(frozen=True)
class Stored:
    """What a read finds: the settings text (None when none are stored) and the credential generation."""

    settings: str | None
    generation: int = 0


def _stored(row: Sequence[object] | None) -> Stored:
    if row is None:
        return Stored(None)
    settings, generation = row[0], row[1]
    return Stored(None if settings is None else str(settings), int(str(generation)) if generation else 0)


class SqliteWriters:
    """One SQLite writer at a time among this host's registry processes: a thread lock, then an ``flock``.

    SQLite's busy handler makes a writer it turned away sleep before trying again (up to 100 ms); the
    kernel wakes a process waiting on the lock file the moment it is free.
    """

    def __init__(self, database: str | None) -> None:
        self._threads = threading.Lock()
        self._path = f"{database}-boshreg-writer" if database and database != ":memory:" else None
        self._fd = -1
        self._pid = 0  # a lock file opened before a fork would be one lock for parent and child: reopen

    def __enter__(self) -> SqliteWriters:
        self._threads.acquire()
        try:
            fd = self._file()
            if fd >= 0:
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        try:
            if self._fd >= 0 and self._pid == os.getpid():
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def _file(self) -> int:
        if self._path is None:
            return -1
        if self._pid != os.getpid():
            try:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError:
                self._fd = -1  # a read-only directory: this process's threads still queue, SQLite does the rest
            self._pid = os.getpid()
        return self._fd


class SettingsStore:
    """Get, put and delete the settings text of one instance; blocking calls, run them in a thread.

    Reads have two faster forms, each where it pays: ``get_inline`` on SQLite, ``get_async`` on a server
    (PostgreSQL on asyncpg's connections where a ``read_pool`` is given; else one worker thread for the
    reads of a loop turn: MySQL's pymysql spent ~100 us of Python per statement, and each read handed to
    a thread of its own waited for the interpreter lock at both ends).
    """

    def __init__(self, engine: Engine, read_pool: ReadPool | None = None) -> None:
        self.engine = engine
        self.read_pool = read_pool
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        self._unique_instance_id = True
        self._inline: PoolProxiedConnection | None = None  # get_inline's own connection
        # SQLite takes one writer at a time, and a writer it turns away sleeps in steps of up to 100 ms before
        # trying again: the writers (PUTs, DELETEs, the audit trail) of every process queue here instead.
        # PUT p99 with 16 writers: ~700 ms without, ~40-170 ms with.
        self.writer: contextlib.AbstractContextManager[object] = (
            SqliteWriters(engine.url.database) if engine.dialect.name == "sqlite" else contextlib.nullcontext()
        )
        # One commit (one disk flush) for writes that queued; on MySQL each ends by raising the change counter.
        self._commits = GroupCommit(engine, self.writer, last_statement=count_change)
        # The statements every PUT and every read repeat, compiled once (driver_sql); the read pool's in
        # asyncpg's numbered parameters.
        self._upsert_settings = DriverStatement(_upsert(engine.dialect.name), engine.dialect)
        self._read = DriverStatement(_READ, engine.dialect)
        self._read_many = DriverStatement(_READ_MANY, _ASYNCPG) if read_pool is not None else None
        # Without the read pool, a batch is a worker thread's and a pooled connection's: no more at once than
        # the pool has connections and asyncio's default executor has threads (beyond them, a batch would wait
        # in the executor's queue, where a batch whose callers all left can no longer be skipped).
        threads = min(pool_size(engine), _DEFAULT_EXECUTOR_THREADS)
        self._batches = ReadBatches(self._fetch_many, concurrency=None if read_pool is not None else threads)

    @property
    def reads_inline(self) -> bool:
        """True when a read is cheaper than handing it to a thread: SQLite in WAL mode, where a read takes
        microseconds and never waits for a writer. PostgreSQL and MySQL are read by ``get_async``."""
        return self.engine.dialect.name == "sqlite"

    @property
    def reads_async(self) -> bool:
        """True when ``get_async`` reads without a worker thread per read: on the event loop itself (the read
        pool), or the reads of one loop turn together in one thread (a server database without it)."""
        return self.read_pool is not None or self.engine.dialect.name != "sqlite"

    @property
    def database(self) -> str:
        """The database URL with its password hidden, for logs and the start-up banner."""
        return redact_url(self.engine.url.render_as_string(hide_password=True))

    def ensure_schema(self) -> None:
        """Create the table when it is missing; an existing one (the original's) is used as it is."""
        if self._schema_ready:
            return
        with self._schema_lock, self._translate_errors():
            if self._schema_ready:
                return
            # registry_changes is MySQL's alone (cache.ChangeCounter): made there, with its row, just below
            ours = [table for table in metadata.sorted_tables if table is not registry_changes]
            metadata.create_all(self.engine, tables=ours, checkfirst=True)
            ensure_change_counter(self.engine)
            self._add_missing_event_columns()
            self._unique_instance_id = self._has_unique_instance_id()
            if not self._unique_instance_id:
                log.warning(
                    "registry_instances.instance_id has no unique index; writes fall back to "
                    "update-then-insert. Add one: CREATE UNIQUE INDEX registry_instances_"
                    "instance_id_key ON registry_instances (instance_id)"
                )
            self._schema_ready = True

    def get(self, instance_id: str) -> str | None:
        """The stored settings text, exactly as it was written, or None."""
        return self.read(instance_id).settings

    def read(self, instance_id: str) -> Stored:
        """The stored settings and the instance's credential generation, in one statement."""

        def read() -> Stored:
            with self.engine.connect() as conn:
                return _stored(conn.execute(_READ, {"instance_id": instance_id}).first())

        return self._run(read)

    def generation(self, instance_id: str) -> int:
        """The generation of the instance's current per-VM credential (0 until one is revoked)."""
        return self.read(instance_id).generation

    def get_inline(self, instance_id: str) -> Stored:
        """``read`` for the event loop's own thread, where ``reads_inline``.

        It keeps one connection for that thread and sends the statement (the same one, compiled once)
        straight to the driver: SQLAlchemy's per-call work was a third of a GET's time. At loglevel
        debug, where each statement is logged, it reads through ``read``.
        """
        if _SQL_LOG.isEnabledFor(logging.INFO):
            return self.read(instance_id)
        inline = self._inline if self._inline is not None else self._open_inline()
        try:
            cursor = inline.cursor()
            try:
                cursor.execute(self._read.sql, self._read.parameters({"instance_id": instance_id}))
                row = cursor.fetchone()
            finally:
                cursor.close()  # ends the read transaction, so the next read sees the latest writes
        except self.engine.dialect.loaded_dbapi.Error as exc:
            self._close_inline()  # the next read opens a fresh connection
            raise StoreUnavailable(f"database unavailable ({self.database}): {exc}") from None
        return _stored(row)

    async def get_async(self, instance_id: str) -> Stored:
        """``read`` for the event loop, where ``reads_async``: the reads of one loop turn together (read_batch),
        on the read pool's connections or, without one (MySQL), in one worker thread; the same retry once.

        A connection the server dropped fails on use and is closed; the read is tried once more on
        another (as the thread engine does), then the database is reported unavailable with its cause.
        At loglevel debug, where each statement is logged, it reads through ``read`` (in a thread).
        """
        if _SQL_LOG.isEnabledFor(logging.INFO):
            return await asyncio.to_thread(self.read, instance_id)
        if not self._schema_ready:  # the database was down at start: check the table from a thread, once
            await asyncio.to_thread(self.ensure_schema)
        if self.read_pool is None:  # one worker thread for the turn's reads; it retries and words errors (_run)
            if REGISTRY_KEY.fullmatch(instance_id) is None:  # never ours: read alone, so it can fail only itself
                return await asyncio.to_thread(self.read, instance_id)
            return _stored(await self._batches.read(instance_id))
        from boshreg.registry import read_pool  # loaded with the pool (engine.build_read_pool)

        if not _postgresql_text(instance_id):
            return Stored(None)  # never stored: and in a statement shared with others it would fail them all

        for attempt in (1, 2):
            try:
                return _stored(await self._batches.read(instance_id))
            except read_pool.PoolExhausted:
                raise StoreUnavailable(_NO_FREE_CONNECTION.format(database=self.database)) from None
            except read_pool.StaleConnection as exc:
                if attempt == 1:
                    continue
                raise StoreUnavailable(f"database connection lost ({self.database}): {_first_line(exc)}") from None
            except read_pool.DRIVER_ERRORS as exc:
                cause = read_pool.unavailable_cause(exc)
                if cause is None:
                    raise  # a fault of the statement or the schema, not of the database being there
                raise StoreUnavailable(f"database unavailable ({self.database}): {_first_line(cause)}") from None
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def _fetch_many(self, instance_ids: list[str]) -> list[tuple[Any, ...]]:
        """One statement for the reads of one loop turn (read_batch): each id's settings and generation."""
        if self.read_pool is None:
            return await asyncio.to_thread(self._run, lambda: self._read_many_in_thread(instance_ids))
        assert self._read_many is not None
        parameters = self._read_many.parameters({"instance_ids": instance_ids})
        assert isinstance(parameters, tuple)
        return await self.read_pool.fetchall(self._read_many.sql, parameters)

    def _read_many_in_thread(self, instance_ids: list[str]) -> list[tuple[Any, ...]]:
        """``_fetch_many`` through the thread engine, on one connection: a row per id found.

        An id without a row of its own spelling is read again alone, with ``_READ``: on MySQL a table the
        original registry made may compare ids by its collation (without case), as that read does. Only
        reads of ids not stored pay for it.
        """
        with self.engine.connect() as conn:
            rows = conn.execute(_READ_MANY_PORTABLE, {"instance_ids": instance_ids}).all()
            found = {row[0]: tuple(row) for row in rows}
            for instance_id in instance_ids:
                if instance_id not in found:
                    alone = conn.execute(_READ, {"instance_id": instance_id}).one()
                    if alone[0] is not None or alone[1] is not None:
                        found[instance_id] = (instance_id, *alone)
        return [found[instance_id] for instance_id in instance_ids if instance_id in found]

    def put(self, instance_id: str, settings: str) -> None:
        """Create or replace the settings of one instance, committed before returning."""
        write = self._put(instance_id, settings)
        self._run(lambda: self._commits.run(write, instance_id))

    async def put_async(self, instance_id: str, settings: str) -> None:
        """``put`` for the event loop: the PUTs waiting on it share a commit made in one worker thread.

        The same errors and the same one retry on a connection the database dropped as ``put``.
        """
        write = self._put(instance_id, settings)
        await self._run_async(lambda: self._commits.run_async(write, instance_id))

    def _put(self, instance_id: str, settings: str) -> Callable[[Connection], None]:
        """The write of a PUT, for a commit to run."""

        def write(conn: Connection) -> None:
            self._notify(conn, instance_id)
            if self._unique_instance_id:
                self._upsert_settings.run(conn, {"instance_id": instance_id, "settings": settings})
                return
            changed = conn.execute(
                update(registry_instances)
                .where(registry_instances.c.instance_id == instance_id)
                .values(settings=settings)
            ).rowcount
            if not changed:
                conn.execute(registry_instances.insert().values(instance_id=instance_id, settings=settings))

        return write

    def delete(self, instance_id: str) -> bool:
        """Remove one instance's settings and revoke its per-VM credential; False when there were none.

        A VM re-created under the same key gets a credential of the next generation: the old one, wherever
        its user data was copied to, reads nothing.
        """
        statement = delete(registry_instances).where(registry_instances.c.instance_id == instance_id)

        def remove(conn: Connection) -> bool:
            self._notify(conn, instance_id)
            self._next_generation(conn, instance_id)
            return bool(conn.execute(statement).rowcount)

        return self._run(lambda: self._commits.run(remove, instance_id))

    def revoke(self, instance_id: str) -> int:
        """Make the instance's current per-VM credential stop working; the new generation."""

        def bump(conn: Connection) -> int:
            self._notify(conn, instance_id)
            return self._next_generation(conn, instance_id)

        return self._run(lambda: self._commits.run(bump, instance_id))

    def _next_generation(self, conn: Connection, instance_id: str) -> int:
        values = {"instance_id": instance_id, "generation": 1, "changed_at": datetime.now(UTC)}
        raised = registry_credentials.c.generation + 1
        dialect = conn.dialect.name
        if dialect in ("mysql", "mariadb"):
            mysql_insert = mysql.insert(registry_credentials).values(values)
            upsert: Insert = mysql_insert.on_duplicate_key_update(
                generation=raised, changed_at=mysql_insert.inserted.changed_at
            )
        else:
            dialect_insert = (postgresql if dialect == "postgresql" else sqlite).insert(registry_credentials)
            lite_or_pg = dialect_insert.values(values)
            upsert = lite_or_pg.on_conflict_do_update(
                index_elements=[registry_credentials.c.instance_id],
                set_={"generation": raised, "changed_at": lite_or_pg.excluded.changed_at},
            )
        conn.execute(upsert)
        return int(conn.execute(_GET_GENERATION, {"instance_id": instance_id}).scalar_one())

    def _notify(self, conn: Connection, instance_id: str) -> None:
        """On PostgreSQL: tell every registry's read cache, at this transaction's commit (``cache``)."""
        if conn.dialect.name == "postgresql":
            conn.execute(_NOTIFY, {"channel": CHANNEL, "instance_id": instance_id})

    def _run(self, work: Callable[[], T]) -> T:
        """Run one statement's work, with the store's errors; once more if the pooled connection was dead.

        Connections are not probed before use (a round trip per query). A connection the database
        dropped (it restarted, a proxy timed it out) fails on use instead; SQLAlchemy then discards the
        whole pool, and the work, idempotent here (a read, an upsert, a delete), runs again once on a
        fresh connection.
        """
        self.ensure_schema()
        with self._translate_errors():
            try:
                return work()
            except sa_exc.DBAPIError as exc:
                if not exc.connection_invalidated:
                    raise
            return work()

    async def _run_async(self, work: Callable[[], Awaitable[T]]) -> T:
        """``_run`` for work awaited on the event loop: the same errors and the same one retry."""
        if not self._schema_ready:
            await asyncio.to_thread(self.ensure_schema)
        with self._translate_errors():
            try:
                return await work()
            except sa_exc.DBAPIError as exc:
                if not exc.connection_invalidated:
                    raise
            return await work()

    def count(self) -> int:
        """How many instances have settings."""
        self.ensure_schema()
        with self._translate_errors(), self.engine.connect() as conn:
            return int(conn.execute(text("SELECT COUNT(*) FROM registry_instances")).scalar_one())

    def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers a query now."""
        with self._translate_errors(), self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        self.ensure_schema()

    def close(self) -> None:
        """Close every pooled connection of the thread engine (``aclose`` closes the event loop's)."""
        self._close_inline()
        self.engine.dispose()

    async def aclose(self) -> None:
        """Close the read pool's connections, on the event loop that opened them."""
        if self.read_pool is not None:
            await self.read_pool.close()

    def _open_inline(self) -> PoolProxiedConnection:
        """``get_inline``'s connection, opened on its first read (and after a failed one), the table checked.

        Only here, not per read, the store's error wording (a generator context manager): it was ~5% of a cold
        read's time on the event loop.
        """
        self.ensure_schema()
        with self._translate_errors():
            self._inline = self.engine.raw_connection()
        return self._inline

    def _close_inline(self) -> None:
        if self._inline is not None:
            connection, self._inline = self._inline, None
            connection.invalidate()  # never back into the pool: it may be broken, or opened before a fork

    def _add_missing_event_columns(self) -> None:
        """Our own table grows with boshreg: add its newer nullable columns to one an older version made."""
        present = {column["name"] for column in inspect(self.engine).get_columns("registry_events")}
        with self.engine.begin() as conn:
            for column in registry_events.columns:
                if column.name not in present and column.nullable:
                    kind = column.type.compile(dialect=self.engine.dialect)
                    quoted = self.engine.dialect.identifier_preparer.quote(column.name)
                    conn.execute(text(f"ALTER TABLE registry_events ADD COLUMN {quoted} {kind}"))
                    log.info(
                        "added column registry_events.%s (boshreg's own table; the original ignores it)", column.name
                    )

    def _has_unique_instance_id(self) -> bool:
        inspector = inspect(self.engine)
        uniques: list[list[str | None]] = [
            list(c["column_names"]) for c in inspector.get_unique_constraints("registry_instances")
        ]
        uniques += [list(i["column_names"]) for i in inspector.get_indexes("registry_instances") if i.get("unique")]
        return ["instance_id"] in uniques

    @contextmanager
    def _translate_errors(self) -> Iterator[None]:
        """Turn driver errors into the store's own, with a short message and no SQL or parameters."""
        try:
            yield
        except sa_exc.DataError as exc:
            if _mysql_code(exc) == _MYSQL_DATA_TOO_LONG:
                raise SettingsRejected(
                    "settings are larger than the existing settings column holds (MySQL TEXT: 64 KiB); "
                    "widen it: ALTER TABLE registry_instances MODIFY settings LONGTEXT NOT NULL",
                    too_large=True,
                ) from None
            raise SettingsRejected(f"the database refused the settings: {_cause(exc)}") from None
        except sa_exc.TimeoutError:
            raise StoreUnavailable(_NO_FREE_CONNECTION.format(database=self.database)) from None
        except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
            raise StoreUnavailable(f"database unavailable ({self.database}): {_cause(exc)}") from None
        except sa_exc.DBAPIError as exc:
            if exc.connection_invalidated:
                raise StoreUnavailable(f"database connection lost ({self.database}): {_cause(exc)}") from None
            raise


def _upsert(dialect: str) -> Insert:
    """Create or replace one instance's settings (parameters ``instance_id``, ``settings``) in this dialect."""
    values: dict[str, Any] = {"instance_id": bindparam("instance_id"), "settings": bindparam("settings")}
    if dialect in ("mysql", "mariadb"):
        mysql_insert = mysql.insert(registry_instances).values(values)
        return mysql_insert.on_duplicate_key_update(settings=mysql_insert.inserted.settings)
    key = [registry_instances.c.instance_id]
    if dialect == "postgresql":
        pg_insert = postgresql.insert(registry_instances).values(values)
        return pg_insert.on_conflict_do_update(index_elements=key, set_={"settings": pg_insert.excluded.settings})
    lite_insert = sqlite.insert(registry_instances).values(values)
    return lite_insert.on_conflict_do_update(index_elements=key, set_={"settings": lite_insert.excluded.settings})


def pool_size(engine: Engine) -> int:
    """How many connections ``engine`` keeps at most: the number of callers worth letting at it at once."""
    return engine.pool.size() if isinstance(engine.pool, QueuePool) else 1


def _cause(exc: sa_exc.DBAPIError) -> str:
    """The driver's own first line, without SQLAlchemy's SQL and parameter dump."""
    return _first_line(exc.orig if exc.orig is not None else exc)


def _postgresql_text(value: str) -> bool:
    """Whether PostgreSQL's text can hold ``value``: no NUL, and UTF-8 (a path may decode to lone surrogates)."""
    if "\x00" in value:
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _first_line(error: BaseException | str) -> str:
    """An error's (or a cause's) first line, any URL's password hidden."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return redact_url(lines[0]) if lines else type(error).__name__


def _mysql_code(exc: sa_exc.DBAPIError) -> int | None:
    args = getattr(exc.orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None
