"""One access-log line per request: method, path, status, milliseconds, client address.

Written by the HTTP front after the responses went out, with the time each really took, in the format of
every other log line. A line through ``logging`` cost ~15 µs, a tenth of a cached read's budget: the front
notes each answered request in a list, and once per turn of the event loop the lines of all of them are
formatted and written together (one write, at once when the registry is idle). The path is logged from the
raw bytes with anything unprintable escaped (no log injection), URL passwords redacted; headers, and so
credentials, are never logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import NamedTuple, TextIO

from boshreg.bootstrap.endpoint import redact_url

log = logging.getLogger("boshreg.access")


class Answered(NamedTuple):
    """One answered request, as the front notes it (the access log and the metrics read these)."""

    method: bytes
    target: bytes
    status: int
    credential: str  # the kind of credential that was identified (the metrics' label)
    started: float  # perf_counter when its head was read
    done: float  # perf_counter when its answer was handed to the transport
    client: str


class AccessLog:
    """Formats a batch of answered requests and writes it through the log's own handler."""

    def __init__(self) -> None:
        self._second = -1
        self._second_text = ""

    def write(self, answered: Sequence[Answered]) -> None:
        """One line per request, in one write, under the handler's lock (other threads log through it too)."""
        if not answered or not log.isEnabledFor(logging.INFO):
            return
        # Each line's wall-clock time, from its perf_counter and one reading of both clocks.
        offset = time.time() - time.perf_counter()
        lines = []
        for method, target, status, _credential, started, done, client in answered:
            at = offset + done
            second = int(at)
            if second != self._second:
                self._second = second
                self._second_text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            lines.append(
                f"{self._second_text},{int(at % 1 * 1000):03d} INFO boshreg.access: "
                f"{method.decode('ascii', 'replace')} {printable_path(target)} {status} "
                f"{(done - started) * 1000:.1f}ms {client}\n"
            )
        handler = _stream_handler()
        if handler is None:
            for entry in lines:
                log.info("%s", entry.rstrip("\n").split(": ", 1)[1])
            return
        handler.acquire()
        try:
            stream: TextIO = handler.stream
            stream.write("".join(lines))
            stream.flush()
        except (OSError, ValueError):
            pass  # a full disk or a closed stream must not take requests down; logging itself drops such lines too
        finally:
            handler.release()


def _stream_handler() -> logging.StreamHandler[TextIO] | None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            return handler
    return None


def printable_path(raw: bytes) -> str:
    """The request target as sent, unprintable bytes escaped, passwords of URLs in it redacted."""
    text = raw.decode("ascii", "backslashreplace")
    if not (text.isprintable() and " " not in text):
        text = "".join(c if c.isprintable() and c != " " else f"\\x{ord(c):02x}" for c in text)
    return redact_url(text) if "@" in text else text
