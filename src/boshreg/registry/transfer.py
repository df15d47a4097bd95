"""`boshreg export` and `boshreg import`: every instance's settings, and our own records of it, as JSON Lines.

The way from one database to another (SQLite to PostgreSQL, a Ruby registry's database to boshreg's)
and the first step off the registry. One line a record, sorted by instance id, the settings text exactly
as stored (so an export of the copy is byte for byte the export of the original); a first line names the
format. An import runs in one transaction: all lines or none, a bad line named by its number; importing
the same file twice changes nothing the second time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, delete, insert, select, update

from boshreg.errors import BoshregError
from boshreg.registry.cache import CHANNEL, SharedMarker, count_change, ensure_change_counter
from boshreg.registry.payload import PayloadError, check_instance_id
from boshreg.registry.tables import registry_credentials, registry_fleet, registry_instances

FORMAT = "boshreg-export"
VERSION = 1
_FLEET_TIMES = ("stored_at", "changed_at", "first_read_at", "last_read_at", "last_refusal_at")
_FLEET_COLUMNS = tuple(column.name for column in registry_fleet.columns if column.name != "instance_id")


class ImportFileError(BoshregError):
    """A line of an import file that cannot be imported; nothing was imported."""


@dataclass(frozen=True)
class Record:
    """One instance as exported: its settings text, its credential generation, our fleet row (or None)."""

    instance_id: str
    settings: str
    generation: int = 0
    fleet: dict[str, Any] | None = None

    def to_line(self) -> str:
        document = {"instance_id": self.instance_id, "settings": self.settings, "generation": self.generation,
                    "fleet": self.fleet}  # fmt: skip
        return json.dumps(document, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


@dataclass
class ImportSummary:
    """What an import changed (or, dry, would change)."""

    created: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"created": self.created, "changed": self.changed, "unchanged": self.unchanged}


def header_line() -> str:
    return json.dumps({"format": FORMAT, "version": VERSION}, separators=(",", ":"), sort_keys=True)


def export_records(engine: Engine) -> Iterator[Record]:
    """Every stored instance, by id, with its generation and fleet row where boshreg has them."""
    with engine.connect() as conn:
        yield from _records(conn)


def _records(conn: Connection, instance_ids: list[str] | None = None) -> Iterator[Record]:
    """The records of these instances (all, for None) as the database holds them now."""
    statement = (
        select(registry_instances.c.instance_id, registry_instances.c.settings, registry_credentials.c.generation,
               *[registry_fleet.c[name] for name in _FLEET_COLUMNS],
               registry_fleet.c.instance_id.label("fleet_id"))
        .select_from(
            registry_instances.outerjoin(
                registry_credentials, registry_credentials.c.instance_id == registry_instances.c.instance_id
            ).outerjoin(registry_fleet, registry_fleet.c.instance_id == registry_instances.c.instance_id)
        )
        .order_by(registry_instances.c.instance_id)
    )  # fmt: skip
    chunks = [None] if instance_ids is None else [instance_ids[i : i + 500] for i in range(0, len(instance_ids), 500)]
    for chunk in chunks:
        query = statement if chunk is None else statement.where(registry_instances.c.instance_id.in_(chunk))
        for row in conn.execute(query).mappings():
            fleet = None
            if row["fleet_id"] is not None:
                fleet = {name: _time_text(row[name]) if name in _FLEET_TIMES else row[name] for name in _FLEET_COLUMNS}
            yield Record(row["instance_id"], str(row["settings"]), int(row["generation"] or 0), fleet)


def write_private(path: Path, data: bytes) -> None:
    """Write an export readable by its owner only: settings hold message-bus and blobstore credentials."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # also when the file was there before, with looser bits
        with os.fdopen(fd, "wb", closefd=False) as out:
            out.write(data)
    finally:
        os.close(fd)


def read_records(lines: Iterable[str], source: str) -> list[Record]:
    """Parse an export file; the first problem is an error naming its line."""
    records: list[Record] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source} line {number}"
        try:
            document = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ImportFileError(f"{where}: not JSON ({exc.msg})", "each line must be one JSON object") from None
        if not isinstance(document, dict):
            raise ImportFileError(f"{where}: not a JSON object", "each line must be one JSON object")
        if "format" in document:
            if document.get("format") != FORMAT or document.get("version") != VERSION:
                raise ImportFileError(
                    f"{where}: format {document.get('format')!r} version {document.get('version')!r}",
                    f"this boshreg reads {FORMAT} version {VERSION} (made by `boshreg export`)",
                )
            continue
        record = _record(document, where)
        if record.instance_id in seen:
            raise ImportFileError(f"{where}: {record.instance_id} appears twice", "keep one line per instance")
        seen.add(record.instance_id)
        records.append(record)
    return records


