"""Inspection of a captured nova create-server request: which channels carry the user data, how the
copies differ, and the verdict the agent's own walk would reach.

Operators find these requests in CPI debug logs. The question they need answered is the one nobody
asked when the VM was created: what breaks if the provider turns config drives off? Nova puts the
request's ``user_data`` on the metadata service and, when a drive is attached, on the drive too
(``ec2/latest/user-data``); injected files go to the drive only. ``bootstrap.verdict.predict`` walks
those in the stemcell's order, as ``agent resolve`` walks them live.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from boshreg.bootstrap import nova, userdata
from boshreg.bootstrap.endpoint import redact_url
from boshreg.bootstrap.verdict import (
    STEMCELL_ORDER,
    Verdict,
    Word,
    flat_differences,
    injected_losses,
    nova_readings,
    predict,
)
from boshreg.errors import BoshregError


class RequestError(BoshregError):
    """A request that cannot be inspected; the message names the field."""


@dataclass
class Copy:
    """One copy of the user data, as one channel delivers it."""

    channel: str
    size: int
    document: dict[str, Any]
    problems: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "bytes": self.size,
            "user_data": _redacted(self.document),
            "problems": self.problems,
        }


@dataclass
class Inspection:
    """What a create-server request delivers, and the verdict."""

    channels: list[str] = field(default_factory=list)
    copies: list[Copy] = field(default_factory=list)
    other_files: list[str] = field(default_factory=list)
    injected: list[tuple[str, bytes]] = field(default_factory=list, repr=False)
    differences: list[str] = field(default_factory=list)
    verdict: Verdict = field(default_factory=lambda: Verdict(Word.BROKEN, reasons=("not inspected",)))

    @property
    def word(self) -> Word:
        return self.verdict.word

    def to_text(self) -> str:
        """The report as an operator reads it; endpoints redacted."""
        lines = [f"channels: {', '.join(self.channels) or 'none'}"]
        if self.copies:
            lines.append("copies:")
        for copy in self.copies:
            keys = ", ".join(sorted(copy.document)) or "no keys"
            lines.append(f"  {copy.channel}: {copy.size} bytes, keys {keys}")
            lines += [f"    problem: {problem}" for problem in copy.problems]
        if self.other_files:
            lines.append(f"other injected files: {', '.join(self.other_files)}")
        if self.differences:
            lines.append("differences:")
            lines += [f"  {difference}" for difference in self.differences]
        lines += [f"warning: {warning}" for warning in self.verdict.warnings]
        lines.append(self.verdict.to_text())
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "channels": self.channels,
            "copies": [copy.to_json() for copy in self.copies],
            "other_injected_files": self.other_files,
            "differences": self.differences,
            **self.verdict.to_json(),
        }


def inspect_request(request: Any, *, order: Sequence[str] = STEMCELL_ORDER) -> Inspection:
    """Inspect a create-server body (``{"server": {...}}``, or the server object itself).

    ``order``: the kinds of the stemcell's agent.json Sources (default: the current OpenStack stemcell's).
    """
    if not isinstance(request, Mapping):
        raise RequestError('the request is not a JSON object; expected {"server": {...}}')
    server = request.get("server", request)
    if not isinstance(server, Mapping):
        raise RequestError("server is not a JSON object")
    result = Inspection()
    metadata_copy = _metadata_copy(server)
    if metadata_copy is not None:
        result.channels.append("metadata service (user_data)")
        result.copies.append(metadata_copy)
    personality_copy = _personality(server, result)
    if personality_copy is not None:
        result.copies.append(personality_copy)
    config_drive = _truthy(server.get("config_drive"))
    if config_drive or personality_copy is not None or result.other_files:
        result.channels.append("config drive" + ("" if config_drive else " (implied by injected files)"))
    if metadata_copy is not None and personality_copy is not None:
        result.differences = flat_differences(
            metadata_copy.document, personality_copy.document, "metadata", "personality"
        )
    result.verdict = _judge(result, metadata_copy, personality_copy, config_drive, order)
    return result


def _metadata_copy(server: Mapping[str, Any]) -> Copy | None:
    value = server.get("user_data")
    if value in (None, ""):
        return None
    raw = _base64("server.user_data", value)
    document = _json_document("server.user_data", raw)
    return Copy("metadata service (user_data)", len(raw), document, userdata.validate(document))


def _personality(server: Mapping[str, Any], result: Inspection) -> Copy | None:
    files = server.get("personality")
    if files in (None, []):
        return None
    if not isinstance(files, list):
        raise RequestError("server.personality is not a list of {path, contents}")
    found: Copy | None = None
    for index, entry in enumerate(files):
        where = f"server.personality[{index}]"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("path"), str):
            raise RequestError(f"{where} has no path")
        raw = _base64(f"{where}.contents", entry.get("contents"))
        result.injected.append((entry["path"], raw))
        if entry["path"] != nova.PERSONALITY_PATH:
            result.other_files.append(f"{entry['path']} ({len(raw)} bytes)")
            continue
        document = _json_document(f"{where}.contents", raw)
        found = Copy(f"injected file {nova.PERSONALITY_PATH}", len(raw), document, userdata.validate(document))
    if found is not None:
        result.channels.append(f"injected file {nova.PERSONALITY_PATH} (personality)")
    return found


def _judge(
    result: Inspection, metadata: Copy | None, personality: Copy | None, config_drive: bool, order: Sequence[str]
) -> Verdict:
    """What the agent would read where, as Nova lays it out, judged by the one verdict."""
    drive_attached = config_drive or personality is not None or bool(result.other_files)
    readings = nova_readings(
        metadata.document if metadata is not None else None,
        drive_attached=drive_attached,
        missing="the request has no user_data: the metadata service answers 404 for it",
    )
    injected = dict(result.injected)
    drive_only = injected_losses(injected, metadata.document if metadata is not None else None)
    return predict(
        readings,
        order=order,
        drive_attached=drive_attached,
        drive_only=drive_only,
        personality=personality is not None or bool(result.other_files),
    )


def _redacted(document: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: _redacted(v) if isinstance(v, Mapping) else redact_url(v) if isinstance(v, str) else v
        for k, v in document.items()
    }


def _base64(field: str, value: Any) -> bytes:
    if not isinstance(value, str):
        raise RequestError(f"{field} is not a base64 string")
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{field} is not valid base64") from None


def _json_document(field: str, raw: bytes) -> dict[str, Any]:
    try:
        return userdata.decode(raw, f"{field} (decoded)")
    except userdata.UserDataError as exc:
        raise RequestError(str(exc)) from None


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)
