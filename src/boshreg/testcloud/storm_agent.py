"""One simulated VM's boot on an event loop: the agent's requests and its own decoding, without its threads.

A boot storm of 10,000 VMs on two cores cannot afford a Python thread and urllib per VM: in threads, the
simulated agents took twice the CPU of the registry they were measuring. Here each VM makes the requests
the stemcell's agent makes with the storm's agent.json (the metadata service's user data and public key
from the VM's own address, then the registry GET with the per-VM credential from the user data, each on a
new connection), retries as the agent does, and reads the answers with the agent's own functions
(``json_or_base64``, ``userdata.decode``, ``boot_problems``, ``http_failure``, ``decode_answer``). What it
leaves out is the resolver's walk over other sources and its verdict, which ``--agents resolver`` keeps.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import httptools

from boshreg.agent import HttpSource
from boshreg.agent.registry import RegistryFetchError, decode_answer, http_failure, request_headers
from boshreg.agent.resolver import REGISTRY_ATTEMPTS, REGISTRY_RETRY_DELAY
from boshreg.agent.sources import json_or_base64
from boshreg.bootstrap import nova, userdata
from boshreg.bootstrap.endpoint import Endpoint, EndpointError, parse_endpoint
from boshreg.bootstrap.verdict import boot_problems

T = TypeVar("T")
MAX_ANSWER_BYTES = 1 << 20  # a settings answer is a few KiB; past this the simulated VM gives up


class BootFailed(Exception):
    """The VM could not get its settings; the message says which request failed and how."""


@dataclass(frozen=True)
class Booted:
    """What one VM got: its settings, and the seconds its metadata and registry requests took."""

    settings: dict[str, Any]
    source_seconds: float
    registry_seconds: float


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes


class _Retry(Exception):
    """A failure the agent would try again after its delay."""


async def boot(metadata_url: str, address: str, deadline: float) -> Booted:
    """The settings VM ``address`` reads, as the agent would within ``deadline`` seconds, or BootFailed."""
    clock = _Deadline(deadline)
    started = time.monotonic()
    raw = await clock.retry(lambda: _source(metadata_url, address, clock), HttpSource.attempts, HttpSource.retry_delay)
    source_seconds = time.monotonic() - started
    endpoint, key = _registry_of(raw)
    headers = request_headers(endpoint)
    url = endpoint.settings_url(key)
    started = time.monotonic()
    body = await clock.retry(
        lambda: _registry(url, key, headers, address, clock), REGISTRY_ATTEMPTS, REGISTRY_RETRY_DELAY
    )
    try:
        settings = decode_answer(body)
    except RegistryFetchError as exc:
        raise BootFailed(f"registry GET {endpoint.settings_url(key, redacted=True)}: {exc.cause}") from None
    return Booted(settings, source_seconds, time.monotonic() - started)


async def _source(base: str, address: str, clock: _Deadline) -> bytes:
    """One attempt of the agent's HTTP source: the user data, then the public key (which may be absent)."""
    raw = await _metadata(base, nova.EC2_USER_DATA_PATH, address, clock)
    await _metadata(base, nova.EC2_SSH_KEY_PATH, address, clock, absent_ok=True)
    return raw


def _registry_of(raw: bytes) -> tuple[Endpoint, str]:
    """The registry endpoint and key in the user data, as the agent reads them; BootFailed where it could not boot.

    The key is the server name (agent.json's UseServerName on OpenStack), as the resolver reads it.
    """
    try:
        document = userdata.decode(json_or_base64(raw), "user data")
    except userdata.UserDataError as exc:
        raise BootFailed(str(exc)) from None
    problems, _ = boot_problems(document, live=True)
    if problems:
        raise BootFailed("; ".join(problems))
    if userdata.is_registry_less(document):
        raise BootFailed("the user data carries the settings itself; the storm expects a registry endpoint")
    try:
        endpoint = parse_endpoint(document["registry"]["endpoint"], require_credentials=False)
    except EndpointError as exc:
        raise BootFailed(str(exc)) from None
    server = document.get("server")
    if not (isinstance(server, dict) and server.get("name")):
        raise BootFailed("the user data has no server.name, the key the agent reads its registry settings by")
    return endpoint, str(server["name"])


