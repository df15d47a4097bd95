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
from typing import Any

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


class _Clock:
    def __init__(self, deadline: float, now: Callable[[], float]) -> None:
        self._now = now
        self.started = now()
        self.ends = self.started + deadline

    def remaining(self) -> float:
        return max(0.0, self.ends - self._now())

    def elapsed(self) -> float:
        return self._now() - self.started


def resolve(
    sources: Sequence[SettingsSource],
    *,
    key: str = KEY_SERVER_NAME,
    deadline: float = DEFAULT_DEADLINE,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], float] = time.monotonic,
) -> Resolution:
    """The VM's agent settings, or ResolveError; never longer than ``deadline`` seconds."""
    clock = _Clock(deadline, now)
    trace = Trace()
    try:
        source, found, document = _user_data(sources, clock, trace, sleep, now)
        trace.source = found.location
        trace.source_kind = source.kind
        trace.verdict = PORTABLE if trace.source_kind == "metadata" else f"pinned: fed by {trace.source_kind}"
        if userdata.is_registry_less(document):
            trace.steps.append(Step("registry", "none", "skipped", "user data carries the settings (agent_id)", 0.0))
            settings = {k: v for k, v in document.items() if k not in userdata.BOOTSTRAP_KEYS}
        else:
            settings = _registry_settings(document, found, key, clock, trace, sleep, now)
    finally:
        trace.seconds = round(clock.elapsed(), 3)
    return Resolution(settings, trace)


def _user_data(
    sources: Sequence[SettingsSource],
    clock: _Clock,
    trace: Trace,
    sleep: Callable[[float], None],
    now: Callable[[], float],
) -> tuple[SettingsSource, SourceData, dict[str, Any]]:
    for source in sources:
        started = now()
        attempts = 0
        backoff = FIRST_BACKOFF
        while True:
            attempts += 1
            try:
                found = source.read(timeout=min(REQUEST_TIMEOUT, max(clock.remaining(), 0.1)))
            except SourceUnavailable as exc:
                retry = not exc.absent and attempts < SOURCE_ATTEMPTS and clock.remaining() > backoff
                if retry:
                    sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
                    continue
                outcome = "absent" if exc.absent else "failed"
                trace.steps.append(Step("source", source.describe(), outcome, exc.reason, now() - started, attempts))
                break
            try:
                document = userdata.decode(found.user_data, found.location)
            except userdata.UserDataError as exc:
                trace.steps.append(Step("source", source.describe(), "invalid", str(exc), now() - started, attempts))
                break
            problems = userdata.validate(document)
            if problems:
                trace.steps.append(
                    Step("source", source.describe(), "invalid", "; ".join(problems), now() - started, attempts)
                )
                break
            trace.steps.append(Step("source", source.describe(), "ok", found.location, now() - started, attempts))
            return source, found, document
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
    sleep: Callable[[float], None],
    now: Callable[[], float],
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
    url = endpoint.settings_url(registry_key)
    trace.registry_url = endpoint.redacted() + url[len(endpoint.base_url) :]
    nameservers = (document.get("dns") or {}).get("nameserver") or []
    started = now()
    attempts = 0
    backoff = FIRST_BACKOFF
    while True:
        attempts += 1
        try:
            settings = fetch_settings(
                endpoint, registry_key, nameservers, timeout=min(REQUEST_TIMEOUT, max(clock.remaining(), 0.1))
            )
        except RegistryFetchError as exc:
            if exc.retryable and attempts < REGISTRY_ATTEMPTS and clock.remaining() > backoff:
                sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            trace.steps.append(Step("registry", trace.registry_url, "failed", exc.cause, now() - started, attempts))
            raise ResolveError(_registry_failure(exc, trace.registry_url, attempts, endpoint), trace) from None
        trace.steps.append(Step("registry", trace.registry_url, "ok", "200", now() - started, attempts))
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
