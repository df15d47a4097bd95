"""What the registry knows of each stored instance, and the state an operator reads off it.

The audit trail's writer keeps ``registry_fleet`` up to date from the events it writes, in the same
transaction, so a request never waits for it. Every update is one that commutes (counts added, the
earliest first read and the latest last read kept), so several workers and replicas writing their own
batches to one database agree whatever order their batches land in. Rows are made by writes and by
successful reads (only a stored instance can be read), never by a stranger's requests for made-up ids.

States, as an operator reads them: ``waiting`` (stored, never read, younger than the director's wait for
the agent), ``never-read`` (the same, older: the VM is about to time out or has), ``ok`` (its last read
succeeded), ``failing`` (its last read was refused; the cause says how).
"""

from __future__ import annotations

import enum
import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    String,
    any_,
    bindparam,
    delete,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.sql import ColumnElement, case
from sqlalchemy.sql.dml import Insert

from boshreg.bootstrap.registry_key import REGISTRY_KEY
from boshreg.registry.driver_sql import SQLITE_HAS_JSON, driver_statement
from boshreg.registry.tables import registry_fleet, registry_instances

if TYPE_CHECKING:  # the trail imports this module to keep the table in its transaction
    from boshreg.registry.audit import Event

AGENT_WAIT_SECONDS = 600  # the director's wait for a new VM's agent ("Timed out pinging ... after 600 seconds")
MAX_AGENT_WAIT = 86_400
_F = registry_fleet.c


class State(enum.Enum):
    WAITING = "waiting"
    NEVER_READ = "never-read"
    OK = "ok"
    FAILING = "failing"


@dataclass
class Change:
    """One instance's events of one batch, merged: what its fleet row must learn."""

    deleted: bool = False
    first_written: datetime | None = None
    last_written: datetime | None = None
    size: int | None = None
    reads: int = 0
    first_read: datetime | None = None
    last_read: datetime | None = None
    read_client: str = ""
    read_credential: str = ""
    refusals: int = 0
    last_refusal: datetime | None = None
    refusal_status: int = 0
    refusal_outcome: str = ""
    refusal_client: str = ""


def changes_of(events: Iterable[Event]) -> dict[str, Change]:
    """Merge a batch of audit events (in the order they happened) into one change per instance."""
    changes: dict[str, Change] = {}
    for event in events:
        if REGISTRY_KEY.fullmatch(event.instance_id) is None:
            continue  # never stored: nothing to keep
        change = changes.setdefault(event.instance_id, Change())
        if event.action == "delete" and event.status == 200:
            changes[event.instance_id] = Change(deleted=True)  # what came before is gone with the settings
        elif event.action == "write" and event.status == 200:
            change.first_written = change.first_written or event.at
            change.last_written = event.at
            change.size = event.size
        elif event.action == "read" and event.status == 200:
            last = event.last_at or event.at
            change.reads += event.count
            change.first_read = min(change.first_read or event.at, event.at)
            if change.last_read is None or last >= change.last_read:
                change.last_read, change.read_client, change.read_credential = last, event.client, event.credential
        elif event.action == "read":
            change.refusals += event.count
            if change.last_refusal is None or event.at >= change.last_refusal:
                change.last_refusal = event.at
                change.refusal_status, change.refusal_outcome = event.status, event.outcome
                change.refusal_client = event.client
    return changes


def apply_changes(conn: Connection, changes: dict[str, Change]) -> None:
    """Write merged changes to ``registry_fleet`` inside the caller's transaction.

    A few statements, each compiled once and run for the whole batch (executemany): one statement built
    per instance cost ~0.3 ms of the writer thread's time, and at a storm's 4,000 instances a second that
    starved the event loop of the GIL. Rows go in id order (every writer locks them in the same order),
    and reads update rows that exist; only instances without a row get one inserted first (an insert that
    finds the row takes a shared lock on it, and two writers holding one each deadlocked in InnoDB).
    """
    ordered = sorted(changes.items())
    dialect = conn.dialect
    driver_statement(_DELETE, dialect).run_many(conn, [{"p_id": i} for i, c in ordered if c.deleted])
    written = [_written_row(i, c) for i, c in ordered if c.last_written is not None]
    driver_statement(_upsert_written(dialect.name), dialect, _WRITTEN_COLUMNS).run_many(conn, written)
    counted = [i for i, c in ordered if c.reads or c.refusals]
    if counted:
        present = _present(conn, counted)
        missing = [{"p_id": i} for i in counted if i not in present]
        driver_statement(_ensure_row(dialect.name), dialect).run_many(conn, missing)
    # one row per instance (changes are by instance): each statement can run in one step (run_batch)
    driver_statement(_READS, dialect).run_batch(conn, [_read_row(i, c) for i, c in ordered if c.reads])
    driver_statement(_REFUSALS, dialect).run_batch(conn, [_refusal_row(i, c) for i, c in ordered if c.refusals])


