"""Resolving a VM's settings as bosh-agent does, with bounded retries, a trace and a verdict.

The walk is the agent's (registry mode): the first source in agent.json's order that is there is kept,
and the agent never falls back from it (an HTTP source is kept without a probe); then, unless the user
data carries the settings itself (a non-empty ``agent_id``), the registry GET keyed by the server name
(``UseServerName``) or the instance id. Everything runs under one deadline, and every failure ends in one
message naming the step, the (redacted) URL, the cause and the likely fix: never a silent hang.

The verdict is a counterfactual: when a config drive fed the VM, the resolver also walks the sources
with every drive taken away and compares what they give (``bootstrap.verdict.judge``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from boshreg.agent.registry import RegistryFetchError, fetch_settings
from boshreg.agent.sources import SettingsSource, SourceData, SourceUnavailable
from boshreg.bootstrap import userdata
from boshreg.bootstrap.endpoint import Endpoint, parse_endpoint, reachability_warnings
from boshreg.bootstrap.verdict import CONFIG_DRIVE, Reading, Verdict, boot_problems, injected_losses, judge
from boshreg.errors import BoshregError

DEFAULT_DEADLINE = 60.0
REGISTRY_ATTEMPTS = 10  # as bosh-agent: 10 tries
REGISTRY_RETRY_DELAY = 1.0  # 1 s apart in recent versions
REQUEST_TIMEOUT = 5.0

KEY_SERVER_NAME = "server-name"
KEY_INSTANCE_ID = "instance-id"


@dataclass
class Step:
    """One thing the resolver tried."""

    step: str  # "source", "registry" or "without-drive"
    name: str
    outcome: str  # "ok", "absent", "failed", "invalid", "unsupported", "not-tried", "skipped"
    detail: str
    seconds: float
    attempts: int = 1


@dataclass
class Trace:
    """Every step, which source fed the VM, and the verdict."""

    steps: list[Step] = field(default_factory=list)
    source: str | None = None
    source_kind: str | None = None
    registry_url: str | None = None
    verdict: str | None = None
    verdict_detail: dict[str, Any] | None = None
    public_key: str | None = None  # what the source that fed the VM gives as its SSH key
    injected_files: list[str] = field(default_factory=list)  # files only a config drive carries
    seconds: float = 0.0
    judged: Verdict | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        document = {**asdict(self), "steps": [asdict(step) for step in self.steps]}
        document.pop("judged")
        return document

    def to_text(self) -> str:
        lines = []
        for step in self.steps:
            tries = f", {step.attempts} attempts" if step.attempts > 1 else ""
            lines.append(f"{step.step:<13} {step.outcome:<9} {step.name} ({_ms(step.seconds)}{tries}): {step.detail}")
        if self.source:
            lines.append(f"user data from: {self.source}")
        if self.judged is not None:
            lines.append(self.judged.to_text())
            lines += [f"warning: {warning}" for warning in self.judged.warnings]
        lines.append(f"total: {_ms(self.seconds)}")
        return "\n".join(lines)

    def record(self, verdict: Verdict) -> None:
        self.judged = verdict
        self.verdict = str(verdict.word)
        self.verdict_detail = verdict.to_json()


@dataclass
class Resolution:
    settings: dict[str, Any]
    trace: Trace


class ResolveError(BoshregError):
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
        self,
        call: Callable[[float], T],
        kind: type[E],
        may_recover: Callable[[E], bool],
        max_attempts: int,
        delay: float,
    ) -> tuple[T | None, E | None, int]:
        """``call(timeout)`` until it succeeds, fails for good, runs out of attempts or out of time.

        Returns the value or the last error of ``kind``, and the number of attempts; other exceptions
        are not the resolver's to judge and propagate.
        """
        attempts = 0
        while True:
            attempts += 1
            try:
                return call(min(REQUEST_TIMEOUT, max(self.remaining(), 0.1))), None, attempts
            except kind as exc:
                if not (may_recover(exc) and attempts < max_attempts and self.remaining() > delay):
                    return None, exc, attempts
            self._sleep(delay)


def resolve(
    sources: Sequence[SettingsSource],
    *,
    key: str = KEY_SERVER_NAME,
    deadline: float = DEFAULT_DEADLINE,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], float] = time.monotonic,
    cacert: str | None = None,
    source_address: str | None = None,
    counterfactual: bool = True,
) -> Resolution:
    """The VM's agent settings, or ResolveError; never longer than ``deadline`` seconds.

    ``source_address`` is the local address the registry GET connects from (sources take their own).
    ``counterfactual``: when a drive fed the VM, also walk the other sources to judge what it depends on.
    """
    clock = _Clock(deadline, now, sleep)
    trace = Trace()
    try:
        walked = _walk(sources, clock, trace.steps, "source")
        source, found, step_index = walked.source, walked.found, walked.step_index
        if source is None or found is None:
            trace.record(judge(None, drive_attached=False, without_drive=None, boot_problem=walked.failure))
            raise ResolveError(_nothing_found(trace), trace)
        trace.source, trace.source_kind = found.location, source.kind
        trace.public_key, trace.injected_files = found.public_key, [path for path, _ in found.injected]
        if found.settings_file is not None:
            settings = _settings_file(found.settings_file, trace)
            trace.record(judge(_reading(source, found, None, key), drive_attached=False, without_drive=None))
            return Resolution(settings, trace)
        try:
            document = userdata.decode(found.user_data or b"", found.location)
        except userdata.UserDataError as exc:
            return _broken(trace, step_index, source, found, str(exc))
        problems, warnings = boot_problems(document, live=True)
        fed = _reading(source, found, document, key)
        if problems:
            return _broken(trace, step_index, source, found, "; ".join(problems))
        without = _without_drive(sources, clock, trace, key) if counterfactual and source.kind == CONFIG_DRIVE else None
        drive_only = injected_losses(dict(found.injected), document)
        verdict = judge(
            fed,
            drive_attached=source.kind == CONFIG_DRIVE,
            without_drive=without,
            warnings=warnings,
            drive_only=drive_only,
            personality=bool(found.injected),
        )
        if userdata.is_registry_less(document):
            trace.steps.append(Step("registry", "none", "skipped", "user data carries the settings (agent_id)", 0.0))
            settings = {k: v for k, v in document.items() if k not in userdata.BOOTSTRAP_KEYS}
        else:
            try:
                settings = _registry_settings(document, fed, key, clock, trace, cacert, source_address)
            except ResolveError as exc:
                trace.record(
                    judge(
                        fed,
                        drive_attached=source.kind == CONFIG_DRIVE,
                        without_drive=without,
                        boot_problem=str(exc),
                        warnings=warnings,
                    )
                )
                raise
        trace.record(verdict)
    finally:
        trace.seconds = round(clock.elapsed(), 3)
    return Resolution(settings, trace)


@dataclass
class _Walked:
    """The agent's pick: the source it kept and what it found, or the last failure that ended the walk."""

    source: SettingsSource | None = None
    found: SourceData | None = None
    step_index: int = -1
    failed: SettingsSource | None = None
    failure: str = "no source in the agent's order"


