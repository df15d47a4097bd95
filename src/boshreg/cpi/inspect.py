"""Inspection of a captured nova create-server request: which channels carry the user data, how the
copies differ, and whether the VM will depend on its config drive.

Operators find these requests in CPI debug logs. The question they need answered is the one nobody
asked when the VM was created: what breaks if the provider turns config drives off?
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from boshreg import userdata
from boshreg.cpi.costs import DRIVE_DEPENDENCY, PERSONALITY_COST, PINNED, PORTABLE
from boshreg.cpi.delivery import PERSONALITY_PATH
from boshreg.endpoint import redact_url

UNBOOTABLE = "unbootable"
_SHOWN_VALUE_CHARS = 80


class RequestError(ValueError):
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
    differences: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    verdict: str = PORTABLE

    @property
    def pinned(self) -> bool:
        return self.verdict != PORTABLE

    @property
    def verdict_line(self) -> str:
        if self.verdict == PORTABLE:
            return PORTABLE
        if self.verdict == UNBOOTABLE:
            return f"{UNBOOTABLE}: {'; '.join(self.reasons)}"
        return f"{PINNED}: depends on config drive (because {'; and '.join(self.reasons)})"

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
        lines.append(f"verdict: {self.verdict_line}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "channels": self.channels,
            "copies": [copy.to_json() for copy in self.copies],
            "other_injected_files": self.other_files,
            "differences": self.differences,
            "verdict": self.verdict,
            "verdict_line": self.verdict_line,
            "reasons": self.reasons,
        }


def inspect_request(request: Any) -> Inspection:
    """Inspect a create-server body (``{"server": {...}}``, or the server object itself)."""
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
        result.differences = _differences(metadata_copy, personality_copy)
    _judge(result, metadata_copy, personality_copy, config_drive)
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
        if entry["path"] != PERSONALITY_PATH:
            result.other_files.append(f"{entry['path']} ({len(raw)} bytes)")
            continue
        document = _json_document(f"{where}.contents", raw)
        found = Copy(f"injected file {PERSONALITY_PATH}", len(raw), document, userdata.validate(document))
    if found is not None:
        result.channels.append(f"injected file {PERSONALITY_PATH} (personality)")
    return found


def _judge(result: Inspection, metadata: Copy | None, personality: Copy | None, config_drive: bool) -> None:
    if metadata is None and personality is None:
        result.verdict = UNBOOTABLE
        result.reasons.append("the request carries no user data: the agent cannot learn its name or registry")
        return
    if personality is not None:
        result.verdict = PINNED
        result.reasons.append(f"the user data is injected as {PERSONALITY_PATH}: {PERSONALITY_COST}")
        if metadata is None:
            result.reasons.append(
                "there is no user_data for the metadata service: without the drive the agent finds nothing"
            )
        else:
            only_on_drive = [d for d in result.differences if d.startswith("only the personality copy")]
            if only_on_drive:
                result.reasons.append(f"{'; '.join(only_on_drive)}: lost without the drive")
    if result.other_files:
        result.verdict = PINNED
        result.reasons.append(f"other injected files ({', '.join(result.other_files)}) exist only on the drive")
    if config_drive:
        result.verdict = PINNED
        result.reasons.append(f"config_drive is true: {DRIVE_DEPENDENCY}")


def _differences(metadata: Copy, injected: Copy) -> list[str]:
    left, right = _flatten(metadata.document), _flatten(injected.document)
    found = [f"only the metadata copy has {key}" for key in sorted(left.keys() - right.keys())]
    found += [f"only the personality copy has {key}" for key in sorted(right.keys() - left.keys())]
    for key in sorted(left.keys() & right.keys()):
        if left[key] != right[key]:
            found.append(f"{key} differs: metadata {_show(left[key])}, personality {_show(right[key])}")
    return found


def _flatten(document: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in document.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def _show(value: Any) -> str:
    text = redact_url(value) if isinstance(value, str) else repr(value)
    return text if len(text) <= _SHOWN_VALUE_CHARS else text[:_SHOWN_VALUE_CHARS] + "..."


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