def _present(conn: Connection, instance_ids: list[str]) -> set[str]:
    """Which of the ids have a fleet row: one statement, compiled once, over an array of them (PostgreSQL) or
    a JSON array (SQLite). An IN of 500 parameters, rebuilt by SQLAlchemy for every chunk, was a third of the
    writer's time on PostgreSQL and 6 us a distinct read on SQLite."""
    if conn.dialect.name == "postgresql":
        return set(driver_statement(_PRESENT_IN_ARRAY, conn.dialect).run(conn, {"p_ids": instance_ids}).scalars())
    if conn.dialect.name == "sqlite" and SQLITE_HAS_JSON:
        in_json = {"p_ids": json.dumps(instance_ids)}
        return set(driver_statement(_PRESENT_IN_JSON, conn.dialect).run(conn, in_json).scalars())
    found: set[str] = set()
    for start in range(0, len(instance_ids), 500):
        chunk = instance_ids[start : start + 500]
        found.update(conn.execute(select(_F.instance_id).where(_F.instance_id.in_(chunk))).scalars())
    return found


def _param(name: str, column: Any) -> Any:
    return bindparam(name, type_=column.type)


def _newer(column: Any, value: Any, *, inclusive: bool) -> ColumnElement[bool]:
    """The stored time is missing or older than ``value``."""
    return or_(column.is_(None), column <= value if inclusive else column < value)


_DELETE = delete(registry_fleet).where(_F.instance_id == bindparam("p_id"))
_PRESENT_IN_ARRAY = select(_F.instance_id).where(
    _F.instance_id == any_(bindparam("p_ids", type_=postgresql.ARRAY(String)))
)
_PRESENT_IN_JSON = select(_F.instance_id).where(
    _F.instance_id.in_(select(func.json_each(bindparam("p_ids", type_=String)).table_valued("value")))
)

# MySQL evaluates SET from left to right with the new values: who and what before when.
_READ_NEWER = _newer(_F.last_read_at, _param("p_last_read", _F.last_read_at), inclusive=True)
_READ_EARLIER = or_(_F.first_read_at.is_(None), _F.first_read_at > _param("p_first_read", _F.first_read_at))
_READS = (
    update(registry_fleet)
    .where(_F.instance_id == bindparam("p_id"))
    .ordered_values(
        (_F.last_read_client, case((_READ_NEWER, _param("p_client", _F.last_read_client)), else_=_F.last_read_client)),
        (_F.last_read_credential,
         case((_READ_NEWER, _param("p_credential", _F.last_read_credential)), else_=_F.last_read_credential)),
        (_F.first_read_at, case((_READ_EARLIER, _param("p_first_read", _F.first_read_at)), else_=_F.first_read_at)),
        (_F.last_read_at, case((_READ_NEWER, _param("p_last_read", _F.last_read_at)), else_=_F.last_read_at)),
        (_F.reads, _F.reads + bindparam("p_reads", type_=Integer)),
    )
)  # fmt: skip
_REFUSAL_NEWER = _newer(_F.last_refusal_at, _param("p_last_refusal", _F.last_refusal_at), inclusive=True)
_REFUSALS = (
    update(registry_fleet)
    .where(_F.instance_id == bindparam("p_id"))
    .ordered_values(
        (_F.last_refusal_status,
         case((_REFUSAL_NEWER, _param("p_status", _F.last_refusal_status)), else_=_F.last_refusal_status)),
        (_F.last_refusal_outcome,
         case((_REFUSAL_NEWER, _param("p_outcome", _F.last_refusal_outcome)), else_=_F.last_refusal_outcome)),
        (_F.last_refusal_client,
         case((_REFUSAL_NEWER, _param("p_refusal_client", _F.last_refusal_client)), else_=_F.last_refusal_client)),
        (_F.last_refusal_at,
         case((_REFUSAL_NEWER, _param("p_last_refusal", _F.last_refusal_at)), else_=_F.last_refusal_at)),
        (_F.refusals, _F.refusals + bindparam("p_refusals", type_=Integer)),
    )
)  # fmt: skip