def _walk(sources: Sequence[SettingsSource], clock: _Clock, steps: list[Step], label: str) -> _Walked:
    """The agent's selection: the first source that is there, never falling back from one it committed to."""
    walked = _Walked()
    for position, source in enumerate(sources):
        started = clock.now()
        found, error, attempts = clock.retry(
            source.read, SourceUnavailable, _source_may_recover, source.attempts, source.retry_delay
        )
        if found is not None:
            steps.append(Step(label, source.describe(), "ok", found.location, clock.now() - started, attempts))
            return _Walked(source, found, len(steps) - 1)
        assert error is not None  # retry gives a value or an error
        outcome = "unsupported" if error.unsupported else "absent" if error.absent else "failed"
        steps.append(Step(label, source.describe(), outcome, error.reason, clock.now() - started, attempts))
        walked.failed, walked.failure = source, error.reason
        if source.commits:
            for rest in sources[position + 1 :]:
                steps.append(Step(label, rest.describe(), "not-tried", "the agent stays with the source before", 0.0))
            break
        if clock.remaining() <= 0:
            break
    return walked


def _without_drive(sources: Sequence[SettingsSource], clock: _Clock, trace: Trace, key: str) -> Reading | None:
    """What the agent would read with every config drive detached (user data only: no registry GET)."""
    others = [source for source in sources if source.kind != CONFIG_DRIVE]
    if not others:
        return None
    walked = _walk(others, clock, trace.steps, "without-drive")
    if walked.source is None or walked.found is None:
        failed = walked.failed or others[-1]
        return Reading(failed.kind, failed.where, problem=walked.failure)
    source, found = walked.source, walked.found
    if found.settings_file is not None:
        return _reading(source, found, None, key)
    try:
        document = userdata.decode(found.user_data or b"", found.location)
    except userdata.UserDataError as exc:
        return Reading(source.kind, found.location, problem=str(exc))
    problems, _ = boot_problems(document, live=True)
    if problems:
        return Reading(source.kind, found.location, document, problem="; ".join(problems))
    return _reading(source, found, document, key)


