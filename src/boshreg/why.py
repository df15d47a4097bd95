"""``boshreg why INSTANCE``: the answer to "Timed out pinging ... after 600 seconds".

The director's only message when a VM never reports in says nothing about why. The registry knows half:
whether settings are stored, and whether and how the VM asked for them (the audit trail). The VM's side
(its user data, or a saved ``agent resolve --json`` trace) knows the other half. This module gathers
both and joins them into one diagnosis with a stable code; the rules are one pure function.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from sqlalchemy import Engine

from boshreg.bootstrap import userdata
from boshreg.bootstrap.endpoint import Endpoint, redact_url
from boshreg.bootstrap.verdict import Verdict, Word, boot_problems, nova_readings, predict
from boshreg.errors import BoshregError
from boshreg.registry.audit import Event, query_events
from boshreg.registry.config import RegistryConfig
from boshreg.registry.reading import read_database
from boshreg.registry.store import SettingsStore

READ = "read"
WRITE = "write"
EVENTS_LOOKED_AT = 200


class WhyError(BoshregError):
    """A side of the question that cannot be read: a file, a database, a registry."""


@dataclass(frozen=True)
class RegistrySide:
    """What the registry knows about one instance: stored or not, and its audit trail, newest first."""

    instance: str
    stored: bool
    events: tuple[Event, ...]
    where: str

    @property
    def reads(self) -> list[Event]:
        return [event for event in self.events if event.action == READ]

    @property
    def last_write(self) -> Event | None:
        return next((event for event in self.events if event.action == WRITE and event.status == 200), None)


@dataclass(frozen=True)
class VmSide:
    """What the VM's side says: the key it asks under, why its user data cannot work, its verdict."""

    where: str
    registry_key: str | None = None
    endpoint: str | None = None  # redacted
    problems: tuple[str, ...] = ()
    verdict: Verdict | dict[str, Any] | None = None
    error: str | None = None  # a saved trace's failure
    no_user_data: str | None = None  # the agent found no user data: why (from its trace)


@dataclass(frozen=True)
class Diagnosis:
    """One line for the operator, with a stable code for scripts."""

    code: str
    message: str
    fix: str = ""
    facts: tuple[str, ...] = field(default=())

    def to_text(self) -> str:
        lines = list(self.facts)
        lines.append(f"diagnosis: {self.message}")
        if self.fix:
            lines.append(f"fix: {self.fix}")
        return "\n".join(lines)


# Stable codes: scripts and dashboards key on these.
NOT_STORED = "not-stored"
NO_USER_DATA = "no-user-data"
NEVER_READ = "never-read"
ENDPOINT_UNUSABLE = "endpoint-unusable"
ASKS_ANOTHER_KEY = "asks-another-key"
REFUSED_401 = "refused-401"
REFUSED_403 = "refused-403"
IP_MISMATCH = "ip-mismatch"
READ_BEFORE_STORED = "read-before-stored"
THROTTLED = "throttled"
REGISTRY_UNAVAILABLE = "registry-unavailable"
READ_OK = "read-ok"
CODES = (
    NOT_STORED, NO_USER_DATA, NEVER_READ, ENDPOINT_UNUSABLE, ASKS_ANOTHER_KEY, REFUSED_401, REFUSED_403, IP_MISMATCH,
    READ_BEFORE_STORED, THROTTLED, REGISTRY_UNAVAILABLE, READ_OK,
)  # fmt: skip


def diagnose(registry: RegistrySide, vm: VmSide | None = None, *, now: datetime | None = None) -> Diagnosis:
    """Join both sides into one diagnosis.

    A VM that found no user data never got as far as the registry: that decides first. Then the most
    recent read; with none, the VM's side explains the silence.
    """
    now = now or datetime.now(UTC)
    facts = _facts(registry, vm, now)
    if vm is not None and vm.no_user_data is not None:
        return Diagnosis(
            NO_USER_DATA,
            f"the VM found no user data, so it never learned where the registry is: {vm.no_user_data}",
            "make the metadata service (or a config drive) serve this VM's user data; `boshreg agent resolve` "
            "on the VM shows each source it tried",
            facts,
        )
    reads = registry.reads
    last = reads[0] if reads else None
    if last is not None and last.status == 200:
        return Diagnosis(
            READ_OK,
            f"the registry side is fine: {registry.instance} read its settings {_ago(last.at, now)} from "
            f"{last.client} ({last.credential})",
            "look at the agent's log on the VM (/var/vcap/bosh/log/current) for what follows the settings",
            facts,
        )
    if last is not None:
        return _refused(registry, last, now, facts)
    if vm is not None and vm.registry_key is not None and vm.registry_key != registry.instance:
        return Diagnosis(
            ASKS_ANOTHER_KEY,
            f"the VM asks for its settings under {vm.registry_key!r}, not {registry.instance!r}",
            "the agent keys the registry by the user data's server.name (UseServerName) or the instance id: make "
            "the CPI store the settings under that key",
            facts,
        )
    if not registry.stored:
        return Diagnosis(
            NOT_STORED,
            f"no settings are stored for {registry.instance}, and no VM asked for them",
            "check that the CPI PUT them (its log), and that it writes to this registry (its registry.endpoint)",
            facts,
        )
    if vm is not None and vm.problems:
        return Diagnosis(
            ENDPOINT_UNUSABLE,
            f"the VM cannot reach the registry: {vm.problems[0]}",
            "render the user data with the registry's address on the VMs' network (`boshreg userdata render`), "
            "then recreate the VM",
            facts,
        )
    stored = registry.last_write
    since = f" {_ago(stored.at, now)}" if stored is not None else ""
    return Diagnosis(
        NEVER_READ,
        f"settings stored{since} and never read: the VM never reached the registry",
        "check that the VM's user data names this registry at an address VMs can reach (`boshreg why "
        f"{registry.instance} --user-data FILE`), and what the agent logged (`agent resolve` on the VM)",
        facts,
    )


