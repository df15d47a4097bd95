"""Statements run straight on the driver bind their values as SQLAlchemy would (real SQLite)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import DateTime, Integer, bindparam, create_engine, select, text
from sqlalchemy.dialects import sqlite

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
