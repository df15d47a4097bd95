"""Building a SQLAlchemy engine that fails fast and recovers by itself.

Each database gets the connection options that bound how long a dead or stuck server can hold a
request (connect and read timeouts), and SQLite gets WAL with durable commits. Statement parameters are
hidden from error messages: they carry agent settings, which hold credentials.
"""

from __future__ import annotations

import logging
import shlex
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL

from boshreg.registry.config import DbConfig, sqlalchemy_url

if TYPE_CHECKING:
    from boshreg.registry.read_pool import ReadPool

log = logging.getLogger(__name__)


def build_engine(db: DbConfig) -> Engine:
    """An engine for the configured database, with pool and timeouts taken from ``db``."""
    url = sqlalchemy_url(db)
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, db)
    loop = _loop_arguments(url, db)
    threads_pool = _pool_sizes(db)[0] if loop is not None and not loop[1] else db.max_connections
    return create_engine(url, **_server_engine_options(url, db, threads_pool))


def build_read_pool(db: DbConfig) -> ReadPool | None:
    """For PostgreSQL, asyncpg connections for reads on the event loop itself; else None (reads in threads).

    Reads handed to worker threads wait for the interpreter lock at each hand-off while the event loop
    holds it, so under load a 1 ms query took tens; asyncpg speaks asyncio natively (``read_pool`` says
    why it, and why without SQLAlchemy). The same server, credentials, TLS and timeouts as the thread
    engine (SQLAlchemy's own reading of the URL, then ours and ``db.connection_options``); the two share
    ``db.max_connections``. An option asyncpg cannot take keeps the reads in threads, with a warning.
    """
    url = sqlalchemy_url(db)
    loop = _loop_arguments(url, db)
    if loop is None:
        return None
    arguments, unknown = loop
    if unknown:
        log.warning(
            "db.connection_options %s: not an option asyncpg takes, so settings are read in worker threads "
            "(slower under load) instead of on the event loop",
            ", ".join(sorted(unknown)),
        )
        return None
    from boshreg.registry.read_pool import ReadPool  # and asyncpg with it: only where PostgreSQL is read here

    options = _server_engine_options(url, db, _pool_sizes(db)[1])
    return ReadPool(
        arguments, size=options["pool_size"], timeout=options["pool_timeout"], recycle=options["pool_recycle"]
    )


def _loop_arguments(url: URL, db: DbConfig) -> tuple[dict[str, Any], list[str]] | None:
    """For PostgreSQL through psycopg, asyncpg's ``connect`` arguments and the options it cannot take."""
    if url.get_backend_name() != "postgresql" or url.get_driver_name() != "psycopg":
        return None
    _args, libpq = url.get_dialect()().create_connect_args(url)
    libpq.update(_server_engine_options(url, db, 1)["connect_args"])
    return asyncpg_arguments(libpq)


# libpq's keywords that asyncpg reads from a connection string as libpq does (TLS, the password file, ...)
_FROM_DSN = frozenset({
    "passfile", "sslmode", "sslcert", "sslkey", "sslrootcert", "sslcrl", "sslpassword", "sslnegotiation",
    "ssl_min_protocol_version", "ssl_max_protocol_version", "target_session_attrs", "krbsrvname", "gsslib",
    "service",
})  # fmt: skip
# TCP options for the thread engine's blocking reads; a read on the loop is bounded by its request's deadline,
# and a connection cancelled mid-read is closed (read_pool), so these have nothing left to bound there.
_TCP_ONLY = frozenset({"tcp_user_timeout", "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count"})


def asyncpg_arguments(libpq: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """libpq's connection keywords (as psycopg takes them) as asyncpg's ``connect`` arguments, and the
    keywords that have no counterpart there."""
    arguments: dict[str, Any] = {}
    settings: dict[str, str] = {}
    from_dsn: dict[str, str] = {}
    unknown: list[str] = []
    for key, value in libpq.items():
        if key in ("host", "user", "password"):
            arguments[key] = value
        elif key == "port":
            arguments["port"] = int(value)
        elif key == "dbname":
            arguments["database"] = value
        elif key == "connect_timeout":
            arguments["timeout"] = float(value)
        elif key == "application_name":
            settings[key] = str(value)
        elif key == "options" and (given := _server_options(str(value))) is not None:
            settings.update(given)
        elif key in _FROM_DSN:
            from_dsn[key] = str(value)
        elif key not in _TCP_ONLY:
            unknown.append(key)
    arguments["server_settings"] = settings
    if from_dsn:
        arguments["dsn"] = "postgresql://?" + urlencode(from_dsn)
    return arguments, unknown


def _server_options(text: str) -> dict[str, str] | None:
    """libpq's ``options`` of ``-c name=value`` settings as a mapping; None for anything else it may hold."""
    words = shlex.split(text)
    settings: dict[str, str] = {}
    while words:
        word = words.pop(0)
        if word == "-c" and words:
            word = "-c" + words.pop(0)
        name, equals, value = word[2:].partition("=")
        if not word.startswith("-c") or not equals or not name:
            return None
        settings[name.replace("-", "_")] = value
    return settings


def _pool_sizes(db: DbConfig) -> tuple[int, int]:
    """db.max_connections split between the thread engine (writes, the audit trail, readiness: a quarter,
    at least one) and the event loop's reads (the rest, at least one), so a worker opens no more than before.
    """
    threads = max(1, db.max_connections // 4)
    return threads, max(1, db.max_connections - threads)


def _server_engine_options(url: URL, db: DbConfig, pool_size: int) -> dict[str, Any]:
    """Pool and connection options for PostgreSQL and MySQL: bounded waits everywhere."""
    backend = url.get_backend_name()
    connect_args: dict[str, Any] = {}
    if backend == "postgresql":
        timeout_ms = int(db.query_timeout * 1000)
        connect_args = {
            "connect_timeout": max(1, round(db.connect_timeout)),
            "application_name": "boshreg-registry",
            # A query may not run longer than the request that waits for it ...
            "options": f"-c statement_timeout={timeout_ms}",
            # ... and a server that stops answering mid-query drops the connection instead of hanging.
            "tcp_user_timeout": timeout_ms,
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        }
    elif backend == "mysql":
        connect_args = {
            "connect_timeout": db.connect_timeout,
            "read_timeout": db.query_timeout,
            "write_timeout": db.query_timeout,
            "charset": "utf8mb4",
            # Strict mode turns "value too long" into an error instead of silent truncation (lost data).
            "init_command": "SET SESSION sql_mode = CONCAT_WS(',', @@sql_mode, 'STRICT_ALL_TABLES')",
        }
    connect_args.update(db.connection_options)
    return {
        "pool_size": pool_size,
        "max_overflow": 0,
        "pool_timeout": db.pool_timeout,
        # No probe before each use: a dropped connection fails on use and the store retries it once.
        "pool_recycle": 3600,
        "hide_parameters": True,
        "connect_args": connect_args,
    }


def _sqlite_engine(url: URL, db: DbConfig) -> Engine:
    database = url.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    connect_args: dict[str, Any] = {"timeout": db.query_timeout, "check_same_thread": False}
    connect_args.update(db.connection_options)
    engine = create_engine(
        url,
        pool_size=db.max_connections,
        max_overflow=0,
        pool_timeout=db.pool_timeout,
        hide_parameters=True,
        connect_args=connect_args,
    )

    @event.listens_for(engine, "connect")
    def _durable_wal(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before the PUT is answered, even in WAL mode.
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute(f"PRAGMA busy_timeout={int(db.query_timeout * 1000)}")
        finally:
            cursor.close()

    return engine
