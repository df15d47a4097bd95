"""Statements compiled once per dialect and run straight on the driver, for the write paths that repeat them.

Why: SQLAlchemy builds, caches and binds a Core statement on every call. For a PUT's upsert that was
~120 µs of Python (the driver's own work: ~5 µs), spent while holding SQLite's one writer lock, which is
what capped PUTs at ~1,700/s; for the audit writer's batches it was a third of its time. Here a statement
is compiled once, and each call only orders its parameters for the driver's paramstyle and applies the
column types' bind processors (SQLite stores times as text), exactly as SQLAlchemy would, but once per value
however often the statement names it (the fleet's read update names the last read's time three times; SQLite's
time processor, run per name, was 40% of the audit writer's time per cold read). SQLite's time processor itself
is replaced by one that writes the same text from a tuple (``_sqlite_time``): 1.5 µs a time instead of 3.6, and
a distinct VM's read binds three.
"""

from __future__ import annotations

import datetime
import operator
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import orjson
from sqlalchemy import Connection, CursorResult, Insert, String, Update, bindparam, func, literal_column, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.sql.visitors import replacement_traverse

SQLITE_HAS_JSON = sqlite3.sqlite_version_info >= (3, 38, 0)  # json_each built in (before: where compiled in)

Processor = Callable[[Any], Any]