def _reading(source: SettingsSource, found: SourceData, document: dict[str, Any] | None, key: str) -> Reading:
    registry_key: str | None = found.instance_id
    if key == KEY_SERVER_NAME and document is not None:
        server = document.get("server")
        registry_key = str(server.get("name")) if isinstance(server, dict) and server.get("name") else None
    return Reading(source.kind, found.location, document, found.public_key, registry_key)


def _broken(trace: Trace, step_index: int, source: SettingsSource, found: SourceData, problem: str) -> Resolution:
    """The kept source gave user data the agent cannot use: it stops there, as bosh-agent does."""
    trace.steps[step_index].outcome = "invalid"
    trace.steps[step_index].detail = problem
    trace.record(judge(Reading(source.kind, found.location, problem=problem), drive_attached=False, without_drive=None))
    raise ResolveError(
        f"{found.location}: {problem}; the agent keeps the first source that is there and stops on its user data "
        "(it does not move on to the next source): fix the user data the CPI gives this VM",
        trace,
    )


def _nothing_found(trace: Trace) -> str:
    tried = "; ".join(f"{s.name}: {s.outcome}: {s.detail}" for s in trace.steps)
    return (
        f"no user data from any source (tried {tried}); check that the VM was created with user data and that "
        "the metadata service or the config drive is reachable"
    )


def _settings_file(path: str, trace: Trace) -> dict[str, Any]:
    """A File source without user data: the agent reads its settings from the file itself."""
    try:
        with open(path, "rb") as handle:
            settings = json.loads(handle.read())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ResolveError(f"{path}: settings file unreadable or not JSON ({exc})", trace) from None
    if not isinstance(settings, dict):
        raise ResolveError(f"{path}: settings file is not a JSON object", trace)
    trace.steps.append(Step("registry", "none", "skipped", f"settings read from the file {path}", 0.0))
    return settings


def _source_may_recover(error: SourceUnavailable) -> bool:
    return not error.absent


def _registry_may_recover(error: RegistryFetchError) -> bool:
    return error.retryable


def _registry_settings(
    document: dict[str, Any],
    fed: Reading,
    key: str,
    clock: _Clock,
    trace: Trace,
    cacert: str | None,
    source_address: str | None,
) -> dict[str, Any]:
    endpoint = parse_endpoint(document["registry"]["endpoint"], require_credentials=False)  # validated already
    if fed.registry_key is None:
        raise ResolveError(
            f"the registry is keyed by the instance id, but {fed.where} gave none; "
            "set UseServerName: true in agent.json (OpenStack) or use --key server-name",
            trace,
        )
    registry_key = fed.registry_key
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
        REGISTRY_RETRY_DELAY,
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