async def _metadata(base: str, path: str, address: str, clock: _Deadline, *, absent_ok: bool = False) -> bytes:
    url = f"{base.rstrip('/')}{path}"
    answer = await _get(url, {}, address, clock)
    if answer.status == 200:
        return answer.body
    if answer.status == 404 and absent_ok:
        return b""
    if answer.status >= 500 or answer.status == 429:
        raise _Retry(f"{url}: HTTP {answer.status}")
    raise BootFailed(f"{url}: HTTP {answer.status}")


async def _registry(url: str, key: str, headers: dict[str, str], address: str, clock: _Deadline) -> bytes:
    answer = await _get(url, headers, address, clock)
    if answer.status == 200:
        return answer.body
    failure = http_failure(answer.status, answer.body, key)
    if failure.retryable:
        raise _Retry(f"registry GET: {failure.cause}")
    raise BootFailed(f"registry GET: {failure.cause}; {failure.fix}")


class _Deadline:
    """The VM's remaining time, and the agent's retries within it."""

    def __init__(self, seconds: float) -> None:
        self.ends = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.ends - time.monotonic()

    async def retry(self, attempt: Callable[[], Awaitable[T]], attempts: int, delay: float) -> T:
        for tried in range(1, attempts + 1):
            try:
                return await attempt()
            except _Retry as exc:
                if tried == attempts or self.remaining() <= delay:
                    raise BootFailed(f"{exc} (after {tried} attempts)") from None
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")


async def _get(url: str, headers: dict[str, str], address: str, clock: _Deadline) -> _Answer:
    """One GET on a new connection from ``address``, closed after the answer, as the agent's urllib does."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise BootFailed(
            f"{parts.scheme}://{parts.hostname}: the storm's lean agents speak plain HTTP; use --agents resolver"
        )
    host, port = parts.hostname or "", parts.port or 80
    lines = [f"GET {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc.rpartition('@')[2]}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    loop = asyncio.get_running_loop()
    done: asyncio.Future[_Answer] = loop.create_future()
    try:
        async with asyncio.timeout(max(0.0, clock.remaining())):
            transport, _ = await loop.create_connection(
                lambda: _GetProtocol(request, done), host, port, local_addr=(address, 0)
            )
            try:
                return await done
            finally:
                transport.close()
    except TimeoutError:
        raise _Retry(f"{url}: no answer (timed out)") from None
    except OSError as exc:  # asyncio words a refusal "Connect call failed": say it as the agent's urllib does
        raise _Retry(f"{url}: {os.strerror(exc.errno) if exc.errno else exc}") from None


class _GetProtocol(asyncio.Protocol):
    """Sends the request and parses the answer with llhttp, the parser the registry's front uses."""

    def __init__(self, request: bytes, done: asyncio.Future[_Answer]) -> None:
        self._request, self._done = request, done
        self._parser = httptools.HttpResponseParser(self)
        self._body: list[bytes] = []
        self._size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (create_connection), though uvloop's is no subclass of asyncio.Transport
        cast(asyncio.WriteTransport, transport).write(self._request)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._finish(OSError(f"not an HTTP answer ({exc})"))

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_ANSWER_BYTES:
            self._finish(OSError(f"answer over {MAX_ANSWER_BYTES} bytes"))
        self._body.append(body)

    def on_message_complete(self) -> None:
        if not self._done.done():
            self._done.set_result(_Answer(self._parser.get_status_code(), b"".join(self._body)))

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(OSError(f"connection closed before the answer ended ({exc or 'end of stream'})"))

    def _finish(self, error: Exception) -> None:
        if not self._done.done():
            self._done.set_exception(error)
