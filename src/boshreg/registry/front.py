"""The registry's HTTP/1.1 front: connections, limits and framing on httptools (llhttp), before the ASGI app.

Why our own: a cached settings read is answered here in microseconds, which no ASGI server lets an app
do (uvicorn with Starlette spent ~150 µs a request), and the limits a hostile network needs are enforced
where the bytes arrive: a deadline for the request head and one for the body, an idle keep-alive limit,
431 for heads over http.max_header_bytes or http.max_headers, a cap on connections per process and per
address. A settings GET the app's fast reads can answer (cached; else read in line on SQLite, or awaited
on PostgreSQL) is answered here; everything else goes to the ASGI application unchanged.

Requests on one connection are answered in order (pipelining); a body is passed to the app as it
arrives, so a request refused before its body was read closes the connection instead of reading it.
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import json
import logging
import re
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote_to_bytes

import httptools

from boshreg.bootstrap.registry_key import REGISTRY_KEY
from boshreg.registry.acceptor import Acceptor
from boshreg.registry.access_log import AccessLog, Answered, printable_path
from boshreg.registry.audit import printable
from boshreg.registry.connections import ACCEPT_BATCH, OpenConnections
from boshreg.registry.peer import client_address

log = logging.getLogger(__name__)

ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]], Awaitable[None]]],
    Awaitable[None],
]
FastRead = Callable[[str, str | None, str], tuple[bytes, str] | None]
"""(instance id, Authorization header, client) → the body of a 200 answer and the credential kind that
read it, or None to ask the app."""
FastAnswer = tuple[int, list[tuple[bytes, bytes]], bytes, str]
"""A whole answer made without the app: status, headers, body, and the credential kind (the metrics)."""
FastReadAsync = Callable[[str, str | None, str], Awaitable[FastAnswer | None]]
"""Tried after ``FastRead`` found nothing, for stores read on the event loop: an answer, or None to ask the app."""
Observer = Callable[[list[Answered]], None]
"""Told of the requests answered in each turn of the event loop (the metrics)."""

SWEEP_SECONDS = 0.25  # how often connection deadlines are compared with the clock
PIPELINE_MAX = 16  # requests read ahead of the one being answered; past it, reading pauses
BODY_BUFFER_MAX = 256 * 1024  # body bytes held for the app before reading pauses
# A settings GET the fast reads may answer: a plain id that is a registry key (anything else, escapes and
# queries included, goes to the app, which says what is wrong with it).
_FAST_TARGET = re.compile(rb"/instances/(" + REGISTRY_KEY.pattern.encode("ascii") + rb")/settings")
_REASONS = {status.value: status.phrase.encode() for status in http.HTTPStatus}


@dataclass(frozen=True)
class FrontLimits:
    """What one connection may cost: times in seconds, sizes in bytes."""

    header_timeout: float = 10.0
    request_timeout: float = 15.0
    keepalive_timeout: float = 5.0
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    max_body_bytes: int = 1024 * 1024


class _Refusal(Exception):
    """A request the front answers itself, with this status, and then closes the connection."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Request:
    """One request as parsed, and its body as it arrives."""

    __slots__ = (
        "authorization", "body", "complete", "content_length", "credential", "disconnected", "expect_continue",
        "fast", "headers", "instance_id", "keep_alive", "method", "more", "started", "target", "version",
    )  # fmt: skip

    def __init__(self, target: bytes, headers: list[tuple[bytes, bytes]], started: float) -> None:
        self.target = target
        self.headers = headers
        self.started = started
        self.method = b""
        self.version = "1.1"
        self.keep_alive = True
        self.authorization: bytes | None = None
        self.content_length: int | None = None
        self.expect_continue = False
        self.fast = False
        self.instance_id = ""  # of a fast read
        self.credential = "none"  # the kind the app or the fast read identified (the metrics' label)
        self.body = bytearray()
        self.complete = False
        self.disconnected = False
        self.more: asyncio.Event | None = None  # made when the app first waits: most requests never do

    def wake(self) -> None:
        """More body, the end of it, or the client gone: wake the app if it waits."""
        if self.more is not None:
            self.more.set()

    async def wait(self) -> None:
        """Until ``wake``."""
        if self.more is None:
            self.more = asyncio.Event()
        self.more.clear()
        await self.more.wait()


