"""Building a SQLAlchemy engine that fails fast and recovers by itself.

Each database gets the connection options that bound how long a dead or stuck server can hold a
request (connect and read timeouts), and SQLite gets WAL with durable commits. Statement parameters are
hidden from error messages: they carry agent settings, which hold credentials.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL

from boshreg.registry.config import DbConfig, sqlalchemy_url
from boshreg.registry.read_pool import ReadPool


def build_engine(db: DbConfig) -> Engine:
    """An engine for the configured database, with pool and timeouts taken from ``db``."""
    url = sqlalchemy_url(db)
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, db)
    threads_pool = _pool_sizes(db)[0] if _reads_on_the_loop(url) else db.max_connections
    return create_engine(url, **_server_engine_options(url, db, threads_pool))


def build_read_pool(db: DbConfig) -> ReadPool | None:
    """For PostgreSQL through psycopg, connections for reads on the event loop itself; else None.

    Reads handed to worker threads wait for the interpreter lock at each hand-off while the event loop
    holds it, so under load a 1 ms query took tens; psycopg speaks asyncio natively (``read_pool`` says
    why without SQLAlchemy). The same connection arguments as the thread engine (SQLAlchemy's own reading
    of the URL, then the timeouts and ``db.connection_options``); the two share ``db.max_connections``.
    """
    url = sqlalchemy_url(db)
    if not _reads_on_the_loop(url):
        return None
    options = _server_engine_options(url, db, _pool_sizes(db)[1])
    _args, connect_kwargs = url.get_dialect()().create_connect_args(url)
    return ReadPool(
        {**connect_kwargs, **options["connect_args"]},
        size=options["pool_size"],
        timeout=options["pool_timeout"],
        recycle=options["pool_recycle"],
    )


def _reads_on_the_loop(url: URL) -> bool:
    return url.get_backend_name() == "postgresql" and url.get_driver_name() == "psycopg"


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
