"""Logging set-up shared by every command: one format, credentials in URLs always redacted."""

from __future__ import annotations

import logging
import sys

from boshreg.endpoint import redact_url

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RedactingFormatter(logging.Formatter):
    """Formats as usual, then hides the password of any URL in the line, traceback included."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_url(super().format(record))


def setup_logging(level: str = "INFO", logfile: str | None = None) -> None:
    """Send all logs (ours and the server's) through one redacting handler."""
    handler: logging.Handler = (
        logging.FileHandler(logfile, encoding="utf-8") if logfile else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(RedactingFormatter(FORMAT))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
