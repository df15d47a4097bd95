"""The dashboard at /ui/: the fleet table, a chart of the last hour's reads and refusals, one instance's
trail and diagnosis. Server-rendered HTML (Jinja2, escaped by default) that works without JavaScript:
sorting, the state filter and the search are links and a GET form, the page refreshes itself with a meta
tag, the chart is SVG drawn here. Nothing is fetched from elsewhere; the stylesheet ships in the package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from starlette.templating import Jinja2Templates

from boshreg.registry.audit import Event, query_events
from boshreg.registry.fleet import AGENT_WAIT_SECONDS, FleetEntry, State, ago, query_fleet
from boshreg.registry.store import SettingsStore
from boshreg.registry.tables import registry_events
from boshreg.why import RegistrySide, diagnose

HERE = Path(__file__).parent
TEMPLATES = Jinja2Templates(directory=str(HERE / "templates"))
STATIC = HERE / "static"
REFRESH_SECONDS = 30
CHART_MINUTES = 60
CHART_ROWS_MAX = 200_000  # events read for the chart at most (a storm's hour), so a page stays cheap
EVENTS_SHOWN = 50
_STATE_ORDER = {State.FAILING: 0, State.NEVER_READ: 1, State.WAITING: 2, State.OK: 3}  # the worst first
_NEVER = datetime.min.replace(tzinfo=UTC)
SORTS: dict[str, Callable[[FleetEntry], Any]] = {
    "instance": lambda e: e.instance_id,
    "state": lambda e: (_STATE_ORDER[e.state], e.instance_id),
    "stored": lambda e: (e.stored_at or _NEVER, e.instance_id),
    "read": lambda e: (e.last_read_at or _NEVER, e.instance_id),
    "reads": lambda e: (e.reads, e.instance_id),
    "refusals": lambda e: (e.refusals, e.instance_id),
}
STATE_WORDS = {State.WAITING: "waiting", State.NEVER_READ: "never read", State.OK: "ok", State.FAILING: "failing"}


@dataclass(frozen=True)
class Bar:
    """One minute of the chart: where its two bars go, and what a reader is told of it."""

    x: float
    reads_height: float
    refusals_height: float
    label: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    reads: int
    refusals: int
    peak: int
    bar_width: float


@dataclass(frozen=True)
class FleetPage:
    entries: list[FleetEntry]
    total: int
    counts: dict[str, int]
    chart: Chart


def fleet_page(
    engine: Engine, *, state: str, search: str, sort: str, descending: bool, agent_wait: float, now: datetime
) -> FleetPage:
    """The fleet table as asked (filtered, searched, sorted), the counts per state and the chart."""
    every = query_fleet(engine, now=now, agent_wait=agent_wait)
    counts = {s.value: 0 for s in State}
    for entry in every:
        counts[entry.state.value] += 1
    shown = [
        entry
        for entry in every
        if (not state or entry.state.value == state) and (not search or search.lower() in entry.instance_id.lower())
    ]
    shown.sort(key=SORTS.get(sort, SORTS["state"]), reverse=descending)
    return FleetPage(shown, len(every), counts, activity_chart(engine, now))


def activity_chart(engine: Engine, now: datetime, *, width: int = 720, height: int = 140) -> Chart:
    """Reads and refusals per minute over the last hour, from the audit trail (read counts are summed)."""
    since = now - timedelta(minutes=CHART_MINUTES)
    statement = (
        select(registry_events.c.at, registry_events.c.status, registry_events.c.count)
        .where(registry_events.c.action == "read", registry_events.c.at >= since)
        .limit(CHART_ROWS_MAX)
    )
    reads = [0] * CHART_MINUTES
    refusals = [0] * CHART_MINUTES
    with engine.connect() as conn:
        for at, status, count in conn.execute(statement):
            at = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
            minute = int((at - since).total_seconds() // 60)
            if 0 <= minute < CHART_MINUTES:
                (reads if status == 200 else refusals)[minute] += count or 1
    peak = max(max(reads), max(refusals), 1)
    slot = width / CHART_MINUTES
    bar_width = max(slot / 2 - 0.5, 0.5)
    bars = []
    for minute in range(CHART_MINUTES):
        at = since + timedelta(minutes=minute)
        bars.append(
            Bar(
                x=minute * slot,
                reads_height=height * reads[minute] / peak,
                refusals_height=height * refusals[minute] / peak,
                label=f"{at:%H:%M} UTC: {reads[minute]} reads, {refusals[minute]} refused",
            )
        )
    return Chart(width, height, bars, sum(reads), sum(refusals), peak, bar_width)


@dataclass(frozen=True)
class InstancePage:
    instance_id: str
    entry: FleetEntry | None
    events: list[Event]
    diagnosis: Any


def instance_page(engine: Engine, instance_id: str, *, agent_wait: float, now: datetime) -> InstancePage:
    """One instance: its fleet row, its recent audit events and `boshreg why`'s diagnosis of the registry side."""
    found = query_fleet(engine, now=now, agent_wait=agent_wait, instance_id=instance_id)
    entry = found[0] if found else None
    events = query_events(engine, instance_id=instance_id, limit=EVENTS_SHOWN)
    stored = SettingsStore(engine).get(instance_id) is not None
    diagnosis = diagnose(RegistrySide(instance_id, stored, tuple(events), "this registry"), now=now)
    return InstancePage(instance_id, entry, events, diagnosis)


TEMPLATES.env.globals.update(ago=ago, STATE_WORDS=STATE_WORDS, REFRESH_SECONDS=REFRESH_SECONDS, States=State)
DEFAULT_AGENT_WAIT = AGENT_WAIT_SECONDS
