"""Who may do what to which instance: the registry's access policy as one pure function.

The README's security table, row by row, is this function; ``tests/test_access.py`` checks each row. The
HTTP layer only identifies the caller (``auth``), throttles failures (``throttle``) and carries out the
decision (the address check needs the cloud, so it is a decision of its own: ``CHECK_ADDRESS``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from boshreg.registry.auth import Caller

READ = "read"
WRITE = "write"
DELETE = "delete"
CREDENTIALS = "credentials"
REVOKE = "revoke"
EVENTS = "events"
FLEET = "fleet"  # every instance's state: not about one instance, admin only
METRICS = "metrics"  # GET /metrics: admin, or an address of http.metrics_allow_from
ACTIONS = (READ, WRITE, DELETE, CREDENTIALS, REVOKE, EVENTS, FLEET, METRICS)


class Decision(enum.Enum):
    ALLOW = "allow"
    CHECK_ADDRESS = "check-address"  # allowed when the caller's address is one the cloud gives the instance
    UNAUTHENTICATED = "401"  # who are you? (WWW-Authenticate)
    FORBIDDEN = "403"  # known, but not for this


@dataclass(frozen=True)
class Access:
    decision: Decision
    reason: str = ""


_ALLOWED = Access(Decision.ALLOW)  # one for every allowed request: a frozen dataclass costs ~0.5 µs to build


def decide(
    caller: Caller,
    user: str | None,
    action: str,
    instance_id: str,
    *,
    anonymous_reads: bool = False,
    address_check: bool = False,
    scraper: bool = False,
) -> Access:
    """May ``caller`` (as ``user``) do ``action`` to ``instance_id``? The reason is for the refused.

    ``scraper``: the caller's address is one ``http.metrics_allow_from`` names.
    """
    if caller is Caller.ADMIN or (action == METRICS and scraper):
        return _ALLOWED
    if caller is Caller.INSTANCE:
        if action != READ:
            return Access(Decision.FORBIDDEN, "a VM's own credential may only read its settings")
        if user != instance_id:
            return Access(Decision.FORBIDDEN, f"the credential of {user} may not read another instance's settings")
        return _ALLOWED
    if caller is Caller.ANONYMOUS:
        if action == READ and anonymous_reads:
            return _ALLOWED
        if action == READ and address_check:
            return Access(Decision.CHECK_ADDRESS)
        if action == READ:
            return Access(
                Decision.UNAUTHENTICATED,
                "credentials required; put user:password in the registry endpoint "
                "(or set http.allow_anonymous_reads: true, or a cloud for the address check)",
            )
        return Access(Decision.UNAUTHENTICATED, f"credentials required ({action})")
    return Access(Decision.UNAUTHENTICATED, "credentials not accepted; check the user and password in the endpoint")
