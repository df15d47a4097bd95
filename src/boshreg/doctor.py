"""Checks over a deployment manifest or CPI properties, before anything is deployed.

Answers the questions that used to be answered by a crash or a hang: is there a usable registry
endpoint with credentials, can VMs reach it, does the registry accept those credentials, and will the
VMs depend on a config drive?
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from boshreg.bootstrap.endpoint import Endpoint, EndpointError, parse_endpoint, reachability_warnings
from boshreg.bootstrap.nova import METADATA_URL, PERSONALITY_PATH
from boshreg.bootstrap.verdict import (
    COST_PERSONALITY,
    NOTE_MULTI_NETWORK,
    Verdict,
    Word,
    nova_readings,
    predict,
)
from boshreg.cpi.delivery import Delivery
from boshreg.errors import BoshregError

PROBE_INSTANCE = "boshreg-doctor-probe"

# Where the CPI's properties sit, by kind of file.
_PROPERTY_PLACES = (
    (("cloud", "properties"), "cloud.properties"),  # micro_bosh.yml
    (("cloud_provider", "properties"), "cloud_provider.properties"),  # create-env manifests
    ((), ""),  # a CPI properties file: the keys at top level
)


class ManifestError(BoshregError):
    """A file that cannot be read as a manifest; the message names the file and what is wrong."""


class Status(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass
class Check:
    """One finding: what was checked, the outcome, and the fix when it is not ok."""

    name: str
    status: Status
    message: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return {"check": self.name, "status": self.status.value, "message": self.message, "fix": self.fix}


@dataclass
class Report:
    source: str
    checks: list[Check] = field(default_factory=list)
    delivery: Delivery | None = None
    verdict: Verdict | None = None

    @property
    def failed(self) -> bool:
        return any(check.status is Status.FAIL for check in self.checks)

    def to_text(self, paint: Callable[[str, Status], str] = lambda label, _status: label) -> str:
        """The report as an operator reads it: one line per check, each fix indented below it.

        ``paint`` dresses each status label (the command line colours it on a terminal)."""
        lines = [f"boshreg doctor: {self.source}"]
        for check in self.checks:
            label = check.status.value.upper() if check.status is Status.FAIL else check.status.value
            lines.append(f"  {paint(f'{label:<4}', check.status)} {check.name}: {check.message}")
            fix_lines = check.fix.splitlines()
            if fix_lines:
                lines.append(f"       fix: {fix_lines[0]}")
                lines += [f"            {line}" for line in fix_lines[1:]]
        failures = sum(check.status is Status.FAIL for check in self.checks)
        warnings = sum(check.status is Status.WARN for check in self.checks)
        lines.append(f"{failures} failed, {warnings} warning{'' if warnings == 1 else 's'}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "delivery": self.delivery.value if self.delivery else None,
            "verdict": self.verdict.to_json() if self.verdict else None,
            "checks": [check.to_json() for check in self.checks],
            "failed": self.failed,
        }


def load_manifest(path: Path) -> dict[str, Any]:
    """Read a YAML manifest; anything unreadable is a ManifestError."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ManifestError(f"{path} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ManifestError(f"{path} is not valid YAML{where}") from None
    if not isinstance(document, dict):
        raise ManifestError(f"{path} is not a YAML mapping (a manifest or CPI properties file)")
    return document


