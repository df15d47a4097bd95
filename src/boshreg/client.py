"""A client of the registry API, for operators, scripts and the CPI side.

Every failure is a ``RegistryClientError`` whose message names the (redacted) URL, what happened and
what to change; the password never appears in it.
"""

from __future__ import annotations

import json
import ssl
from typing import Any
from urllib.parse import quote

import httpx

from boshreg.bootstrap.endpoint import Endpoint, redact_url
from boshreg.errors import BoshregError

# The "status" values of the registry's JSON answers (the original's and ours): anything else answering is
# not a BOSH registry (a static file server, a proxy's error page, another service on that port).
REGISTRY_STATUSES = frozenset({"ok", "not_found", "access_denied", "error"})
_SHOWN_BYTES = 60


class RegistryClientError(BoshregError):
    """A registry call that did not succeed; the message is one line for the operator."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class NotARegistry(RegistryClientError):
    """Something answered at the endpoint, but not with the registry's JSON: the message says what it was."""


class RegistryClient:
    """GET, PUT and DELETE of one instance's settings at one registry endpoint."""

    def __init__(self, endpoint: Endpoint, *, timeout: float = 10.0, cacert: str | None = None) -> None:
        self.endpoint = endpoint
        auth = (endpoint.user or "", endpoint.password or "") if endpoint.has_credentials else None
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=cacert) if cacert else True
        self._http = httpx.Client(auth=auth, timeout=timeout, trust_env=False, verify=verify)

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def get_settings(self, instance_id: str) -> str:
        """The settings JSON text stored for ``instance_id``, exactly as stored."""
        body = self._call("GET", instance_id)
        settings = body.get("settings")
        if not isinstance(settings, str):
            where = self.endpoint.settings_url(instance_id, redacted=True)
            raise RegistryClientError(f"unexpected answer from {where}: no 'settings' string in the body")
        return settings

    def put_settings(self, instance_id: str, settings: str | bytes) -> None:
        """Create or replace the settings of ``instance_id``."""
        content = settings.encode("utf-8") if isinstance(settings, str) else settings
        self._call("PUT", instance_id, content=content)

    def instance_credentials(self, instance_id: str) -> tuple[str, str]:
        """The read credential the registry issues for ``instance_id`` (admin credentials needed)."""
        body = self._call("POST", instance_id, path="credentials")
        user, password = body.get("user"), body.get("password")
        if not isinstance(user, str) or not isinstance(password, str):
            where = self.endpoint.settings_url(instance_id, redacted=True)
            raise RegistryClientError(f"unexpected answer from {where}: no user and password in the body")
        return user, password

    def revoke_credentials(self, instance_id: str) -> int:
        """End the VM's current read credential; the new generation (admin credentials needed)."""
        body = self._call("DELETE", instance_id, path="credentials")
        generation = body.get("generation")
        if not isinstance(generation, int):
            where = self.endpoint.settings_url(instance_id, redacted=True)
            raise RegistryClientError(f"unexpected answer from {where}: no generation in the body")
        return generation

    def events(self, instance_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The instance's audit trail, newest first (admin credentials needed)."""
        return self.stored_and_events(instance_id, limit)[1]

    def stored_and_events(self, instance_id: str, limit: int = 100) -> tuple[bool | None, list[dict[str, Any]]]:
        """Whether settings are stored (None from a registry that does not say), and the audit trail."""
        body = self._call("GET", instance_id, path=f"events?limit={limit}")
        events = body.get("events")
        if not isinstance(events, list):
            where = self.endpoint.settings_url(instance_id, redacted=True)
            raise RegistryClientError(f"unexpected answer from {where}: no events list in the body")
        stored = body.get("stored")
        return (stored if isinstance(stored, bool) else None), [event for event in events if isinstance(event, dict)]

    def fleet(self, agent_wait: float) -> list[dict[str, Any]]:
        """Every stored instance with its state (admin credentials needed); see ``registry.fleet``."""
        body = self._request("GET", f"/fleet?agent_wait={agent_wait:g}")
        instances = body.get("instances")
        if not isinstance(instances, list):
            raise RegistryClientError(f"unexpected answer from {self.endpoint.redacted()}/fleet: no instances list")
        return [entry for entry in instances if isinstance(entry, dict)]

    def delete_settings(self, instance_id: str) -> None:
        """Remove the settings of ``instance_id`` (no error when there were none)."""
        self._call("DELETE", instance_id)

    def _call(
        self, method: str, instance_id: str, content: bytes | None = None, path: str = "settings"
    ) -> dict[str, Any]:
        instance_path = f"/instances/{quote(instance_id, safe='')}/{path}"
        return self._request(method, instance_path, content)

    def _request(self, method: str, path: str, content: bytes | None = None) -> dict[str, Any]:
        url = self.endpoint.base_url + path
        where = self.endpoint.redacted() + path
        headers = {"Content-Type": "application/json"} if content is not None else None
        try:
            response = self._http.request(method, url, content=content, headers=headers)
        except httpx.TimeoutException:
            raise RegistryClientError(
                f"{method} {where}: no answer within {self._http.timeout.read} s; "
                "is the registry up and reachable from here?"
            ) from None
        except httpx.TransportError as exc:
            raise RegistryClientError(
                f"{method} {where}: cannot connect ({_reason(exc)}); is `boshreg serve` running there?"
            ) from None
        body = _json_body(response)
        if body.get("status") not in REGISTRY_STATUSES:
            raise NotARegistry(f"{method} {where}: {_what_answered(response)}", response.status_code)
        if response.status_code == 200 and body.get("status") == "ok":
            return body
        # The registry's own message says what to do; the hints are for servers that give none.
        detail = body.get("error") or (body.get("status") or response.reason_phrase) + _HINTS.get(
            response.status_code, ""
        )
        raise RegistryClientError(f"{method} {where}: {response.status_code} {detail}", response.status_code)


_HINTS = {
    401: "; check the user and password in the endpoint",
    404: "; nothing is stored under that id (was it PUT by the CPI?)",
    503: "; the registry's database is unavailable, try again shortly",
}


def _json_body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return body if isinstance(body, dict) else {}


def _what_answered(response: httpx.Response) -> str:
    """Status, content type, server and first bytes of an answer that is not the registry's."""
    first = response.content[:_SHOWN_BYTES]
    more = "..." if len(response.content) > _SHOWN_BYTES else ""
    server = response.headers.get("server")
    return (
        f"{response.status_code} {response.reason_phrase} from something that is not a BOSH registry "
        f"(Content-Type {response.headers.get('content-type') or 'none'}"
        f"{f', Server {server}' if server else ''}; body {first!r}{more}): the endpoint's host or port points "
        "at another service, or a proxy answers in the registry's place"
    )


def _reason(exc: httpx.TransportError) -> str:
    text = str(exc) or type(exc).__name__
    if "refused" in text.lower():
        return "connection refused"
    return redact_url(text.splitlines()[0])
