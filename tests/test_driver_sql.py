"""Statements run straight on the driver bind their values as SQLAlchemy would (real SQLite)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    create_engine,
    insert,
    select,
    text,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import URL

from boshreg.registry.driver_sql import driver_statement

# One time named twice (as the fleet's read update names the last read's time), and a plain integer.
_TWICE = select(bindparam("p_at", type_=DateTime), bindparam("p_n", type_=Integer), bindparam("p_at", type_=DateTime))


@pytest.mark.sqlite
def test_a_value_named_twice_is_bound_in_each_place_as_sqlalchemy_binds_it(tmp_path: Path) -> None:
    """SQLite keeps times as text: the driver gets SQLAlchemy's own text for the time, in every position."""
    engine = create_engine(f"sqlite:///{tmp_path / 'driver.db'}")
    at = datetime(2026, 12, 6, 12, 18, 13, 52, tzinfo=UTC)
    with engine.connect() as conn:
        by_sqlalchemy = conn.execute(
            text("SELECT :p_at").bindparams(bindparam("p_at", type_=DateTime)), {"p_at": at}
        ).scalar_one()
        row = driver_statement(_TWICE, conn.dialect).run(conn, {"p_at": at, "p_n": 7}).one()
    engine.dispose()
    assert by_sqlalchemy == "2026-12-06 12:18:13.000052"
    assert tuple(row) == (by_sqlalchemy, 7, by_sqlalchemy)


class _Moment(datetime):
    """A datetime subclass: the driver statement leaves it to SQLAlchemy's own processor."""


@pytest.mark.sqlite
def test_every_kind_of_time_is_bound_as_sqlalchemys_sqlite_processor_binds_it() -> None:
    """Our faster text for a time must be SQLAlchemy's, byte for byte, or stored times would stop comparing:
    the fleet's CASEs compare a new time with a stored one as text."""
    dialect = sqlite.dialect()
    sqlalchemys = DateTime(timezone=True).dialect_impl(dialect).bind_processor(dialect)
    assert sqlalchemys is not None
    statement = driver_statement(select(bindparam("p_at", type_=DateTime(timezone=True))), dialect)
    values = [
        datetime(2026, 12, 6, 12, 18, 13, 52, tzinfo=UTC),
        datetime(2026, 12, 6, 12, 18, 13, tzinfo=UTC),  # no microseconds: still six digits
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(999, 2, 3, 4, 5, 6, 7),  # a naive one, year below 1000
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=timezone(timedelta(hours=-5))),  # the zone is not applied
        _Moment(2026, 1, 2, 3, 4, 5, 6),
        date(2026, 12, 6),
        None,
    ]
    for value in values:
        assert statement.parameters({"p_at": value}) == (sqlalchemys(value),), value


_ROW_TABLE = Table(
    "driver_rows",
    MetaData(),
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("name", String(32), nullable=False),
    Column("n", Integer, nullable=True),
)
_ROW_COLUMNS = ("at", "name", "n")


def test_rows_given_in_column_order_are_stored_as_mappings_would_store_them(database_url: URL) -> None:
    """``run_rows`` (the audit trail's insert: tuples, no mapping per row) stores what ``run_many`` stores, on
    every backend: positionally on SQLite and MySQL, through mappings on psycopg's named parameters."""
    engine = create_engine(database_url)
    at = datetime(2026, 12, 7, 3, 4, 5, tzinfo=UTC)  # whole seconds: MySQL's DATETIME keeps no more
    rows = [(at, "vm-1", 1), (at + timedelta(seconds=1), "vm-\\x00", None)]
    try:
        _ROW_TABLE.create(engine, checkfirst=True)
        with engine.begin() as conn:
            statement = driver_statement(insert(_ROW_TABLE), conn.dialect, _ROW_COLUMNS)
            statement.run_rows(conn, rows)
            statement.run_many(conn, [dict(zip(_ROW_COLUMNS, row, strict=True)) for row in rows])
            statement.run_rows(conn, [])  # nothing to write: no statement
        with engine.connect() as conn:
            stored = [tuple(row) for row in conn.execute(select(*_ROW_TABLE.c[1:]).order_by(_ROW_TABLE.c.id))]
            # as the database keeps them (SQLite: text, which the fleet's CASEs compare as text)
            raw = [tuple(row) for row in conn.exec_driver_sql("SELECT at, name, n FROM driver_rows ORDER BY id")]
    finally:
        _ROW_TABLE.drop(engine, checkfirst=True)
        engine.dispose()
    assert raw[:2] == raw[2:]
    naive = [(value.replace(tzinfo=None), name, n) for value, name, n in rows]
    as_read = [(value.replace(tzinfo=None), name, n) for value, name, n in stored]
    assert as_read == naive + naive
