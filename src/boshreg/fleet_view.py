"""`boshreg fleet`: the fleet table from the registry's database or a running registry, as text or JSON.

Both sources give the same rows (``FleetEntry.to_json``), so the terminal table, ``--json`` and the
dashboard show one thing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from boshreg.bootstrap.endpoint import Endpoint
from boshreg.registry.audit import printable
from boshreg.registry.config import RegistryConfig
from boshreg.registry.fleet import State, ago, query_fleet
from boshreg.registry.reading import read_database

COLOURS = {State.OK.value: "green", State.WAITING.value: "yellow", State.NEVER_READ.value: "red",
           State.FAILING.value: "red"}  # fmt: skip
_HEADINGS = ("INSTANCE", "STATE", "STORED", "LAST READ", "FROM", "CREDENTIAL", "READS", "REFUSED", "CAUSE")


def fleet_from_database(config: RegistryConfig, where: str, agent_wait: float) -> list[dict[str, Any]]:
    """Every stored instance, read straight from the registry's database."""
    entries = read_database(config, where, lambda engine: query_fleet(engine, agent_wait=agent_wait))
    return [entry.to_json() for entry in entries]


def fleet_from_endpoint(
    endpoint: Endpoint, agent_wait: float, *, timeout: float, cacert: str | None
) -> list[dict[str, Any]]:
    """The same rows, asked of a running registry with admin credentials."""
    from boshreg.client import RegistryClient  # httpx: not in `serve` (test_structure)

    with RegistryClient(endpoint, timeout=timeout, cacert=cacert) as client:
        return client.fleet(agent_wait)


def table_lines(rows: list[dict[str, Any]], *, now: datetime | None = None) -> list[list[str]]:
    """The heading and one line of cells per instance, every cell safe for a terminal."""
    now = now or datetime.now(UTC)
    lines = [list(_HEADINGS)]
    for row in rows:
        lines.append(
            [
                printable(str(row["instance_id"])),
                str(row["state"]),
                _ago(row.get("stored_at"), now),
                _ago(row.get("last_read_at"), now),
                printable(str(row.get("last_read_client") or row.get("last_refusal_client") or "-")),
                printable(str(row.get("last_read_credential") or "-")),
                str(row.get("reads", 0)),
                str(row.get("refusals", 0)),
                printable(str(row.get("cause") or "")),
            ]
        )
    return lines


def aligned(lines: list[list[str]]) -> list[tuple[list[str], list[int]]]:
    """Each line's cells with the width its column needs (the caller pads, so it may colour a cell)."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(_HEADINGS))]
    return [(line, widths) for line in lines]


def _ago(value: object, now: datetime) -> str:
    """The age of a row's ISO time (as JSON carries it)."""
    if not isinstance(value, str) or not value:
        return "-"
    try:
        return ago(datetime.fromisoformat(value), now)
    except ValueError:
        return "?"
