"""Statements run straight on the driver bind their values as SQLAlchemy would (real SQLite)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import DateTime, Integer, bindparam, create_engine, select, text

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
