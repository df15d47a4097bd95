"""Do I need a registry at all? From a stemcell's ``stemcell.MF``, and optionally the director and the CPI.

Current BOSH is registry-less: the director dropped its registry in v272.0.0 (Feb 2022), bosh-cli 7.0.0
dropped it from ``create-env``, bosh-agent 2.478.0 dropped its client. A stemcell whose ``stemcell.MF``
has no ``api_version``, or ``api_version: 1`` (all Trusty, Xenial before 170.6, old Windows, custom
stemcells), still has an agent that reads its settings from a registry; on a current director only the
Ruby OpenStack CPI pointed at an external ``registry.endpoint`` can serve it.
"""

from __future__ import annotations

import io
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from boshreg.errors import BoshregError

REGISTRY_LESS_DIRECTOR = (272, 0, 0)  # the director without a registry of its own
CPIS = ("openstack-ruby", "openstack-go", "aws", "other")
MANIFEST = "stemcell.MF"
_MANIFEST_MAX = 1024 * 1024


class ModeError(BoshregError):
    """A stemcell or version that cannot be read; the message names it."""


@dataclass
class ModeAnswer:
    """Whether VMs of this stemcell need a registry, who writes their settings where, and what to do."""

    stemcell: str
    api_version: int
    registry_needed: bool
    reasons: list[str] = field(default_factory=list)
    advice: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "stemcell": self.stemcell,
            "api_version": self.api_version,
            "registry_needed": self.registry_needed,
            "reasons": self.reasons,
            "advice": self.advice,
        }

    def to_text(self) -> str:
        word = "needs a registry" if self.registry_needed else "needs no registry"
        lines = [f"{self.stemcell}: {word}"]
        lines += [f"  because {reason}" for reason in self.reasons]
        lines.append(f"do: {self.advice}")
        return "\n".join(lines)


def read_manifest(path: Path) -> dict[str, Any]:
    """``stemcell.MF`` itself, or the one inside a stemcell tarball (.tgz)."""
    try:
        if tarfile.is_tarfile(path):
            return _parse(_from_tarball(path), f"{path}:{MANIFEST}")
        return _parse(path.read_bytes()[:_MANIFEST_MAX], str(path))
    except OSError as exc:
        raise ModeError(f"cannot read {path}: {exc.strerror}", "give a stemcell.MF or a stemcell tarball") from None


def _from_tarball(path: Path) -> bytes:
    try:
        with tarfile.open(path) as tarball:
            for member in tarball:
                if member.isfile() and member.name.lstrip("./") == MANIFEST:
                    extracted = tarball.extractfile(member)
                    if extracted is not None:
                        return extracted.read(_MANIFEST_MAX)
    except tarfile.TarError as exc:
        raise ModeError(
            f"{path} is not a readable tarball ({exc})", "give a stemcell tarball or its stemcell.MF"
        ) from None
    raise ModeError(f"{path} has no {MANIFEST}", "give a stemcell tarball (bosh stemcells ship it at the top level)")


def _parse(raw: bytes, where: str) -> dict[str, Any]:
    try:
        document = yaml.safe_load(io.BytesIO(raw))
    except yaml.YAMLError:
        raise ModeError(f"{where} is not YAML", "give a stemcell's stemcell.MF") from None
    if not isinstance(document, dict) or "name" not in document:
        raise ModeError(f"{where} is not a stemcell manifest (no name)", "give a stemcell's stemcell.MF")
    return document


def parse_version(text: str, what: str) -> tuple[int, ...]:
    """``272.0.0``, ``v272``, ``272.1`` into a comparable tuple."""
    match = re.fullmatch(r"v?(\d+)(?:\.(\d+))?(?:\.(\d+))?", text.strip())
    if match is None:
        raise ModeError(f"{what} {text!r} is not a version", f"write it as the release shows it, e.g. {what} 272.0.0")
    return tuple(int(part or 0) for part in match.groups())


def registry_mode(manifest: dict[str, Any], *, director: str | None = None, cpi: str | None = None) -> ModeAnswer:
    """The answer for one stemcell, with what is known of the director and the CPI."""
    name = f"{manifest.get('name')} {manifest.get('version', '')}".strip()
    raw = manifest.get("api_version")
    try:
        api_version = int(raw) if raw is not None else 1
    except (TypeError, ValueError):
        raise ModeError(f"stemcell.MF api_version {raw!r} is not a number", "check the stemcell") from None
    if cpi is not None and cpi not in CPIS:
        raise ModeError(f"--cpi {cpi!r} is not known", f"use one of {', '.join(CPIS)}")
    director_version = parse_version(director, "--director") if director else None
    current = director_version is not None and director_version >= REGISTRY_LESS_DIRECTOR
    if api_version >= 2:
        answer = ModeAnswer(
            name,
            api_version,
            False,
            [f"stemcell api_version is {api_version}: its agent takes its settings from the user data"],
        )
        answer.advice = "nothing: the director gives VMs their settings in the user data"
        if director_version is not None and not current:
            answer.reasons.append(f"the director {director} still has a registry of its own, but need not use it")
        answer.reasons.append(
            "only settings too large for user data (65,535 base64 characters on OpenStack) need registry mode"
        )
        return answer
    missing = "missing: counts as 1" if raw is None else "1"
    answer = ModeAnswer(
        name, api_version, True, [f"stemcell api_version {missing}: its agent reads its settings from a registry"]
    )
    if current and cpi == "openstack-ruby":
        answer.reasons.append(f"director {director} has no registry; the Ruby OpenStack CPI can use an external one")
        answer.advice = (
            "set the CPI's registry.endpoint (cloud_provider / cpi properties) to `boshreg serve` on the VMs' network"
        )
    elif current and cpi is not None:
        answer.reasons.append(f"director {director} has no registry, and the {cpi} CPI cannot use an external one")
        answer.advice = "use a stemcell with api_version 2 or later (Xenial 170.6+, Jammy), or the Ruby OpenStack CPI"
    elif current:
        answer.reasons.append(
            f"director {director} has no registry; only the Ruby OpenStack CPI with an external registry.endpoint "
            "serves it"
        )
        answer.advice = (
            "with the Ruby OpenStack CPI: point its registry.endpoint at `boshreg serve`; else use a v2 stemcell"
        )
    elif director_version is not None:
        answer.reasons.append(f"director {director} still runs a registry of its own")
        answer.advice = "the director's registry serves it; `boshreg serve` is a drop-in for it (same API, table, keys)"
    else:
        answer.advice = (
            "on a director before 272.0.0 its own registry serves it; on 272.0.0 and later, the Ruby OpenStack "
            "CPI with registry.endpoint pointed at `boshreg serve` (give --director and --cpi for a precise answer)"
        )
    return answer
