"""Resolving a VM's settings as bosh-agent does, with bounded retries and a trace of every step.

Order: the configured sources, first valid user data wins; then, unless the user data carries the
settings itself (registry-less, a non-empty ``agent_id``), the registry GET keyed by the server name
or the instance id. Everything runs under one deadline, and every failure ends in one message naming
the step, the (redacted) URL, the cause and the likely fix: never a silent hang.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from boshreg import userdata
from boshreg.agent.registry import RegistryFetchError, fetch_settings
from boshreg.agent.sources import SettingsSource, SourceData, SourceUnavailable
from boshreg.endpoint import Endpoint, parse_endpoint, reachability_warnings

DEFAULT_DEADLINE = 60.0
SOURCE_ATTEMPTS = 3  # per source, for failures that may pass (timeouts, 5xx); absent sources get one
REGISTRY_ATTEMPTS = 10  # as bosh-agent: 10 tries
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 2.0  # 10 registry attempts span about 15 s; bosh-agent spaces its 10 tries 1 s apart
REQUEST_TIMEOUT = 5.0

KEY_SERVER_NAME = "server-name"
KEY_INSTANCE_ID = "instance-id"
PORTABLE = "portable"


@dataclass
class Step:
    """One thing the resolver tried."""

    step: str  # "source" or "registry"
    name: str
    outcome: str  # "ok", "absent", "failed", "invalid"
    detail: str
    seconds: float
    attempts: int = 1


@dataclass
class Trace:
    """Every step, which source answered, and the verdict."""

    steps: list[Step] = field(default_factory=list)
    source: str | None = None
    source_kind: str | None = None
    registry_url: str | None = None
    verdict: str | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "steps": [asdict(step) for step in self.steps]}

    def to_text(self) -> str:
        lines = []
        for step in self.steps:
            tries = f", {step.attempts} attempts" if step.attempts > 1 else ""
            lines.append(f"{step.step:<8} {step.outcome:<7} {step.name} ({_ms(step.seconds)}{tries}): {step.detail}")
        if self.source:
            lines.append(f"user data from: {self.source}")
        if self.verdict:
            lines.append(f"verdict: {self.verdict}")
        lines.append(f"total: {_ms(self.seconds)}")
        return "\n".join(lines)


@dataclass
class Resolution:
    settings: dict[str, Any]
    trace: Trace


class ResolveError(Exception):
    """No settings: the message names the failing step, the URL, the cause and the fix."""

    def __init__(self, message: str, trace: Trace) -> None:
        super().__init__(message)
        self.trace = trace


T = TypeVar("T")
E = TypeVar("E", bound=Exception)


class _Clock:
    """The one deadline, and the one retry loop: every wait of the resolver goes through here."""

    def __init__(self, deadline: float, now: Callable[[], float], sleep: Callable[[float], None]) -> None:
        self.now = now
        self._sleep = sleep
        self.started = now()
        self.ends = self.started + deadline

    def remaining(self) -> float:
        return max(0.0, self.ends - self.now())

    def elapsed(self) -> float:
        return self.now() - self.started

    def retry(
        self, call: Callable[[float], T], kind: type[E], may_recover: Callable[[E], bool], max_attempts: int
    ) -> tuple[T | None, E | None, int]:
        """``call(timeout)`` until it succeeds, fails for good, runs out of attempts or out of time.

        Returns the value or the last error of ``kind``, and the number of attempts; other exceptions
        are not the resolver's to judge and propagate.
        """
        backoff = FIRST_BACKOFF
        attempts = 0
        while True:
            attempts += 1
            try:
                return call(min(REQUEST_TIMEOUT, max(self.remaining(), 0.1))), None, attempts
            except kind as exc:
                if not (may_recover(exc) and attempts < max_attempts and self.remaining() > backoff):
                    return None, exc, attempts
            self._sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)


def resolve(
    sources: Sequence[SettingsSource],
    *,
    key: str = KEY_SERVER_NAME,
    deadline: float = DEFAULT_DEADLINE,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], float] = time.monotonic,
    cacert: str | None = None,
    source_address: str | None = None,
) -> Resolution:
    """The VM's agent settings, or ResolveError; never longer than ``deadline`` seconds.

    ``source_address`` is the local address the registry GET connects from (sources take their own).
    """
    clock = _Clock(deadline, now, sleep)
    trace = Trace()
    try:
        source, found, document = _user_data(sources, clock, trace)
        trace.source = found.location
        trace.source_kind = source.kind
        trace.verdict = PORTABLE if trace.source_kind == "metadata" else f"pinned: fed by {trace.source_kind}"
        if userdata.is_registry_less(document):
            trace.steps.append(Step("registry", "none", "skipped", "user data carries the settings (agent_id)", 0.0))
            settings = {k: v for k, v in document.items() if k not in userdata.BOOTSTRAP_KEYS}
        else:
            settings = _registry_settings(document, found, key, clock, trace, cacert, source_address)
    finally:
        trace.seconds = round(clock.elapsed(), 3)
    return Resolution(settings, trace)


def _source_may_recover(error: SourceUnavailable) -> bool:
    return not error.absent


def _registry_may_recover(error: RegistryFetchError) -> bool:
    return error.retryable


def _user_data(
    sources: Sequence[SettingsSource], clock: _Clock, trace: Trace
) -> tuple[SettingsSource, SourceData, dict[str, Any]]:
    for source in sources:
        started = clock.now()
        found, error, attempts = clock.retry(source.read, SourceUnavailable, _source_may_recover, SOURCE_ATTEMPTS)
        if found is None:
            assert error is not None  # retry gives a value or an error
            outcome, detail = ("absent" if error.absent else "failed"), error.reason
        else:
            try:
                document = userdata.decode(found.user_data, found.location)
                problems = userdata.validate(document)
            except userdata.UserDataError as exc:
                problems = [str(exc)]
            if not problems:
                trace.steps.append(
                    Step("source", source.describe(), "ok", found.location, clock.now() - started, attempts)
                )
                return source, found, document
            outcome, detail = "invalid", "; ".join(problems)
        trace.steps.append(Step("source", source.describe(), outcome, detail, clock.now() - started, attempts))
        if clock.remaining() <= 0:
            break
    tried = "; ".join(f"{s.name}: {s.outcome}: {s.detail}" for s in trace.steps)
    raise ResolveError(
        f"no user data from any source (tried {tried}); check that the VM was created with user data and that "
        "the metadata service (169.254.169.254) or the config drive is reachable",
        trace,
    )


def _registry_settings(
    document: dict[str, Any],
    found: SourceData,
    key: str,
    clock: _Clock,
    trace: Trace,
    cacert: str | None,
    source_address: str | None,
) -> dict[str, Any]:
    endpoint = parse_endpoint(document["registry"]["endpoint"])  # validated with the user data
    if key == KEY_INSTANCE_ID:
        if not found.instance_id:
            raise ResolveError(
                f"--key instance-id, but {found.location} gave no instance id; use --key server-name", trace
            )
        registry_key = found.instance_id
    else:
        registry_key = document["server"]["name"]
    trace.registry_url = endpoint.settings_url(registry_key, redacted=True)
    nameservers = (document.get("dns") or {}).get("nameserver") or []
    started = clock.now()
    settings, error, attempts = clock.retry(
        lambda timeout: fetch_settings(
            endpoint, registry_key, nameservers, timeout=timeout, cacert=cacert, source_address=source_address
        ),
        RegistryFetchError,
        _registry_may_recover,
        REGISTRY_ATTEMPTS,
    )
    if settings is None:
        assert error is not None  # retry gives a value or an error
        trace.steps.append(Step("registry", trace.registry_url, "failed", error.cause, clock.now() - started, attempts))
        raise ResolveError(_registry_failure(error, trace.registry_url, attempts, endpoint), trace)
    trace.steps.append(Step("registry", trace.registry_url, "ok", "200", clock.now() - started, attempts))
    return settings


def _registry_failure(exc: RegistryFetchError, url: str, attempts: int, endpoint: Endpoint) -> str:
    fix = exc.fix
    if exc.retryable:
        warnings = reachability_warnings(endpoint, resolve=False)
        if warnings:
            fix = f"{fix}; note: {warnings[0]}"
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    return f"registry GET {url} failed{tries}: {exc.cause}; {fix}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def settings_json(settings: dict[str, Any]) -> str:
    """The settings as the agent writes them: compact JSON."""
    return json.dumps(settings, separators=(",", ":"), ensure_ascii=False)