def _record(document: dict[str, Any], where: str) -> Record:
    instance_id, settings = document.get("instance_id"), document.get("settings")
    generation, fleet = document.get("generation", 0), document.get("fleet")
    if not isinstance(instance_id, str):
        raise ImportFileError(f"{where}: no instance_id string", "every line needs instance_id and settings")
    try:
        check_instance_id(instance_id)
    except PayloadError as exc:
        raise ImportFileError(f"{where}: {exc}", "fix or drop that line") from None
    if not isinstance(settings, str):
        raise ImportFileError(f"{where}: settings of {instance_id} is not a string", "settings is the stored JSON text")
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
        raise ImportFileError(f"{where}: generation of {instance_id} is not a whole number", "use 0 or more")
    if fleet is not None and not (isinstance(fleet, dict) and set(fleet) <= set(_FLEET_COLUMNS)):
        raise ImportFileError(
            f"{where}: fleet of {instance_id} is not a fleet record", "use null, or what export wrote"
        )
    return Record(instance_id, settings, generation, fleet)


def import_records(engine: Engine, records: list[Record], *, dry_run: bool) -> ImportSummary:
    """Make the database hold ``records`` (instances not in the file are left alone), in one transaction."""
    summary = ImportSummary()
    if not dry_run:
        ensure_change_counter(engine)  # before the transaction: on MySQL a table made inside one commits it
    with engine.begin() as conn:
        current = {row.instance_id: row for row in _records(conn, [r.instance_id for r in records])}
        for record in records:
            before = current.get(record.instance_id)
            if before == record:
                summary.unchanged += 1
                continue
            (summary.created if before is None else summary.changed).append(record.instance_id)
            if not dry_run:
                _write(conn, record, before)
        if dry_run:
            conn.rollback()
        elif summary.created or summary.changed:
            count_change(conn)  # MySQL: running registries drop what they cached (``cache``)
    if not dry_run and (summary.created or summary.changed):
        _tell_sqlite_registries(engine)
    return summary


def _tell_sqlite_registries(engine: Engine) -> None:
    """Registries serving this SQLite file drop what they cached at their next read (``cache``)."""
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        marker = SharedMarker(Path(database))
        marker.changed_here()
        marker.close()


def _write(conn: Connection, record: Record, before: Record | None) -> None:
    instance_id = record.instance_id
    if before is None:
        conn.execute(insert(registry_instances).values(instance_id=instance_id, settings=record.settings))
    elif before.settings != record.settings:
        conn.execute(
            update(registry_instances)
            .where(registry_instances.c.instance_id == instance_id)
            .values(settings=record.settings)
        )
    if before is None or before.generation != record.generation:
        conn.execute(delete(registry_credentials).where(registry_credentials.c.instance_id == instance_id))
        if record.generation:
            conn.execute(
                insert(registry_credentials).values(
                    instance_id=instance_id, generation=record.generation, changed_at=datetime.now(UTC)
                )
            )
    if before is None or before.fleet != record.fleet:
        conn.execute(delete(registry_fleet).where(registry_fleet.c.instance_id == instance_id))
        if record.fleet is not None:
            values = {name: _time_value(record.fleet.get(name)) if name in _FLEET_TIMES else record.fleet.get(name)
                      for name in _FLEET_COLUMNS}  # fmt: skip
            values["reads"], values["refusals"] = values["reads"] or 0, values["refusals"] or 0
            conn.execute(insert(registry_fleet).values(instance_id=instance_id, **values))
    if conn.dialect.name == "postgresql":  # running registries drop what they cached of it (see ``cache``)
        conn.exec_driver_sql("SELECT pg_notify(%(channel)s, %(id)s)", {"channel": CHANNEL, "id": instance_id})


def _time_text(value: object) -> str | None:
    """A stored time as export writes it: ISO 8601 in UTC, microseconds always shown."""
    if not isinstance(value, datetime):
        return None
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat(timespec="microseconds")


def _time_value(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None