def _refused(registry: RegistrySide, last: Event, now: datetime, facts: tuple[str, ...]) -> Diagnosis:
    when = f"{_ago(last.at, now)} from {last.client}"
    if last.status == 401 and last.outcome == "revoked":
        return Diagnosis(
            REFUSED_401,
            f"the VM reads with a revoked per-VM credential: its last read ({when}) was refused with 401 "
            "(its settings were deleted, or its credential revoked, after its user data was rendered)",
            f"render its user data with the current credential (`boshreg userdata render --name {registry.instance} "
            "--per-vm-credentials`, which asks the registry) and recreate the VM",
            facts,
        )
    if last.status == 401:
        return Diagnosis(
            REFUSED_401,
            f"the VM's credentials are not accepted: its last read ({when}) was refused with 401",
            "the endpoint in the VM's user data must carry a user and password this registry accepts (http.user, "
            "additional_users, or a per-VM credential of the current http.instance_secret)",
            facts,
        )
    if last.status == 403:
        return Diagnosis(
            REFUSED_403,
            f"the VM reads with a credential that is not its own: its last read ({when}) was refused with 403",
            f"give the VM the per-VM credential of {registry.instance} (`boshreg userdata render "
            f"--name {registry.instance} --per-vm-credentials`)",
            facts,
        )
    if last.status == 500 and last.outcome == "ip_mismatch":
        return Diagnosis(
            IP_MISMATCH,
            f"an unauthenticated read came from an address the cloud does not give {registry.instance} "
            f"(IP mismatch, {when})",
            "give the VM credentials in its user data, or check that the cloud lists this address for the VM",
            facts,
        )
    if last.status == 404:
        if registry.stored:
            return Diagnosis(
                READ_BEFORE_STORED,
                f"the VM asked before its settings were stored (404, {when}); they are stored now",
                "the agent retries 10 times, 1 s apart: the CPI must PUT the settings before it creates the VM",
                facts,
            )
        return Diagnosis(
            NOT_STORED,
            f"the VM asks, but no settings are stored for {registry.instance} (404, {when})",
            "check that the CPI PUT them under this key, to this registry",
            facts,
        )
    if last.status == 429:
        return Diagnosis(
            THROTTLED,
            f"reads from {last.client} are throttled after failed authentications (429, {when})",
            "fix the credentials that fail from that address; the block lifts by itself",
            facts,
        )
    return Diagnosis(
        REGISTRY_UNAVAILABLE,
        f"the registry could not answer the VM ({last.status} {last.outcome}, {when})",
        "check the registry's database and log (`boshreg serve` logs the cause)",
        facts,
    )


def _facts(registry: RegistrySide, vm: VmSide | None, now: datetime) -> tuple[str, ...]:
    facts = [f"registry ({registry.where}): settings {'stored' if registry.stored else 'not stored'}"]
    stored = registry.last_write
    if stored is not None:
        facts[0] += f", last PUT {_ago(stored.at, now)} from {stored.client}"
    reads = registry.reads
    if reads:
        refused: dict[int, int] = {}
        for event in reads:
            if event.status != 200:
                refused[event.status] = refused.get(event.status, 0) + 1
        ok = sum(1 for event in reads if event.status == 200)
        summary = ", ".join(f"{count} x {status}" for status, count in sorted(refused.items()))
        facts.append(f"reads: {len(reads)} ({ok} ok{', refused ' + summary if summary else ''})")
        facts += [f"  {event.to_text()}" for event in reads[:5]]
    else:
        facts.append("reads: none in the audit trail")
    if vm is not None:
        facts.append(f"vm ({vm.where}): asks under {vm.registry_key or '?'} at {vm.endpoint or '?'}")
        if isinstance(vm.verdict, Verdict):
            facts.append(f"  verdict: {vm.verdict.line()}")
        elif isinstance(vm.verdict, Mapping) and vm.verdict.get("line"):
            facts.append(f"  verdict: {vm.verdict['line']}")
        if vm.error:
            facts.append(f"  agent: {vm.error}")
    return tuple(facts)


