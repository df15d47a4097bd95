"""Prometheus metrics of the registry, right with several worker processes and nearly free per request.

prometheus-client's multiprocess mode takes a lock and writes a memory-mapped file for every increment:
~1 us per counter and ~2 us per histogram observation here, a few percent of a cached read. Each worker
counts in plain dictionaries instead (~0.3 us a request) and a thread writes the counts to a snapshot file
of its own once a second (``<metrics dir>/<pid>.json``, written whole and renamed into place). Whoever is
scraped adds every snapshot to its own live counts, and prometheus-client renders the text format. So
other workers' counts are at most ``SNAPSHOT_SECONDS`` old; counters of a worker that died stay counted
(counters never go down), its gauges are dropped.

No label names an instance: the route label is the route's template (cardinality stays fixed).
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from boshreg.registry.access_log import Answered

log = logging.getLogger(__name__)

SNAPSHOT_SECONDS = 1.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LOOKUP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0)
NEVER_READ_AGES = ("0-1m", "1m-10m", "10m-1h", "1h+", "unknown")  # the age label of never-read instances

_ROUTES = {b"/fleet": "/fleet", b"/metrics": "/metrics", b"/healthz": "/healthz", b"/readyz": "/readyz",
           b"/openapi.json": "/openapi.json"}  # fmt: skip
_INSTANCE_ROUTES = {b"settings", b"credentials", b"events"}
_METHODS = {method.encode(): method for method in ("GET", "PUT", "DELETE", "POST", "HEAD")}  # else "other"


_SETTINGS_ROUTE = "/instances/{id}/settings"


def route_of(target: bytes) -> str:
    """The route template a request target falls under (never the instance id itself)."""
    if target.endswith(b"/settings") and target.startswith(b"/instances/") and target.count(b"/") == 3:
        return _SETTINGS_ROUTE  # nearly every request: decided without splitting
    path = target.split(b"?", 1)[0]
    if path.startswith(b"/instances/") and path.count(b"/") == 3:
        last = path.rsplit(b"/", 1)[1]
        if last in _INSTANCE_ROUTES:
            return f"/instances/{{id}}/{last.decode()}"
    if path == b"/ui" or path.startswith(b"/ui/"):
        return "/ui"
    return _ROUTES.get(path, "other")


@dataclass
class Histogram:
    """Counts per bucket (not cumulative), their sum: what a Prometheus histogram is made of."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def add(self, other: dict[str, Any]) -> None:
        for i, count in enumerate(other["counts"][: len(self.counts)]):
            self.counts[i] += int(count)
        self.total += float(other["sum"])

    def to_json(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "sum": self.total}

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative, as the text format wants them."""
        running, out = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return out


METRICS_DIR_PREFIX = "boshreg-metrics-"


def metrics_directory(temporary: Path | None = None) -> Path:
    """A new directory for the workers' snapshots, named after this process; first, those of registries that
    are gone.

    A registry stopped cleanly removes its own; one killed outright (SIGKILL, the OOM killer) cannot, and each
    such stop left one in /tmp. Only directories of this user whose process no longer exists are removed.
    """
    temporary = temporary or Path(tempfile.gettempdir())
    for stale in temporary.glob(f"{METRICS_DIR_PREFIX}*-*"):
        owner = stale.name.removeprefix(METRICS_DIR_PREFIX).partition("-")[0]
        with contextlib.suppress(OSError):
            if owner.isdigit() and stale.lstat().st_uid == os.getuid() and stale.is_dir() and _gone(int(owner)):
                shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-", dir=temporary))


def _gone(pid: int) -> bool:
    """No process has this number (one of another user's is there: signal 0 is refused, not failed)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


class ProcessMetrics:
    """This process's counts. Requests are counted on the event loop; store and cloud calls from threads."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.requests: dict[tuple[str, str, int, str], int] = {}
        self.durations: dict[str, Histogram] = {}
        self.store_durations: dict[str, Histogram] = {}
        self.store_errors: dict[str, int] = {}
        self.lookups: dict[str, int] = {}
        self.lookup_duration = Histogram(LOOKUP_BUCKETS)
        self.throttle_blocks = 0
        self.gauges: Callable[[], dict[str, float]] = dict  # this process's live gauges (audit queue, ...)
        self._lock = threading.Lock()  # for counts kept from threads
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def answered(self, answered: Sequence[Answered]) -> None:
        """Requests answered in one turn of the event loop (the HTTP front calls this after they went out)."""
        requests, durations = self.requests, self.durations
        for method, target, status, credential, started, done, _client in answered:
            route = route_of(target)
            key = (route, _METHODS.get(method, "other"), status, credential)
            requests[key] = requests.get(key, 0) + 1
            histogram = durations.get(route)
            if histogram is None:
                histogram = durations[route] = Histogram(REQUEST_BUCKETS)
            seconds = done - started
            histogram.counts[bisect.bisect_left(histogram.bounds, seconds)] += 1
            histogram.total += seconds

    def store_call(self, operation: str, seconds: float, *, failed: bool) -> None:
        with self._lock:
            histogram = self.store_durations.get(operation)
            if histogram is None:
                histogram = self.store_durations[operation] = Histogram(LOOKUP_BUCKETS)
            histogram.observe(seconds)
            if failed:
                self.store_errors[operation] = self.store_errors.get(operation, 0) + 1

    def lookup(self, outcome: str, seconds: float) -> None:
        with self._lock:
            self.lookups[outcome] = self.lookups.get(outcome, 0) + 1
            self.lookup_duration.observe(seconds)

    def blocked(self) -> None:
        self.throttle_blocks += 1

    def snapshot(self) -> dict[str, Any]:
        """Everything counted so far, as JSON (copies first: the loop keeps counting meanwhile)."""
        with self._lock:
            threaded = {
                "store_durations": {k: v.to_json() for k, v in self.store_durations.items()},
                "store_errors": dict(self.store_errors),
                "lookups": dict(self.lookups),
                "lookup_duration": self.lookup_duration.to_json(),
            }
        requests = dict(self.requests)
        durations = {route: histogram.to_json() for route, histogram in list(self.durations.items())}
        return {
            "pid": os.getpid(),
            "requests": [
                [route, method, str(status), credential, count]
                for (route, method, status, credential), count in requests.items()
            ],
            "durations": durations,
            "throttle_blocks": self.throttle_blocks,
            "gauges": self.gauges(),
            **threaded,
        }

    def start(self) -> ProcessMetrics:
        """Write this process's snapshot once a second, from a thread of its own."""
        if self.directory is not None:
            self._thread = threading.Thread(target=self._run, name="metrics-writer", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.write()

    def write(self) -> None:
        if self.directory is None:
            return
        path = self.directory / f"{os.getpid()}.json"
        partial = path.with_suffix(".tmp")
        try:
            partial.write_text(json.dumps(self.snapshot()))
            partial.replace(path)
        except OSError as exc:  # the directory went away (the parent is stopping): nothing to keep
            log.debug("metrics snapshot not written: %s", exc)

    def _run(self) -> None:
        while not self._stop.wait(SNAPSHOT_SECONDS):
            self.write()


def snapshots(directory: Path | None, own: ProcessMetrics) -> list[dict[str, Any]]:
    """This process's live counts and every other process's last snapshot."""
    found = [own.snapshot()]
    if directory is None:
        return found
    mine = f"{os.getpid()}.json"
    for path in sorted(directory.glob("*.json")):
        if path.name == mine:
            continue
        with contextlib.suppress(OSError, ValueError):
            found.append(json.loads(path.read_text()))
    return found


@dataclass(frozen=True)
class DatabaseGauges:
    """What the scrape reads from the database: its availability and the fleet's counts."""

    up: bool
    ping_seconds: float
    instances: int | None
    never_read: dict[str, int]


class RegistryCollector(Collector):
    """The registry's metrics from all snapshots, for prometheus-client to render."""

    def __init__(self, found: list[dict[str, Any]], database: DatabaseGauges) -> None:
        self.found = found
        self.database = database

    def collect(self) -> Iterator[Metric]:
        yield from self._requests()
        yield from self._store()
        yield from self._cloud()
        yield from self._process_gauges()
        yield from self._fleet()

    def _requests(self) -> Iterable[Metric]:
        requests = CounterMetricFamily(
            "boshreg_http_requests", "Requests answered, by route, method, status and credential kind",
            labels=["route", "method", "status", "credential"],
        )  # fmt: skip
        totals: dict[tuple[str, ...], int] = {}
        for snap in self.found:
            for *key, count in snap.get("requests", []):
                totals[tuple(key)] = totals.get(tuple(key), 0) + int(count)
        for key, count in sorted(totals.items()):
            requests.add_metric(list(key), count)
        yield requests
        yield _histograms(
            "boshreg_http_request_duration_seconds",
            "Time from the request's first byte to its answer written, by route",
            "route",
            REQUEST_BUCKETS,
            [snap.get("durations", {}) for snap in self.found],
        )
        blocks = CounterMetricFamily("boshreg_throttle_blocks", "Requests refused 429 after failed authentications")
        blocks.add_metric([], sum(int(snap.get("throttle_blocks", 0)) for snap in self.found))
        yield blocks

    def _store(self) -> Iterable[Metric]:
        yield _histograms(
            "boshreg_store_operation_duration_seconds",
            "Database calls of request handlers, by operation (read, write, delete)",
            "operation",
            LOOKUP_BUCKETS,
            [snap.get("store_durations", {}) for snap in self.found],
        )
        errors = CounterMetricFamily(
            "boshreg_store_errors", "Database calls that failed (unavailable or too slow)", labels=["operation"]
        )
        for operation, count in sorted(_summed(snap.get("store_errors", {}) for snap in self.found).items()):
            errors.add_metric([operation], count)
        yield errors
        up = GaugeMetricFamily("boshreg_store_up", "1 when the database answered the scrape's query")
        up.add_metric([], 1.0 if self.database.up else 0.0)
        yield up
        ping = GaugeMetricFamily("boshreg_store_ping_seconds", "How long the scrape's query to the database took")
        ping.add_metric([], self.database.ping_seconds)
        yield ping

    def _cloud(self) -> Iterable[Metric]:
        lookups = CounterMetricFamily(
            "boshreg_iaas_lookups", "Cloud API lookups of the address check, by outcome", labels=["outcome"]
        )
        for outcome, count in sorted(_summed(snap.get("lookups", {}) for snap in self.found).items()):
            lookups.add_metric([outcome], count)
        yield lookups
        yield _histograms(
            "boshreg_iaas_lookup_duration_seconds",
            "Time of the address check's cloud lookups",
            None,
            LOOKUP_BUCKETS,
            [{"": snap["lookup_duration"]} for snap in self.found if "lookup_duration" in snap],
        )

    def _process_gauges(self) -> Iterable[Metric]:
        alive = [snap for snap in self.found if _alive(int(snap.get("pid", 0)))]
        gauges = _summed(snap.get("gauges", {}) for snap in alive)
        depth = GaugeMetricFamily(
            "boshreg_audit_queue_depth", "Audit events waiting to be written, all workers (in memory and on disk)"
        )
        depth.add_metric([], gauges.get("audit_queue", 0))
        yield depth
        dropped = CounterMetricFamily(
            "boshreg_audit_dropped_events",
            "Audit events dropped (more waiting than memory and the data directory could keep, or refused alone)",
        )
        dropped.add_metric([], sum(int(snap.get("gauges", {}).get("audit_dropped", 0)) for snap in self.found))
        yield dropped
        workers = GaugeMetricFamily("boshreg_workers", "Worker processes serving")
        workers.add_metric([], len(alive))
        yield workers

    def _fleet(self) -> Iterable[Metric]:
        if self.database.instances is not None:
            stored = GaugeMetricFamily("boshreg_instances_stored", "Instances with settings stored")
            stored.add_metric([], self.database.instances)
            yield stored
        never = GaugeMetricFamily(
            "boshreg_instances_never_read", "Stored instances never read, by time since stored", labels=["age"]
        )
        for age in NEVER_READ_AGES:
            never.add_metric([age], self.database.never_read.get(age, 0))
        yield never


def render(found: list[dict[str, Any]], database: DatabaseGauges) -> bytes:
    """The text exposition format, by prometheus-client."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RegistryCollector(found, database))
    return generate_latest(registry)


def _histograms(
    name: str, documentation: str, label: str | None, bounds: tuple[float, ...], parts: list[dict[str, Any]]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=[label] if label else None)
    merged: dict[str, Histogram] = {}
    for part in parts:
        for key, value in part.items():
            merged.setdefault(key, Histogram(bounds)).add(value)
    for key, histogram in sorted(merged.items()):
        family.add_metric([key] if label else [], histogram.buckets(), histogram.total)
    return family


def _summed(parts: Iterable[dict[str, Any]]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for part in parts:
        for key, value in part.items():
            totals[key] = totals.get(key, 0) + float(value)
    return totals


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
