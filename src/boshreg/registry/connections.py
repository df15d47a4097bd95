"""How many connections one process may hold, and from one address: the registry's share of file descriptors.

Every open connection is a file descriptor. Without a cap below the file limit, one address holding slow
connections used them all: accept() failed for everyone and the log filled with its error. The cap is
taken from the process's file limit (raised to the hard limit first), minus what the database pool, the
log and the audit writer need; one address may hold only a share of it, so others are still served.
"""

from __future__ import annotations

import logging
import resource
import time
from collections import Counter
from dataclasses import dataclass

log = logging.getLogger(__name__)

RESERVED_FILES = 128  # database connections, log files, the listening socket, the audit writer's connection
ACCEPT_BATCH = 16  # connections accepted per turn of the event loop (acceptor), each counted a turn or two later
LISTEN_BACKLOG = 2048  # the kernel's queue of connections not yet accepted (a boot storm arrives at once)
PER_ADDRESS_SHARE = 2  # one address may hold 1/PER_ADDRESS_SHARE of the cap
LOG_EVERY = 10.0  # seconds between two log lines about the same kind of refusal


def raise_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one (systemd gives services 1,024 soft); the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # kept as it was; the cap below follows what we really have
    return soft


@dataclass(frozen=True)
class ConnectionCaps:
    """The most connections one process holds at once, and the most from one address."""

    total: int
    per_address: int

    @classmethod
    def for_limit(cls, file_limit: int, total: int | None = None, per_address: int | None = None) -> ConnectionCaps:
        """Caps from the configured values, never above what the file limit leaves for connections."""
        # Accepted connections are counted one loop turn later; up to two batches may be open uncounted.
        ceiling = max(16, file_limit - RESERVED_FILES - 2 * ACCEPT_BATCH)
        chosen = min(total or ceiling, ceiling)
        return cls(total=chosen, per_address=min(per_address or max(1, chosen // PER_ADDRESS_SHARE), chosen))


class OpenConnections:
    """Counts this process's connections by address and says whether one more may be admitted."""

    def __init__(self, caps: ConnectionCaps) -> None:
        self.caps = caps
        self.total = 0
        self.by_address: Counter[str] = Counter()
        self.refused = RateLimitedLog("refused connections")

    def admit(self, address: str) -> bool:
        """Count a new connection in, or refuse it (and note why, at most once per LOG_EVERY seconds)."""
        if self.total >= self.caps.total:
            self.refused.note(f"this process holds its cap of {self.caps.total} connections (http.max_connections)")
            return False
        if self.by_address[address] >= self.caps.per_address:
            self.refused.note(
                f"{address} holds its share of {self.caps.per_address} connections (http.max_connections_per_address)"
            )
            return False
        self.total += 1
        self.by_address[address] += 1
        return True

    def release(self, address: str) -> None:
        """A connection counted in by ``admit`` has closed."""
        self.total -= 1
        left = self.by_address[address] - 1
        if left > 0:
            self.by_address[address] = left
        else:
            del self.by_address[address]


class RateLimitedLog:
    """A warning that may happen thousands of times a second, logged once per interval with a count."""

    def __init__(self, what: str, every: float = LOG_EVERY) -> None:
        self.what = what
        self.every = every
        self._count = 0
        self._last = -every

    def note(self, reason: str) -> None:
        """Count one occurrence; log it, with how many were not logged, when the interval has passed."""
        self._count += 1
        now = time.monotonic()
        if now - self._last >= self.every:
            log.warning("%s: %d since the last line like this; latest: %s", self.what, self._count, reason)
            self._count = 0
            self._last = now