class DriverStatement:
    """One statement, compiled for one dialect: its SQL text and how to pass it parameters."""

    def __init__(self, statement: ClauseElement, dialect: Dialect, columns: Sequence[str] | None = None) -> None:
        # ``columns``: for an INSERT without values, the columns its rows give (the rest take their defaults)
        compiled = statement.compile(dialect=dialect, column_keys=list(columns) if columns is not None else None)
        self._statement = statement
        self._dialect = dialect
        self._one_step: DriverStatement | bool | None = False  # not made yet (_one_step_form)
        self._distinct_positions: tuple[int, ...] = ()  # where each named parameter first comes (_one_step_form)
        self.sql = str(compiled)
        positions = compiled.positiontup  # type: ignore[attr-defined]
        self.positions: tuple[str, ...] | None = tuple(positions) if positions is not None else None
        processors: dict[str, Processor] = {}
        for name, bind in compiled.binds.items():  # type: ignore[attr-defined]
            impl = bind.type.dialect_impl(dialect)
            processor = impl.bind_processor(dialect)  # as SQLAlchemy does per call
            if processor is not None:
                processors[name] = _sqlite_time(processor) if _default_sqlite_time(impl) else processor
        self.processors = processors
        self.columns = tuple(columns) if columns is not None else None
        # run_rows: where the driver takes the columns in their own order, each row's values pass as they are,
        # but for the processors, applied by position
        self._rows_as_given = self.columns is not None and self.positions == self.columns
        self._row_processors = tuple(
            (index, processors[name]) for index, name in enumerate(self.columns or ()) if name in processors
        )
        self._in_order: Callable[[Mapping[str, Any]], tuple[Any, ...]] | None = None
        if self.positions is not None:
            pick = operator.itemgetter(*self.positions)  # C: a tuple of the values in order (one: the value)
            self._in_order = pick if len(self.positions) > 1 else lambda values: (pick(values),)

    def parameters(self, values: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        """``values`` as the driver takes them: a tuple in order (qmark, format) or a mapping (pyformat)."""
        if self._in_order is not None and not self.processors:
            return self._in_order(values)
        processed = dict(values)  # one copy: the caller's mapping is left as it was
        for name, processor in self.processors.items():  # only the names that have one: each once
            if name in processed:
                processed[name] = processor(processed[name])
        return self._in_order(processed) if self._in_order is not None else processed

    def run(self, conn: Connection, values: Mapping[str, Any]) -> CursorResult[Any]:
        """Execute once with ``values``."""
        return conn.exec_driver_sql(self.sql, self.parameters(values))

    def run_many(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Execute once per row, as one executemany."""
        if rows:
            conn.exec_driver_sql(self.sql, [self.parameters(row) for row in rows])

    def run_rows(self, conn: Connection, rows: Sequence[Sequence[Any]]) -> None:
        """``run_many`` for an INSERT compiled with ``columns``, its rows given as values in that order: no
        mapping per row (the audit trail writes one row per distinct VM's read; the mappings were ~3 us each).
        On SQLite in one step (``run_batch``)."""
        assert self.columns is not None, "run_rows is for a statement compiled with its columns"
        if not rows:
            return
        if not self._rows_as_given:  # pyformat (psycopg): a mapping per row after all
            self.run_many(conn, [dict(zip(self.columns, row, strict=True)) for row in rows])
            return
        processed: list[tuple[Any, ...]] = []
        for row in rows:
            values = list(row)
            for index, processor in self._row_processors:
                values[index] = processor(values[index])
            processed.append(tuple(values))
        if len(processed) > 1 and self._run_in_one_step(conn, processed):
            return
        conn.exec_driver_sql(self.sql, processed)

    def run_batch(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """``run_many`` as one statement where the database can (SQLite: the rows as one JSON array), for rows
        that each touch other database rows (an UPDATE by key of distinct keys): the one statement applies each
        row once, in no set order."""
        if len(rows) > 1 and self._one_step_form() is not None:  # else run_many orders the parameters, once
            in_order = [self.parameters(row) for row in rows]
            if self._run_in_one_step(conn, [values for values in in_order if isinstance(values, tuple)]):
                return
        self.run_many(conn, rows)

    def _run_in_one_step(self, conn: Connection, rows: list[tuple[Any, ...]]) -> bool:
        """The rows (the driver's parameters, in ``positions`` order) through the one-step form; False where
        there is none, or a value cannot be JSON (then the caller runs them one by one).

        Why: sqlite3's executemany lets go of the interpreter lock around each row's step and takes it again
        after; beside a busy event loop every retake waits for the loop to let go (on a syscall, or after the
        switch interval). With a thread busy with Python beside it, a row cost 47-53 us instead of 2.2 alone;
        one statement over ``json_each`` took 3.8-4.3 (3.4 alone). Under the cold-read bench a worker's audit
        writer took 224 -> 167 ms per 1,000 events (one run each).
        """
        one_step = self._one_step_form()
        if one_step is None or not rows:
            return False
        try:
            payload = orjson.dumps([[row[i] for i in self._distinct_positions] for row in rows]).decode()
        except TypeError:
            return False
        conn.exec_driver_sql(one_step.sql, (payload,))
        return True

    def _one_step_form(self) -> DriverStatement | None:
        """This statement reading its rows from one JSON array (SQLite with json_each; made on first use)."""
        if self._one_step is False:
            positions = self.positions or ()
            names = tuple(dict.fromkeys(positions))  # each parameter once, in its first place's order
            self._distinct_positions = tuple(positions.index(name) for name in names)
            self._one_step = _json_rows_form(self, names)
        return self._one_step if isinstance(self._one_step, DriverStatement) else None


def _json_rows_form(statement: DriverStatement, names: tuple[str, ...]) -> DriverStatement | None:
    """``statement`` with its rows (each the values of ``names``) from ``json_each`` of one parameter: an INSERT
    of ``columns`` as an INSERT ... SELECT, an UPDATE with each named parameter swapped for a column of the rows
    (SQLite then runs UPDATE ... FROM). None where that is not SQLite, or for another kind of statement (SQLite's
    DELETE takes no FROM)."""
    if statement._dialect.name != "sqlite" or not SQLITE_HAS_JSON or statement.positions is None:
        return None
    each = func.json_each(bindparam("p_rows", type_=String)).table_valued("value")
    source = select(
        *(func.json_extract(each.c.value, literal_column(f"'$[{index}]'")).label(name) for index, name in
          enumerate(names))
    ).select_from(each).subquery("batch")  # fmt: skip
    original = statement._statement
    form: ClauseElement
    if isinstance(original, Insert) and statement.columns is not None and names == statement.columns:
        form = original.from_select(list(names), select(*(source.c[name] for name in names)))
    elif isinstance(original, Update):

        def swap(element: Any, **_kw: Any) -> Any:
            return source.c[element.key] if isinstance(element, BindParameter) and element.key in names else None

        form = cast(ClauseElement, replacement_traverse(original, {}, swap))
    else:
        return None
    return DriverStatement(form, statement._dialect)


def _default_sqlite_time(impl: object) -> bool:
    """SQLite's DATETIME with SQLAlchemy's default storage format, the one ``_sqlite_time`` writes."""
    default: str = sqlite.DATETIME._storage_format
    return isinstance(impl, sqlite.DATETIME) and impl._storage_format == default


_SQLITE_TIME = "%04d-%02d-%02d %02d:%02d:%02d.%06d"  # sqlite.DATETIME's default format, by position


def _sqlite_time(sqlalchemys: Processor) -> Processor:
    """SQLAlchemy's SQLite time processor, with the same text built from a tuple for a plain datetime.

    Like SQLAlchemy's, it writes the wall time and ignores the zone (ours are UTC); anything else (None, a
    date, a subclass) goes to SQLAlchemy's own.
    """
    plain = datetime.datetime

    def process(value: Any) -> Any:
        if value.__class__ is plain:
            return _SQLITE_TIME % (
                value.year, value.month, value.day, value.hour, value.minute, value.second, value.microsecond
            )  # fmt: skip
        return sqlalchemys(value)

    return process


_compiled: dict[tuple[int, str, tuple[str, ...] | None], tuple[ClauseElement, DriverStatement]] = {}
_compiled_lock = threading.Lock()


def driver_statement(
    statement: ClauseElement, dialect: Dialect, columns: Sequence[str] | None = None
) -> DriverStatement:
    """The statement compiled for ``dialect`` on first use, then kept: pass module-level statements only."""
    key = (id(statement), dialect.name, tuple(columns) if columns is not None else None)
    found = _compiled.get(key)
    if found is not None and found[0] is statement:
        return found[1]
    with _compiled_lock:
        prepared = DriverStatement(statement, dialect, columns)
        _compiled[key] = (statement, prepared)  # the statement is kept too, so its id cannot be reused
        return prepared