class Front:
    """One process's HTTP server: the app, the fast read, the limits and the open connections."""

    def __init__(
        self,
        app: ASGIApp,
        fast_read: FastRead | None,
        limits: FrontLimits,
        connections: OpenConnections,
        *,
        scheme: str = "http",
        observe: Observer | None = None,
        fast_read_async: FastReadAsync | None = None,
    ) -> None:
        self.app = app
        self.fast_read = fast_read
        self.fast_read_async = fast_read_async
        self.observe = observe
        self.limits = limits
        self.connections = connections
        self.scheme = scheme
        self.access_log = AccessLog()
        self.open: set[Connection] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.stopping = False  # a connection accepted before the stop and made after it is closed at once
        self._date_second = -1
        self._date = b""
        self._answered: list[Answered] = []
        self._accounting = False

    def answered(self, method: bytes, target: bytes, status: int, credential: str, started: float, client: str) -> None:
        """Note a request whose answer went out; logged and counted once per turn of the event loop.

        Why not at once: a line formatted and a histogram updated per request, between the reads and
        sends of other connections, cost ~2.5 µs of a ~10 µs cached read; a turn's worth at a time, less.
        """
        self._answered.append(Answered(method, target, status, credential, started, time.perf_counter(), client))
        if not self._accounting:
            self._accounting = True
            asyncio.get_running_loop().call_soon(self.account)

    def account(self) -> None:
        """Write the access-log lines of the requests noted since the last call, and count them."""
        self._accounting = False
        answered, self._answered = self._answered, []
        if not answered:
            return
        self.access_log.write(answered)
        if self.observe is not None:
            self.observe(answered)

    def date_header(self) -> bytes:
        """``date: ...\\r\\n``, rendered once a second."""
        second = int(time.time())
        if second != self._date_second:
            self._date_second = second
            self._date = b"date: " + email.utils.formatdate(second, usegmt=True).encode() + b"\r\n"
        return self._date

    async def serve(self, sock: Any, tls: ssl.SSLContext | None, stop: asyncio.Event, grace: float = 5.0) -> None:
        """Serve on ``sock`` until ``stop`` is set; then let requests in flight finish for up to ``grace`` s."""
        loop = asyncio.get_running_loop()
        # Up to a batch of connections accepted per turn, each counted when it is made (a turn or two later):
        # a small batch keeps a flood from taking every file descriptor at once (the caps leave room for two).
        acceptor = Acceptor(sock, lambda: Connection(self), tls, ACCEPT_BATCH, self.tasks)
        acceptor.start()
        sweep = loop.create_task(self._sweep())
        try:
            await stop.wait()
        finally:
            acceptor.close()
            self.stopping = True
            for connection in list(self.open):
                connection.close_when_idle()
            deadline = loop.time() + grace
            while (self.tasks or any(c.busy for c in self.open)) and loop.time() < deadline:
                await asyncio.sleep(0.05)
            for connection in list(self.open):
                connection.abort()
            for task in list(self.tasks):
                task.cancel()
            sweep.cancel()
            self.account()

    async def _sweep(self) -> None:
        """Close connections past their deadline (head, body, idle), a few times a second."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            now = loop.time()
            for connection in list(self.open):
                connection.check_deadline(now)


class Connection(asyncio.Protocol):
    """One client connection: parses requests, enforces the limits, answers in order."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.limits = front.limits
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client = "-"
        self.server: tuple[str, int] | None = None
        self.admitted = False
        self.deadline = 0.0  # loop time past which ``on_deadline`` runs (0: none); checked by the front's sweep
        self.on_deadline: Callable[[], None] | None = None
        self.queue: deque[_Request] = deque()
        self.current: _Request | None = None  # being parsed
        self.busy = False  # the app is answering a request
        self.parsing = False
        self.head_bytes = 0
        self.url = bytearray()
        self.headers: list[tuple[bytes, bytes]] = []
        self.closing = False
        self.deferred: tuple[int, str] | None = None  # a refusal waiting for the answer before it
        self.reading_paused = False
        self.writing = asyncio.Event()
        self.writing.set()

    # --- connection life ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        peer = transport.get_extra_info("peername")
        self.client = client_address(str(peer[0])) if peer else "-"
        sockname = transport.get_extra_info("sockname")
        self.server = (str(sockname[0]), int(sockname[1])) if sockname else None
        if not self.front.connections.admit(self.client):
            self.transport.abort()
            return
        self.admitted = True
        self.front.open.add(self)
        if self.front.stopping:
            self._close()
            return
        self._arm(self.limits.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.admitted:
            self.admitted = False
            self.front.connections.release(self.client)
            self.front.open.discard(self)
        self.closing = True
        self._disarm()
        for request in (self.current, *self.queue):
            if request is not None:
                request.disconnected = True
                request.wake()
        self.writing.set()

    def pause_writing(self) -> None:
        # The client does not read its answers: stop reading its requests until it does (else answers to a
        # flood of pipelined GETs would pile up in the transport's buffer).
        self.writing.clear()
        if self.transport is not None and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writing.set()
        if not self.closing:
            self._continue()

    def close_when_idle(self) -> None:
        """At shutdown: close now if nothing is being answered or read, else after the current answer."""
        self.closing = True
        if not self.busy and not self.parsing and not self.queue:
            self._close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _close(self) -> None:
        self.closing = True
        self._disarm()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # --- timers --------------------------------------------------------------------------------------

    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        # A deadline is a number the front's sweep compares once per SWEEP_SECONDS: a timer object per
        # request cost a tenth of a cached read.
        self.deadline = self.loop.time() + seconds
        self.on_deadline = callback

    def _disarm(self) -> None:
        self.deadline = 0.0
        self.on_deadline = None

    def check_deadline(self, now: float) -> None:
        """Called by the sweep: run the deadline's action once it has passed."""
        if self.on_deadline is not None and 0.0 < self.deadline <= now:
            action, self.on_deadline, self.deadline = self.on_deadline, None, 0.0
            action()

    def _head_timed_out(self) -> None:
        if self.busy:
            return  # the head of a pipelined request waits for the answer before it; the app has its own limit
        if self.head_bytes:
            self._refuse(
                408, f"the request head did not arrive within http.header_timeout ({self.limits.header_timeout:g} s)"
            )
        else:
            self._close()

    def _body_timed_out(self) -> None:
        self._refuse(
            408, f"the request body did not arrive within http.request_timeout ({self.limits.request_timeout:g} s)"
        )

    def _idle_timed_out(self) -> None:
        self._close()

    # --- parsing ---------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if not self.parsing or self.current is None:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._stop_reading_after_this()  # no protocol switch here: answer what was asked, then close
            return
        except (httptools.HttpParserError, _Refusal) as exc:
            # httptools wraps what a callback raises (HttpParserCallbackError): our refusal is its context.
            refusal = exc if isinstance(exc, _Refusal) else exc.__context__
            if isinstance(refusal, _Refusal):
                self._refuse(refusal.status, str(refusal))
            else:
                self._refuse(400, f"malformed HTTP request: {_parser_reason(exc)}")
            return
        if self.parsing and self.current is None and self.head_bytes > self.limits.max_header_bytes:
            self._refuse(431, f"the request head is over http.max_header_bytes ({self.limits.max_header_bytes} bytes)")

    def on_message_begin(self) -> None:
        self.parsing = True
        self.url.clear()
        self.headers = []
        if not self.busy:
            self._arm(self.limits.header_timeout, self._head_timed_out)

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limits.max_header_bytes:
            raise _Refusal(
                431, f"the request target is over http.max_header_bytes ({self.limits.max_header_bytes} bytes)"
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))
        if len(self.headers) > self.limits.max_headers:
            raise _Refusal(431, f"the request has more than http.max_headers ({self.limits.max_headers}) headers")

    def on_headers_complete(self) -> None:
        request = _Request(bytes(self.url), self.headers, time.perf_counter())
        request.method = self.parser.get_method()
        request.version = self.parser.get_http_version()
        request.keep_alive = self.parser.should_keep_alive()
        body_expected = False
        for name, value in self.headers:
            if name == b"authorization":
                request.authorization = value
            elif name == b"content-length":
                body_expected = value != b"0"
                request.content_length = int(value) if value.isdigit() else None
            elif name == b"transfer-encoding":
                body_expected = True
            elif name == b"expect" and value.lower() == b"100-continue":
                request.expect_continue = True
        self.head_bytes = 0
        self.current = request
        if request.content_length is not None and request.content_length > self.limits.max_body_bytes:
            raise _Refusal(413, f"body is larger than http.max_body_bytes ({self.limits.max_body_bytes} bytes)")
        if not body_expected and request.method == b"GET" and self.front.fast_read is not None:
            fast = _FAST_TARGET.fullmatch(request.target)
            if fast is not None:
                request.fast = True
                request.instance_id = fast[1].decode("ascii")
                return
        if body_expected:
            self._arm(self.limits.request_timeout, self._body_timed_out)
        elif not self.busy:
            self._disarm()
        self._enqueue(request)

    def on_body(self, body: bytes) -> None:
        request = self.current
        assert request is not None
        request.body += body  # the app counts it against http.max_body_bytes; past BODY_BUFFER_MAX, reading pauses
        request.wake()
        if len(request.body) > BODY_BUFFER_MAX and self.transport is not None and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        request = self.current
        assert request is not None
        self.current = None
        self.parsing = False
        request.complete = True
        request.wake()
        if not self.busy:
            self._disarm()
        if request.fast:
            self._enqueue(request)

    # --- answering ------------------------------------------------------------------------------------

    def _enqueue(self, request: _Request) -> None:
        if self.closing:
            return
        if self.busy or self.queue or not self.writing.is_set():
            self.queue.append(request)
            if len(self.queue) > PIPELINE_MAX and self.transport is not None and not self.reading_paused:
                self.reading_paused = True
                self.transport.pause_reading()
            return
        if self._start(request):
            self._finished(request)

    def _start(self, request: _Request) -> bool:
        """Answer in place when the fast read can (True), else hand the request to the app."""
        work: Coroutine[Any, Any, None] | None = None
        if request.fast:
            instance_id = request.instance_id
            assert self.front.fast_read is not None
            header = request.authorization.decode("latin-1") if request.authorization is not None else None
            answer = self.front.fast_read(instance_id, header, self.client)
            if answer is not None:
                request.credential = answer[1]
                self._write_settings(request, answer[0])
                return True
            if self.front.fast_read_async is not None:
                work = self._run_fast_async(request, instance_id, header)
        self.busy = True
        task = self.loop.create_task(work if work is not None else self._run_app(request))
        self.front.tasks.add(task)
        task.add_done_callback(self.front.tasks.discard)
        return False

    def _finished(self, request: _Request) -> None:
        """After an answer: next request in line, or the idle timer, or the close."""
        if self.deferred is not None:
            status, message = self.deferred
            self.deferred = None
            self._refuse(status, message)
            return
        if not request.keep_alive or not request.complete or self.closing:
            self._close()
            return
        self._continue()

    def _continue(self) -> None:
        """Answer what waits in line (in a loop, not by recursion: a line can be thousands long), then the timers."""
        while self.queue and not self.busy and not self.closing and self.writing.is_set():
            request = self.queue.popleft()
            if self._start(request) and (not request.keep_alive or not request.complete):
                self._close()
        if self.busy or self.closing or not self.writing.is_set():
            return
        if self.reading_paused and len(self.queue) <= PIPELINE_MAX // 2 and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()
        if self.parsing and self.current is None:  # a head began while the app was answering: its deadline now
            self._arm(self.limits.header_timeout, self._head_timed_out)
        elif not self.parsing and not self.queue:
            self._arm(self.limits.keepalive_timeout, self._idle_timed_out)

    async def _run_fast_async(self, request: _Request, instance_id: str, header: str | None) -> None:
        """The asynchronous fast read; the app when it has no answer."""
        assert self.front.fast_read_async is not None
        answer: FastAnswer | None = None
        try:
            answer = await self.front.fast_read_async(instance_id, header, self.client)
        except Exception:
            log.exception("GET %s failed", printable_path(request.target))  # the app answers instead
        if answer is None:
            await self._run_app(request)
            return
        self.busy = False
        status, headers, body, request.credential = answer
        if not request.disconnected:
            await self.writing.wait()
            self._write(request, status, headers, body)
        self._finished(request)

    async def _run_app(self, request: _Request) -> None:
        status = 500
        response_headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []
        started = False
        answered = False
        sent_continue = False
        body_given = False

        async def receive() -> dict[str, Any]:
            nonlocal sent_continue, body_given
            if request.expect_continue and not sent_continue and not request.complete and self.transport is not None:
                sent_continue = True
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            while not request.body and not request.complete and not request.disconnected:
                await request.wait()
            if request.disconnected or (body_given and request.complete and not request.body):
                while not request.disconnected and not answered:
                    await request.wait()
                return {"type": "http.disconnect"}
            body, request.body = bytes(request.body), bytearray()
            if self.reading_paused and not self.queue and self.transport is not None:
                self.reading_paused = False
                self.transport.resume_reading()
            body_given = True
            return {"type": "http.request", "body": body, "more_body": not request.complete}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status, response_headers, started, answered
            if message["type"] == "http.response.start":
                started = True
                status = int(message["status"])
                response_headers = [(bytes(k).lower(), bytes(v)) for k, v in message.get("headers", [])]
            elif message["type"] == "http.response.body":
                chunks.append(bytes(message.get("body", b"")))
                if not message.get("more_body", False):
                    answered = True

        scope = self._scope(request)
        try:
            await self.front.app(scope, receive, send)
        except Exception:
            log.exception("%s %s failed", request.method.decode(), printable_path(request.target))
            if not started:
                status, response_headers, chunks = (
                    500,
                    [(b"content-type", b"application/json")],
                    [
                        json.dumps(
                            {"status": "error", "error": "internal error; the registry log has the details"}
                        ).encode()
                    ],
                )
        finally:
            self.busy = False
            request.credential = str(scope["state"].get("credential", "none"))
        if not request.disconnected:
            await self.writing.wait()
            self._write(request, status, response_headers, b"".join(chunks))
        self._finished(request)

    def _scope(self, request: _Request) -> dict[str, Any]:
        path, _, query = request.target.partition(b"?")
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": request.version,
            "method": request.method.decode("ascii"),
            "scheme": self.front.scheme,
            "path": _unquote(path),
            "raw_path": path,
            "query_string": query,
            "root_path": "",
            "headers": request.headers,
            "client": (self.client, 0),
            "server": self.server,
            "state": {},  # the app notes the credential kind here (Starlette's request.state)
        }

    def _write(self, request: _Request, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        closing = not request.keep_alive or not request.complete or self.closing
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown")), self.front.date_header()]
        has_length = False
        for name, value in headers:
            if name == b"content-length":
                has_length = True
            elif name == b"connection":
                continue
            parts += (name, b": ", value, b"\r\n")
        if not has_length:
            parts.append(b"content-length: %d\r\n" % len(body))
        if closing:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        if request.method != b"HEAD":
            parts.append(body)
        self.transport.write(b"".join(parts))
        self.front.answered(request.method, request.target, status, request.credential, request.started, self.client)

    def _write_settings(self, request: _Request, body: bytes) -> None:
        """``_write`` for a fast read's 200 (JSON, no headers of the app's): the head in one format."""
        if self.transport is None or self.transport.is_closing():
            return
        closing = not request.keep_alive or not request.complete or self.closing
        self.transport.write(
            b"HTTP/1.1 200 OK\r\n%scontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s"
            % (self.front.date_header(), len(body), b"connection: close\r\n" if closing else b"", body)
        )
        self.front.answered(b"GET", request.target, 200, request.credential, request.started, self.client)

    def _refuse(self, status: int, message: str) -> None:
        """Answer a request the front will not pass on (400, 408, 413, 431), then close the connection.

        While the app is answering an earlier request, the refusal waits for that answer (pipelining keeps
        answers in order); nothing more is read meanwhile.
        """
        if self.busy:
            self.deferred = (status, message)
            self.closing = True
            if self.transport is not None and not self.reading_paused:
                self.reading_paused = True
                self.transport.pause_reading()
            return
        if self.transport is not None and not self.transport.is_closing():
            body = json.dumps({"status": "error", "error": message}).encode()
            self.transport.write(
                b"HTTP/1.1 %d %s\r\n%scontent-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (status, _REASONS[status], self.front.date_header(), len(body), body)
            )
            self.front.answered(b"-", bytes(self.url) or b"-", status, "none", time.perf_counter(), self.client)
        self.closing = True
        self._close()

    def _stop_reading_after_this(self) -> None:
        self.closing = True
        if not self.busy and not self.queue:
            self._close()


def _parser_reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return printable(text)[:200]


def _unquote(path: bytes) -> str:
    if b"%" not in path:
        return path.decode("latin-1")
    return unquote_to_bytes(path).decode("utf-8", "surrogateescape")