def _read_row(instance_id: str, change: Change) -> dict[str, Any]:
    return {"p_id": instance_id, "p_client": change.read_client[:64], "p_credential": change.read_credential[:16],
            "p_first_read": change.first_read, "p_last_read": change.last_read, "p_reads": change.reads}  # fmt: skip


def _refusal_row(instance_id: str, change: Change) -> dict[str, Any]:
    return {"p_id": instance_id, "p_status": change.refusal_status, "p_outcome": change.refusal_outcome[:32],
            "p_refusal_client": change.refusal_client[:64], "p_last_refusal": change.last_refusal,
            "p_refusals": change.refusals}  # fmt: skip


def _written_row(instance_id: str, change: Change) -> dict[str, Any]:
    return {"instance_id": instance_id, "stored_at": change.first_written, "changed_at": change.last_written,
            "size": change.size, "reads": 0, "refusals": 0}  # fmt: skip


_WRITTEN_COLUMNS = ("instance_id", "stored_at", "changed_at", "size", "reads", "refusals")  # _written_row's keys


@functools.cache  # one statement per dialect: driver_statement keeps its compiled form
def _upsert_written(dialect: str) -> Insert:
    """Create the row, or move its changed time and size forward (never back: writers' batches may cross)."""
    if dialect in ("mysql", "mariadb"):
        statement = mysql.insert(registry_fleet)
        new = statement.inserted
        newer = _newer(_F.changed_at, new.changed_at, inclusive=False)
        # By name, in this order: MySQL's ON DUPLICATE KEY UPDATE sees the values it already set.
        upsert: Insert = statement.on_duplicate_key_update(
            [
                ("size", case((newer, new.size), else_=_F.size)),
                ("changed_at", case((newer, new.changed_at), else_=_F.changed_at)),
                ("stored_at", func.coalesce(_F.stored_at, new.stored_at)),
            ]
        )
        return upsert
    dialect_insert = (postgresql if dialect == "postgresql" else sqlite).insert(registry_fleet)
    excluded = dialect_insert.excluded
    newer = _newer(_F.changed_at, excluded.changed_at, inclusive=False)
    merged: Insert = dialect_insert.on_conflict_do_update(
        index_elements=[_F.instance_id],
        set_={
            "size": case((newer, excluded.size), else_=_F.size),
            "changed_at": case((newer, excluded.changed_at), else_=_F.changed_at),
            "stored_at": func.coalesce(_F.stored_at, excluded.stored_at),
        },
    )
    return merged


@functools.cache
def _ensure_row(dialect: str) -> Insert:
    """A row for an instance that is stored (by us or by the original registry) and has none yet."""
    # The zeros as SQL text, not parameters: the statement runs with its rows' p_id alone (driver_sql).
    stored = select(registry_instances.c.instance_id, literal_column("0"), literal_column("0")).where(
        registry_instances.c.instance_id == bindparam("p_id")
    )
    columns = ["instance_id", "reads", "refusals"]
    if dialect in ("mysql", "mariadb"):
        return insert(registry_fleet).prefix_with("IGNORE").from_select(columns, stored)
    dialect_insert = (postgresql if dialect == "postgresql" else sqlite).insert(registry_fleet)
    ignore: Insert = dialect_insert.from_select(columns, stored).on_conflict_do_nothing()
    return ignore


