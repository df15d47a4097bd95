"""The trail's events into PostgreSQL through COPY, on psycopg's own connection.

Why a module of its own: psycopg (with its bundled libpq and OpenSSL) is ~10 MiB of a process's memory, and
only a registry whose trail is on PostgreSQL needs it; ``audit`` imports this module there alone, so a worker
on SQLite or MariaDB never loads it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
import psycopg.sql
from sqlalchemy import Connection
from sqlalchemy import exc as sa_exc


def copy_rows(conn: Connection, table: str, columns: Sequence[str], rows: Iterable[tuple[Any, ...]]) -> None:
    """The rows into ``table`` through COPY, in the caller's transaction.

    Why: psycopg's executemany sends a statement per row (in a pipeline), ~10 us of the writer's time each;
    a COPY row is ~1 us. The same columns and values as the INSERT; the database refuses a bad row the same way.
    """
    driver = conn.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    try:
        with driver.cursor() as cursor, cursor.copy(_copy_statement(table, tuple(columns))) as copy:
            for row in rows:
                copy.write_row(row)
    except psycopg.Error as exc:  # as SQLAlchemy would have raised it: flush keeps, retries or isolates by kind
        if isinstance(exc, psycopg.OperationalError) and driver.closed:
            conn.invalidate()  # never back into the pool
        raise sa_exc.DBAPIError.instance(f"COPY {table}", None, exc, psycopg.Error, hide_parameters=True) from None


@functools.cache  # composed once per table and columns (the trail's one), not once per batch
def _copy_statement(table: str, columns: tuple[str, ...]) -> psycopg.sql.Composed:
    return psycopg.sql.SQL("COPY {} ({}) FROM STDIN").format(
        psycopg.sql.Identifier(table), psycopg.sql.SQL(", ").join(map(psycopg.sql.Identifier, columns))
    )
