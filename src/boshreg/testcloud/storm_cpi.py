"""The storm's CPI: every VM's settings PUT with the admin credential, by a few writers on an event loop.

Why not ``RegistryClient`` (httpx) in threads, as before: it took ~1.8 ms of the storm's CPU a PUT, so on a
slow 2-core VM the CPI's 10,000 PUTs took 15-20 s where the registry commits ~2,000 a second. Here each writer
keeps one connection open (as the CPI's HTTP client does) and reads the answers with llhttp.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Iterator
from typing import cast
from urllib.parse import quote

import httptools
import uvloop

from boshreg.agent.registry import request_headers
from boshreg.bootstrap.endpoint import Endpoint
from boshreg.testcloud.vms import TestCloudError

ANSWER_SECONDS = 30.0  # a PUT not answered within this fails the storm, as the CPI's client would give up


def store_all(
    endpoint: Endpoint, documents: Iterable[tuple[str, str]], writers: int, stored: Callable[[], None]
) -> None:
    """PUT each ``(instance_id, settings)`` with ``writers`` PUTs at a time; ``stored()`` after each answer.

    Raises TestCloudError naming the first PUT the registry refused or did not answer.
    """
    uvloop.run(_store_all(endpoint, iter(documents), writers, stored))


async def _store_all(
    endpoint: Endpoint, documents: Iterator[tuple[str, str]], writers: int, stored: Callable[[], None]
) -> None:
    if endpoint.scheme != "http" or not endpoint.has_credentials:
        raise TestCloudError(f"the storm's CPI needs a plain-HTTP endpoint with credentials, not {endpoint}")
    headers = {"Host": f"{endpoint.netloc_host}:{endpoint.port}", **request_headers(endpoint)}
    head = "".join(f"{name}: {value}\r\n" for name, value in {**headers, "Content-Type": "application/json"}.items())

    async def writer() -> None:
        connection: _Connection | None = None
        try:
            for instance_id, settings in documents:  # one iterator shared by every writer: each PUT once
                body = settings.encode("utf-8")
                request = (
                    f"PUT /instances/{quote(instance_id, safe='')}/settings HTTP/1.1\r\n{head}"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode("latin-1") + body
                for attempt in (1, 2):  # a kept connection the registry closed meanwhile: once more, on a new one
                    if connection is None or connection.lost:
                        connection = await _Connection.open(endpoint.host, endpoint.port)
                    try:
                        status, answer = await connection.exchange(request)
                        break
                    except ConnectionError as exc:
                        if attempt == 2:
                            raise TestCloudError(f"the CPI's PUT of {instance_id}: {exc}") from None
                if status != 200:
                    raise TestCloudError(f"the CPI's PUT of {instance_id}: HTTP {status} {_message(answer)}")
                stored()
        finally:
            if connection is not None:
                connection.close()

    tasks = [asyncio.ensure_future(writer()) for _ in range(writers)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


def _message(answer: bytes) -> str:
    """The registry's own words from an error answer (its JSON's ``error``), else the first bytes."""
    try:
        return str(json.loads(answer).get("error") or "")
    except (ValueError, AttributeError):
        return answer[:200].decode("utf-8", "replace")


class _Connection(asyncio.Protocol):
    """One kept-alive connection: a request at a time, its answer parsed by llhttp."""

    def __init__(self) -> None:
        self.lost = False
        self._transport: asyncio.WriteTransport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._body: list[bytes] = []
        self._answer: asyncio.Future[tuple[int, bytes]] | None = None

    @classmethod
    async def open(cls, host: str, port: int) -> _Connection:
        try:
            _, protocol = await asyncio.get_running_loop().create_connection(cls, host, port)
        except OSError as exc:
            raise TestCloudError(f"the storm's CPI cannot connect to the registry at {host}:{port}: {exc}") from None
        return protocol

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        assert self._transport is not None
        self._answer = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        try:
            async with asyncio.timeout(ANSWER_SECONDS):
                return await self._answer
        except TimeoutError:
            self.close()
            raise TestCloudError(f"the registry did not answer a PUT within {ANSWER_SECONDS:g} s") from None

    def close(self) -> None:
        self.lost = True
        if self._transport is not None:
            self._transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (create_connection), though uvloop's is no subclass of asyncio.Transport
        self._transport = cast(asyncio.WriteTransport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"not an HTTP answer ({exc})"))
            self.close()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        answer, self._body = b"".join(self._body), []
        if self._answer is not None and not self._answer.done():
            self._answer.set_result((self._parser.get_status_code(), answer))
        if not self._parser.should_keep_alive():
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(ConnectionError(f"the registry closed the connection ({exc or 'end of stream'})"))

    def _fail(self, error: Exception) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(error)
