"""The agent's registry GET, as bosh-agent sends it: basic auth from the endpoint, settings decoded twice.

Each failure says whether trying again can help (a registry that is down or not yet written) or not
(wrong credentials, an address check that refuses this VM, an answer that is not settings).
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from boshreg.agent._http import build_opener
from boshreg.bootstrap.endpoint import Endpoint


class RegistryFetchError(Exception):
    """One failed GET: the cause as seen, the likely fix, and whether a retry may succeed."""

    def __init__(self, cause: str, fix: str, *, retryable: bool) -> None:
        super().__init__(cause)
        self.cause = cause
        self.fix = fix
        self.retryable = retryable


def fetch_settings(
    endpoint: Endpoint,
    key: str,
    nameservers: Sequence[str],
    *,
    timeout: float,
    cacert: str | None = None,
    source_address: str | None = None,
) -> dict[str, Any]:
    """GET ``<endpoint>/instances/<key>/settings`` and return the decoded settings object."""
    url = endpoint.settings_url(key)
    # The scheme is http or https: parse_endpoint accepts nothing else.
    request = urllib.request.Request(url, headers=request_headers(endpoint))  # noqa: S310
    if nameservers and endpoint.scheme == "http" and not _is_ip(endpoint.host):
        address = _resolve_with(endpoint.host, nameservers, timeout)
        request = _to_address(request, address, endpoint)
    try:
        with build_opener(source_address=source_address, cacert=cacert).open(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        raise http_failure(exc.code, exc.read(), key) from None
    except urllib.error.URLError as exc:
        raise _connection_failure(exc.reason) from None
    except TimeoutError:
        raise _connection_failure("timed out") from None
    except OSError as exc:
        raise _connection_failure(exc) from None
    return decode_answer(body)


def request_headers(endpoint: Endpoint) -> dict[str, str]:
    """The headers of the agent's GET: JSON asked for, basic auth from the endpoint's credentials if it has them."""
    headers = {"Accept": "application/json"}
    if endpoint.has_credentials:
        token = base64.b64encode(f"{endpoint.user}:{endpoint.password}".encode()).decode("ascii")
        headers["Authorization"] = f"Basic {token}"
    return headers


def decode_answer(body: bytes) -> dict[str, Any]:
    """The settings object from a registry's 200 body, ``{"settings": "<JSON text>"}``, decoded twice."""
    not_settings = "the endpoint is not a BOSH registry, or a proxy answers in its place"
    try:
        wrapper = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise RegistryFetchError("200 but the body is not JSON", not_settings, retryable=False) from None
    settings_text = wrapper.get("settings") if isinstance(wrapper, dict) else None
    if not isinstance(settings_text, str):
        raise RegistryFetchError('200 but no "settings" string in the body', not_settings, retryable=False)
    try:
        settings = json.loads(settings_text)
    except ValueError:
        raise RegistryFetchError(
            "200 but the stored settings are not JSON", "PUT valid settings for this VM again", retryable=False
        ) from None
    if not isinstance(settings, dict):
        raise RegistryFetchError(
            "200 but the stored settings are not a JSON object",
            "PUT valid settings for this VM again",
            retryable=False,
        )
    return settings


def http_failure(status: int, body: bytes, key: str) -> RegistryFetchError:
    """A registry's answer other than 200 as the agent reads it: the cause, the fix, and whether to retry."""
    message = _error_message(body)
    said = f"{status} {message}" if message else str(status)
    if status == 401:
        return RegistryFetchError(
            f"{said} (credentials refused)",
            "the user:password in the user data's registry.endpoint does not match the registry's http.user/password",
            retryable=False,
        )
    if status == 403:
        return RegistryFetchError(
            f"{said} (forbidden)", "these credentials may not read this VM's settings", retryable=False
        )
    if status == 404:
        return RegistryFetchError(
            f"{said} (no settings under key {key!r})",
            "the CPI stores settings under the server name on OpenStack and the instance id "
            "on AWS (--key instance-id): check which one it used",
            retryable=True,
        )
    if "IP mismatch" in message:
        return RegistryFetchError(
            f"{said} (IP mismatch)",
            "the registry's IaaS address check does not know this "
            "VM's address: give the endpoint credentials, or fix the cloud config",
            retryable=False,
        )
    return RegistryFetchError(said, "the registry is failing; see its log", retryable=status >= 500)


def _connection_failure(reason: object) -> RegistryFetchError:
    text = str(reason)
    if isinstance(reason, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text:
        return RegistryFetchError(
            f"TLS: {getattr(reason, 'verify_message', None) or text}",
            "the registry's certificate is not trusted: give its CA with --cacert",
            retryable=False,
        )
    if "Name or service not known" in text or "nodename nor servname" in text or "Temporary failure in name" in text:
        return RegistryFetchError(
            f"DNS: {text}",
            "make the registry host resolvable from the VM (dns.nameserver in the user data) or use its IP address",
            retryable=True,
        )
    if "refused" in text.lower():
        return RegistryFetchError(
            "connection refused",
            "nothing listens at the endpoint: start the registry or fix the endpoint's host and port",
            retryable=True,
        )
    if "timed out" in text:
        return RegistryFetchError(
            "no answer (timed out)",
            "check that VMs can route to the registry host and port (security groups, firewalls)",
            retryable=True,
        )
    return RegistryFetchError(text, "check the endpoint's host and port", retryable=True)


def _error_message(body: bytes) -> str:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    if not isinstance(document, dict):
        return ""
    return str(document.get("error") or document.get("status") or "")


def _resolve_with(host: str, nameservers: Sequence[str], timeout: float) -> str:
    """Resolve ``host`` against the user data's DNS servers, as bosh-agent does; dnspython is optional."""
    try:
        import dns.exception  # optional extra; without it the system resolver is used
        import dns.resolver
    except ImportError:
        return host
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = list(nameservers)
    resolver.lifetime = timeout
    try:
        answer = resolver.resolve(host, "A")
    except dns.exception.DNSException as exc:
        raise RegistryFetchError(
            f"DNS: {host} not resolved by {', '.join(nameservers)} ({type(exc).__name__})",
            "check dns.nameserver in the user data and the registry's DNS record",
            retryable=True,
        ) from None
    return str(answer[0])


def _to_address(request: urllib.request.Request, address: str, endpoint: Endpoint) -> urllib.request.Request:
    if address == endpoint.host:
        return request
    parts = urlsplit(request.full_url)
    host = f"[{address}]" if ":" in address else address
    rewritten = urllib.request.Request(  # noqa: S310 - same http(s) URL, host replaced by its address
        urlunsplit(parts._replace(netloc=f"{host}:{endpoint.port}")), headers=dict(request.header_items())
    )
    rewritten.add_header("Host", f"{endpoint.host}:{endpoint.port}")
    return rewritten


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True