def cpi_properties(document: Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    """The CPI properties and where they were found (``cloud.properties``, ..., or top level)."""
    for path, name in _PROPERTY_PLACES:
        node: Any = document
        for key in path:
            node = node.get(key) if isinstance(node, Mapping) else None
        if isinstance(node, Mapping) and ("registry" in node or "openstack" in node):
            return node, name
    raise ManifestError(
        "found no registry or openstack properties at cloud.properties, cloud_provider.properties or the top level"
    )


def diagnose(
    document: Mapping[str, Any],
    source: str,
    *,
    online: bool = False,
    timeout: float = 3.0,
    resolve: bool = True,
    cacert: str | None = None,
) -> Report:
    """Run every check over a loaded manifest."""
    properties, where = cpi_properties(document)
    prefix = f"{where}." if where else ""
    report = Report(source=f"{source} ({where or 'top level'})")
    registry = properties.get("registry")
    endpoint = _check_endpoint(report, registry, prefix)
    if endpoint is not None:
        _check_reachability(report, endpoint, resolve)
    _check_delivery(report, document, properties, prefix)
    if endpoint is not None and isinstance(registry, Mapping):
        _check_verdict(report, endpoint, _text(registry.get("endpoint")) or "", properties, resolve)
    if online and endpoint is not None:
        _check_online(report, endpoint, timeout, cacert)
    return report


def _check_endpoint(report: Report, registry: Any, prefix: str) -> Endpoint | None:
    name = "registry endpoint"
    if registry is None:
        report.checks.append(
            Check(
                name,
                Status.WARN,
                f"no {prefix}registry block: fine for stemcells whose agent takes its settings from user data "
                "(registry-less, current BOSH); older stemcells need one",
                _registry_block(prefix, None, None),
            )
        )
        return None
    if not isinstance(registry, Mapping):
        report.checks.append(
            Check(name, Status.FAIL, f"{prefix}registry is not a mapping", _registry_block(prefix, None, None))
        )
        return None
    user, password = registry.get("user"), registry.get("password")
    try:
        endpoint = parse_endpoint(
            _text(registry.get("endpoint")), _text(user), _text(password), key=f"{prefix}registry.endpoint"
        )
    except EndpointError as exc:
        report.checks.append(
            Check(name, Status.FAIL, exc.problem, _registry_block(prefix, _text(user), registry.get("endpoint")))
        )
        return None
    report.checks.append(Check(name, Status.OK, f"{endpoint.redacted()} with credentials for {endpoint.user}"))
    return endpoint


def _check_reachability(report: Report, endpoint: Endpoint, resolve: bool) -> None:
    warnings = reachability_warnings(endpoint, resolve=resolve)
    if not warnings:
        report.checks.append(Check("reachable from VMs", Status.OK, f"{endpoint.host} is a routable address"))
        return
    for warning in warnings:
        status = Status.FAIL if warning.fatal else Status.WARN
        report.checks.append(Check("reachable from VMs", status, warning.problem, warning.fix))


def _check_delivery(report: Report, document: Mapping[str, Any], properties: Mapping[str, Any], prefix: str) -> None:
    openstack = properties.get("openstack")
    openstack = openstack if isinstance(openstack, Mapping) else {}
    config_drive = openstack.get("config_drive")
    legacy_cpi = isinstance(document.get("cloud"), Mapping) and document["cloud"].get("plugin") == "openstack"
    if config_drive:
        report.delivery = Delivery.CONFIG_DRIVE
        report.checks.append(
            Check(
                "delivery",
                Status.WARN,
                f"config drive attached: {prefix}openstack.config_drive is {config_drive!r}; the stemcell's agent "
                "reads the drive first, so every VM is fed by its drive",
                f"remove {prefix}openstack.config_drive when VMs can reach the metadata service "
                f"({METADATA_URL}); metadata delivery is the default",
            )
        )
    elif legacy_cpi:
        report.delivery = Delivery.LEGACY
        report.checks.append(
            Check(
                "delivery",
                Status.WARN,
                f"cloud.plugin openstack (bosh micro) uses the old CPI, which also injects the user data as "
                f"{PERSONALITY_PATH}: {COST_PERSONALITY}",
                "deploy with a current CPI (bosh create-env), or render the bootstrap with "
                "`boshreg userdata render --delivery metadata` and check requests with `boshreg inspect`",
            )
        )
    else:
        report.delivery = Delivery.METADATA
        report.checks.append(
            Check("delivery", Status.OK, "user data through the metadata service only, no config drive")
        )
    if openstack.get("use_dhcp") is False:
        report.checks.append(
            Check(
                "delivery",
                Status.WARN,
                f"{prefix}openstack.use_dhcp is false: if the VMs' subnets also have DHCP disabled, VMs cannot "
                "reach the metadata service at first boot, the one case that needs a config drive",
                "keep DHCP enabled on the subnets (use_dhcp only decides how the agent configures networking)",
            )
        )


def _check_verdict(report: Report, endpoint: Endpoint, raw: str, properties: Mapping[str, Any], resolve: bool) -> None:
    """The verdict ``inspect`` and ``agent resolve`` give a VM this CPI creates: one word, for one situation."""
    document = {"server": {"name": "vm-doctor"}, "registry": {"endpoint": raw if "@" in raw else endpoint.url()}}
    drive = report.delivery is not Delivery.METADATA
    readings = nova_readings(document, drive_attached=drive)
    openstack = properties.get("openstack")
    dhcp_off = isinstance(openstack, Mapping) and openstack.get("use_dhcp") is False
    verdict = predict(
        readings,
        drive_attached=drive,
        personality=report.delivery is Delivery.LEGACY,
        notes=[NOTE_MULTI_NETWORK] if drive and dhcp_off else [],
        resolve=resolve,
    )
    report.verdict = verdict
    if verdict.word is Word.BROKEN:
        status, fix = Status.FAIL, "fix what stops the agent (above), then run doctor again"
    elif verdict.word is Word.PINNED or verdict.costs:
        status, fix = Status.WARN, "metadata delivery (no config drive) leaves VMs free of the drive"
    else:
        status, fix = Status.OK, ""
    message = verdict.line() + "".join(f"; note: {note}" for note in verdict.notes)
    report.checks.append(Check("verdict", status, message, fix))


def _check_online(report: Report, endpoint: Endpoint, timeout: float, cacert: str | None) -> None:
    from boshreg.client import NotARegistry, RegistryClient, RegistryClientError  # not in `serve` (test_structure)

    name = "registry answers"
    try:
        with RegistryClient(endpoint, timeout=timeout, cacert=cacert) as client:
            client.get_settings(PROBE_INSTANCE)
    except NotARegistry as exc:
        report.checks.append(
            Check(
                name, Status.FAIL, str(exc), "point registry.endpoint at the host and port `boshreg serve` listens on"
            )
        )
        return
    except RegistryClientError as exc:
        if exc.status_code == 404:
            report.checks.append(Check(name, Status.OK, f"{endpoint.redacted()} accepts these credentials"))
        elif exc.status_code == 401:
            report.checks.append(
                Check(
                    name,
                    Status.FAIL,
                    str(exc),
                    "make registry.user/password match the registry's http.user/password",
                )
            )
        else:
            report.checks.append(
                Check(name, Status.FAIL, str(exc), "start the registry, or fix the endpoint's host and port")
            )
        return
    report.checks.append(Check(name, Status.OK, f"{endpoint.redacted()} accepts these credentials"))


def _registry_block(prefix: str, user: str | None, endpoint: Any) -> str:
    host = "<registry-host>"
    if isinstance(endpoint, str):
        with contextlib.suppress(EndpointError):
            host = parse_endpoint(endpoint, require_credentials=False).netloc_host
    user = user or "admin"
    place = f"under {prefix.rstrip('.')}" if prefix else "at the top level"
    return (
        f"write this block {place}:\n"
        f"registry:\n"
        f"  endpoint: http://{user}:<password>@{host}:25777\n"
        f"  user: {user}\n"
        f"  password: <password>"
    )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