@dataclass(frozen=True)
class FleetEntry:
    """One stored instance as the fleet view shows it."""

    instance_id: str
    stored_at: datetime | None
    changed_at: datetime | None
    size: int | None
    reads: int
    first_read_at: datetime | None
    last_read_at: datetime | None
    last_read_client: str | None
    last_read_credential: str | None
    refusals: int
    last_refusal_at: datetime | None
    last_refusal_status: int | None
    last_refusal_outcome: str | None
    last_refusal_client: str | None
    state: State
    cause: str  # for failing: the last refusal, e.g. "401 revoked"; else ""

    def to_json(self) -> dict[str, Any]:
        return {
            name: (value.isoformat() if isinstance(value, datetime) else value.value if isinstance(value, State)
                   else value)
            for name, value in self.__dict__.items()
        }  # fmt: skip


def classify(row: dict[str, Any], now: datetime, agent_wait: float) -> tuple[State, str]:
    """The state of one instance's row (times aware, UTC) and, when failing, the cause."""
    last_read, last_refusal = row["last_read_at"], row["last_refusal_at"]
    if last_refusal is not None and (last_read is None or last_refusal > last_read):
        return State.FAILING, f"{row['last_refusal_status']} {row['last_refusal_outcome']}"
    if last_read is not None:
        return State.OK, ""
    stored = row["stored_at"]
    if stored is not None and (now - stored).total_seconds() < agent_wait:
        return State.WAITING, ""
    return State.NEVER_READ, ""  # also when stored before boshreg kept the fleet: its age is unknown


def query_fleet(
    engine: Engine,
    *,
    now: datetime | None = None,
    agent_wait: float = AGENT_WAIT_SECONDS,
    limit: int | None = None,
    instance_id: str | None = None,
) -> list[FleetEntry]:
    """Every stored instance (or the one named), by id, with what the fleet table knows of it."""
    now = now or datetime.now(UTC)
    statement = (
        select(registry_instances.c.instance_id, *[c for c in registry_fleet.c if c.name != "instance_id"])
        .select_from(registry_instances.outerjoin(registry_fleet, _F.instance_id == registry_instances.c.instance_id))
        .order_by(registry_instances.c.instance_id)
        .limit(limit)
    )
    if instance_id is not None:
        statement = statement.where(registry_instances.c.instance_id == instance_id)
    with engine.connect() as conn:
        rows = conn.execute(statement).mappings().all()
    entries = []
    for raw in rows:
        row: dict[str, Any] = {name: _aware(v) if isinstance(v, datetime) else v for name, v in raw.items()}
        row["reads"], row["refusals"] = row["reads"] or 0, row["refusals"] or 0
        state, cause = classify(row, now, agent_wait)
        entries.append(FleetEntry(**row, state=state, cause=cause))
    return entries


def ago(value: datetime | None, now: datetime) -> str:
    """``5m ago``, as the fleet table and the dashboard say it; ``-`` for never."""
    if value is None:
        return "-"
    seconds = max(0, int((now - value).total_seconds()))
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _aware(value: datetime) -> datetime:
    """SQLite and MySQL give naive datetimes back; the stored ones are UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def stored_and_never_read(engine: Engine, now: datetime) -> tuple[int, dict[str, int]]:
    """How many instances are stored, and how many of them were never read, by time since stored.

    Counted in the database (one statement each), so a scrape costs the same at 100 instances as at 100,000.
    """
    stored = _F.stored_at
    age = case(
        (stored.is_(None), literal("unknown")),
        (stored >= now - timedelta(minutes=1), literal("0-1m")),
        (stored >= now - timedelta(minutes=10), literal("1m-10m")),
        (stored >= now - timedelta(hours=1), literal("10m-1h")),
        else_=literal("1h+"),
    ).label("age")
    joined = registry_instances.outerjoin(registry_fleet, _F.instance_id == registry_instances.c.instance_id)
    # Grouped by the output's name: PostgreSQL would see two CASEs, each with parameters of its own.
    never_read = (
        select(age, func.count()).select_from(joined).where(_F.last_read_at.is_(None)).group_by(literal_column("age"))
    )
    with engine.connect() as conn:
        total = int(conn.execute(select(func.count()).select_from(registry_instances)).scalar_one())
        by_age = {str(name): int(count) for name, count in conn.execute(never_read)}
    return total, by_age
