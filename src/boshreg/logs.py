"""Logging set-up shared by every command: one format, credentials in URLs always redacted."""

from __future__ import annotations

import logging
import sys
import time

from boshreg.bootstrap.endpoint import redact_url
from boshreg.errors import BoshregError

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RedactingFormatter(logging.Formatter):
    """Formats as usual, then hides the password of any URL in the line, traceback included."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._second = -1
        self._second_text = ""

    def format(self, record: logging.LogRecord) -> str:
        return redact_url(super().format(record))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """The default format, with the date and time rendered once a second rather than once a line."""
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._second, self._second_text = second, time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
        return f"{self._second_text},{int(record.msecs):03d}"


class LogSetupError(BoshregError):
    """The log file cannot be opened; the message names it and the key to change."""


def setup_logging(level: str = "INFO", logfile: str | None = None) -> None:
    """Send all logs (ours and the server's) through one redacting handler."""
    handler: logging.Handler
    try:
        handler = logging.FileHandler(logfile, encoding="utf-8") if logfile else logging.StreamHandler(sys.stderr)
    except OSError as exc:
        raise LogSetupError(f"cannot open logfile {logfile}: {exc.strerror}; fix the path or remove logfile") from None
    handler.setFormatter(RedactingFormatter(FORMAT))
    # The format shows none of these: skip finding them for each record (the access log writes one a request).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # At debug, log each SQL statement as the original registry did; parameters stay hidden (the engine
    # is built with hide_parameters) because they carry the agents' credentials.
    logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO if level == "DEBUG" else logging.WARNING)
