"""What the registry accepts as settings and as an instance id.

The original stored any body under any id; an agent then failed at boot, far from the cause. We refuse
at PUT time anything bosh-agent (Go's encoding/json) could not decode into its settings object.
"""

from __future__ import annotations

import json
import math

from boshreg.bootstrap.registry_key import registry_key_problem


class PayloadError(ValueError):
    """A request whose id or body cannot be stored; the message says what is wrong."""


def check_instance_id(instance_id: str) -> str:
    """Return the id unchanged, or raise naming the rule it breaks."""
    problem = registry_key_problem(instance_id)
    if problem is None:
        return instance_id
    raise PayloadError(problem)


def _reject_constant(name: str) -> None:
    raise PayloadError(f"settings are not valid JSON: {name} is not a JSON number")


def _finite_float(text: str) -> float:
    """A number the agent (Go, float64) can decode: 1e400 is refused here, not at boot."""
    value = float(text)
    if math.isinf(value):
        raise PayloadError(f"settings hold the number {text[:40]}, outside the range the agent can decode (float64)")
    return value


def _finite_int(text: str) -> int:
    """An integer within float64's range; checked before Python parses it (no 4,300-digit limit error)."""
    _finite_float(text)
    return int(text)


def check_settings(body: bytes) -> str:
    """The body as text when it is a JSON object an agent can decode; raise PayloadError otherwise."""
    if not body.strip():
        raise PayloadError("body is empty: send the agent settings as a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"settings are not UTF-8 (invalid byte at offset {exc.start})") from None
    if text.startswith("\ufeff"):
        raise PayloadError("settings start with a byte order mark, which the agent cannot parse; remove it")
    try:
        document = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_finite_int)
    except json.JSONDecodeError as exc:
        raise PayloadError(f"settings are not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise PayloadError("settings are nested too deeply to be agent settings") from None
    if not isinstance(document, dict):
        raise PayloadError(
            f"settings must be a JSON object (got {_json_kind(document)}); the agent reads agent_id, "
            "networks, disks... from an object"
        )
    return text


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"
