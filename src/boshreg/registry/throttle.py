"""Throttling failed authentications: per (address, user), and per address with a higher limit.

Only failures are counted, so a successful request never waits for anything. A user that failed too
often from an address is refused there (429, Retry-After) for the block time, whatever it sends, so a
guesser cannot tell a right guess from a wrong one while blocked. Failures of one user never block
another: VMs failing behind one NAT do not lock the admin out. An address that fails too often across
users (spraying names) is blocked for every user that has failed from it, and for anonymous requests;
a user with no failures from it is still checked. IPv6 callers are counted by their /64, which one
machine usually holds whole. A slow (bcrypt) check reserves its failure before it runs, so concurrent
guesses count; the reservation is released when the check succeeds.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

TRACKED_MAX = 100_000  # keys remembered at most; the least recently failing are forgotten first
ADDRESS_FACTOR = 5  # an address may fail this many times the per-user limit, across users, before it is blocked

Key = tuple[str, str | None]  # (address or /64, user: "" for anonymous, None for the whole address)


def address_key(client: str) -> str:
    """The address as the throttle counts it: IPv4 as is, IPv6 by its /64."""
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return client
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return client


class AuthThrottle:
    def __init__(
        self,
        max_failures: int,
        window: float,
        block: float,
        now: Callable[[], float] = time.monotonic,
        address_factor: int = ADDRESS_FACTOR,
    ) -> None:
        self.max_failures = max_failures
        self.address_max = max_failures * address_factor
        self.window = window
        self.block = block
        self._now = now
        self._failures: OrderedDict[Key, deque[float]] = OrderedDict()
        self._address_failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._blocked: dict[Key, float] = {}

    def retry_after(self, client: str, user: str = "") -> int | None:
        """Seconds until ``user`` may try again from ``client``, or None when it is not blocked."""
        if not self._blocked:  # the usual case, on every request: nothing to look up
            return None
        now = self._now()
        address = address_key(client)
        own = self._remaining((address, user), now)
        if own is not None:
            return own
        spread = self._remaining((address, None), now)
        if spread is not None and (user == "" or self._recent((address, user), now)):
            return spread
        return None

    def failed(self, client: str, user: str = "") -> None:
        """Count a failed authentication (or a failed address check, as the anonymous user)."""
        self.reserve(client, user)

    def reserve(self, client: str, user: str = "") -> float:
        """Count a failure now, before a slow check; ``release`` takes it back if the check succeeds."""
        now = self._now()
        address = address_key(client)
        key = (address, user)
        failures = self._pruned(self._failures.pop(key, None), now)
        failures.append(now)
        if len(failures) >= self.max_failures:
            self._blocked[key] = now + self.block
        self._failures[key] = failures
        spread = self._pruned(self._address_failures.pop(address, None), now)
        spread.append(now)
        if len(spread) >= self.address_max:
            self._blocked[(address, None)] = now + self.block
            spread.clear()
        self._address_failures[address] = spread
        self._bound(now)
        return now

    def release(self, client: str, user: str, stamp: float) -> None:
        """The slow check succeeded: the reserved failure was none."""
        address = address_key(client)
        for failures in (self._failures.get((address, user)), self._address_failures.get(address)):
            if failures is not None and stamp in failures:
                failures.remove(stamp)

    def _recent(self, key: Key, now: float) -> bool:
        failures = self._failures.get(key)
        return failures is not None and any(stamp > now - self.window for stamp in failures)

    def _pruned(self, failures: deque[float] | None, now: float) -> deque[float]:
        failures = failures if failures is not None else deque()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        return failures

    def _remaining(self, key: Key, now: float) -> int | None:
        until = self._blocked.get(key)
        if until is None:
            return None
        if until <= now:
            del self._blocked[key]
            return None
        return max(1, math.ceil(until - now))

    def _bound(self, now: float) -> None:
        while len(self._failures) > TRACKED_MAX:
            self._failures.popitem(last=False)
        while len(self._address_failures) > TRACKED_MAX:
            self._address_failures.popitem(last=False)
        if len(self._blocked) > TRACKED_MAX:
            self._blocked = {k: u for k, u in self._blocked.items() if u > now}
