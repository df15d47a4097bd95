"""One access-log line per request: method, path, status, milliseconds, client address.

Written as plain ASGI middleware so the line is logged after the response went out, with the time it
really took. The path is logged from the raw bytes with anything unprintable escaped (no log injection);
headers, and so credentials, are never logged.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("boshreg.access")


class AccessLogMiddleware:
    """Wraps an ASGI app and logs each HTTP request it answers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees if the app fails before answering

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            log.info(
                "%s %s %d %.1fms %s",
                scope["method"],
                _printable_path(scope),
                status,
                elapsed_ms,
                _client(scope),
            )


def _printable_path(scope: Scope) -> str:
    raw = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
    text = raw.decode("ascii", "backslashreplace")
    return "".join(c if c.isprintable() and c != " " else f"\\x{ord(c):02x}" for c in text)


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "-"
