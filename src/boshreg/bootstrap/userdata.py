"""The user data document: what the CPI gives nova and bosh-agent reads at boot.

Two shapes exist. Registry mode (older stemcells): ``server.name`` and ``registry.endpoint`` tell the
agent where to fetch its settings. Registry-less mode (current BOSH): the agent settings' keys sit at
the top level, and a non-empty ``agent_id`` means "these are the settings". Standard library only: the
agent side decodes and validates with the same code inside VMs.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from boshreg.bootstrap import nova
from boshreg.bootstrap.endpoint import Endpoint, EndpointError, parse_endpoint
from boshreg.bootstrap.net import is_ip_address
from boshreg.bootstrap.registry_key import registry_key_problem
from boshreg.errors import BoshregError

# Keys the agent reads from user data itself; the rest of a registry-less document is agent settings.
BOOTSTRAP_KEYS = ("server", "registry", "dns", "openssh")


class UserDataError(BoshregError, ValueError):
    """User data that cannot be built, decoded or used; the message names the key or field."""


def build_user_data(
    name: str,
    endpoint: Endpoint | None = None,
    networks: Mapping[str, Any] | None = None,
    public_key: str | None = None,
    settings: Mapping[str, Any] | None = None,
    *,
    anonymous: bool = False,
) -> dict[str, Any]:
    """The document the CPI sends: registry mode with ``endpoint``, registry-less with ``settings``.

    ``anonymous``: an endpoint without credentials is meant (the registry checks the caller's address
    against the cloud instead, as the original did for unauthenticated reads).
    """
    if not name:
        raise UserDataError("server.name is empty: the agent keys the registry by it")
    if endpoint is not None and (problem := registry_key_problem(name)) is not None:
        raise UserDataError(f"server.name: the registry refuses it as a key ({problem})")
    if endpoint is None and settings is None:
        raise UserDataError("neither a registry endpoint nor agent settings: the agent would find nothing")
    document: dict[str, Any] = {}
    if settings is not None:
        overlap = sorted(set(settings) & set(BOOTSTRAP_KEYS))
        if overlap:
            raise UserDataError(
                f"agent settings may not carry {', '.join(overlap)}: those keys belong to the user data itself"
            )
        if not settings.get("agent_id"):
            raise UserDataError(
                "agent settings have no agent_id: without it the agent ignores them and looks for a registry"
            )
        document.update(settings)
    document["server"] = {"name": name}
    if endpoint is not None:
        if not endpoint.has_credentials and not anonymous:
            raise UserDataError(
                f"registry endpoint {endpoint} has no credentials: the agent would be refused, unless the "
                "registry checks callers' addresses against the cloud (cloud.plugin)"
            )
        document["registry"] = {"endpoint": endpoint.url()}
    nameservers = first_dns(networks or {})
    if nameservers:
        document["dns"] = {"nameserver": nameservers}
    if public_key:
        document["openssh"] = {"public_key": public_key.strip()}
    return document


def first_dns(networks: Mapping[str, Any]) -> list[str]:
    """The ``dns`` list of the first network that has one, as the OpenStack CPI picks it."""
    for spec in networks.values():
        if isinstance(spec, Mapping) and spec.get("dns"):
            return [str(server) for server in spec["dns"]]
    return []


def encode(document: Mapping[str, Any], cloud: str = "openstack") -> bytes:
    """The document as compact JSON bytes, checked against the cloud's size limit."""
    raw = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    check_size(raw, cloud, registry_less=is_registry_less(document))
    return raw


def encode_base64(document: Mapping[str, Any]) -> str:
    """The document as nova's ``user_data`` field wants it."""
    return base64.b64encode(encode(document)).decode("ascii")


def check_size(raw: bytes, cloud: str = "openstack", *, registry_less: bool = False) -> None:
    """Raise before any API call when the cloud would refuse the user data for its size."""
    limit, said = nova.max_user_data(cloud)
    if len(raw) <= limit:
        return
    encoded = (len(raw) + 2) // 3 * 4
    way_out = (
        "the settings do not fit in user data: use registry mode (--endpoint instead of --settings; the CPI "
        "PUTs the settings to the registry and the user data only names it)"
        if registry_less
        else "shorten the user data (it should hold only server.name, registry.endpoint, dns and openssh)"
    )
    raise UserDataError(f"user data is {len(raw):,} bytes ({encoded:,} once base64-encoded); {said}; {way_out}")


def decode(raw: bytes | str, field: str = "user data") -> dict[str, Any]:
    """Parse user data bytes (JSON object); ``field`` names where they came from in errors."""
    try:
        text = raw.decode("utf-8", "strict") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise UserDataError(f"{field} is not UTF-8 text") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserDataError(f"{field} is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise UserDataError(f"{field} is nested too deeply") from None
    if not isinstance(document, dict):
        raise UserDataError(f"{field} is JSON but not an object")
    return document


def is_registry_less(document: Mapping[str, Any]) -> bool:
    """True when the document carries the settings themselves (non-empty ``agent_id``)."""
    return bool(document.get("agent_id"))


def validate(document: Mapping[str, Any]) -> list[str]:
    """Every problem that would stop an agent, each naming its key; empty when usable."""
    problems: list[str] = []
    server = document.get("server")
    if not isinstance(server, Mapping) or not isinstance(server.get("name"), str) or not server["name"]:
        problems.append("server.name is missing or empty: the agent keys the registry by it")
    if not is_registry_less(document):
        registry = document.get("registry")
        raw_endpoint = registry.get("endpoint") if isinstance(registry, Mapping) else None
        if not isinstance(raw_endpoint, str):
            problems.append("registry.endpoint is missing and there is no agent_id: the agent finds no settings")
        else:
            try:  # no credentials is a risk, not a stop: a registry with the address check serves it
                parse_endpoint(raw_endpoint, require_credentials=False)
            except EndpointError as exc:
                problems.append(str(exc))
    dns = document.get("dns")
    if dns is not None:
        servers = dns.get("nameserver") if isinstance(dns, Mapping) else None
        if not isinstance(servers, list):
            problems.append("dns.nameserver must be a list of IP addresses")
        else:
            problems += [f"dns.nameserver: {s!r} is not an IP address" for s in servers if not is_ip_address(s)]
    openssh = document.get("openssh")
    if openssh is not None and not (isinstance(openssh, Mapping) and isinstance(openssh.get("public_key"), str)):
        problems.append("openssh.public_key must be a string")
    return problems
