"""Throttling failed authentications per client address.

Only failures are counted, so a successful request never waits for anything. An address with too many
failures inside the window is refused (429, Retry-After) for the block time, whatever credentials it
sends, so a password guesser cannot tell a right guess from a wrong one while blocked.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

TRACKED_MAX = 100_000  # addresses remembered at most; the least recently failing are forgotten first


class AuthThrottle:
    def __init__(
        self, max_failures: int, window: float, block: float, now: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.block = block
        self._now = now
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._blocked_until: dict[str, float] = {}

    def retry_after(self, client: str) -> int | None:
        """Seconds until ``client`` may try again, or None when it is not blocked."""
        until = self._blocked_until.get(client)
        if until is None:
            return None
        remaining = until - self._now()
        if remaining <= 0:
            del self._blocked_until[client]
            return None
        return max(1, math.ceil(remaining))

    def failed(self, client: str) -> None:
        """Count a failed authentication; block the address when it has failed too often."""
        now = self._now()
        failures = self._failures.pop(client, None) or deque()
        failures.append(now)
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if len(failures) >= self.max_failures:
            self._blocked_until[client] = now + self.block
            failures.clear()
        else:
            self._failures[client] = failures
        while len(self._failures) > TRACKED_MAX:
            self._failures.popitem(last=False)
        if len(self._blocked_until) > TRACKED_MAX:
            self._blocked_until = {c: u for c, u in self._blocked_until.items() if u > now}