def _ago(at: datetime, now: datetime) -> str:
    seconds = max(0, int((now - at).total_seconds()))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} minutes ago"
    return f"{seconds // 3600} hours ago"


# --- the registry's side ---------------------------------------------------------------------------


def registry_side_from_database(config: RegistryConfig, instance: str, where: str) -> RegistrySide:
    """Stored or not, and the audit trail, read straight from the registry's database."""

    def read(engine: Engine) -> RegistrySide:
        stored = SettingsStore(engine).get(instance) is not None
        events = query_events(engine, instance_id=instance, limit=EVENTS_LOOKED_AT)
        return RegistrySide(instance, stored, tuple(events), where)

    return read_database(config, where, read)


def registry_side_from_endpoint(
    endpoint: Endpoint, instance: str, *, timeout: float, cacert: str | None
) -> RegistrySide:
    """The same, asked of a running registry with admin credentials."""
    # Imported here: httpx (with its command line's rich and pygments) was ~10 MB of every registry
    # process's memory, and a registry only ever reads its own database (the dashboard's verdicts).
    from boshreg.client import RegistryClient, RegistryClientError

    with RegistryClient(endpoint, timeout=timeout, cacert=cacert) as client:
        stored, raw_events = client.stored_and_events(instance, limit=EVENTS_LOOKED_AT)
        if stored is None:  # an older registry: ask by reading (an admin read, in the trail after this answer)
            try:
                client.get_settings(instance)
                stored = True
            except RegistryClientError as exc:
                if exc.status_code != 404:
                    raise
                stored = False
    return RegistrySide(instance, stored, tuple(_event(raw) for raw in raw_events), endpoint.redacted())


def _event(raw: Mapping[str, Any]) -> Event:
    try:
        return Event.from_json(raw)
    except (KeyError, ValueError, TypeError) as exc:
        raise WhyError(f"the registry answered an event this version cannot read ({exc})", "update boshreg") from None


# --- the VM's side ---------------------------------------------------------------------------------


def vm_side_from_user_data(path: Path) -> VmSide:
    """The VM's user data: the key it asks under, its endpoint, and why an agent could not use it."""
    try:
        document = userdata.decode(path.read_bytes(), str(path))
    except OSError as exc:
        raise WhyError(f"cannot read --user-data {path}: {exc.strerror}", "give the VM's user data file") from None
    except userdata.UserDataError as exc:
        return VmSide(str(path), problems=(str(exc),))
    problems, _ = boot_problems(document)
    server = document.get("server")
    key = server.get("name") if isinstance(server, Mapping) else None
    registry = document.get("registry")
    endpoint = registry.get("endpoint") if isinstance(registry, Mapping) else None
    verdict = predict(nova_readings(document, drive_attached=False), drive_attached=False)
    return VmSide(
        str(path),
        str(key) if key else None,
        redact_url(endpoint) if isinstance(endpoint, str) else None,
        tuple(problems),
        verdict,
    )


def vm_side_from_trace(path: Path) -> VmSide:
    """A saved ``boshreg agent resolve --json`` trace (its standard error)."""
    try:
        trace = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise WhyError(
            f"cannot read --trace {path}: {exc.strerror}", "give the file `agent resolve --json` wrote"
        ) from None
    except (ValueError, UnicodeDecodeError):
        raise WhyError(
            f"--trace {path} is not JSON", "give the standard error of `boshreg agent resolve --json`"
        ) from None
    if not isinstance(trace, dict) or "steps" not in trace:
        raise WhyError(f"--trace {path} is not an agent trace", "give the standard error of `agent resolve --json`")
    return vm_side_from_trace_document(trace, str(path))


def vm_side_from_trace_document(trace: Mapping[str, Any], where: str) -> VmSide:
    """The VM's side from an agent trace already read (``agent resolve --json``, or the drill's)."""
    url = trace.get("registry_url")
    key = _key_from_url(url) if isinstance(url, str) else None
    detail = trace.get("verdict_detail")
    reasons = tuple(str(r) for r in detail.get("reasons", [])) if isinstance(detail, dict) else ()
    broken = isinstance(detail, dict) and detail.get("verdict") == Word.BROKEN
    return VmSide(
        where,
        key,
        url.rsplit("/instances/", 1)[0] if isinstance(url, str) else None,
        reasons if broken else (),
        detail if isinstance(detail, dict) else None,
        str(trace["error"]) if trace.get("error") else None,
        (reasons[0] if reasons else "no source answered") if broken and not trace.get("source") else None,
    )


def _key_from_url(url: str) -> str | None:
    _, found, rest = url.partition("/instances/")
    return unquote(rest.removesuffix("/settings")) if found else None
